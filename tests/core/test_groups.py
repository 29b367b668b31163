import pytest
import torch
import torch_pruning
import torchvision
from torch import nn

from ibprune.core.gates import GateSet
from ibprune.core.groups import classifier_layers, find_groups, is_depthwise
from ibprune.errors import UnsupportedModelError


def test_residual_stream_is_one_group(digits_net):
    _, groups = find_groups(digits_net, torch.randn(1, 1, 8, 8))
    by_layer = {layer: g.name for g in groups for layer in g.outputs}
    # the stem conv and the block's second conv are added together: one group, one gate vector
    assert by_layer["features.0"] == by_layer["features.3.body.3"]
    # the block-internal conv is its own group
    assert by_layer["features.3.body.0"] != by_layer["features.0"]
    # the classifier's outputs are never gated or pruned; its inputs are read through a gate
    assert all("head" not in g.outputs for g in groups)
    assert any("head" in g.inputs for g in groups)


def test_classifier_is_the_last_layer_run(digits_net):
    assert classifier_layers(digits_net, torch.randn(1, 1, 8, 8)) == [digits_net.head]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_gates_attach_to_torchvision_models(name):
    model = torchvision.models.get_model(name, weights=None, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    _, groups = find_groups(model, x[:1])
    modules = dict(model.named_modules())
    head = classifier_layers(model, x[:1])[0]
    # every non-depthwise conv / linear input that a group covers carries a gate; channel-wise layers none
    for g in groups:
        assert g.size > 0 and g.gate_sites
        for layer in g.gate_sites:
            assert isinstance(modules[layer], (nn.Conv2d, nn.Linear)) and not is_depthwise(modules[layer])
        assert all(modules[layer] is not head for layer in g.outputs)
    if name == "mobilenet_v2":
        assert any(is_depthwise(modules[layer]) for g in groups for layer in g.outputs)
    gates = GateSet(groups).attach(model).eval()
    assert torch.allclose(model(x), ref, atol=1e-5)  # mu = 1 at eval: the same function
    gates.train()
    assert model(x).shape == ref.shape
    gates.detach()
    assert torch.equal(model(x), ref)


def test_a_model_without_layers_to_prune_is_refused():
    with pytest.raises(UnsupportedModelError, match="no Conv or Linear"):
        find_groups(nn.Sequential(nn.ReLU()), torch.randn(1, 4))


def test_a_graph_torch_pruning_cannot_trace_is_a_clear_error(monkeypatch, digits_net):
    def fails(*args, **kwargs):  # as torch-pruning 1.6 did on torchvision's channel shuffle
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(torch_pruning.DependencyGraph, "build_dependency", fails)
    with pytest.raises(UnsupportedModelError, match="cannot trace this model's channel dependencies "
                                                    "\\(ZeroDivisionError: integer division"):
        find_groups(digits_net, torch.randn(1, 1, 8, 8))


def test_groups_through_layernorm_stay_unpruned_with_a_warning():
    """LayerNorm mixes statistics across channels: its width stays; the MLP hidden units inside are pruned."""
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16),
                          nn.LayerNorm(16), nn.Linear(16, 3)).eval()
    with pytest.warns(UserWarning, match="LayerNorm/GroupNorm"):
        _, groups = find_groups(model, torch.randn(1, 8))
    assert [(g.name, g.size) for g in groups] == [("2", 32)]


def test_a_search_that_never_ends_is_stopped(monkeypatch):
    import time

    import ibprune.core.groups as groups_module

    monkeypatch.setattr(groups_module, "GRAPH_TIME_LIMIT_S", 0.5)
    monkeypatch.setattr(groups_module, "build_graph", lambda *a: time.sleep(5))
    with pytest.raises(UnsupportedModelError, match="did not finish within 0.5 s"):
        find_groups(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(1, 4))
