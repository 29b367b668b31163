"""Rank channels by information, remove the least informative ones for real until the budget holds, verify.

Ranking: a channel's score is its information (nats); the gate phase has already weighed each channel's KL
by its cost. Removing the lowest scores first meets the budget while discarding the least information.
Removal goes through torch-pruning, group by group, on a copy of the model; the copy is counted with
torch-pruning's own counter, and the pruned network must compute what the gated network computes with the
removed channels shut (``ibprune.core.verify``), or pruning fails naming the group.
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ibprune.core.costs import CostModel, count
from ibprune.core.gates import GateSet
from ibprune.core.groups import ChannelGroup, build_graph
from ibprune.core.modes import evaluating, full_precision, in_float64
from ibprune.core.probes import random_like, widened
from ibprune.core.verify import RTOL, Agreement, compare, sites, trace, trace_gated
from ibprune.errors import BudgetError, PreflightMismatchError, PruningMismatchError
from ibprune.rewrites import rewrite
from ibprune.rewrites.attention import HeadAttention

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """The slim model and what was removed to get it."""

    model: nn.Module
    removed: dict[str, list[int]]   # group name -> removed channel positions
    fraction: float                 # achieved cost / original cost, counted by torch-pruning
    max_abs_diff: float             # pruned vs gated-with-removed-channels-shut at the output, on random inputs
    check_ratio: float              # the function check's worst difference over its tolerance (``ibprune.core.verify``)
    below_floor: bool = False       # groups had to go below ``min_channels`` to meet the budget


def scores(information: dict[str, torch.Tensor], channel_costs: dict[str, torch.Tensor],
           per_cost: bool = False) -> dict[str, torch.Tensor]:
    """The IB ranking score: information (nats), or with ``per_cost`` information per unit of relative cost.

    The gate phase already weighs each channel's KL by its cost, so a costly channel that the task does not
    need has lost its information by the time of ranking; dividing by cost again counts the cost twice (an
    ablation, ``per_cost=True``, on CIFAR-10 ResNet-20 cut the early, high-resolution layers to half and kept
    the late ones whole).
    """
    if not per_cost:
        return dict(information)
    return {n: information[n] / channel_costs[n].clamp_min(1e-6) for n in information}


#: The widest block of channels ``round_to="auto"`` removes at once: onnxruntime's blocked fp32 layout takes
#: 16 channels at a time with AVX-512 (8 with AVX2), and a width off that grid leaves the layout
#: (``benchmarks/results/widths.md``).
AUTO_BLOCK = 16


def auto_block(width: int) -> int:
    """``round_to="auto"`` for a group of ``width`` channels: ``AUTO_BLOCK``, or for a group too narrow to lose
    a quarter of its width in such blocks, the largest power of two that is at most a quarter of it."""
    block = AUTO_BLOCK
    while block > 1 and block * 4 > width:
        block //= 2
    return block


def block_sizes(groups: list[ChannelGroup], round_to: int | str | None) -> dict[str, int]:
    """How many gate positions leave together, per group: ``round_to`` channels (``"auto"``: ``auto_block`` of
    the group's width), or one attention head (a head is already ``head_dim`` channels wide)."""
    def block(g: ChannelGroup) -> int:
        if g.unit == "head":
            return 1
        return auto_block(g.size) if round_to == "auto" else max(1, round_to or 1)
    return {g.name: block(g) for g in groups}


#: The fewest channels a group keeps when ``round_to="auto"`` widths ship as int8: onnxruntime's fast int8
#: convolution needs 16 filters or more, and a narrower one runs slower than 16 (``benchmarks/results/widths.md``).
INT8_FLOOR = 16


def plan(score: dict[str, torch.Tensor], cost_model: CostModel, target: float, groups: list[ChannelGroup],
         round_to: int | str | None, min_channels: int = 1) -> tuple[dict[str, list[int]], bool]:
    """``plan_removal`` in ``round_to``'s blocks, channel groups keeping ``min_channels`` while the budget allows
    it, else one block. Returns the removal and whether the floor had to go."""
    steps = block_sizes(groups, round_to)
    if min_channels > 1:
        floors = {g.name: min_channels for g in groups if g.unit != "head"}
        try:
            return plan_removal(score, cost_model, target, steps, floors), False
        except BudgetError:
            pass
    return plan_removal(score, cost_model, target, steps), min_channels > 1


def plan_removal(score: dict[str, torch.Tensor], cost_model: CostModel, target: float,
                 round_to: int | dict[str, int] | None = None, min_channels: int | dict[str, int] = 1,
                 tolerance: float = 0.03) -> dict[str, list[int]]:
    """Which channels to remove so the estimated cost fraction is ``<= target`` (and, where the widths allow it,
    ``>= target - tolerance``), discarding as little score as possible.

    Channels leave in blocks: within a group, in order of rising score, ``round_to`` at a time (the first block
    takes the remainder) so that every group keeps a multiple of ``round_to``, and at least ``min_channels``
    (which may differ per group, as may ``round_to``: ``block_sizes``).
    Blocks of all groups are ranked together by mean score and the shortest prefix of that ranking that meets
    the budget is taken (the cost falls monotonically along it, so a binary search finds it). Coarse blocks can
    overshoot by a whole block; then the budget is filled: removed blocks are given back, or traded for a cheaper
    block of another group, while the budget holds, best score first; a trade that loses score is made only
    while the fraction is below ``target - tolerance``. Where the combinations of widths are few, or the fill is
    still short of that window, the widths of all groups are searched together (``_fit_window``).
    """
    steps = round_to if isinstance(round_to, dict) else dict.fromkeys(score, max(1, round_to or 1))
    floors = min_channels if isinstance(min_channels, dict) else dict.fromkeys(score, min_channels)
    per_group: dict[str, list[tuple[float, list[int]]]] = {}  # group -> its blocks, in the order they leave
    for name, s in score.items():
        step = steps.get(name, 1)
        floor = max(floors.get(name, 1), step)
        order = torch.argsort(s, stable=True).tolist()
        start, blocks = 0, []
        while len(order) - start - ((len(order) - start) % step or step) >= floor:
            width = (len(order) - start) % step or step
            blocks.append((float(s[order[start:start + width]].sum()), order[start:start + width]))
            start += width
        per_group[name] = blocks

    def removal(counts: dict[str, int]) -> dict[str, list[int]]:
        return {n: [i for _, idxs in per_group[n][:k] for i in idxs] for n, k in counts.items() if k}

    fraction = cost_model.block_fraction({n: [idxs for _, idxs in blocks] for n, blocks in per_group.items()})

    everything = {n: len(b) for n, b in per_group.items()}
    narrowest = fraction(everything)
    if narrowest > target:
        raise BudgetError(
            f"budget {target:.3f} of the original {cost_model.metric} is below what the narrowest network "
            f"reaches here ({narrowest:.3f}, keeping at least {max([*floors.values(), *steps.values()])} channel(s) "
            f"per group" + (f", widths multiples of {max(steps.values())}" if max(steps.values()) > 1 else "") + ")")
    ranking = sorted(((total / len(idxs), n) for n, blocks in per_group.items() for total, idxs in blocks),
                     key=lambda b: b[0])

    def prefix(k: int) -> dict[str, int]:
        counts = dict.fromkeys(per_group, 0)
        for _, n in ranking[:k]:
            counts[n] += 1
        return counts

    lo, hi = 0, len(ranking)  # the smallest k with fraction <= target lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if fraction(prefix(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    counts = prefix(lo)
    current = fraction(counts)
    while True:  # fill the budget: (score lost, counts) moves that raise the fraction and keep it <= target
        moves = []  # give back a group's last removed block, or trade it for another group's next block
        for a in (n for n, k in counts.items() if k):
            back = {**counts, a: counts[a] - 1}
            moves.append((-per_group[a][counts[a] - 1][0], back))
            for b in (n for n, k in counts.items() if n != a and k < everything[n]):
                moves.append((per_group[b][counts[b]][0] - per_group[a][counts[a] - 1][0],
                              {**back, b: counts[b] + 1}))
        lossy = current < target - tolerance  # a trade that loses score only while short of the tolerance
        fits = [(lost, c, f) for lost, c in moves
                if (lossy or lost <= 0) and current < (f := fraction(c)) <= target]
        if not fits:
            break
        _, counts, current = min(fits, key=lambda m: m[0])
    lost = {n: np.cumsum([0.0] + [total for total, _ in blocks]) for n, blocks in per_group.items()}
    return removal(_fit_window(lost, fraction, counts, target, tolerance))


#: Up to this many width combinations ``_fit_window`` tries them all; beyond, a knapsack over linearised costs.
EXHAUSTIVE = 20_000


def _fit_window(lost: dict[str, np.ndarray], fraction: Callable[[dict[str, int]], float], counts: dict[str, int],
                target: float, tolerance: float) -> dict[str, int]:
    """The blocks to remove per group (``lost[g][k]``: the score lost with ``k`` blocks of ``g`` gone) whose
    fraction lies in ``[target - tolerance, target]`` at the least score lost, else the highest fraction under
    ``target``: exact when the combinations are few (``EXHAUSTIVE``); otherwise ``counts``, the greedy plan,
    unless it is short of that window and the knapsack finds better."""
    def key(f: float, c: dict[str, int]) -> tuple[bool, float]:
        if f > target:
            return True, math.inf
        inside = f >= target - tolerance
        return not inside, sum(lost[n][k] for n, k in c.items()) if inside else -f

    names = list(lost)
    if math.prod(len(lost[n]) for n in names) <= EXHAUSTIVE:
        candidates = (dict(zip(names, ks)) for ks in itertools.product(*(range(len(lost[n])) for n in names)))
        return min(candidates, key=lambda c: key(fraction(c), c), default=counts)
    best = (fraction(counts), counts)
    if best[0] >= target - tolerance:
        return counts
    points, middle = [counts], target - tolerance / 2
    for _ in range(4):  # the costs are linearised around the points nearest the window so far, checked exactly
        found = [(fraction(c), c) for point in points for c in _knapsack(lost, fraction, point, target, tolerance)]
        best = min([best, *found], key=lambda fc: key(*fc))
        points = [c for _, c in sorted(found, key=lambda fc: abs(fc[0] - middle))[:4]]
    return best[1]


def _knapsack(lost: dict[str, np.ndarray], fraction: Callable[[dict[str, int]], float], point: dict[str, int],
              target: float, tolerance: float) -> list[dict[str, int]]:
    """Multiple-choice knapsack: per group one count of removed blocks, the cost of each taken as its exact change
    from ``point`` alone (the interactions between groups are what the exact check afterwards catches), the sum
    kept in buckets of ``tolerance / 64``. Returns the least-score choice for every bucket near the window."""
    h = tolerance / 64
    size = int(2.2 / h)
    off, base = size // 2, fraction(point)
    best = np.full(size, np.inf)
    best[off] = 0.0
    steps = []
    for n, cum in lost.items():
        shift = [int(round((fraction({**point, n: k}) - base) / h)) for k in range(len(cum))]
        new, pick = np.full(size, np.inf), np.zeros(size, dtype=np.int64)
        for k, d in enumerate(shift):
            moved = np.full(size, np.inf)
            if d >= 0:
                moved[d:] = best[:size - d]
            else:
                moved[:d] = best[-d:]
            moved += cum[k]
            better = moved < new
            new[better], pick[better] = moved[better], k
        best = new
        steps.append((n, pick, shift))
    lo = off + math.floor((target - tolerance - base) / h) - 8  # widened by the rounding of the buckets
    hi = off + math.ceil((target - base) / h) + 8
    found = []
    for i in range(max(lo, 0), min(hi, size - 1) + 1):
        if not np.isfinite(best[i]):
            continue
        choice, j = {}, i
        for n, pick, shift in reversed(steps):
            choice[n] = int(pick[j])
            j -= shift[choice[n]]
        found.append(choice)
    return found


def coarsest_block(cost_model: CostModel, removed: dict[str, list[int]], steps: dict[str, int]) -> tuple[str, float]:
    """The group whose block of ``steps[g]`` channels moves the cost fraction most from the plan ``removed`` (giving
    one back, or for a group that lost none and keeps more than one, removing one): what keeps a plan far under
    its budget."""
    keep = {n: torch.ones(size) for n, size in cost_model.sizes.items()}
    for n, idxs in removed.items():
        keep[n][idxs] = 0
    here = cost_model.fraction(keep)

    def moved(n: str) -> float:
        step, gone = steps.get(n, 1), removed.get(n, [])
        k = keep[n].clone()
        if len(gone) >= step:
            k[gone[:step]] = 1
        elif int(k.sum()) >= 2 * step:  # the group keeps a block
            k[k.nonzero().flatten()[:step]] = 0
        else:
            return 0.0
        return abs(cost_model.fraction({**keep, n: k}) - here)

    name = max(cost_model.sizes, key=moved)
    return name, moved(name)


def remove_channels(model: nn.Module, example_input: torch.Tensor, removed: dict[str, list[int]]) -> nn.Module:
    """Physically delete ``removed`` channels (group -> root output positions) from ``model``, in place.

    The model is first rewritten as ``compress`` rewrites it (``ibprune.rewrites``), so the same ``removed``
    rebuilds a compressed model from its original."""
    rewrite(model)
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    for name, idxs in removed.items():
        if not idxs:
            continue
        root = modules[name]
        if isinstance(root, HeadAttention):
            before = root.num_heads
            root.remove_heads(idxs)
            parent = model.get_submodule(name.rpartition(".")[0])
            if parent is not root and getattr(parent, "num_heads", None) == before:  # e.g. torchvision's block
                parent.num_heads = root.num_heads
            continue
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, sorted(idxs)).prune()
    return model


