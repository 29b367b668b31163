"""The demo: a small CNN trained for a few seconds on scikit-learn's digits, then compressed to half its MACs."""

from __future__ import annotations

import torch

from ibprune.core.train import OptimizerConfig, fit, steps_for
from ibprune.data.loaders import digits_loaders
from ibprune.models.digits import DigitsNet

#: Settings of the demo's compression (also the ones ``pipelines/digits.toml`` spells out).
DEMO = {"macs": 0.5, "gate_epochs": 30.0, "finetune_epochs": 10.0, "lr": 0.01, "gate_lr": 0.02}


def pretrained_digits_net(num_classes: int = 10, epochs: float = 15.0, seed: int = 0) -> DigitsNet:
    """The demo's "pretrained" model: ``DigitsNet`` trained ``epochs`` on the digits (about 3 s on 2 cores)."""
    if num_classes != 10:
        raise ValueError("the digits data has 10 classes")
    torch.manual_seed(seed)
    model = DigitsNet(num_classes)
    train, _ = digits_loaders(seed=seed)
    fit(model, train, steps_for(epochs, train), torch.device("cpu"), OptimizerConfig(lr=0.05, weight_decay=5e-4),
        verbose=False)
    return model.eval()
