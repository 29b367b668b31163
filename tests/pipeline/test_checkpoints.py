"""Stage checkpoints and resuming: an interrupted run (even by kill -9) finishes as an uninterrupted one would."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ibprune import compress
from ibprune.core.train import OptimizerConfig, fit
from ibprune.errors import InputError
from ibprune.pipeline.checkpoints import Checkpoints

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _shuffled_loader(n: int = 40, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(2))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fit_resumed_mid_epoch_equals_an_uninterrupted_fit(digits_net):
    """Saved every 3 steps (not a pass boundary): data order, noise and optimizer state continue exactly."""
    reference, interrupted = copy.deepcopy(digits_net), copy.deepcopy(digits_net)
    torch.manual_seed(5)
    fit(reference, _shuffled_loader(), 12, CPU, OptimizerConfig(lr=0.05, weight_decay=5e-4), verbose=False)

    saved = []
    torch.manual_seed(5)
    loader = _shuffled_loader()
    with pytest.raises(KeyboardInterrupt):
        def keep(state):
            saved.append(copy.deepcopy(state))
            if state["step"] == 9:
                raise KeyboardInterrupt  # the run dies right after its checkpoint at step 9
        fit(interrupted, loader, 12, CPU, OptimizerConfig(lr=0.05, weight_decay=5e-4), checkpoint=keep,
            checkpoint_every=3, verbose=False)
    assert [s["step"] for s in saved] == [3, 6, 9]

    resumed = copy.deepcopy(digits_net)  # a fresh process: new model, new loader, other random state
    torch.manual_seed(123)
    fit(resumed, _shuffled_loader(), 12, CPU, OptimizerConfig(lr=0.05, weight_decay=5e-4), resume=saved[1],
        checkpoint_every=3, verbose=False)
    assert _same_weights(resumed, reference)


def test_a_nan_loss_rolls_back_once_and_halves_the_learning_rate(digits_net, random_loader):
    calls = {"n": 0}

    def penalty():
        calls["n"] += 1
        return torch.tensor(float("nan") if calls["n"] == 7 else 0.0)

    stats = fit(digits_net, random_loader(n=32, batch=8), 10, CPU, OptimizerConfig(lr=0.05, weight_decay=5e-4),
                penalty=penalty, verbose=False)
    assert stats["nan_recoveries"] == 1 and stats["steps"] == 10
    assert all(torch.isfinite(p).all() for p in digits_net.parameters())
    assert calls["n"] == 13  # steps 0-5, the bad step 6, then steps 4-9 again after rolling back to step 4


def test_a_second_nan_stops_with_an_error(digits_net, random_loader):
    with pytest.raises(FloatingPointError, match="again after halving the learning rate"):
        fit(digits_net, random_loader(), 4, CPU, OptimizerConfig(lr=0.01, weight_decay=5e-4),
            penalty=lambda: torch.tensor(float("nan")), verbose=False)


def test_leftover_checkpoints_need_resume_and_the_same_settings(tmp_path):
    Checkpoints(tmp_path, {"seed": 0})
    with pytest.raises(InputError, match="interrupted run.*resume=True"):
        Checkpoints(tmp_path, {"seed": 0})
    with pytest.raises(InputError, match=r"other settings \(seed: 0 -> 1\)"):
        Checkpoints(tmp_path, {"seed": 1}, resume=True)
    assert Checkpoints(tmp_path, {"seed": 0}, resume=True).load("gates") is None


def _compress(net, out, **kw):
    from ibprune.data.loaders import digits_loaders

    train, val = digits_loaders(64, 0)
    return compress(net, train, val, macs=0.5, gate_epochs=0.5, finetune_epochs=2, out_dir=out, lr=0.02,
                    bench_batch=4, latency_runs=3, verbose=False, **kw)


def test_compress_resumes_after_the_pruning_stage(digits_net, tmp_path, monkeypatch):
    reference = _compress(digits_net, tmp_path / "ref")
    assert not (tmp_path / "ref" / "checkpoints").exists()  # cleared once the outputs are written

    import ibprune.pipeline.stages

    real_fit = ibprune.pipeline.stages.fit

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ibprune.pipeline.stages, "fit", dies)
    with pytest.raises(KeyboardInterrupt):
        _compress(digits_net, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "gates.pt", "pruned.pt", "settings.json"]
    with pytest.raises(InputError, match="resume=True"):
        _compress(digits_net, tmp_path / "run")
    monkeypatch.setattr(ibprune.pipeline.stages, "fit", real_fit)
    result = _compress(digits_net, tmp_path / "run", resume=True)
    assert result.report["resumed_from"] == "pruned"
    assert result.report["pruned_channels"] == reference.report["pruned_channels"]
    assert _same_weights(result.model, reference.model)


SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from ibprune import compress
    from ibprune.data.loaders import digits_loaders
    from ibprune.models import DigitsNet

    class Slow:
        '''The digits loader, slowed so that a test can kill the run mid-fine-tune.'''
        def __init__(self, loader, delay):
            self.loader, self.delay, self.generator = loader, delay, loader.generator
        def __len__(self):
            return len(self.loader)
        def __iter__(self):
            for batch in self.loader:
                time.sleep(self.delay)
                yield batch

    out, delay, resume = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "resume"
    torch.manual_seed(0)
    train, val = digits_loaders(64, 0)
    compress(DigitsNet(width=16), Slow(train, delay), val, macs=0.5, gate_epochs=0.5, finetune_epochs=4,
             out_dir=out, resume=resume, lr=0.02, bench_batch=4, latency_runs=3, verbose=False)
""")


def _launch(script: Path, out: Path, delay: float, resume: bool = False) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), str(out), str(delay), "resume" if resume else "new"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_kill_9_mid_finetune_then_resume_matches_an_uninterrupted_run(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    reference = _launch(script, tmp_path / "ref", 0.0)
    victim = _launch(script, tmp_path / "run", 0.03)
    saved = tmp_path / "run" / "checkpoints" / "finetune.pt"
    deadline = time.monotonic() + 240
    while not saved.exists():
        assert victim.poll() is None, victim.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no fine-tune checkpoint within 240 s"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    step = torch.load(saved, weights_only=True)["step"]
    assert 0 < step < 4 * 23, step  # killed mid-fine-tune (23 batches an epoch)
    assert not (tmp_path / "run" / "report.json").exists() and not (tmp_path / "run" / "model.onnx").exists()

    resumed = _launch(script, tmp_path / "run", 0.0, resume=True)
    for proc in (reference, resumed):
        assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()[-2000:]
    ref = json.loads((tmp_path / "ref" / "report.json").read_text())
    run = json.loads((tmp_path / "run" / "report.json").read_text())
    assert run["resumed_from"] == "finetune" and ref["resumed_from"] is None
    assert run["pruned_channels"] == ref["pruned_channels"]
    a = torch.load(tmp_path / "ref" / "compressed.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run" / "compressed.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # CPU, one thread: the very same weights
    assert not (tmp_path / "run" / "checkpoints").exists()
