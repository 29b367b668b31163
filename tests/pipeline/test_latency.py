import pytest
import torch
from torch import nn

import ibprune
import ibprune.pipeline.stages
from ibprune.core.costs import CostModel, count
from ibprune.core.groups import find_groups
from ibprune.core.prune import PruneResult
from ibprune.errors import BudgetError
from ibprune.pipeline.latency import LatencyMeter, LatencyPlan, macs_for_latency, meet

X = torch.randn(1, 1, 8, 8)


class MacsClock:
    """A deterministic stand-in for timing: ``overhead`` (in units of the original's MACs) plus the MACs."""

    def __init__(self, original: nn.Module, overhead: float) -> None:
        self.unit = count(original, X)[0]
        self.overhead = overhead
        self.calls = 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        return self.overhead + count(model, X)[0] / self.unit


def test_the_macs_target_is_the_largest_that_runs_within_the_budget(digits_net):
    _, groups = find_groups(digits_net, X)
    cost_model = CostModel(digits_net, X, groups)
    clock = MacsClock(digits_net, overhead=0.3)  # latency fraction = (0.3 + macs) / 1.3
    plan = macs_for_latency(digits_net, X, groups, cost_model, 0.7, clock, round_to=1)
    limit = 0.7 * 1.3 - 0.3  # 0.61 of the MACs
    assert limit - 1 / 64 - 0.03 <= plan.macs <= limit + 0.03  # bisection step + the planner's fill tolerance
    assert plan.original_ms == pytest.approx(1.3) and len(plan.tried) == 6 == clock.calls - 1
    assert all((t["latency"] <= 0.7) == (t["macs"] <= plan.macs) for t in plan.tried)


def test_an_unreachable_latency_budget_is_refused_naming_the_fastest_network(digits_net):
    _, groups = find_groups(digits_net, X)
    cost_model = CostModel(digits_net, X, groups)
    clock = MacsClock(digits_net, overhead=5.0)  # overhead-bound: never below 5/6 of the original
    with pytest.raises(BudgetError, match="latency budget 0.500 .* out of reach.*fastest network tried"):
        macs_for_latency(digits_net, X, groups, cost_model, 0.5, clock, round_to=1)


def test_a_pruned_network_that_misses_is_pruned_further():
    class Net(nn.Module):
        def __init__(self, macs: float) -> None:
            super().__init__()
            self.macs = macs

    def prune(macs: float) -> PruneResult:
        return PruneResult(Net(macs), {}, macs, 0.0, 0.0)

    plan = LatencyPlan(target=0.62, macs=0.6, original_ms=10.0)
    result = meet(prune, lambda net: 2.0 + 8.0 * net.macs, plan)  # latency fraction = 0.2 + 0.8 macs
    assert [p["macs"] for p in plan.pruned] == sorted((p["macs"] for p in plan.pruned), reverse=True)
    assert len(plan.pruned) >= 2 and plan.pruned[-1]["latency"] <= 0.62
    assert result.model.macs == plan.pruned[-1]["macs"]


def test_the_meter_times_models_against_the_first(digits_net):
    meter = LatencyMeter(X, batch=4, threads=1, runs=10)
    assert meter(digits_net) == meter.reference_ms > 0
    assert meter(digits_net) > 0  # timed against the reference (no timing is asserted: it is not a test's job)


@pytest.fixture
def clocks(digits_net, monkeypatch) -> list[MacsClock]:
    """``compress`` times with MacsClocks (deterministic; the final benchmark stays real): one per meter made."""
    made = []

    def fake_meter(example_input, batch, threads, runs, calibration=None):
        made.append(MacsClock(digits_net, overhead=0.3))
        made[-1].threads = threads
        return made[-1]

    monkeypatch.setattr(ibprune.pipeline.stages, "LatencyMeter", fake_meter)
    return made


def _dies(*args, **kwargs):
    raise KeyboardInterrupt


LATENCY_RUN = {"latency": 0.7, "round_to": 1, "gate_epochs": 1.0, "finetune_epochs": 1.0, "latency_runs": 3,
               "bench_batch": 4, "verbose": False}


