"""The gate phase's objective: ``task loss + beta * sum_c w_c KL_c / sum_c w_c``, and how ``beta`` is set.

The task loss bounds ``-I(Z;Y)``; ``KL_c`` bounds the information channel ``c`` passes; ``w_c`` is the channel's
marginal cost (MACs or params), so an expensive channel must earn its keep, rescaled per unit kind where a model
has several (attention heads beside channels: ``balance_units``). ``beta`` is not a knob to tune.

The phase has two parts:

1. **Explore** (the first half): a gentle, fixed ``beta`` (by default a tenth of the value at which the two
   terms' gradients on the gate means balance, measured on a few batches) lets every channel show how much
   the task needs it; unneeded channels lose information, needed ones keep it. Gentle matters: a stronger
   explore shuts the budget's worth of channels on its own, before any squeeze, and the pruned network ends
   worse (``benchmarks/results/gate_trace.md``, ``benchmarks/cifar10_findings.md``).
2. **Squeeze** (at most the second half): the channels the budget will remove are fixed from the explore
   ranking (lowest information, exactly as the pruning step plans), and the KL pressure falls on them alone,
   rising until every one of them is shut (``alpha_c = mu_c^2 / sigma_c^2 < 1``). The kept channels train
   freely, so the network learns to do without the removed ones *before* they are cut. The phase ends as soon as
   all are shut: what is left of its steps trains the slim network instead (a step of the gated network costs
   what a step of the full one does, and the pruned network learns the same thing faster).

A single global ``beta`` pushed by a budget controller was tried first: with Adam on the gates every gate moves
at the learning rate once the KL gradient outweighs its task gradient, the open/shut signal lags that by tens
of steps, and on a pretrained ResNet-20 the controller overshot and shut almost every channel at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ibprune.core import distributed
from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.prune import plan, scores

if TYPE_CHECKING:
    from ibprune.core.train import OptimizerConfig

#: The fraction of the gate phase spent exploring before the squeeze.
EXPLORE = 0.5


class GatePressure:
    """``beta`` and the per-channel weights ``w_c`` over the gate phase (explore, then squeeze).

    ``ranking``: the scores the squeeze's plan is made from (higher = keep), instead of the gates' information:
    another criterion's ranking under IB's schedule. ``kl``: the KL weights ``w_c`` (``kl_weights``,
    ``balance_units``); by default each channel's marginal cost.
    """

    def __init__(self, gates: GateSet, cost_model: CostModel, target: float, total_steps: int, beta: float,
                 round_to: int | str | None = None, explore: float = EXPLORE, per_cost: bool = False,
                 min_channels: int = 1, ranking: Callable[[], dict[str, torch.Tensor]] | None = None,
                 kl: dict[str, torch.Tensor] | None = None) -> None:
        self.gates, self.cost_model, self.target, self.round_to = gates, cost_model, target, round_to
        self.ranking = ranking
        self.min_channels = min_channels
        self.costs = cost_model.channel_costs()
        self.kl_weights = self.costs if kl is None else kl
        self.weights = dict(self.kl_weights)
        self.beta = self.beta_explore = beta
        self.switch = int(explore * total_steps)
        self.rate = math.log(1e3) / max(1.0, 0.5 * (total_steps - self.switch))  # 1000x within half the squeeze
        self.removal: dict[str, list[int]] | None = None
        self.per_cost, self.total_steps = per_cost, total_steps
        self.open: int | None = None  # planned channels still open, counted by `update` once the squeeze runs
        self.steps_taken = 0
        if self.switch == 0 and total_steps > 0:
            self._plan()  # squeeze only: the gates were explored before

    def loss(self) -> torch.Tensor:
        """``beta * sum_c w_c KL_c / sum_c w_c`` (zero once nothing is weighted)."""
        if not any(float(w.sum()) > 0 for w in self.weights.values()):
            return torch.zeros((), device=next(self.gates.parameters()).device)
        return self.beta * self.gates.weighted_kl(self.weights)

    def update(self, step: int) -> dict:
        """After optimizer step ``step``: switch to squeeze at the midpoint, then raise ``beta`` until all shut."""
        if self.removal is None and self.switch <= step + 1 < self.total_steps:
            self._plan()
        self.open = self.open_to_remove() if self.removal is not None else None
        if self.open:
            self.beta *= math.exp(self.rate)
        return {"beta": f"{self.beta:.2g}", "phase": "squeeze" if self.removal is not None else "explore"}

    def done(self) -> bool:
        """Whether the squeeze has shut every channel it removes (as of the last ``update``)."""
        return self.open == 0

    def plan(self) -> dict[str, list[int]]:
        """The channels the budget removes by the current ranking (lowest information first, or ``ranking``)."""
        score = self.ranking() if self.ranking is not None else scores(self.gates.information(), self.costs,
                                                                       self.per_cost)
        return plan(score, self.cost_model, self.target, self.gates.groups, self.round_to, self.min_channels)[0]

    def _plan(self) -> None:
        """Fix the channels to remove from the current ranking; from now on only they feel the KL pressure."""
        self.removal = self.plan()
        self.weights = {n: torch.zeros_like(c) for n, c in self.costs.items()}
        for n, idxs in self.removal.items():
            self.weights[n][idxs] = self.kl_weights[n][idxs]

    def open_to_remove(self, removal: dict[str, list[int]] | None = None) -> int:
        """How many channels slated for removal (the squeeze's, or ``removal``) still pass information
        (``alpha >= 1``)."""
        removal = self.removal if removal is None else removal
        if not removal:
            return 0
        return sum(int((self.gates[n].alpha().detach()[idxs] >= 1.0).sum()) for n, idxs in removal.items())


def kl_weights(costs: dict[str, torch.Tensor], cost_weighted: bool = True) -> dict[str, torch.Tensor]:
    """``w_c``: each channel's marginal cost (``costs``), or 1 for every channel (``cost_weighted=False``)."""
    return costs if cost_weighted else {n: torch.ones_like(c) for n, c in costs.items()}


def gate_pulls(model, gates: GateSet, weights: dict[str, torch.Tensor], loader, device: torch.device,
               batches: int = 4) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """How hard the task loss (mean over ``batches`` batches) and the weighted KL term pull on each gate mean:
    ``|d loss / d mu_c|`` per group, on the CPU."""
    import torch.nn.functional as F

    from ibprune.core.train import batches as take

    names = [g.name for g in gates.groups]
    mus = [gates[n].mu for n in names]
    task = [torch.zeros(m.shape) for m in mus]
    for x, y in take(loader, batches):
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        task = [t + g.abs().cpu() / batches for t, g in zip(task, torch.autograd.grad(loss, mus), strict=True)]
    kl = torch.autograd.grad(gates.weighted_kl({n: weights[n] for n in names}), mus)
    return dict(zip(names, task, strict=True)), {n: g.abs().cpu() for n, g in zip(names, kl, strict=True)}


def calibrate_beta(model, gates: GateSet, weights: dict[str, torch.Tensor], loader, device: torch.device,
                   batches: int = 4, scale: float = 0.1) -> float:
    """The explore ``beta``: ``scale`` x the ratio of the task loss's to the KL term's mean gradient on ``mu``.

    At that ratio the two forces on a typical gate balance; below it the task keeps the channels it needs
    while the others lose information, which is what the explore ranking has to show.
    """
    task, kl = gate_pulls(model, gates, weights, loader, device, batches)
    kl_mean = torch.cat(list(kl.values())).mean()
    return float(scale * torch.cat(list(task.values())).mean() / kl_mean.clamp_min(1e-12))


def balance_units(model, gates: GateSet, weights: dict[str, torch.Tensor], loader, device: torch.device,
                  batches: int = 4) -> dict[str, torch.Tensor]:
    """``weights`` rescaled per unit kind (attention heads, channels) so that the KL term pulls on each kind's
    gates in the same proportion to that kind's task gradient.

    Why: a head costs as much as dozens of FFN units, so cost-weighted KL presses heads far harder than their
    task gradient resists (IB strips them), and unweighted KL the reverse (``benchmarks/text_findings.md``).
    Within a kind the weights keep their ratios; with one kind (a CNN) they are returned as they are.
    """
    kinds: dict[str, list[str]] = {}
    for g in gates.groups:
        kinds.setdefault(g.unit, []).append(g.name)
    if len(kinds) < 2:
        return weights  # nothing to balance (and no batches drawn: the run stays what it was)
    task, kl = gate_pulls(model, gates, weights, loader, device, batches)
    out = {}
    for names in kinds.values():
        ratio = torch.cat([task[n] for n in names]).mean() / torch.cat([kl[n] for n in names]).mean().clamp_min(1e-12)
        out.update({n: weights[n] * float(ratio) for n in names})
    return out


def train_gates(model, gates: GateSet, cost_model: CostModel, loader, device: torch.device, target: float,
                steps: int, *, weights: OptimizerConfig, gate_lr: float, beta: float | None = None,
                round_to: int | str | None = None, per_cost: bool = False, explore: float = EXPLORE,
                min_channels: int = 1, on_step: Callable[[int, GatePressure], None] | None = None,
                ranking: Callable[[], dict[str, torch.Tensor]] | None = None, cost_weighted: bool = True,
                balance: bool = False, kl: dict[str, torch.Tensor] | None = None,
                verbose: bool = True) -> GatePressure:
    """The gate phase: up to ``steps`` batches of task loss + IB term, gates on Adam, weights on ``weights`` (at a
    constant learning rate).

    ``explore`` is the fraction of the steps spent exploring before the squeeze (1.0: explore only; 0.0:
    squeeze only, planned from the gates as they are, as a sweep does per budget after one shared explore).
    ``on_step(step, pressure)`` runs after each step's schedule update (to trace the phase). ``ranking``: the
    squeeze's plan comes from these scores instead of the gates; ``cost_weighted=False``: the KL of every channel
    weighs the same (``kl_weights``); ``balance``: rescaled per unit kind (``balance_units``). ``kl``, with
    ``beta``: the KL weights an earlier explore calibrated (``GatePressure.kl_weights``).
    The phase ends once the squeeze has shut every planned channel. Ends with the gates in eval mode and the BN
    statistics re-estimated for them; returns the schedule, whose ``removal`` is the plan the squeeze enforced
    and ``steps_taken`` the steps the phase ran.
    """
    from ibprune.core.train import fit, recalibrate_bn

    gates.train()
    model.train()
    if kl is None:
        kl = kl_weights(cost_model.channel_costs(), cost_weighted)
        if balance and steps:
            kl = distributed.from_writer(balance_units(model, gates, kl, loader, device))
    if beta is None and steps:
        beta = distributed.from_writer(calibrate_beta(model, gates, kl, loader, device))
    pressure = GatePressure(gates, cost_model, target, steps, beta or 0.0, round_to, explore, per_cost,
                            min_channels, ranking, kl)
    gate_opt = torch.optim.Adam(gates.parameters(), lr=gate_lr)

    def after_step(step: int) -> dict:
        with torch.no_grad():
            for g in gates.gates.values():
                g.log_sigma2.clamp_(-12.0, 0.0)  # noise at most as large as the signal it gates
        shown = pressure.update(step)
        if on_step is not None:
            on_step(step, pressure)
        return shown

    run = fit(model, loader, steps, device, dataclasses.replace(weights, schedule="constant"),
              extra_optimizers=[gate_opt], penalty=pressure.loss, after_step=after_step, stop=pressure.done,
              desc="gates", verbose=verbose, also=gates)
    pressure.steps_taken = run["steps"]
    gates.eval()
    if steps:
        recalibrate_bn(model, loader, device)
    return pressure
