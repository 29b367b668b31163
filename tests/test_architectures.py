"""One model of each torchvision family compresses correctly; what torch-pruning misreads is refused up front.

ConvNeXt, ViT and Swin compress through the groups that avoid LayerNorm (MLP hidden units, and the attention
heads, one gate per head); their residual width stays, with a warning. ShuffleNet prunes inside its branches.

Random weights, small inputs, no training (``ibprune.check_model``): groups, preflight, a prune to 0.6 of the
MACs, the function check, ONNX export and onnxruntime parity. ``benchmarks/coverage.py`` runs every model (Wide
ResNet, a ResNet bottleneck of other widths, only there, to keep CI inside its time).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.shufflenetv2 import channel_shuffle

import ibprune
import ibprune.core.groups
from ibprune.errors import PruningMismatchError, UnsupportedModelError
from ibprune.rewrites.attention import HeadAttention
from tests.mutants import MUTANTS

SUPPORTED = {  # family: (model, input size)
    "resnet": ("resnet18", 64), "resnext": ("resnext50_32x4d", 64),
    "mobilenet_v2": ("mobilenet_v2", 64), "mobilenet_v3": ("mobilenet_v3_small", 64),
    "efficientnet": ("efficientnet_b0", 64), "regnet": ("regnet_y_400mf", 64), "densenet": ("densenet121", 64),
    "googlenet": ("googlenet", 64), "inception": ("inception_v3", 128), "squeezenet": ("squeezenet1_0", 64),
    "mnasnet": ("mnasnet0_5", 64), "convnext": ("convnext_tiny", 64), "vit": ("vit_b_32", 64),
    "swin": ("swin_t", 64), "shufflenet": ("shufflenet_v2_x0_5", 64),
}
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}, "vit_b_32": {"image_size": 64}}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **KWARGS.get(name, {})).eval()


# Families whose structures others in the matrix share (Inception-v3's concatenated branches are GoogLeNet's, at
# twice the cost; MnasNet's inverted residuals MobileNetV2's, RegNet's grouped convs and squeeze-and-excitation
# ResNeXt's and EfficientNet's): CI leaves them to `pytest -m slow`, and benchmarks/coverage.py checks every
# torchvision classifier.
LIKE_OTHERS = {"inception", "mnasnet", "regnet"}
FAMILIES = [pytest.param(f, marks=pytest.mark.slow) if f in LIKE_OTHERS else f for f in sorted(SUPPORTED)]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_compresses_correctly(family):
    name, size = SUPPORTED[family]
    r = ibprune.check_model(_model(name), torch.randn(1, 3, size, size), macs=0.6)
    assert r["macs_fraction"] <= 0.6 and r["output_shape_ok"]
    assert r["params_after"] < r["params_before"]  # check_model raised if ONNX had differed beyond 1e-4 relative
    if family in ("vit", "swin"):  # whole heads leave, and each attention layer's head count says so
        attention = [m for m in r["model"].modules() if isinstance(m, HeadAttention)]
        assert len(attention) == 12 and sum(m.num_heads for m in attention) < r["heads_before"]
        assert all(m.q.out_features == m.num_heads * m.head_dim for m in attention)


class HandShuffled(torch.nn.Module):
    """A user's own channel shuffle (view / transpose / view), which torch-pruning maps as if it kept channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 1), torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(channel_shuffle(self.a(x), 2)).mean((2, 3)))


@pytest.mark.parametrize("zero_classifier", [False, True])
def test_an_operation_torch_pruning_misreads_is_refused_before_training_naming_the_group(zero_classifier):
    model = HandShuffled().eval()
    if zero_classifier:  # as ViT initialises its head: every output equal, unless check_model perturbs it
        torch.nn.init.zeros_(model.head.weight)
    with pytest.raises(UnsupportedModelError, match="would change what it computes \\(group\\(s\\) rooted at a\\)"):
        ibprune.check_model(model, torch.randn(1, 3, 16, 16), macs=0.6, round_to=1)


def test_a_group_search_that_does_not_finish_is_stopped_with_a_reason(monkeypatch):
    monkeypatch.setattr(ibprune.core.groups, "GRAPH_TIME_LIMIT_S", 0.001)  # what torch-pruning does on maxvit
    with pytest.raises(UnsupportedModelError, match="did not finish within 0.001 s"):
        ibprune.check_model(_model("resnet18"), torch.randn(1, 3, 64, 64), macs=0.6)


# Every mutant on a family of each structure (a residual add, a concat, a channel shuffle, squeeze-and-excitation
# with depthwise convs, attention heads), and the plainest on every family CI checks but ViT, whose heads are blamed
# as Swin's are, at 3x the cost; `pytest -m slow` runs the whole matrix.
STRUCTURES = {"resnet", "squeezenet", "shufflenet", "mobilenet_v3", "swin"}
SAMPLED = {(f, m) for f in SUPPORTED for m in MUTANTS
           if f in STRUCTURES or m == "wrong_channels" and f not in LIKE_OTHERS | {"vit"}}
WRONG_PRUNES = [pytest.param(f, m, id=f"{f}-{m}", marks=() if (f, m) in SAMPLED else pytest.mark.slow)
                for f in sorted(SUPPORTED) for m in sorted(MUTANTS)]


@pytest.mark.parametrize(("family", "mutant"), WRONG_PRUNES)
def test_a_wrong_prune_fails_the_check_naming_the_group(family, mutant, monkeypatch):
    name, size = SUPPORTED[family]
    model = _model(name)
    MUTANTS[mutant](monkeypatch)
    with pytest.raises(PruningMismatchError) as caught:
        ibprune.check_model(model, torch.randn(1, 3, size, size), macs=0.6)
    named = caught.value.groups
    assert named and all(g in str(caught.value) for g in named)
    assert set(named) <= set(dict(model.named_modules())) | {n for n, _ in _rewritten(model).named_modules()}


def _rewritten(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    from ibprune.rewrites import rewrite

    copied = copy.deepcopy(model)
    rewrite(copied)
    return copied
