import math

import pytest
import torch

from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.groups import find_groups
from ibprune.core.objective import GatePressure, balance_units, calibrate_beta, gate_pulls, kl_weights
from ibprune.pipeline.config import CompressConfig
from tests.core.test_prune import removal_fraction

X = torch.randn(1, 1, 8, 8)


def _setup(net):
    _, groups = find_groups(net, X)
    cost_model = CostModel(net, X, groups)
    return GateSet(groups).attach(net), cost_model


def test_calibrated_beta_balances_the_gradients(digits_net, random_loader):
    """At ``scale=1`` the beta-weighted KL term pulls on the gate means as hard, on average, as the task loss."""
    import torch.nn.functional as F

    gates, cost_model = _setup(digits_net)
    gates.eval()  # z = mu: the task gradient is the same in every draw
    digits_net.eval()
    costs, cpu = cost_model.channel_costs(), torch.device("cpu")
    beta = calibrate_beta(digits_net, gates, costs, random_loader(), cpu, batches=4, scale=1.0)
    mus = [g.mu for g in gates.gates.values()]

    def mean_pull(loss):
        return float(torch.cat([g.abs().flatten() for g in torch.autograd.grad(loss, mus)]).mean())

    task = sum(mean_pull(F.cross_entropy(digits_net(x), y)) for x, y in list(random_loader())[:4]) / 4
    assert math.isfinite(beta) and beta > 0
    assert mean_pull(beta * gates.weighted_kl(costs)) == pytest.approx(task, rel=1e-4)
    assert calibrate_beta(digits_net, gates, costs, random_loader(), cpu, scale=0.1) == pytest.approx(0.1 * beta)


def test_explore_then_squeeze(digits_net):
    gates, cost_model = _setup(digits_net)
    pressure = GatePressure(gates, cost_model, target=0.5, total_steps=10, beta=0.1, round_to=1)
    assert pressure.switch == 5 and pressure.removal is None
    assert all(torch.equal(pressure.weights[n], c) for n, c in pressure.costs.items())
    explore = float(pressure.loss().detach())
    assert explore > 0
    for step in range(4):
        assert pressure.update(step)["phase"] == "explore" and pressure.beta == 0.1
        assert not pressure.done()
    assert pressure.update(4)["phase"] == "squeeze"
    assert pressure.plan() == pressure.removal  # the plan fixed is the one the ranking gives (gates unchanged)
    # the squeeze weighs exactly the channels the budget removes, and nothing else
    removed = {(n, i) for n, idxs in pressure.removal.items() for i in idxs}
    for n, w in pressure.weights.items():
        for i, v in enumerate(w.tolist()):
            assert (v > 0) == ((n, i) in removed)
    assert removal_fraction(cost_model, pressure.removal) <= 0.5
    # beta rises while a channel to remove is open, and stops once all are shut
    assert pressure.beta > 0.1 and pressure.open_to_remove() > 0 and not pressure.done()
    first = next(iter(pressure.removal))
    assert pressure.open_to_remove({first: pressure.removal[first]}) == len(pressure.removal[first])
    with torch.no_grad():
        for n, idxs in pressure.removal.items():
            gates[n].mu[idxs] = 0.0
    held = pressure.beta
    pressure.update(5)
    assert pressure.open_to_remove() == 0 and pressure.beta == held and float(pressure.loss().detach()) == 0.0
    assert pressure.done()


