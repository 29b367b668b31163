"""The demo's model and its promise."""

from __future__ import annotations

import pytest
import torch

import ibprune
import ibprune.demo
from ibprune.demo import DEMO, pretrained_digits_net


def test_the_demo_model_is_trained_once_and_then_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("IBPRUNE_CACHE", str(tmp_path))
    first = pretrained_digits_net(epochs=0.5)
    assert len(list((tmp_path / "demo").iterdir())) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the weights were cached")

    monkeypatch.setattr(ibprune.demo, "fit", no_training)
    again = pretrained_digits_net(epochs=0.5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    with pytest.raises(AssertionError, match="trained again"):  # another recipe is another model
        pretrained_digits_net(epochs=0.5, seed=1)


def test_demo_meets_its_promise():
    """The README's claim: the digits CNN at <= 50 % MACs stays within 2 points of its accuracy."""
    from ibprune.data.loaders import digits_loaders

    train, test = digits_loaders()
    result = ibprune.compress(pretrained_digits_net(), train, test, latency_runs=5, verbose=False, **DEMO)
    rep = result.report
    assert rep["achieved"]["macs"] <= 0.5
    assert rep["compressed"]["accuracy"] >= rep["original"]["accuracy"] - 0.02
