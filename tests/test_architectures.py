"""One model of each torchvision family: it compresses correctly, or it is refused up front with a named reason.

ConvNeXt and ViT compress through the groups that avoid LayerNorm (their MLP hidden units); their residual width
stays, with a warning.

Random weights, small inputs, no training (``ibprune.check_model``): groups, preflight, a prune to 0.6 of the
MACs, the function check, ONNX export and onnxruntime parity. ``benchmarks/coverage.py`` runs every model.
"""

from __future__ import annotations

import time

import pytest
import torch
import torchvision

import ibprune
import ibprune.groups
from ibprune.errors import UnsupportedModelError

SUPPORTED = {  # family: (model, input size)
    "resnet": ("resnet18", 64), "resnext": ("resnext50_32x4d", 64), "wide_resnet": ("wide_resnet50_2", 64),
    "mobilenet_v2": ("mobilenet_v2", 64), "mobilenet_v3": ("mobilenet_v3_small", 64),
    "efficientnet": ("efficientnet_b0", 64), "regnet": ("regnet_y_400mf", 64), "densenet": ("densenet121", 64),
    "googlenet": ("googlenet", 64), "inception": ("inception_v3", 299), "squeezenet": ("squeezenet1_0", 64),
    "mnasnet": ("mnasnet0_5", 64), "convnext": ("convnext_tiny", 64), "vit": ("vit_b_32", 224),
}
REFUSED = {  # family: (model, input size, words the reason must contain)
    "shufflenet": ("shufflenet_v2_x0_5", 64, "cannot trace"),
    "swin": ("swin_t", 224, "did not finish"),
}
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **KWARGS.get(name, {})).eval()


@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_family_compresses_correctly(family):
    name, size = SUPPORTED[family]
    r = ibprune.check_model(_model(name), torch.randn(1, 3, size, size), macs=0.6)
    assert r["macs_fraction"] <= 0.6 and r["output_shape_ok"]
    assert r["params_after"] < r["params_before"]  # check_model raised if ONNX had differed beyond 1e-4 relative


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_family_is_refused_before_training_with_a_reason(family, monkeypatch):
    name, size, reason = REFUSED[family]
    monkeypatch.setattr(ibprune.groups, "GRAPH_TIME_LIMIT_S", 15.0)  # Swin's search never ends
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedModelError, match=reason):
        ibprune.check_model(_model(name), torch.randn(1, 3, size, size), macs=0.6)
    assert time.perf_counter() - t0 < 120
