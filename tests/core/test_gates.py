import math

import pytest
import torch

from ibprune.core.gates import GateSet, IBGate
from ibprune.core.groups import find_groups


def test_kl_matches_the_formula():
    g = IBGate(3)
    with torch.no_grad():
        g.mu.copy_(torch.tensor([1.0, 0.5, 0.0]))
        g.log_sigma2.copy_(torch.tensor([0.0, math.log(0.25), -2.0]))
    expected = torch.tensor([0.5 * math.log(2.0), 0.5 * math.log(2.0), 0.0])
    assert torch.allclose(g.kl(), expected, atol=1e-6)
    assert torch.allclose(g.alpha(), torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)
    assert not g.information().requires_grad


def test_eval_is_deterministic_and_training_is_noisy():
    g = IBGate(5, mu=0.7, log_sigma2=0.0)
    g.eval()
    assert torch.equal(g.sample(4), g.sample(4))
    assert torch.allclose(g.sample(4), torch.full((1, 5), 0.7))
    g.train()
    a, b = g.sample(4), g.sample(4)
    assert a.shape == (4, 5) and not torch.equal(a, b)


def test_each_example_of_a_batch_draws_its_own_noise(digits_net):
    """Two identical examples in one training batch are gated by different ``z``: the noise is per example, not
    one draw shared by the batch (which would make the KL bound describe a different channel)."""
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1).contiguous()
    _, groups = find_groups(digits_net, x[:1])
    gates = GateSet(groups).attach(digits_net)
    gates.train()
    reads = []
    layer = dict(digits_net.named_modules())[next(iter(groups[0].gate_sites))]
    layer.register_forward_pre_hook(lambda m, a: reads.append(a[0]))
    with torch.no_grad():
        out = digits_net(x)
    assert not torch.equal(reads[-1][0], reads[-1][1])  # gated inputs of the same example differ
    assert not torch.allclose(out[0], out[1])
    gates.eval()
    with torch.no_grad():
        out = digits_net(x)
    assert torch.equal(out[0], out[1])


def test_gradients_reach_mu_and_sigma(digits_net):
    x = torch.randn(4, 1, 8, 8)
    _, groups = find_groups(digits_net, x[:1])
    gates = GateSet(groups).attach(digits_net)
    gates.train()
    loss = digits_net(x).pow(2).mean() + gates.weighted_kl({g.name: torch.ones(g.size) for g in groups})
    loss.backward()
    for gate in gates.gates.values():
        assert gate.mu.grad is not None and gate.mu.grad.abs().sum() > 0
        assert gate.log_sigma2.grad is not None and gate.log_sigma2.grad.abs().sum() > 0


def test_attach_detach_leaves_the_model_untouched(digits_net):
    x = torch.randn(3, 1, 8, 8)
    before = digits_net(x)
    state = {k: v.clone() for k, v in digits_net.state_dict().items()}
    _, groups = find_groups(digits_net, x[:1])
    gates = GateSet(groups).attach(digits_net)
    with torch.no_grad():
        for gate in gates.gates.values():
            gate.mu.mul_(0.5)
    gates.eval()
    assert not torch.allclose(digits_net(x), before)
    gates.detach()
    assert torch.equal(digits_net(x), before)
    assert all(torch.equal(v, state[k]) for k, v in digits_net.state_dict().items())
    assert not any(m._forward_pre_hooks for m in digits_net.modules())


def test_fold_reproduces_the_gated_model(digits_net):
    import copy

    x = torch.randn(3, 1, 8, 8)
    _, groups = find_groups(digits_net, x[:1])
    gates = GateSet(groups).attach(digits_net).eval()
    with torch.no_grad():
        for gate in gates.gates.values():
            gate.mu.uniform_(-1.0, 2.0)
    gated = digits_net(x)
    gates.detach()
    folded = copy.deepcopy(digits_net)
    gates.fold(folded)
    assert torch.allclose(folded(x), gated, atol=1e-5)


def test_shut_channels_pass_nothing(digits_net):
    x = torch.randn(2, 1, 8, 8)
    _, groups = find_groups(digits_net, x[:1])
    gates = GateSet(groups).attach(digits_net).eval()
    g = groups[0]
    reads = []
    layer = dict(digits_net.named_modules())[next(iter(g.gate_sites))]
    layer.register_forward_pre_hook(lambda m, a: reads.append(a[0]))
    with gates.shut({g.name: [0, 2]}):
        digits_net(x)
    site = g.gate_sites[layer_name(digits_net, layer)]
    channels = [c for c, p in zip(site.channels, site.gates) if p in (0, 2)]
    # the recording hook runs after the gate hook, so it sees the gated input
    assert reads and reads[-1][:, channels].abs().max() == 0


def layer_name(model, layer):
    return next(n for n, m in model.named_modules() if m is layer)


def test_attach_twice_is_refused(digits_net):
    _, groups = find_groups(digits_net, torch.randn(1, 1, 8, 8))
    gates = GateSet(groups).attach(digits_net)
    with pytest.raises(RuntimeError, match="already attached"):
        gates.attach(digits_net)
