"""A latency budget: prune until the network runs within a fraction of the original's measured latency.

Latency is not proportional to MACs (per-operator overhead dominates small networks, and the widths decide
which kernels run: ``benchmarks/results/cifar10.md``, ``benchmarks/results/deploy.md``), so a latency budget
is met by measurement, not by a model of it:

1. ``macs_for_latency``, before any training: bisect the MACs fraction; at each candidate, plan the removal by a
   data-free ranking (L1 magnitude), cut a copy of the model to those widths, export it and time it. The
   largest fraction whose network runs within the budget becomes the MACs target of the usual pipeline.
2. After pruning (``compress``), the slim network itself is timed; if its widths (chosen by information, not by
   L1) run slower than the budget, it is pruned again to the MACs target the latency-per-MACs slope of every
   measurement so far points to, a few times at most (``meet``).

Every time is a ratio to the original's, from p50s of onnxruntime CPU runs at one batch size and thread count on
this machine (``LatencyMeter``): a budget met here says nothing about another machine.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ibprune.core.costs import CostModel
from ibprune.core.groups import ChannelGroup
from ibprune.core.prune import PruneResult, plan, remove_channels
from ibprune.core.rankers import L1
from ibprune.errors import BudgetError
from ibprune.outputs import benchmark as bench
from ibprune.outputs.onnx import export_onnx, session
from ibprune.outputs.quantize import quantize_int8


@dataclass
class LatencyMeter:
    """onnxruntime CPU latency (ms) of a model at ``batch`` with ``threads`` threads.

    The first model timed is the reference (the original): its time is the median p50 of ``rounds`` rounds.
    Every later model is timed in rounds alternating with the reference, and its time is the reference's times
    the median of the rounds' ratios: a machine that slows down or speeds up between measurements (clock
    frequency, other work) cancels out of the ratio, which is what a budget compares (separate p50s of one model
    minutes apart differ by several per cent on a shared machine). The sessions' idle threads do not busy-wait:
    with onnxruntime's default spinning, two sessions timed in turn slow each other down.
    """

    example_input: torch.Tensor
    batch: int
    threads: int
    runs: int = 50     # timed runs per model per measurement, shared by the rounds
    rounds: int = 5
    calibration: list[np.ndarray] | None = field(default=None, repr=False)  # given: time the int8 files

    def __post_init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory()
        self._reference = None
        self.reference_ms: float | None = None

    def __call__(self, model: nn.Module) -> float:
        first = self._reference is None
        path = export_onnx(model, self.example_input,
                           Path(self._folder.name) / ("reference.onnx" if first else "candidate.onnx"))
        if self.calibration is not None:  # the files as they ship: quantized
            path = quantize_int8(path, path.with_suffix(".int8.onnx"), self.calibration)
        sess = session(path, self.threads, spinning=False)  # two sessions alive: no busy-waiting threads
        per_round = max(5, self.runs // self.rounds)
        if first:
            self._reference = sess
            self.reference_ms = statistics.median(self._p50(sess, per_round) for _ in range(self.rounds))
            return self.reference_ms
        self._p50(sess, per_round)  # warm-up of the candidate's session
        ratios = [self._p50(sess, per_round) / self._p50(self._reference, per_round) for _ in range(self.rounds)]
        return self.reference_ms * statistics.median(ratios)

    def _p50(self, sess, runs: int) -> float:
        return bench.time_runs(sess, self.example_input, self.batch, warmup=2, runs=runs)["p50"]


@dataclass
class LatencyPlan:
    """The MACs target found for a latency budget, and the measurements that found it."""

    target: float                                   # the budget: fraction of the original's latency
    macs: float                                     # the MACs fraction to prune to
    original_ms: float
    tried: list[dict] = field(default_factory=list)  # {"macs", "latency"} per candidate (fractions)
    pruned: list[dict] = field(default_factory=list)  # the same for each pruning of the trained network
    seconds: float = 0.0                            # the search's wall time (export and timing)


def macs_for_latency(model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup],
                     cost_model: CostModel, target: float, measure: Callable[[nn.Module], float], *,
                     round_to: int | str | None = None, min_channels: int = 1, steps: int = 6) -> LatencyPlan:
    """The largest MACs fraction (to ``1 / 2**steps``) whose L1-planned network runs within ``target`` of
    ``model``'s latency, as ``measure`` times it. ``cost_model`` must count MACs.

    Raises ``BudgetError`` when no candidate meets ``target`` (the narrowest network tried is named).
    """
    if cost_model.metric != "macs":
        raise ValueError("macs_for_latency needs a MACs cost model")
    original_ms = measure(model)
    score = L1.scores(model, example_input, groups)
    result = LatencyPlan(target, 1.0, original_ms)
    lo, hi, best = 0.0, 1.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        try:
            removed = plan(score, cost_model, mid, groups, round_to, min_channels)[0]
        except BudgetError:  # below the narrowest network the widths allow
            lo = mid
            continue
        slim = remove_channels(copy.deepcopy(model), example_input, removed)
        ratio = measure(slim) / original_ms
        result.tried.append({"macs": mid, "latency": ratio})
        if ratio <= target:
            best, lo = mid, mid
        else:
            hi = mid
    if best is None:
        fastest = min(result.tried, key=lambda t: t["latency"], default=None)
        seen = (f"; the fastest network tried ({fastest['macs']:.3f} of the MACs) ran at {fastest['latency']:.3f} "
                f"of it") if fastest else ""
        raise BudgetError(f"latency budget {target:.3f} of the original's {original_ms:.3g} ms is out of reach by "
                          f"removing channels here{seen}: per-operator overhead bounds how fast a slimmer network "
                          "runs (try a larger batch or a looser budget)")
    result.macs = best
    return result


def meet(prune: Callable[[float], PruneResult], measure: Callable[[nn.Module], float], plan: LatencyPlan,
         tries: int = 3) -> PruneResult:
    """``prune(plan.macs)``, timed; while it runs slower than ``plan.target``, pruned again (at most ``tries``
    times) to a smaller MACs target: where the latency-per-MACs slope fitted to every measurement so far says
    the budget is met (aiming 1 % under it; without a slope, smaller in proportion to the miss), and at least
    1 % smaller. Each pruning's MACs target and measured latency are appended to ``plan.pruned``; the last
    result is returned even if it still misses (``compress`` notes that in its report)."""
    macs = plan.macs
    result = prune(macs)
    for attempt in range(tries + 1):
        ratio = measure(result.model) / plan.original_ms
        plan.pruned.append({"macs": macs, "latency": ratio})
        if ratio <= plan.target or attempt == tries:
            break
        slope = _slope(plan.tried + plan.pruned)
        aim = macs - (ratio - 0.99 * plan.target) / slope if slope else macs * plan.target / ratio
        macs = min(aim, 0.99 * macs)
        try:
            result = prune(macs)
        except BudgetError:  # no narrower network: keep the last one
            break
    return result


def _slope(points: list[dict]) -> float | None:
    """Least-squares slope of latency against MACs fraction (``None`` unless positive and defined)."""
    if len(points) < 2:
        return None
    xs, ys = [p["macs"] for p in points], [p["latency"] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return slope if slope > 0 else None
