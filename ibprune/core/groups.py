"""Prunable channel groups, read from torch-pruning's dependency graph.

A *group* is a set of channels that must be removed together: a conv's output channels, the BN after it, and
the input channels of every layer that reads them. Channels added into one residual stream (or concatenated,
or passed through a depthwise conv) form one group, so one gate vector governs them all.

For each group this module records, per layer, which of its input / output channels belong to the group and
which position of the group's gate vector each one maps to (torch-pruning's ``root_idxs``). Gates, the cost
model and the pruning step all work from these maps, never from layer names guessed by hand.
"""

from __future__ import annotations

import signal
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from ibprune.core.modes import evaluating
from ibprune.errors import UnsupportedModelError
from ibprune.rewrites import shuffle
from ibprune.rewrites.attention import HeadAttention


@contextmanager
def _quiet_shape_inference() -> Iterator[None]:
    """torch-pruning's shape inference warns once per reshape it cannot follow, thousands of times on windowed
    attention (Swin), at every group search; the function check catches what it gets wrong, so inside the
    search that warning is noise (and only there: no process-wide filter)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
        yield

#: Layers that read channels and mix them: a zeroed input channel contributes exactly nothing to their output,
#: so a gate on their input is removed exactly by deleting that input channel.
MIXING = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class ChannelMap:
    """Channels of one layer that belong to a group: ``channels[i]`` of the layer is gate position ``gates[i]``."""

    channels: list[int]
    gates: list[int]


@dataclass
class ChannelGroup:
    """One prunable group: ``size`` channels (or attention heads), named after the layer that defines them."""

    name: str
    size: int
    inputs: dict[str, ChannelMap] = field(default_factory=dict)   # layer name -> its input channels in the group
    outputs: dict[str, ChannelMap] = field(default_factory=dict)  # layer name -> its output channels in the group
    unit: str = "channel"  # "head": one gate position is a whole attention head (``head_group``)

    @property
    def gate_sites(self) -> dict[str, ChannelMap]:
        """Layers whose inputs carry this group's gate (see ``ibprune.core.gates``)."""
        return self.inputs


def is_depthwise(m: nn.Module) -> bool:
    """A conv that maps each input channel to its own output channels (channel-wise, not mixing)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels


def is_grouped(m: nn.Module) -> bool:
    """A grouped conv that is not depthwise (ResNeXt, RegNet): its channels must leave evenly per conv group."""
    return isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.in_channels


#: Layers whose output for one channel depends on all the others (statistics taken across channels): removing a
#: channel changes what the rest compute, so a gate cannot stand in for its removal. Groups through them stay.
CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def classifier_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The last conv / linear layer executed: its outputs are the model's outputs and are never pruned."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if isinstance(m, MIXING)]
    try:
        with torch.no_grad(), evaluating(model):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise UnsupportedModelError("the model has no Conv or Linear layer: there is nothing to prune")
    return [order[-1]]


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` traced on ``example_input``."""
    with torch.enable_grad(), evaluating(model), _quiet_shape_inference():
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False,
                                                         customized_pruners=shuffle.PRUNERS)
        except Exception as err:  # torch-pruning fails in many ways on graphs it does not understand
            where = traceback.extract_tb(err.__traceback__)[-1]
            raise UnsupportedModelError(
                f"torch-pruning cannot trace this model's channel dependencies ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'no message'}, in {Path(where.filename).name}:"
                f"{where.name}); channel shuffles and some attention / window layouts are not supported") from None


#: Seconds torch-pruning may spend tracing a model and searching its channel groups. Its search never ends on
#: some layouts (shifted-window attention: Swin); past this it is stopped with ``UnsupportedModelError``.
GRAPH_TIME_LIMIT_S = 180.0


class _OutOfTime(BaseException):  # not an Exception: torch-pruning's and our own handlers must not swallow it
    pass


@contextmanager
def _time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise ``UnsupportedModelError`` if the block runs longer than ``seconds`` (main thread, POSIX only)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    fired = []

    def fire(signum, frame):
        fired.append(True)
        raise _OutOfTime

    def refusal() -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{what} did not finish within {seconds:g} s (ibprune.core.groups.GRAPH_TIME_LIMIT_S); torch-pruning's "
            f"search does not terminate on some layouts, e.g. Swin's shifted-window attention")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _OutOfTime:
        raise refusal() from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # the signal landed where it was swallowed (a finaliser, a handler of BaseException)
        raise refusal()


