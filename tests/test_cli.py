import contextlib
import io
import json
import subprocess
import sys

import pytest

from ibprune.cli import main

QUICK = ["--gate-epochs", "0.2", "--finetune-epochs", "0.2", "--latency-runs", "3", "--bench-batch", "4"]


def test_help_is_useful():
    out = subprocess.run([sys.executable, "-m", "ibprune", "--help"], capture_output=True, text=True)  # the command
    assert out.returncode == 0 and "demo" in out.stdout and "compress" in out.stdout and "run" in out.stdout
    helps = {}
    for sub in ("demo", "compress", "run", "sweep"):  # each subcommand's help, in this process (no torch start-up)
        with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(io.StringIO()) as text:
            main([sub, "--help"])
        assert done.value.code == 0 and "usage" in text.getvalue()
        helps[sub] = text.getvalue()
    assert "--latency LATENCY" in helps["compress"] and "--latency LATENCY" not in helps["sweep"]  # sweeps: MACs


def test_compress_from_flags(tmp_path):
    out = tmp_path / "run"
    code = main(["--quiet", "compress", "--model", "ibprune.models:DigitsNet", "--num-classes", "10",
                 "--data", "digits", "--macs", "0.6", "--out", str(out), *QUICK])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["achieved"]["macs"] <= 0.6 and rep["compressed"]["accuracy"] is not None
    assert (out / "model.onnx").is_file()


def test_round_to_flag_takes_auto():
    from ibprune.cli import _parser

    args = _parser().parse_args(["compress", "--model", "m:f", "--data", "digits", "--macs", "0.5", "--out", "o",
                                 "--round-to", "auto"])
    assert args.round_to == "auto"
    assert _parser().parse_args(["compress", "--model", "m:f", "--data", "digits", "--macs", "0.5", "--out", "o",
                                 "--round-to", "16"]).round_to == 16


def test_run_a_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
[model]
spec = "ibprune.models:DigitsNet"
[data]
source = "digits"
[budget]
params = 0.6
[train]
gate_epochs = 0.2
finetune_epochs = 0.2
round_to = 1
[output]
dir = "{tmp_path / 'out'}"
latency_runs = 3
bench_batch = 4
""")
    assert main(["--quiet", "run", str(recipe)]) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["target"] == {"params": 0.6} and rep["achieved"]["params"] <= 0.6


@pytest.mark.parametrize(("args", "message"), [
    (["compress", "--model", "ibprune.models:DigitsNet", "--data", "digits", "--macs", "2", "--out", "x"],
     "fraction in (0, 1)"),
    (["compress", "--model", "nope", "--data", "digits", "--macs", "0.5", "--out", "x"], "model spec"),
    (["compress", "--model", "ibprune.models:DigitsNet", "--weights", "missing.pt", "--data", "digits",
      "--macs", "0.5", "--out", "x"], "weights file not found"),
    (["compress", "--model", "ibprune.models:DigitsNet", "--data", "/no/such/dir", "--macs", "0.5",
      "--out", "x"], "data folder not found"),
    (["run", "missing.toml"], "recipe not found"),
])
def test_bad_input_is_one_clear_line(capsys, args, message):
    assert main(["--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ibprune: error:") and message in err[0]


def test_trust_checkpoint_opts_in_to_pickled_weights(tmp_path, capsys):
    import torch

    from ibprune.models import DigitsNet

    torch.save(DigitsNet(), tmp_path / "whole.pt")
    args = ["--quiet", "compress", "--model", "ibprune.models:DigitsNet", "--weights", str(tmp_path / "whole.pt"),
            "--data", "digits", "--macs", "0.6", "--out", str(tmp_path / "run"), *QUICK]
    assert main(args) == 1 and "--trust-checkpoint" in capsys.readouterr().err
    assert main([*args, "--trust-checkpoint"]) == 0


def test_an_interrupted_run_is_resumed_only_when_asked(tmp_path, capsys):
    from ibprune.pipeline.checkpoints import Checkpoints

    out = tmp_path / "run"
    args = ["--quiet", "compress", "--model", "ibprune.models:DigitsNet", "--data", "digits", "--macs", "0.6",
            "--out", str(out), *QUICK]
    assert main(args) == 0
    assert (out / "report.json").is_file() and not (out / "checkpoints").exists()
    Checkpoints(out / "checkpoints", {"left": "by a killed run"})
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted run" in err[0] and "--resume" in err[0]
    assert main([*args, "--resume"]) == 1 and "other settings" in capsys.readouterr().err


def test_the_library_logs_and_the_command_shows_it_unless_quiet(tmp_path, capsys):
    import logging

    args = ["compress", "--model", "ibprune.models:DigitsNet", "--num-classes", "10", "--data", "digits",
            "--macs", "0.6", *QUICK]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr().out
    assert "[ibprune] pruned to" in shown and logging.getLogger("ibprune").level == logging.INFO
    assert main(["--quiet", *args, "--out", str(tmp_path / "b")]) == 0
    assert "[ibprune] pruned to" not in capsys.readouterr().out
    assert len([h for h in logging.getLogger("ibprune").handlers if isinstance(h, logging.StreamHandler)]) == 1
