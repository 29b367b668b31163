"""Shared fixtures: tiny models and loaders that make every test fast on a 2-core CPU."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ibprune.models import DigitsNet


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Under pytest-xdist (``-n 2``) each worker computes on one thread, so two workers share the 2 cores
    instead of four threads fighting over them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def digits_net() -> DigitsNet:
    """A randomly initialised demo CNN with BN statistics that are not the identity."""
    net = DigitsNet(width=16)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _random_loader(shape=(1, 8, 8), n: int = 32, batch: int = 8, classes: int = 10) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


@pytest.fixture
def random_loader():
    """Factory of loaders over random images and labels: exercises every stage, learns nothing."""
    return _random_loader


@pytest.fixture
def image_tree():
    """Factory writing an ImageFolder tree of random PNGs: ``root/<split>/<class>/<i>.png``."""
    import numpy as np
    from PIL import Image

    def make(root, splits=("train", "val"), classes=("cat", "dog"), per_class=3, size=20):
        rng = np.random.default_rng(0)
        for split in splits:
            for cls in classes:
                (root / split / cls).mkdir(parents=True)
                for i in range(per_class):
                    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
        return root

    return make