def test_uniform_weights_press_every_channel_alike(digits_net):
    """Unweighted KL (``kl_weights(costs, False)``): explore weighs every KL by 1, the squeeze its planned channels
    by 1 (costs differ)."""
    gates, cost_model = _setup(digits_net)
    costs = cost_model.channel_costs()
    assert len({round(float(c), 9) for w in costs.values() for c in w}) > 1  # a check that could fail
    pressure = GatePressure(gates, cost_model, target=0.5, total_steps=10, beta=0.1, round_to=1,
                            kl=kl_weights(costs, cost_weighted=False))
    assert all(torch.equal(w, torch.ones_like(costs[n])) for n, w in pressure.weights.items())
    mean_kl = torch.cat([g.kl() for g in gates.gates.values()]).mean()
    assert float(pressure.loss().detach()) == pytest.approx(0.1 * float(mean_kl.detach()))
    pressure.update(4)
    removed = {(n, i) for n, idxs in pressure.removal.items() for i in idxs}
    assert removed and all(v == float((n, i) in removed) for n, w in pressure.weights.items()
                           for i, v in enumerate(w.tolist()))


def test_balanced_weights_pull_on_each_unit_kind_alike(digits_net, random_loader):
    """Per unit kind, the KL term's pull over the task's is the same after ``balance_units``; within a kind the
    weights keep their ratios; with one kind they are returned as they are."""
    gates, cost_model = _setup(digits_net)
    gates.eval()  # z = mu: the same task gradient in every call
    costs, cpu = cost_model.channel_costs(), torch.device("cpu")
    assert balance_units(digits_net, gates, costs, random_loader(), cpu) is costs  # one kind: as they were
    gates.groups[0].unit = "head"  # two kinds, as in an encoder
    kinds = {"head": [gates.groups[0].name], "channel": [g.name for g in gates.groups[1:]]}

    def ratios(weights):
        task, kl = gate_pulls(digits_net, gates, weights, random_loader(), cpu)
        return {k: float(torch.cat([kl[n] for n in ns]).mean() / torch.cat([task[n] for n in ns]).mean())
                for k, ns in kinds.items()}

    before, balanced = ratios(costs), balance_units(digits_net, gates, costs, random_loader(), cpu)
    after = ratios(balanced)
    assert before["head"] / before["channel"] != pytest.approx(1.0, rel=0.05)  # a check that could fail
    assert after["head"] == pytest.approx(after["channel"], rel=1e-4)
    for names in kinds.values():
        scale = {n: balanced[n] / costs[n] for n in names}
        first = float(scale[names[0]][0])
        assert all(torch.allclose(s, torch.full_like(s, first)) for s in scale.values())


def test_the_squeeze_shuts_every_channel_the_budget_removes():
    """On the demo's real data: after the gate phase the planned channels pass (almost) nothing."""
    from ibprune.core.objective import train_gates
    from ibprune.core.prune import prune_to_budget
    from ibprune.core.train import evaluate
    from ibprune.data.loaders import digits_loaders
    from ibprune.demo import pretrained_digits_net

    train, test = digits_loaders()
    net = pretrained_digits_net(epochs=8)
    _, groups = find_groups(net, X)
    cost_model = CostModel(net, X, groups)
    gates = GateSet(groups).attach(net)
    cpu = torch.device("cpu")
    seen = []
    pressure = train_gates(net, gates, cost_model, train, cpu, 0.5, steps=240, round_to=1, verbose=False,
                           weights=CompressConfig().for_model(False).weights(), gate_lr=CompressConfig.gate_lr,
                           on_step=lambda step, p: seen.append((step, p.removal is not None)))
    assert pressure.removal and pressure.open_to_remove() == 0
    assert [s for s, _ in seen] == list(range(pressure.steps_taken)) and seen[-1][1] and not seen[0][1]
    assert 120 <= pressure.steps_taken < 240  # explore takes half; the squeeze ends once all are shut
    assert all(float(gates[n].information()[idxs].max()) < 0.35 for n, idxs in pressure.removal.items())
    gated = evaluate(net, test, cpu)
    result = prune_to_budget(net, gates, groups, X, cost_model, 0.5, round_to=1)
    assert all(set(idxs) <= set(result.removed.get(n, [])) for n, idxs in pressure.removal.items())
    assert evaluate(result.model, test, cpu) >= gated - 0.01  # removing the shut channels costs (almost) nothing
