"""The IB objective's compression term and the rule that sets its weight ``beta`` from the budget.

Loss = task loss + ``beta * sum_c w_c KL_c / sum_c w_c``. The task loss bounds ``-I(Z;Y)``; ``KL_c`` bounds the
information channel ``c`` passes; ``w_c`` is the channel's marginal cost (MACs or params), so an expensive
channel must earn its keep.

``beta`` is not a knob the user tunes: a controller raises it (multiplicatively) while the channels that are
still *open* (signal-to-noise ``alpha_c = mu_c^2 / sigma_c^2 >= 1``) cost more than the budget, and lowers it
once they fit. The pressure is strong exactly as long as the network is over budget, and it stops squeezing the
channels that are left once the budget is met.
"""

from __future__ import annotations

import math

import torch

from ibprune.costs import CostModel
from ibprune.gates import GateSet


class BudgetController:
    """Multiplicative controller for ``beta``; ``fixed=True`` keeps ``beta`` constant (for experts)."""

    def __init__(self, cost_model: CostModel, target: float, total_steps: int, beta: float = 1e-3,
                 fixed: bool = False, open_alpha: float = 1.0) -> None:
        self.cost_model = cost_model
        self.target = target
        self.beta = beta
        self.fixed = fixed
        self.open_alpha = open_alpha
        # one decade of beta per ~15 % of the gate phase, slow next to how fast the gates move
        self.rate = min(0.05, max(0.005, math.log(10.0) / max(1.0, 0.15 * total_steps)))
        self.open_fraction = 1.0

    def open_channels(self, gates: GateSet) -> dict[str, torch.Tensor]:
        """1 for each channel whose signal-to-noise ratio is at least ``open_alpha``, else 0."""
        return {g.name: (gates[g.name].alpha().detach().cpu() >= self.open_alpha).float() for g in gates.groups}

    def update(self, gates: GateSet) -> float:
        """Measure the open channels' cost fraction and adapt ``beta``; returns the new ``beta``."""
        self.open_fraction = self.cost_model.fraction(self.open_channels(gates))
        if not self.fixed:
            error = (self.open_fraction - self.target) / 0.05
            self.beta *= math.exp(self.rate * max(-1.0, min(1.0, error)))
            self.beta = min(max(self.beta, 1e-6), 1e3)
        return self.beta



def calibrate_beta(model, gates: GateSet, weights: dict[str, torch.Tensor], loader, device: torch.device,
                   batches: int = 4, scale: float = 0.3) -> float:
    """A starting ``beta``: ``scale`` x the ratio of the task loss's to the KL term's mean gradient on ``mu``.

    At that ratio the two forces on a typical gate balance; starting below it lets the controller raise the
    pressure gradually instead of climbing through decades.
    """
    import torch.nn.functional as F

    from ibprune.train import batches as take

    mus = [g.mu for g in gates.gates.values()]
    task = torch.zeros(())
    for x, y in take(loader, batches):
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        task = task + torch.cat([g.abs().flatten() for g in torch.autograd.grad(loss, mus)]).mean().cpu()
    kl = torch.autograd.grad(gates.weighted_kl(weights), mus)
    kl_mean = torch.cat([g.abs().flatten() for g in kl]).mean().cpu()
    return float(scale * (task / batches) / kl_mean.clamp_min(1e-12))
