"""Deliberately broken versions of the prune, which the function check must catch on every architecture family.

Each is applied with pytest's ``monkeypatch``: ``MUTANTS[name](monkeypatch)``.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers

import ibprune.core.prune
from ibprune.core.gates import GateSet
from ibprune.core.groups import MIXING, is_depthwise
from ibprune.rewrites.attention import HeadAttention


def _width(module: nn.Module) -> int:
    if isinstance(module, HeadAttention):
        return module.num_heads
    return module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features


def wrong_channels(monkeypatch) -> None:
    """The removal deletes the neighbours of the planned channels: position ``i`` becomes ``(i + 1) mod width``."""
    real = ibprune.core.prune.remove_channels

    def shifted(model, example_input, removed):
        modules = dict(model.named_modules())
        return real(model, example_input, {n: [(i + 1) % _width(modules[n]) for i in idxs]
                                           for n, idxs in removed.items()})

    monkeypatch.setattr(ibprune.core.prune, "remove_channels", shifted)


def unfolded(monkeypatch) -> None:
    """The gate means are not folded into the weights of the layers that read them."""
    monkeypatch.setattr(GateSet, "fold", lambda self, model: None)


def misaligned_readers(monkeypatch) -> None:
    """A broken coupling: the layers that read a group drop other input channels (shifted by one) than its
    producers drop, as when an index map through a residual add or a concatenation goes wrong."""
    real = tp.dependency.Dependency.__call__

    def call(self, idxs):
        module = self.target.module
        if (getattr(self.handler, "__name__", "") == "prune_in_channels" and isinstance(module, MIXING)
                and not is_depthwise(module) and getattr(module, "groups", 1) == 1 and len(idxs)):
            width = module.weight.shape[1]
            idxs = [(i + 1) % width for i in _helpers.to_plain_idxs(idxs)] \
                if isinstance(idxs[0], _helpers._HybridIndex) else [(int(i) + 1) % width for i in idxs]
        return real(self, idxs)

    monkeypatch.setattr(tp.dependency.Dependency, "__call__", call)


MUTANTS = {"wrong_channels": wrong_channels, "unfolded": unfolded, "misaligned_readers": misaligned_readers}
