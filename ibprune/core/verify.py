"""The function check: the pruned network must compute what the gated network computes with the removed
channels shut.

Every comparison is relative to the compared tensor's own scale, never against an absolute floor: a network
whose logits are tiny (a randomly initialised EfficientNet's are about 1e-13) would otherwise pass any prune.
The check compares the network's output and, because an output can be damped (ConvNeXt's layer scale of 1e-6)
or hardly depend on its input, also the output of every layer that reads a pruned group, restricted to that
layer's output channels that survive. ``prune`` runs it in float64. ``sensitivity`` measures how large a wrong
prune looks to the check: the difference that removing a group's neighbouring channels instead of the planned
ones makes, in units of the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ibprune.core.gates import GateSet
from ibprune.core.groups import ChannelGroup
from ibprune.core.modes import full_precision

#: Relative tolerance of the function check: a compared tensor may differ by this fraction of its largest
#: magnitude. A correct prune only reorders sums (deleting a channel), which in float64 stays far below it; in
#: float32 a deep residual stream reached 2.3e-4 (ResNet-152, ``benchmarks/results/coverage.md``).
RTOL = 1e-4


@dataclass
class Trace:
    """A forward pass of the check: the network's output and each compared layer's outputs (one per call, the
    channels on the last axis), in the order the layers first ran."""

    output: torch.Tensor
    layers: dict[str, list[torch.Tensor]]


@dataclass
class Agreement:
    """How closely two traces agree: ``ratio`` is the worst difference over its tolerance (the check passes
    below 1), found at ``where`` (a layer's name, or ``"output"``); ``first`` is the first tensor, in the
    order the network computed them, that fails (None when none does): where a wrong prune first shows."""

    ratio: float
    where: str
    max_abs_diff: float  # at the network's output
    first: str | None


def sites(groups: list[ChannelGroup], removed: dict[str, list[int]]) -> dict[str, list[int]]:
    """The layers that read a group with removed channels, each with the output channels that the prune
    removes from it (a reader may itself produce a pruned group)."""
    read = {layer for g in groups if removed.get(g.name) for layer in g.inputs}
    out: dict[str, set[int]] = {layer: set() for layer in sorted(read)}
    for g in groups:
        gone = set(removed.get(g.name, ()))
        for layer, cmap in g.outputs.items():
            if layer in out and gone:
                out[layer].update(c for c, p in zip(cmap.channels, cmap.gates) if p in gone)
    return {layer: sorted(chans) for layer, chans in out.items()}


@torch.no_grad()
def trace(model: nn.Module, probe: torch.Tensor, layers: dict[str, list[int]]) -> Trace:
    """Run ``model`` on ``probe``, recording the outputs of ``layers``."""
    found: dict[str, list[torch.Tensor]] = {}
    modules = dict(model.named_modules())

    def recorder(name: str):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):  # a copy: later in-place ops (ReLU, +=) would change it
                conv = isinstance(module, nn.modules.conv._ConvNd) and output.dim() > 2  # channels moved last
                found.setdefault(name, []).append((output.movedim(1, -1) if conv else output).detach().clone())
        return hook

    handles = [modules[n].register_forward_hook(recorder(n)) for n in layers if n in modules]
    try:
        output = model(probe)
    finally:
        for h in handles:
            h.remove()
    return Trace(output.detach(), found)


def compare(reference: Trace, candidate: Trace, removed_outputs: dict[str, list[int]],
            rtol: float = RTOL) -> Agreement:
    """``candidate`` against ``reference`` at every recorded layer and at the output, each relative to its own
    scale. A layer whose output channels ``candidate`` no longer has (``removed_outputs``) is compared on
    the channels that survive."""
    ratios: list[tuple[str, float]] = []
    for name, refs in reference.layers.items():
        cands = candidate.layers.get(name, [])
        gone = removed_outputs.get(name, [])
        worst = 0.0 if len(cands) == len(refs) else float("inf")
        for ref, cand in zip(refs, cands):
            if gone and ref.shape[-1] - len(gone) == cand.shape[-1]:
                keep = torch.tensor(sorted(set(range(ref.shape[-1])) - set(gone)), device=ref.device)
                ref = ref.index_select(-1, keep)
            worst = max(worst, _ratio(ref, cand, rtol))
        ratios.append((name, worst))
    ratios.append(("output", _ratio(reference.output, candidate.output, rtol)))
    where, ratio = max(ratios, key=lambda r: r[1])
    first = next((name for name, r in ratios if r > 1.0), None)
    return Agreement(ratio, where, _max_diff(reference.output, candidate.output), first)


def _ratio(ref: torch.Tensor, cand: torch.Tensor, rtol: float) -> float:
    """``max |ref - cand|`` over ``rtol * max |ref|``: 0 when identical, inf when the shapes differ, a value is
    not finite, or ``ref`` is all zeros and ``cand`` is not."""
    diff = _max_diff(ref, cand)
    if diff == 0.0:
        return 0.0
    scale = float(ref.abs().max())
    return diff / (rtol * scale) if math.isfinite(diff) and scale > 0 else float("inf")


def _max_diff(ref: torch.Tensor, cand: torch.Tensor) -> float:
    if ref.shape != cand.shape:
        return float("inf")
    return float((ref.float() - cand.float()).abs().max()) if ref.numel() else 0.0


def sensitivity(model: nn.Module, gates: GateSet, groups: list[ChannelGroup], removed: dict[str, list[int]],
                probe: torch.Tensor) -> dict[str, float]:
    """How large a wrong prune looks to the check, per group with removed channels: the worst ratio between the
    gated model with ``removed`` shut and the same with that group's removed positions moved to their
    neighbours (``i -> (i + 1) mod size``, the wrong channels removed), at that group's readers and the
    output (where such a prune first shows). Above 1 the check sees it.

    Computed in the model's own precision, one forward pass per group: float32's rounding moves a ratio by a
    few units at most (the check's worst float32 ratio on a correct prune was 2.3, ``RTOL``), against margins in
    the hundreds, while float64 would cost an order of magnitude more time on the largest models."""
    with full_precision():
        reference = trace_gated(model, gates, removed, probe, sites(groups, {g.name: [0] for g in groups}))
        out = {}
        for g in groups:
            gone = sorted(removed.get(g.name, ()))
            wrong = sorted((i + 1) % g.size for i in gone)
            if gone and wrong != gone:
                readers = dict.fromkeys(g.inputs, [])
                candidate = trace_gated(model, gates, {**removed, g.name: wrong}, probe, readers)
                mine = Trace(reference.output, {n: t for n, t in reference.layers.items() if n in readers})
                out[g.name] = compare(mine, candidate, {}).ratio
    return out


def trace_gated(model: nn.Module, gates: GateSet, removed: dict[str, list[int]], probe: torch.Tensor,
                layers: dict[str, list[int]]) -> Trace:
    """``trace`` of the gated model with ``removed`` shut."""
    with gates.shut(removed):
        return trace(model, probe, layers)