def test_compress_to_a_latency_budget(digits_net, random_loader, tmp_path, clocks):
    loader = random_loader()
    result = ibprune.compress(digits_net, loader, out_dir=tmp_path, **LATENCY_RUN)
    rep = result.report
    assert rep["target"] == {"latency": 0.7}
    timing = rep["latency_budget"]
    assert timing["target"] == 0.7 and 0.55 <= timing["macs"] <= 0.64 and timing["pruned"] and timing["seconds"] > 0
    assert timing["pruned"][-1]["latency"] <= 0.7  # as the (fake) clock timed the pruned network
    assert rep["achieved"]["macs"] <= timing["pruned"][-1]["macs"] + 1e-9
    # the final benchmark really times both models; a miss there is noted, never hidden
    over = rep["achieved"]["latency"] > 0.7
    assert over == any("over the budget" in n for n in rep["notes"])
    assert "onnxruntime latency" in (tmp_path / "report.md").read_text()


def test_the_latency_search_on_real_timings(digits_net, random_loader):
    """The one run whose latency search times real onnxruntime sessions (no timing is asserted, only that the
    search acts on what it measured)."""
    rep = ibprune.compress(digits_net, random_loader(), **dict(LATENCY_RUN, latency=0.8, latency_runs=10)).report
    timing = rep["latency_budget"]
    assert timing["original_ms"] > 0 and timing["tried"] and timing["pruned"]
    assert len({t["latency"] for t in timing["tried"]}) > 1  # measured, not a constant
    # the MACs target is the largest candidate that ran within the budget, as the search measured it
    assert timing["macs"] == max(t["macs"] for t in timing["tried"] if t["latency"] <= 0.8)
    assert rep["achieved"]["macs"] <= timing["pruned"][-1]["macs"] + 1e-9
    assert all(p["latency"] > 0 for p in timing["pruned"])


def test_a_resumed_run_keeps_the_macs_target_it_found(digits_net, random_loader, tmp_path, monkeypatch, clocks):
    real_stage = ibprune.pipeline.stages.rank
    monkeypatch.setattr(ibprune.pipeline.stages, "rank", _dies)
    loader = random_loader()
    kwargs = dict(LATENCY_RUN, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ibprune.compress(digits_net, loader, **kwargs)
    searched = clocks[-1].calls
    assert (tmp_path / "checkpoints" / "latency.pt").is_file() and searched == 7  # the original + 6 candidates
    monkeypatch.setattr(ibprune.pipeline.stages, "rank", real_stage)
    rep = ibprune.compress(digits_net, loader, resume=True, **kwargs).report
    # the original (the meter's reference) and the pruned network were timed, no search
    assert clocks[-1].calls == 1 + len(rep["latency_budget"]["pruned"])
    assert len(rep["latency_budget"]["tried"]) == 6 and rep["resumed_from"] == "latency"


def test_a_run_resumed_after_pruning_times_nothing_again(digits_net, random_loader, tmp_path, monkeypatch, clocks):
    real_fit = ibprune.pipeline.stages.fit
    monkeypatch.setattr(ibprune.pipeline.stages, "fit", _dies)  # the fine-tune: the pruned stage is saved by then
    loader = random_loader()
    kwargs = dict(LATENCY_RUN, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ibprune.compress(digits_net, loader, **kwargs)
    first = clocks[-1].calls
    assert (tmp_path / "checkpoints" / "pruned.pt").is_file()
    monkeypatch.setattr(ibprune.pipeline.stages, "fit", real_fit)
    rep = ibprune.compress(digits_net, loader, resume=True, **kwargs).report
    assert len(clocks) == 1 and clocks[0].calls == first and rep["resumed_from"] == "pruned"  # nothing timed
    assert rep["latency_budget"]["pruned"] and first == 7 + len(rep["latency_budget"]["pruned"])


def test_with_int8_the_latency_budget_times_the_int8_files(digits_net, random_loader, monkeypatch):
    """``quantize="int8"``: every candidate the search times, and every pruning, is quantized first."""
    import ibprune.pipeline.latency as latency

    quantized, real = [], latency.quantize_int8
    monkeypatch.setattr(latency, "quantize_int8", lambda *a, **k: quantized.append(a[0]) or real(*a, **k))
    rep = ibprune.compress(digits_net, random_loader(), quantize="int8",
                           **dict(LATENCY_RUN, latency=0.9, latency_runs=10)).report
    timing = rep["latency_budget"]
    assert len(quantized) == 1 + len(timing["tried"]) + len(timing["pruned"])  # the original, candidates, prunings
    assert rep["int8"]["compressed"]["path"].endswith("model.int8.onnx")
