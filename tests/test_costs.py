import copy

import pytest
import torch
import torchvision

from ibprune.costs import CostModel, count
from ibprune.groups import find_groups
from ibprune.prune import remove_channels


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_cost_model_matches_the_counter_after_real_pruning(digits_net, metric):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    cm = CostModel(digits_net, x, groups, metric)
    macs, params = count(digits_net, x)
    assert cm.fraction({}) == pytest.approx(1.0)
    assert cm.total == (macs if metric == "macs" else params)
    removed = {g.name: list(range(0, g.size, 3)) for g in groups}
    keep = {}
    for g in groups:
        keep[g.name] = torch.ones(g.size)
        keep[g.name][removed[g.name]] = 0
    slim = remove_channels(copy.deepcopy(digits_net), x, removed)
    counted = count(slim, x)[0 if metric == "macs" else 1]
    # conv / linear / BN costs are exact; only parameter-free layers (ReLU, pooling) are held constant
    assert float(cm.cost(keep)) == pytest.approx(counted, rel=0.02)


def test_channel_costs_follow_the_layers_they_feed():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    _, groups = find_groups(model, x)
    costs = CostModel(model, x, groups).channel_costs()
    assert set(costs) == {g.name for g in groups}
    assert all(c.shape == (g.size,) and (c > 0).all() for g in groups for c in [costs[g.name]])


def test_unknown_metric_is_refused(digits_net):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    with pytest.raises(ValueError, match="metric"):
        CostModel(digits_net, x, groups, "latency")
