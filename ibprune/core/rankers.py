"""The usual channel-ranking criteria, from torch-pruning, for comparison with IB information.

Each returns one score per channel of every group (higher = keep), normalised by torch-pruning's default
(the group's mean), and the pruning step ranks all channels by it globally, as torch-pruning's global pruning
does, until the same MACs budget holds. The baselines share everything else with ibprune's method: groups,
budget search, rounding, verification, fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ibprune.core.groups import ChannelGroup, build_graph
from ibprune.core.modes import evaluating
from ibprune.core.train import batches
from ibprune.errors import UnsupportedModelError

CRITERIA = ("l1", "bn", "taylor", "random")


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "bn":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    if criterion == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"unknown criterion {criterion!r}; expected 'ib' or one of {CRITERIA}")


def criterion_scores(model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup], criterion: str,
                     loader=None, device: torch.device | None = None,
                     grad_batches: int = 10) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group by torch-pruning's ``criterion`` (Taylor uses ``loader``'s batches)."""
    importance = _importance(criterion)
    graph = build_graph(model, example_input)
    if criterion == "taylor":
        if loader is None:
            raise ValueError("the taylor criterion needs training batches (loader)")
        model.zero_grad(set_to_none=True)
        with evaluating(model):
            for x, y in batches(loader, min(grad_batches, len(loader))):
                F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    modules = dict(model.named_modules())
    scores = {}
    for g in groups:
        root = modules[g.name]
        if g.unit == "head":  # torch-pruning's group through the q/k/v rows and out_proj columns; mean per head
            group = graph.get_pruning_group(root.q, tp.prune_linear_out_channels, list(range(root.q.out_features)))
            scores[g.name] = _score(importance, group, criterion, g).view(g.size, -1).mean(dim=1)
            continue
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(g.size)))
        scores[g.name] = _score(importance, group, criterion, g)
    model.zero_grad(set_to_none=True)
    return scores


def _score(importance: tp.importance.Importance, group, criterion: str, g: ChannelGroup) -> torch.Tensor:
    imp = importance(group)
    if imp is None:  # e.g. the BN criterion on a group without BatchNorm
        raise UnsupportedModelError(f"the {criterion!r} criterion cannot score group {g.name} (it has no layer "
                                    f"that criterion reads); use another criterion")
    return imp.detach().float().cpu()
