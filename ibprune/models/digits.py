"""A small residual CNN for 8x8 digits: the demo's "pretrained" model."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(width, width), nn.ReLU(inplace=True), *_conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class DigitsNet(nn.Module):
    """Stem, a residual block at 8x8, a stride-2 stage with a residual block at 4x4, pooling, linear head."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, width), nn.ReLU(inplace=True), _Block(width),
            *_conv_bn(width, 2 * width, stride=2), nn.ReLU(inplace=True), _Block(2 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
