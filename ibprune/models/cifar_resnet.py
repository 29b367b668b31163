"""The CIFAR ResNets of He et al. (2016): 3 stages of BasicBlocks, 16/32/64 channels, depth = 6n + 2.

The downsampling shortcut is "option A": ``x[:, :, ::2, ::2]`` zero-padded by ``planes // 4`` channels on each
side, no parameters. A channel-dimension ``F.pad`` hides the coupling between the two streams from
torch-pruning, so by default the shortcut is built as its exact equivalent, a 1x1 stride-2 convolution whose
weight is a zero-padded identity (``shortcut="conv"``); ``shortcut="pad"`` builds the original. Both load the
same checkpoints (the conv's weight is not in them: it is fixed by construction) and give the same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTHS = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Option A as published: subsample, then zero-pad the channels."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class ConvShortcut(nn.Conv2d):
    """Option A as a 1x1 stride-2 conv with a zero-padded identity weight: the same function, visible to pruning.

    Checkpoints of the parameter-free original lack its weight; loading one keeps the identity weight.
    """

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__(in_planes, planes, kernel_size=1, stride=2, bias=False)
        with torch.no_grad():
            self.weight.zero_()
            pad = planes // 4
            for c in range(in_planes):
                self.weight[pad + c, c, 0, 0] = 1.0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "weight" not in state_dict:  # a checkpoint of the parameter-free shortcut
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "conv":
            self.shortcut = ConvShortcut(in_planes, planes)
        else:
            self.shortcut = PadShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs; module names match the published checkpoints."""

    def __init__(self, depth: int = 56, num_classes: int = 10, shortcut: str = "conv") -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (e.g. {DEPTHS}), got {depth}")
        if shortcut not in ("conv", "pad"):
            raise ValueError(f"shortcut must be 'conv' or 'pad', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, ConvShortcut):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _factory(depth: int):
    def build(num_classes: int = 10, shortcut: str = "conv") -> CifarResNet:
        return CifarResNet(depth, num_classes, shortcut)

    build.__name__ = f"cifar_resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (option-A shortcut as a 1x1 conv unless ``shortcut='pad'``)."
    return build


cifar_resnet20 = _factory(20)
cifar_resnet32 = _factory(32)
cifar_resnet44 = _factory(44)
cifar_resnet56 = _factory(56)
cifar_resnet110 = _factory(110)
