import pytest
import torch

import ibprune
from ibprune.criteria import CRITERIA, criterion_scores
from ibprune.groups import find_groups


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_every_channel(digits_net, random_loader, criterion):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    scores = criterion_scores(digits_net, x, groups, criterion, random_loader(), torch.device("cpu"))
    assert {g.name: (g.size,) for g in groups} == {n: tuple(s.shape) for n, s in scores.items()}
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert all(p.grad is None for p in digits_net.parameters())


def test_l1_prefers_large_filters(digits_net):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    with torch.no_grad():
        digits_net.features[3].body[0].weight[5].mul_(100.0)
    scores = criterion_scores(digits_net, x, groups, "l1")
    assert int(scores["features.3.body.0"].argmax()) == 5


def test_compress_with_a_baseline_criterion(digits_net, random_loader):
    loader = random_loader()
    val = random_loader(n=1024, batch=128)  # enough near-ties that noisy gates would change some predictions
    result = ibprune.compress(digits_net, loader, val, macs=0.5, criterion="taylor", gate_epochs=1.0,
                              finetune_epochs=0.5, round_to=1, latency_runs=3, bench_batch=4, verbose=False)
    rep = result.report
    assert rep["criterion"] == "taylor" and rep["gates"]["steps"] == 0 and rep["achieved"]["macs"] <= 0.5
    assert rep["accuracy"]["gated"] == rep["accuracy"]["original"]  # no gate phase: the network is untouched
    assert rep["gates"]["information_nats"] is None


def test_unknown_criterion(digits_net):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    with pytest.raises(ValueError, match="unknown criterion"):
        criterion_scores(digits_net, x, groups, "magic")