def prune_to_budget(model: nn.Module, gates: GateSet, groups: list[ChannelGroup], example_input: torch.Tensor,
                    cost_model: CostModel, target: float, round_to: int | str | None = None,
                    check_batch: int = 4, min_channels: int = 1,
                    importance: dict[str, torch.Tensor] | None = None, per_cost: bool = False) -> PruneResult:
    """Slim copy of ``model`` (gates attached) at ``<= target`` of the original cost, gate means folded in.

    Channels are ranked by the gates' information (see ``scores``), or, when ``importance`` (another criterion)
    is given, by that importance, as torch-pruning ranks globally. The estimate steers, torch-pruning's
    count decides: if the counted fraction exceeds ``target`` the plan is redone with a tighter internal target.
    Channel groups keep ``min_channels`` while the budget allows it (``plan``). ``model`` is left as it was.
    """
    device = next(model.parameters()).device
    score = importance if importance is not None else scores(gates.information(), cost_model.channel_costs(),
                                                             per_cost)
    probe = random_like(example_input.to(device), check_batch)
    aim = target
    with evaluating(model), evaluating(gates):
        for _ in range(8):
            removed, below_floor = plan(score, cost_model, aim, groups, round_to, min_channels)
            slim, agreement = _check_or_blame(model, gates, groups, removed, example_input, probe)
            macs, params = count(slim, example_input.to(device))
            fraction = (macs if cost_model.metric == "macs" else params) / cost_model.total
            if fraction <= target + 1e-9:
                if below_floor:
                    log.warning("the budget needs channel groups narrower than %d channels", min_channels)
                return PruneResult(slim, removed, fraction, agreement.max_abs_diff, agreement.ratio, below_floor)
            aim -= (fraction - target) + 1e-3
        raise BudgetError(f"could not reach {target:.3f} of the original {cost_model.metric} "
                          f"(last counted {fraction:.3f})")


