import pytest
import torch
from torch import nn

from ibprune.core.gates import GateSet
from ibprune.core.groups import find_groups
from ibprune.core.verify import RTOL, Trace, compare, sensitivity, sites, trace
from ibprune.pipeline.check import lively

X = torch.randn(1, 1, 8, 8)


def test_differences_are_measured_against_each_tensors_own_scale():
    tiny = torch.randn(4, 10) * 1e-13
    same = Trace(tiny, {})
    assert compare(same, Trace(tiny.clone(), {}), {}).ratio == 0.0
    off = compare(same, Trace(tiny * 1.01, {}), {})  # 1 % off: far below any absolute floor
    assert off.ratio > 1 and off.where == "output" and off.first == "output"
    assert compare(same, Trace(tiny * (1 + 0.1 * RTOL), {}), {}).ratio < 1
    assert compare(same, Trace(tiny[:, :9], {}), {}).ratio == float("inf")  # shape changed
    nan = tiny.clone()
    nan[0, 0] = float("nan")
    assert compare(same, Trace(nan, {}), {}).ratio == float("inf")


def test_a_layer_is_compared_on_its_surviving_channels_and_the_first_failure_is_named():
    out = torch.randn(2, 3)
    a, b = torch.randn(2, 5, 6), torch.randn(2, 4)  # channels last, as ``trace`` records them
    reference = Trace(out, {"a": [a], "b": [b]})
    slim_a = a[..., [0, 2, 3, 5]]
    assert compare(reference, Trace(out, {"a": [slim_a], "b": [b]}), {"a": [1, 4]}).ratio < 1
    wrong = compare(reference, Trace(out, {"a": [a[..., [0, 1, 3, 5]]], "b": [b + 1]}), {"a": [1, 4]})
    assert wrong.ratio > 1 and wrong.first == "a"  # "a" ran first; "b" differs too
    assert compare(reference, Trace(out, {"a": [slim_a]}), {"a": [1, 4]}).where == "b"  # "b" never ran


def test_trace_records_a_copy_that_later_in_place_ops_cannot_change():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return torch.relu_(self.conv(x)).mean((2, 3))

    net = InPlace().eval()
    t = trace(net, X, {"conv": []})
    (recorded,) = t.layers["conv"]
    assert recorded.shape == (1, 6, 6, 4) and (recorded < 0).any()  # channels last, before the in-place ReLU


def test_the_sites_are_the_readers_of_pruned_groups_with_their_removed_outputs(digits_net):
    _, groups = find_groups(digits_net, X)
    inner = next(g for g in groups if g.name == "features.3.body.0")
    layers = sites(groups, {inner.name: [0, 3]})
    assert set(layers) == set(inner.inputs)
    # a layer that reads one group and produces another: compared on the outputs the other group keeps
    read, made, layer = next((a, b, n) for a in groups for b in groups if a is not b
                             for n in set(a.inputs) & set(b.outputs))
    both = sites(groups, {read.name: [0], made.name: [1]})
    cmap = made.outputs[layer]
    assert both[layer] == sorted(c for c, p in zip(cmap.channels, cmap.gates) if p == 1)
    assert sites(groups, {read.name: [0]})[layer] == []


def test_a_wrong_prune_of_every_group_looks_large_to_the_check(digits_net):
    _, groups = find_groups(digits_net, X)
    gates = GateSet(groups).attach(digits_net).eval()
    removed = {g.name: [0, 1, 5] for g in groups}
    margins = sensitivity(digits_net, gates, groups, removed, torch.randn(2, 1, 8, 8))
    assert set(margins) == {g.name for g in groups} and min(margins.values()) > 100


class Damped(nn.Module):
    """A random-init network that computes almost nothing: an input-independent BN shift, a layer scale of 1e-6."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
        self.scale = nn.Parameter(torch.full((8, 1, 1), 1e-6))
        self.head = nn.Linear(8, 3)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.bn.running_mean.fill_(50.0)

    def forward(self, x):
        return self.head((self.scale * torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def test_lively_gives_a_damped_random_network_outputs_of_order_one_that_depend_on_its_input():
    net = Damped().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert net(x).std(0).max() == 0  # every example gets the same output
    lively(net, X)
    assert not net.training and net.bn.momentum == 0.1
    assert torch.equal(net.scale, torch.ones_like(net.scale)) and net.head.weight.abs().min() > 0
    with torch.no_grad():
        out = net(x)
    assert out.std(0).min() > 1e-3 and 1e-3 < out.abs().max() < 100
    assert net.bn.running_mean.abs().max() < 5


@pytest.mark.parametrize("bad", [float("inf"), 1e30])
def test_lively_leaves_non_constant_or_large_parameters_alone(bad):
    net = Damped().eval()
    with torch.no_grad():
        net.scale[0] = bad
    before = net.scale.detach().clone()
    lively(net, X)
    assert torch.equal(net.scale, before)
