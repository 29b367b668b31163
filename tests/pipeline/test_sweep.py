import json

import pytest

import ibprune
from ibprune.core.train import steps_for
from ibprune.data.loaders import digits_loaders
from ibprune.errors import BudgetError, InputError


def test_a_sweep_prunes_each_budget_from_one_explore_phase(digits_net, tmp_path, monkeypatch):
    import time

    import ibprune.core.rankers

    phases, real = [], ibprune.core.rankers.train_gates  # every gate phase's training, timed by wall clock here

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        phases.append((k["explore"], time.perf_counter() - t0))
        return out

    monkeypatch.setattr(ibprune.core.rankers, "train_gates", timed)
    train, val = digits_loaders(64, 0)
    sweep = ibprune.compress_sweep(digits_net, train, val, budgets=[0.4, 0.7], out_dir=tmp_path, gate_epochs=1,
                                   finetune_epochs=0.5, latency_runs=3, bench_batch=4, verbose=False)
    assert list(sweep.results) == [0.7, 0.4]  # largest first
    for budget, result in sweep.results.items():
        rep = result.report
        assert rep["achieved"]["macs"] <= budget and rep["gates"]["steps"] == steps_for(0.5, train)
        assert (tmp_path / f"macs{budget:.2f}" / "model.onnx").is_file()
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["budget"] for p in summary["points"]] == [0.7, 0.4]
    (explore, seconds), = [p for p in phases if p[0] > 0]  # one explore-only phase, shared by both budgets
    assert [e for e, _ in phases] == [1.0, 0.0, 0.0]  # then a squeeze per budget
    t = summary["time_s"]
    assert explore == 1.0 and t["explore_training"] == pytest.approx(seconds, rel=0.05, abs=0.05)
    assert t["explore_once"] >= t["explore_training"]
    # what two separate runs would have trained, less what the sweep spent once on the shared phase
    assert t["saved_vs_separate_runs"] == pytest.approx(2 * seconds - t["explore_once"], rel=0.05, abs=0.1)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "macs0.70/report.md" in (tmp_path / "sweep.md").read_text()
    assert not (tmp_path / "checkpoints").exists()

    again = ibprune.compress_sweep(digits_net, train, val, budgets=[0.4, 0.7], out_dir=tmp_path, gate_epochs=1,
                                   finetune_epochs=0.5, latency_runs=3, bench_batch=4, verbose=False, resume=True)
    assert all(r.model is None for r in again.results.values())  # finished budgets are kept, not redone


def test_sweep_budgets_are_checked(digits_net, tmp_path):
    train, val = digits_loaders(64, 0)
    with pytest.raises(BudgetError, match="fraction in"):
        ibprune.compress_sweep(digits_net, train, budgets=[0.5, 1.5], out_dir=tmp_path)
    with pytest.raises(BudgetError, match="at least one budget"):
        ibprune.compress_sweep(digits_net, train, budgets=[], out_dir=tmp_path)


def test_a_sweep_adapts_the_dense_model_once(digits_net, tmp_path, monkeypatch):
    import ibprune.pipeline.stages as api

    descs, real_fit = [], api.fit  # every training run of the sweep and of its compress() calls
    monkeypatch.setattr(api, "fit", lambda *a, **k: descs.append(k["desc"]) or real_fit(*a, **k))
    train, val = digits_loaders(64, 0)
    sweep = ibprune.compress_sweep(digits_net, train, val, budgets=[0.5, 0.7], out_dir=tmp_path, gate_epochs=1,
                                   finetune_epochs=0.25, adapt_epochs=0.25, distill=True, latency_runs=3,
                                   bench_batch=4, verbose=False)
    assert descs == ["adapt", "finetune", "finetune"]  # adapted once, then one fine-tune per budget
    assert all(r.report["achieved"]["macs"] <= b for b, r in sweep.results.items())
    assert not (tmp_path / "checkpoints").exists()


def test_sweep_adapt_epochs_are_checked(digits_net, tmp_path):
    train, _ = digits_loaders(64, 0)
    with pytest.raises(InputError, match="adapt_epochs must be"):
        ibprune.compress_sweep(digits_net, train, budgets=[0.5], out_dir=tmp_path, adapt_epochs=-1)
    assert not (tmp_path / "checkpoints").exists()


def test_a_sweep_with_int8_reports_and_plots_every_budgets_int8_file(digits_net, tmp_path):
    train, val = digits_loaders(64, 0)
    ibprune.compress_sweep(digits_net, train, val, budgets=[0.6, 0.4], out_dir=tmp_path, gate_epochs=0.5,
                           finetune_epochs=0.5, latency_runs=3, bench_batch=4, verbose=False, quantize="int8")
    summary = json.loads((tmp_path / "sweep.json").read_text())
    for entry in (summary["original"], *summary["points"]):
        int8 = entry["int8"]
        assert int8["ok"] and int8["accuracy"] >= entry["accuracy"] - 0.01
        assert int8["onnx_bytes"] < entry["onnx_bytes"]
    folders = [json.loads((tmp_path / p["folder"] / "report.json").read_text()) for p in summary["points"]]
    assert [p["int8"]["accuracy"] for p in summary["points"]] == [r["int8"]["compressed"]["accuracy"]
                                                                  for r in folders]
    md = (tmp_path / "sweep.md").read_text()
    assert "int8 accuracy (onnxruntime)" in md and md.count("\n| macs <= ") == 2