def find_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    ignored_layers: list[nn.Module] | None = None,
    graph: tp.DependencyGraph | None = None,
) -> tuple[tp.DependencyGraph, list[ChannelGroup]]:
    """Every prunable channel group of ``model``; the classifier's outputs (and ``ignored_layers``) are excluded.

    The heads of each ``HeadAttention`` (see ``ibprune.rewrites.attention.split_heads``) form one group of their own,
    one gate position per head; torch-pruning's channel groups through their projections are left out.
    """
    names = {m: n for n, m in model.named_modules()}
    attention = [m for m in model.modules() if isinstance(m, HeadAttention)]
    ignored = list(ignored_layers or []) + classifier_layers(model, example_input)
    heads = [head_group(names[m], m) for m in attention if m not in ignored and m.num_heads > 1]
    ignored += [layer for m in attention for layer in m.modules()  # q, k, v (and Swin v2's bias MLP)
                if isinstance(layer, MIXING) and layer is not m.out_proj]
    with _time_limit(GRAPH_TIME_LIMIT_S, "torch-pruning's channel-group search"):
        graph = graph or build_graph(model, example_input)
        normed = [m for m in graph.module2node if isinstance(m, MIXING) and m not in ignored and _feeds_norm(graph, m)]
        with _quiet_shape_inference():
            found = list(graph.get_all_groups(ignored_layers=ignored + normed, root_module_types=MIXING))
    groups: list[ChannelGroup] = []
    skipped, shuffled, normed = [], [], [names[m] for m in normed]
    for g in found:
        root = g[0].dep.target.module
        if any(is_grouped(item.dep.target.module) for item in g.items):
            skipped.append(names[root])
            continue
        if any(isinstance(item.dep.target.module, CHANNEL_NORMS) for item in g.items):
            normed.append(names[root])
            continue
        if any(isinstance(item.dep.target.module, shuffle.ChannelShuffle) for item in g.items):
            shuffled.append(names[root])
            continue
        group = ChannelGroup(name=names[root], size=len(g[0].idxs))
        for item in g.items:
            module, handler = item.dep.target.module, item.dep.handler
            if module not in names or not isinstance(module, (*MIXING, nn.modules.batchnorm._BatchNorm)):
                continue
            cmap = ChannelMap(list(item.idxs), list(item.root_idxs))
            reads = graph.is_in_channel_pruning_fn(handler) and not graph.is_out_channel_pruning_fn(handler)
            target = group.inputs if reads and not is_depthwise(module) else group.outputs
            _merge(target, names[module], cmap)
        groups.append(group)
    groups += heads
    if skipped:
        warnings.warn(f"{len(skipped)} channel group(s) pass through grouped convolutions and stay unpruned "
                      f"(their channels must leave in equal numbers per conv group): {', '.join(skipped[:5])}"
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    if normed:
        warnings.warn(f"{len(normed)} channel group(s) pass through LayerNorm/GroupNorm, which normalise across "
                      f"channels, and stay unpruned (e.g. a transformer's residual width): "
                      f"{', '.join(normed[:5])}" + (" ..." if len(normed) > 5 else ""), stacklevel=2)
    if shuffled:
        warnings.warn(f"{len(shuffled)} channel group(s) reach a channel shuffle, which interleaves two branches' "
                      f"channels, and stay unpruned (the channels inside each branch are pruned): "
                      f"{', '.join(shuffled[:5])}" + (" ..." if len(shuffled) > 5 else ""), stacklevel=2)
    if not groups:
        why = [w for w, found_any in (("a grouped convolution", skipped), ("a LayerNorm/GroupNorm", normed),
                                      ("a channel shuffle", shuffled)) if found_any]
        raise UnsupportedModelError("torch-pruning found no prunable channel group in this model"
                                    + (f" (every group passes through {' or '.join(why)})" if why else ""))
    return graph, groups


def _feeds_norm(graph: tp.DependencyGraph, layer: nn.Module) -> bool:
    """Whether ``layer``'s output channels reach a LayerNorm-like layer without passing a channel-mixing layer.

    Such a layer's group contains that norm and stays unpruned; knowing it before torch-pruning's group search
    skips the search, which on windowed attention (Swin) multiplies indices through every reshape of the
    residual stream and does not finish. Only forward paths are followed, so a group it misses is still caught
    after the search.
    """
    start = graph.module2node[layer]
    stack, seen = [start], {start}
    while stack:
        for node in stack.pop().outputs:
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node.module, CHANNEL_NORMS):
                return True
            if not (isinstance(node.module, MIXING) and not is_depthwise(node.module)):
                stack.append(node)
    return False


def head_group(name: str, attention: HeadAttention) -> ChannelGroup:
    """The heads of ``attention`` as one group: gate position ``h`` covers head ``h``'s ``head_dim`` channels
    where ``out_proj`` reads them (the gate site), and its rows of ``q``, ``k``, ``v``."""
    d, n = attention.head_dim, attention.num_heads
    per_channel = ChannelMap(list(range(n * d)), [c // d for c in range(n * d)])
    group = ChannelGroup(name=name, size=n, unit="head")
    group.inputs[f"{name}.out_proj"] = per_channel
    for proj in ("q", "k", "v"):
        group.outputs[f"{name}.{proj}"] = ChannelMap(list(per_channel.channels), list(per_channel.gates))
    group.outputs[f"{name}.attend"] = ChannelMap(list(range(n)), list(range(n)))
    return group


def _merge(maps: dict[str, ChannelMap], name: str, cmap: ChannelMap) -> None:
    if name in maps:
        maps[name].channels += cmap.channels
        maps[name].gates += cmap.gates
    else:
        maps[name] = cmap
