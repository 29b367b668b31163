"""MACs and parameter counts as a function of which channels each group keeps.

torch-pruning's counter gives every layer's MACs and parameters once. A conv or linear layer costs in
proportion to (kept inputs / inputs) x (kept outputs / outputs), its bias to its kept outputs; a BN or depthwise
conv in proportion to its kept outputs; every other layer is held constant. That is exact for conv / linear / BN
layers, differentiable in the keep vectors, and fast enough to evaluate at every training step. The pruning step
still counts the pruned model with torch-pruning's counter: this model only steers.
"""

from __future__ import annotations

import copy
import gc
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ibprune.core.groups import ChannelGroup, is_depthwise
from ibprune.core.modes import evaluating
from ibprune.rewrites.attention import Attend, _count_attend, split_heads, splittable


@contextmanager
def attention_counted() -> Iterator[None]:
    """torch-pruning's counter counts the attention matmuls (``Attend``) inside the block, and is left as it was
    after it: nothing registers with torch-pruning when ibprune is imported."""
    mapping = tp.utils.op_counter.MODULES_MAPPING
    before = mapping.get(Attend)
    mapping[Attend] = _count_attend
    try:
        yield
    finally:
        if before is None:
            del mapping[Attend]
        else:
            mapping[Attend] = before


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(macs, params)`` of ``model`` at ``example_input``, by torch-pruning's counter.

    Attention layers are counted as ``split_heads`` makes them (on a copy), so an original and its compressed
    version are counted alike: torch-pruning's counter misses the attention matmuls of Swin's windowed
    attention, which it cannot see inside a functional call.
    """
    if splittable(model):
        model = copy.deepcopy(model)
        split_heads(model)
    with evaluating(model), attention_counted():
        macs, params = tp.utils.count_ops_and_params(model, example_input)
    gc.collect()  # the counter's copy of the model is held in reference cycles
    return int(macs), int(params)


@dataclass
class _Term:
    base: float                                  # the layer's MACs (or params) in the unpruned model
    bias: float                                  # the part of ``base`` that scales with the outputs alone
    inputs: list[tuple[str, torch.Tensor]]       # (group, gate positions) read by this layer's inputs
    n_in: int
    outputs: list[tuple[str, torch.Tensor]]
    n_out: int


class CostModel:
    """``cost(keep)`` = MACs or params when group ``g`` keeps ``keep[g]`` (0/1 or soft, per channel)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup],
                 metric: str = "macs") -> None:
        if metric not in ("macs", "params"):
            raise ValueError(f"metric must be 'macs' or 'params', got {metric!r}")
        with evaluating(model), attention_counted():
            macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
                model, example_input, layer_wise=True)
        gc.collect()
        per_layer = layer_macs if metric == "macs" else layer_params
        self.metric = metric
        self.macs, self.params = int(macs), int(params)  # the unpruned model's, by torch-pruning's counter
        self.total = float(macs if metric == "macs" else params)
        self.sizes = {g.name: g.size for g in groups}
        modules = dict(model.named_modules())
        ins: dict[str, list] = {}
        outs: dict[str, list] = {}
        for g in groups:
            for layer, cmap in g.inputs.items():
                ins.setdefault(layer, []).append((g.name, torch.tensor(cmap.gates)))
            for layer, cmap in g.outputs.items():
                outs.setdefault(layer, []).append((g.name, torch.tensor(cmap.gates)))
        self.terms: list[_Term] = []
        for layer in set(ins) | set(outs):
            m = modules[layer]
            base = float(per_layer.get(m) or 0.0)
            n_in, n_out = _width(m)
            reads = ins.get(layer, []) if not is_depthwise(m) else []
            self.terms.append(_Term(base, _bias_share(m, base, metric), reads, n_in, outs.get(layer, []), n_out))
        self.constant = self.total - sum(t.base for t in self.terms)

    def cost(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """Estimated MACs / params for per-group keep vectors (missing groups keep everything)."""
        total = torch.tensor(self.constant)
        for t in self.terms:
            out = _kept(t.outputs, t.n_out, keep)
            total = total + (t.base - t.bias) * _kept(t.inputs, t.n_in, keep) * out + t.bias * out
        return total

    def fraction(self, keep: dict[str, torch.Tensor]) -> float:
        """``cost(keep) / cost(all)``."""
        return float(self.cost(keep)) / self.total

    def block_fraction(self, blocks: dict[str, list[list[int]]]) -> Callable[[dict[str, int]], float]:
        """``fraction`` for removals made of blocks, fast: ``f(counts)`` is the fraction when each group ``g``
        loses its first ``counts[g]`` blocks of ``blocks[g]`` (positions), in plain floats from tables built
        once. ``plan_removal`` evaluates thousands of candidate removals, most a block or two away from the
        last one computed in full: for those, each side of a layer (its inputs, its outputs) updates its count
        of kept channels by the changed groups' differences alone (whole numbers, so exactly), and only the
        layers those groups touch are recomputed: the same value a full computation gives, the layers summed
        exactly by ``math.fsum``."""
        sides: list[tuple[float, int]] = []  # (channels no block of any group reaches, width)
        rows: dict[str, list[tuple[int, list[float]]]] = {}  # group -> (side, kept channels after k blocks)
        touches: dict[str, set[int]] = {}  # group -> the layers whose cost it changes
        layers = []  # (base, bias, input side or None, output side or None)

        def side(entries: list[tuple[str, torch.Tensor]], n: int, layer: int) -> int | None:
            if not entries or not n:
                return None
            free = float(n - sum(len(pos) for _, pos in entries))
            for g, pos in entries:
                if g not in blocks:  # a group that never loses a block here keeps all its positions
                    free += len(pos)
                    continue
                seen, kept = Counter(pos.tolist()), [float(len(pos))]
                for block in blocks[g]:
                    kept.append(kept[-1] - sum(seen[i] for i in block))
                rows.setdefault(g, []).append((len(sides), kept))
                touches.setdefault(g, set()).add(layer)
            sides.append((free, n))
            return len(sides) - 1

        for t in self.terms:
            i = len(layers)
            layers.append((t.base, t.bias, side(t.inputs, t.n_in, i), side(t.outputs, t.n_out, i)))

        def layer(i: int, kept: list[float]) -> float:
            b, bias, ins, outs = layers[i]
            share_in = 1.0 if ins is None else kept[ins] / sides[ins][1]
            share_out = 1.0 if outs is None else kept[outs] / sides[outs][1]
            return ((b - bias) * share_in + bias) * share_out

        last: dict = {}  # the counts last computed in full: each side's kept channels, each layer's cost

        def fraction(counts: dict[str, int]) -> float:
            base = last.get("counts")
            changed = None if base is None else \
                [g for g in counts.keys() | base.keys() if counts.get(g, 0) != base.get(g, 0)]
            if changed is None or len(changed) > 4:
                kept = [free for free, _ in sides]
                for g, entries in rows.items():
                    for s, k in entries:
                        kept[s] += k[counts.get(g, 0)]
                values = [layer(i, kept) for i in range(len(layers))]
                last.update(counts=dict(counts), kept=kept, values=values)
            else:
                kept, values = list(last["kept"]), list(last["values"])
                for g in changed:
                    new, old = counts.get(g, 0), base.get(g, 0)
                    for s, k in rows.get(g, ()):
                        kept[s] += k[new] - k[old]
                for i in set().union(*(touches.get(g, ()) for g in changed)):
                    values[i] = layer(i, kept)
            return (self.constant + math.fsum(values)) / self.total

        return fraction

    def channel_costs(self) -> dict[str, torch.Tensor]:
        """Marginal cost of each channel in the unpruned model (d cost / d keep_c), relative to the mean (1)."""
        keep = {n: torch.ones(s, requires_grad=True) for n, s in self.sizes.items()}
        self.cost(keep).backward()
        costs = {n: k.grad.detach().clamp_min(0.0) for n, k in keep.items()}
        mean = torch.cat(list(costs.values())).mean().clamp_min(1e-12)
        return {n: c / mean for n, c in costs.items()}


def _kept(entries: list[tuple[str, torch.Tensor]], n: int, keep: dict[str, torch.Tensor]) -> torch.Tensor | float:
    if not entries or n == 0:
        return 1.0
    covered = sum(len(pos) for _, pos in entries)
    kept = sum(keep[g][pos].sum() if g in keep else float(len(pos)) for g, pos in entries)
    return (n - covered + kept) / n


def _bias_share(m: nn.Module, base: float, metric: str) -> float:
    """What a conv's or linear layer's bias adds to ``base`` as torch-pruning counts it: its parameters, or its
    MACs (a conv's: one per output element; a linear layer's: one per output feature and call, taken once)."""
    if not isinstance(m, nn.modules.conv._ConvNd | nn.Linear) or m.bias is None or not base:
        return 0.0
    if metric == "params":
        return float(m.bias.numel())
    if isinstance(m, nn.Linear):
        return float(min(base, m.out_features))
    per_output = math.prod(m.kernel_size) * m.in_channels // m.groups
    return base / (per_output + 1)


def _width(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, Attend):
        return m.num_heads, m.num_heads
    n = getattr(m, "num_features", 0)
    return n, n
