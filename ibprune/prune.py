"""Rank channels by information, remove the least informative ones for real until the budget holds, verify.

Ranking: a channel's score is its information (nats) divided by what keeping it costs (its marginal MACs or
params, relative to the mean). Removing the lowest scores first is the greedy answer to "meet the budget while
discarding the least information". Removal goes through torch-pruning, group by group, on a copy of the model;
the copy is counted with torch-pruning's own counter, and the pruned network must compute what the gated
network computes with the removed channels shut (``verify``), or pruning fails naming the group.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ibprune.costs import CostModel, count
from ibprune.errors import BudgetError, PruningMismatchError
from ibprune.gates import GateSet
from ibprune.groups import ChannelGroup, build_graph


@dataclass
class PruneResult:
    """The slim model and what was removed to get it."""

    model: nn.Module
    removed: dict[str, list[int]]   # group name -> removed channel positions
    fraction: float                 # achieved cost / original cost, counted by torch-pruning
    max_abs_diff: float             # pruned vs gated-with-removed-channels-shut, on random inputs


def scores(information: dict[str, torch.Tensor], channel_costs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Information per unit of relative cost: low means cheap to lose and expensive to keep."""
    return {n: information[n] / channel_costs[n].clamp_min(1e-6) for n in information}


def plan_removal(score: dict[str, torch.Tensor], cost_model: CostModel, target: float,
                 round_to: int | None = None, min_channels: int = 1) -> dict[str, list[int]]:
    """The fewest lowest-score channels whose removal brings the estimated cost fraction to ``<= target``.

    Channels leave in blocks: within a group, in order of rising score, ``round_to`` at a time (the first block
    takes the remainder) so that every group keeps a multiple of ``round_to``, and at least ``min_channels``.
    Blocks of all groups are ranked together by their mean score; the cost falls monotonically along that
    ranking, so a binary search finds the shortest prefix that meets the budget.
    """
    step = max(1, round_to or 1)
    blocks: list[tuple[float, str, list[int]]] = []
    for name, s in score.items():
        order = torch.argsort(s, stable=True).tolist()
        size, floor = len(order), max(min_channels, step if round_to else min_channels)
        start = 0
        while True:
            width = (size - start) % step or step
            if size - start - width < floor:
                break
            idxs = order[start:start + width]
            blocks.append((float(s[idxs].mean()), name, idxs))
            start += width
    blocks.sort(key=lambda b: b[0])

    def removal(k: int) -> dict[str, list[int]]:
        return _as_removal(blocks[:k])

    def fraction(removed: dict[str, list[int]]) -> float:
        keep = {}
        for n, idxs in removed.items():
            keep[n] = torch.ones(cost_model.sizes[n])
            keep[n][idxs] = 0.0
        return cost_model.fraction(keep)

    narrowest = fraction(removal(len(blocks)))
    if narrowest > target:
        raise BudgetError(
            f"budget {target:.3f} of the original {cost_model.metric} is below what the narrowest network "
            f"reaches here ({narrowest:.3f}, keeping at least {max(min_channels, step)} channel(s) per group"
            + (f", widths multiples of {round_to}" if round_to else "") + ")")
    lo, hi = 0, len(blocks)  # the smallest k with fraction <= target lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if fraction(removal(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    return _restore_while_within(blocks[:lo], fraction, target)


def _restore_while_within(chosen: list[tuple[float, str, list[int]]], fraction, target: float) -> dict[str, list[int]]:
    """Give back removed blocks (a group's last one first, most informative first) while the budget still holds.

    Coarse blocks (``round_to``) can overshoot the budget by a whole block; this closes most of that gap.
    """
    chosen = list(chosen)
    while True:
        last = {}
        for i, (_, name, _) in enumerate(chosen):
            last[name] = i  # a group's blocks leave in order, so only its last one can come back
        for i in sorted(last.values(), key=lambda i: -chosen[i][0]):
            trial = chosen[:i] + chosen[i + 1:]
            if fraction(_as_removal(trial)) <= target:
                chosen = trial
                break
        else:
            return _as_removal(chosen)


