"""Channel shuffles (ShuffleNet) as a module that torch-pruning can see and stop at.

torchvision's ``channel_shuffle`` is a ``view``/``transpose``/``view`` that torch-pruning's shape inference cannot
follow (it fails with a division by zero). ``ChannelShuffle`` computes the same permutation with one
``index_select`` and is registered with torch-pruning as a layer of its own (``PRUNERS``), so the dependency
graph builds and channel coupling stops at it. Groups that reach a shuffle are not pruned (``ibprune.core.groups``
skips them: a shuffle interleaves the channels of two branches); the channels inside each branch are.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual


class ChannelShuffle(nn.Module):
    """``channel_shuffle(x, groups)`` for ``channels`` channels: output channel ``i * groups + g`` is input
    channel ``g * channels / groups + i``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        order = torch.arange(channels).view(groups, channels // groups).t().flatten()
        self.register_buffer("order", order, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.order)


class ShuffleBlock(nn.Module):
    """torchvision's ShuffleNet-V2 ``InvertedResidual`` with its shuffle as a ``ChannelShuffle`` module (same
    parameters, same state-dict keys, same function)."""

    def __init__(self, block: InvertedResidual) -> None:
        super().__init__()
        self.stride, self.branch1, self.branch2 = block.stride, block.branch1, block.branch2
        width = [m for m in block.branch2 if isinstance(m, nn.Conv2d)][-1].out_channels
        self.shuffle = ChannelShuffle(2 * width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def split_shuffles(model: nn.Module) -> list[str]:
    """Replace, in place, every torchvision ShuffleNet block of ``model`` by a ``ShuffleBlock``; their names."""
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is InvertedResidual and name:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, ShuffleBlock(module))
            replaced.append(name)
    return replaced


class _Unprunable(tp.pruner.function.BasePruningFunc):
    """torch-pruning's view of a ``ChannelShuffle``: a layer with fixed channels that is never pruned."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise RuntimeError("a channel shuffle is not pruned: groups through it are skipped")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: ChannelShuffle) -> int:
        return layer.order.numel()

    get_in_channels = get_out_channels


#: customized pruners for ``DependencyGraph.build_dependency``
PRUNERS = {ChannelShuffle: _Unprunable()}
