"""The demo: a small CNN trained for a few seconds on scikit-learn's digits, then compressed to half its MACs."""

from __future__ import annotations

import hashlib

import torch

from ibprune.core.train import OptimizerConfig, fit, steps_for
from ibprune.data.loaders import digits_loaders
from ibprune.files import atomic_path, cache_dir
from ibprune.models.digits import DigitsNet

#: Settings of the demo's compression (also the ones ``pipelines/digits.toml`` spells out).
DEMO = {"macs": 0.5, "gate_epochs": 30.0, "finetune_epochs": 10.0, "lr": 0.01, "gate_lr": 0.02}
_TRAINING = OptimizerConfig(lr=0.05, weight_decay=5e-4)


def pretrained_digits_net(num_classes: int = 10, epochs: float = 15.0, seed: int = 0) -> DigitsNet:
    """The demo's "pretrained" model: ``DigitsNet`` trained ``epochs`` on the digits.

    Trained once and kept in ``cache_dir()/demo``, keyed by everything that decides the weights (architecture,
    recipe, seed, torch version), so the next call (a rerun, each rank of a ``torchrun`` job) loads it instead of
    training it again: training takes seconds on 2 cores, but every rank of a job pays them at once.
    """
    if num_classes != 10:
        raise ValueError("the digits data has 10 classes")
    torch.manual_seed(seed)
    model = DigitsNet(num_classes)
    recipe = f"{model!r} {_TRAINING} epochs={epochs} seed={seed} torch={torch.__version__}"
    cached = cache_dir() / "demo" / f"digits-net-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.pt"
    if cached.is_file():
        model.load_state_dict(torch.load(cached, weights_only=True))
        return model.eval()
    train, _ = digits_loaders(seed=seed)
    fit(model, train, steps_for(epochs, train), torch.device("cpu"), _TRAINING, verbose=False)
    with atomic_path(cached) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()
