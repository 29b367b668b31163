import copy

import pytest
import torch
import torchvision

from ibprune.core.costs import CostModel, count
from ibprune.core.groups import find_groups
from ibprune.core.prune import remove_channels


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


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_an_encoders_cost_is_exact_biases_included(metric):
    """Heads and FFN units of a transformers encoder: the estimate equals torch-pruning's count of the pruned
    model, the linear layers' biases (which scale with their outputs alone) included."""
    pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
    from ibprune.pipeline.stages import working_copy
    from tests.rewrites.test_encoder import padded, tiny

    x, model = padded()[1:2], tiny()
    work = working_copy(model, torch.device("cpu"))
    _, groups = find_groups(work, x)
    cm = CostModel(work, x, groups, metric)
    removed = {g.name: list(range(0, g.size, 3)) for g in groups}
    keep = {g.name: (~torch.isin(torch.arange(g.size), torch.tensor(removed[g.name]))).float() for g in groups}
    slim = remove_channels(copy.deepcopy(model), x, removed)
    assert float(cm.cost(keep)) == count(slim, x)[0 if metric == "macs" else 1]


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


@pytest.mark.parametrize("net_name", ["digits", "resnet20"])
def test_block_fraction_equals_fraction(digits_net, net_name):
    from ibprune.models.cifar_resnet import cifar_resnet20

    net, x = (digits_net, torch.randn(1, 1, 8, 8)) if net_name == "digits" else (cifar_resnet20(),
                                                                                 torch.randn(1, 3, 32, 32))
    _, groups = find_groups(net, x)
    cm = CostModel(net, x, groups)
    g = torch.Generator().manual_seed(0)
    blocks = {gr.name: torch.randperm(gr.size, generator=g).split(4) for gr in groups}
    blocks = {n: [b.tolist() for b in bs] for n, bs in blocks.items()}
    fast = cm.block_fraction(blocks)
    for _ in range(20):
        counts = {n: int(torch.randint(0, len(bs), (), generator=g)) for n, bs in blocks.items()}
        keep = {}
        for n, k in counts.items():
            keep[n] = torch.ones(cm.sizes[n])
            keep[n][[i for b in blocks[n][:k] for i in b]] = 0
        assert fast(counts) == pytest.approx(cm.fraction(keep), rel=1e-6)
        for name in list(blocks)[:3]:  # a block more or less in a group or two: only their layers recomputed
            near = {**counts, name: (counts[name] + 1) % len(blocks[name])}
            assert fast(near) == cm.block_fraction(blocks)(near)  # bit for bit what a full computation gives
            counts = near