def _checked_copy(model, gates, groups, removed, example_input, probe) -> tuple[nn.Module, Agreement]:
    """A gate-free copy with ``removed`` deleted and means folded, checked against the gated model.

    Raises ``PruningMismatchError`` (its ``layer``: where the difference first shows) when the copy computes
    something else, or fails to run at all.
    """
    layers = sites(groups, removed)
    wide = widened(probe)
    gc.collect()  # an earlier check's copy and dependency graph hold references in cycles: free them first
    gates.detach()
    try:
        slim = copy.deepcopy(model)  # in the model's own precision: one network in float64 at a time
    finally:
        gates.attach(model)
    with full_precision():
        with in_float64(model, gates):
            reference = trace_gated(model, gates, removed, wide, layers)
        with in_float64(slim):  # back to the model's own precision after, surgery's new tensors too
            gates.fold(slim)
            try:
                remove_channels(slim, widened(example_input.to(probe.device)), removed)
                candidate = trace(slim, wide, layers)
            except (RuntimeError, ValueError, IndexError) as err:
                raise PruningMismatchError(f"the pruned model fails to run: {str(err).splitlines()[0]}") from None
    agreement = compare(reference, candidate, layers)
    if agreement.ratio > 1.0:
        err = PruningMismatchError(
            f"pruned model differs from the gated model at {agreement.first} ({agreement.ratio:.3g} times the "
            f"tolerance of {RTOL:g} of that tensor's scale; at the output by {agreement.max_abs_diff:.3g})")
        err.layer = agreement.first
        raise err
    return slim, agreement