def _as_removal(blocks: list[tuple[float, str, list[int]]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for _, name, idxs in blocks:
        out.setdefault(name, []).extend(idxs)
    return out


def remove_channels(model: nn.Module, example_input: torch.Tensor, removed: dict[str, list[int]]) -> nn.Module:
    """Physically delete ``removed`` channels (group -> root output positions) from ``model``, in place."""
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    for name, idxs in removed.items():
        if not idxs:
            continue
        root = modules[name]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, sorted(idxs)).prune()
    return model


@torch.no_grad()
def verify(reference: torch.Tensor, pruned: torch.Tensor, rtol: float = 1e-4) -> float:
    """Max abs difference; raises when it exceeds ``rtol`` times the reference's scale."""
    if reference.shape != pruned.shape:
        raise PruningMismatchError(f"pruning changed the output shape: {tuple(reference.shape)} -> "
                                   f"{tuple(pruned.shape)}")
    diff = float((reference - pruned).abs().max())
    if not math.isfinite(diff) or diff > rtol * max(1.0, float(reference.abs().max())):
        raise PruningMismatchError(f"pruned model differs from the gated model by {diff:.3g}")
    return diff


def prune_to_budget(model: nn.Module, gates: GateSet, groups: list[ChannelGroup], example_input: torch.Tensor,
                    cost_model: CostModel, target: float, round_to: int | None = None,
                    original_cost: int | None = None, check_batch: int = 4) -> PruneResult:
    """Slim copy of ``model`` (gates attached) at ``<= target`` of the original cost, gate means folded in.

    The estimate steers, torch-pruning's count decides: if the counted fraction exceeds ``target`` the plan is
    redone with a tighter internal target. ``model`` itself is left as it was.
    """
    device = next(model.parameters()).device
    info = gates.information()
    score = scores(info, cost_model.channel_costs())
    original_cost = original_cost or int(cost_model.total)
    probe = torch.randn(check_batch, *example_input.shape[1:], device=device, dtype=example_input.dtype)
    modes = model.training, gates.training
    model.eval()
    gates.eval()
    aim = target
    try:
        for _ in range(8):
            removed = plan_removal(score, cost_model, aim, round_to)
            slim, diff = _check_or_blame(model, gates, groups, removed, example_input, probe)
            macs, params = count(slim, example_input.to(device))
            fraction = (macs if cost_model.metric == "macs" else params) / original_cost
            if fraction <= target + 1e-9:
                return PruneResult(slim, removed, fraction, diff)
            aim -= (fraction - target) + 1e-3
        raise BudgetError(f"could not reach {target:.3f} of the original {cost_model.metric} "
                          f"(last counted {fraction:.3f})")
    finally:
        model.train(modes[0])
        gates.train(modes[1])


def _checked_copy(model, gates, removed, example_input, probe) -> tuple[nn.Module, float]:
    """A gate-free copy with ``removed`` deleted and means folded, checked against the gated model.

    Raises ``PruningMismatchError`` when the copy computes something else, or fails to run at all.
    """
    with torch.no_grad(), gates.shut(removed):
        reference = model(probe)
    gates.detach()
    try:
        slim = copy.deepcopy(model)
    finally:
        gates.attach(model)
    gates.fold(slim)
    try:
        remove_channels(slim, example_input.to(probe.device), removed)
        with torch.no_grad():
            out = slim(probe)
    except (RuntimeError, ValueError, IndexError) as err:
        raise PruningMismatchError(f"the pruned model fails to run: {str(err).splitlines()[0]}") from None
    return slim, verify(reference, out)


def _check_or_blame(model, gates, groups, removed, example_input, probe) -> tuple[nn.Module, float]:
    """``_checked_copy``; on a mismatch, re-check group by group and name the groups that break."""
    try:
        return _checked_copy(model, gates, removed, example_input, probe)
    except PruningMismatchError as err:
        culprits = []
        for g in groups:
            if removed.get(g.name):
                try:
                    _checked_copy(model, gates, {g.name: removed[g.name]}, example_input, probe)
                except PruningMismatchError:
                    culprits.append(g.name)
        where = ", ".join(culprits) if culprits else "the combination of groups"
        raise PruningMismatchError(
            f"{err}; torch-pruning's dependency graph misses a coupling in group(s): {where}. "
            "The model is not returned.") from None