def _check_or_blame(model, gates, groups, removed, example_input, probe) -> tuple[nn.Module, Agreement]:
    """``_checked_copy``; on a mismatch, name the groups that break: re-check alone each group read by the layer
    where the difference first shows, and every pruned group if none of those breaks alone."""
    try:
        return _checked_copy(model, gates, groups, removed, example_input, probe)
    except PruningMismatchError as err:
        layer = err.layer
        pruned = [g for g in groups if removed.get(g.name)]
        suspects = [g for g in pruned if layer in g.inputs or layer in g.outputs]
        culprits = _breaking(model, gates, groups, suspects, removed, example_input, probe) \
            or _breaking(model, gates, groups, [g for g in pruned if g not in suspects], removed, example_input, probe)
        where = ", ".join(culprits) if culprits else "the combination of groups"
        mismatch = PruningMismatchError(
            f"{err}; torch-pruning's dependency graph misses a coupling in group(s): {where}. "
            "The model is not returned.")
        mismatch.groups = culprits
        raise mismatch from None


def _breaking(model, gates, groups, candidates, removed, example_input, probe) -> list[str]:
    """The names of ``candidates`` whose removal alone fails the check."""
    broken = []
    for g in candidates:
        try:
            _checked_copy(model, gates, groups, {g.name: removed[g.name]}, example_input, probe)
        except PruningMismatchError:
            broken.append(g.name)
    return broken


def preflight(model: nn.Module, gates: GateSet, groups: list[ChannelGroup], example_input: torch.Tensor) -> None:
    """Before any training: remove every fourth channel of every group from a copy and check the function.

    Raises ``PreflightMismatchError`` (an ``UnsupportedModelError``) naming the groups whose removal changes what
    the network computes (an operation torch-pruning does not understand, such as a channel-dimension
    ``F.pad``), so a model that cannot be pruned correctly fails in seconds, not after the gate phase.
    """
    removed = {g.name: list(range(0, g.size, 4)) for g in groups if g.size >= 4}
    probe = random_like(example_input, 2)
    try:
        with evaluating(model), evaluating(gates):
            _check_or_blame(model, gates, groups, removed, example_input, probe)
    except PruningMismatchError as err:
        names = ", ".join(err.groups) or "a combination of groups"
        refusal = PreflightMismatchError(
            f"pruning this model would change what it computes (group(s) rooted at {names}): torch-pruning "
            "misses a channel coupling here. Exclude those layers with ignored_layers=[...], or rewrite the "
            "operation it cannot see through (e.g. a channel-dimension F.pad as a 1x1 conv).")
        refusal.groups = list(err.groups)
        raise refusal from None
