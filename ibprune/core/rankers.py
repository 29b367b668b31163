"""Rankers: what decides which channels leave. IB gates, or torch-pruning's methods for comparison.

A ranker answers one small protocol (``Ranker``): ``rank(job)`` scores every channel of every group (higher =
keep), and says whether it trains gates and what its scores measure. The pipeline never asks which ranker it
holds, so a new method is one class. torch-pruning's criteria score the dense model, normalised by
torch-pruning's default (the group's mean), and are ranked globally, as torch-pruning's global pruning does;
they share everything else with the IB gates: groups, budget search, rounding, verification, fine-tuning.
Its sparse-learning methods (DepGraph's group regulariser, GReg's growing one) train the weights first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ibprune.core import distributed
from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.groups import ChannelGroup, build_graph, classifier_layers
from ibprune.core.modes import evaluating
from ibprune.core.objective import EXPLORE, GatePressure, train_gates
from ibprune.core.prune import plan, scores
from ibprune.core.train import batches, fit, steps_for
from ibprune.errors import UnsupportedModelError


@dataclass
class RankJob:
    """What a ranker may read: the dense model (weights it may train), its groups and cost model, the data.

    ``gate()`` attaches IB gates to ``model`` and runs the pruning preflight, once; the stage calls it after
    ``rank`` if the ranker did not, so every model is checked for prunability before it is pruned.
    """

    model: nn.Module
    groups: list[ChannelGroup]
    cost_model: CostModel
    example_input: torch.Tensor
    loader: Any
    device: torch.device
    target: float                  # the fraction of the cost model's metric the budget keeps
    settings: Any                  # the run's CompressConfig (learning rates, beta, rounding, ...)
    verbose: bool = True
    preflight: Callable[[nn.Module, GateSet], None] | None = None
    gates: GateSet | None = field(default=None, init=False)

    def gate(self) -> GateSet:
        if self.gates is None:
            self.gates = GateSet(self.groups).to(self.device).attach(self.model)
            if self.preflight is not None:
                self.preflight(self.model, self.gates)
        return self.gates


@dataclass
class Ranking:
    """A ranker's answer: ``scores`` (ranked, higher = keep), ``information`` (reported per channel, in the
    ranker's unit) and ``report`` (the gate phase's summary; zeros for a ranker that trains no gates)."""

    scores: dict[str, torch.Tensor]
    information: dict[str, torch.Tensor]
    report: dict


class Ranker(Protocol):
    name: str           # as the report and the checkpoint settings name it
    unit: str           # what the scores measure (the channel picture's axis)
    title: str          # the channel picture's title
    trains_gates: bool  # whether rank() trains IB gates (a gate phase, counted in the training budget)

    def rank(self, job: RankJob) -> Ranking: ...

    def settings(self) -> dict: ...


NO_GATE_PHASE = {"steps": 0, "steps_planned": 0, "beta_explore": None, "beta_final": None, "still_open_to_remove": 0}


def _gate_report(pressure: GatePressure, planned: int) -> dict:
    """The gate phase's summary for the report (``NO_GATE_PHASE``'s fields); ``planned``: the steps it had."""
    return {"steps": pressure.steps_taken, "steps_planned": planned, "beta_explore": pressure.beta_explore,
            "beta_final": pressure.beta, "still_open_to_remove": pressure.open_to_remove()}


@dataclass
class IBRanker:
    """IB gates trained on task loss + beta * cost-weighted KL; a channel's score is the information it passes.

    ``explored``: weights, gates and ``beta`` after an explore phase shared by several budgets (a sweep);
    ``rank`` then runs only the squeeze. ``squeeze=False`` (``ib_oneshot``, an ablation): the explore part alone,
    then the channels are pruned at once, as the criteria are; the squeeze's steps go to fine-tuning. ``keep``:
    the widths to keep per group instead of the budget's (``Allocated``); the squeeze shuts the rest.
    ``balanced``: the KL weights rescaled per unit kind (attention heads, channels) so each kind's KL pulls in
    the same proportion to its task gradient (``objective.balance_units``; a no-op with one kind, as in a CNN);
    ``balanced=False`` (``ib_unbalanced``) weighs by cost alone, which on an encoder strips the heads.
    ``cost_weighted=False`` (``ib_uniform``): every channel's KL weighs the same instead of its cost.
    """

    explored: dict | None = field(default=None, repr=False)
    squeeze: bool = True
    keep: dict[str, int] | None = field(default=None, hash=False)
    cost_weighted: bool = True
    balanced: bool = True
    unit: ClassVar[str] = "nats"
    title: ClassVar[str] = "Information per channel"
    trains_gates: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return (("ib" if self.squeeze else "ib_oneshot") + ("" if self.cost_weighted else "_uniform")
                + ("" if self.balanced else "_unbalanced"))

    def rank(self, job: RankJob) -> Ranking:
        cfg, gates, beta, kl = job.settings, job.gate(), job.settings.beta, None
        steps = steps_for(cfg.gate_epochs * (1.0 if self.squeeze else EXPLORE), job.loader)
        explore = EXPLORE if self.squeeze else 1.0
        if self.explored is not None:
            job.model.load_state_dict(self.explored["model"])
            gates.load_state_dict(self.explored["gates"])
            beta, kl = self.explored["beta"], self.explored.get("kl")

        def ranked() -> dict[str, torch.Tensor]:
            found = scores(gates.information(), job.cost_model.channel_costs(), cfg.rank_per_cost)
            return found if self.keep is None else allocated(found, self.keep)

        pressure = train_gates(job.model, gates, job.cost_model, job.loader, job.device, job.target, steps,
                               beta=beta, weights=cfg.weights(), gate_lr=cfg.gate_lr,
                               round_to=cfg.round_to, min_channels=cfg.min_channels, per_cost=cfg.rank_per_cost,
                               explore=0.0 if self.explored is not None else explore,
                               ranking=None if self.keep is None else ranked, cost_weighted=self.cost_weighted,
                               balance=self.balanced, kl=kl, verbose=job.verbose)
        return Ranking(ranked(), gates.information(), _gate_report(pressure, steps_for(cfg.gate_epochs, job.loader)))

    def explore(self, job: RankJob, epochs: float) -> dict:
        """The explore half alone, for ``epochs`` (every channel shows how much the task needs it; it does not
        depend on the budget): what ``IBRanker(explored=...)`` starts from, for each of several budgets."""
        cfg, gates = job.settings, job.gate()
        pressure = train_gates(job.model, gates, job.cost_model, job.loader, job.device, job.target,
                               steps_for(epochs, job.loader), beta=cfg.beta, weights=cfg.weights(), gate_lr=cfg.gate_lr,
                               explore=1.0, cost_weighted=self.cost_weighted, balance=self.balanced,
                               verbose=job.verbose)
        gates.detach()
        return {"model": job.model.state_dict(), "gates": gates.state_dict(), "beta": pressure.beta_explore,
                "kl": pressure.kl_weights}

    def settings(self) -> dict:
        return {"criterion": self.name, "explored": self.explored is not None}


@dataclass(frozen=True)
class _Scheduled:
    """A criterion's ranking under another schedule than one-shot, over the gate phase's epochs."""

    criterion: Criterion
    trains_gates: ClassVar[bool] = True  # its schedule takes the gate phase's epochs
    suffix: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return f"{self.criterion.name}_{self.suffix}"

    @property
    def unit(self) -> str:
        return self.criterion.unit

    @property
    def title(self) -> str:
        return self.criterion.title

    def settings(self) -> dict:
        return {"criterion": self.name, "explored": False}


@dataclass(frozen=True)
class Squeezed(_Scheduled):
    """A criterion's ranking under IB's schedule (an ablation): the criterion scores the dense model, the
    channels its ranking removes are fixed, and IB gates squeeze them shut over the gate phase while the weights
    train, as IB's squeeze does its own plan; then they are pruned. Separates the ranking from the schedule."""

    suffix: ClassVar[str] = "squeeze"

    def rank(self, job: RankJob) -> Ranking:
        cfg = job.settings
        found = self.criterion.scores(job.model, job.example_input, job.groups, job.loader, job.device)
        steps = steps_for(cfg.gate_epochs, job.loader)
        pressure = train_gates(job.model, job.gate(), job.cost_model, job.loader, job.device, job.target, steps,
                               beta=cfg.beta, weights=cfg.weights(), gate_lr=cfg.gate_lr,
                               round_to=cfg.round_to, min_channels=cfg.min_channels, explore=0.0,
                               ranking=lambda: found, verbose=job.verbose)
        return Ranking(found, found, _gate_report(pressure, steps))


@dataclass(frozen=True)
class Criterion:
    """A torch-pruning importance as a ranker: it scores the dense model's channels and trains no gates."""

    name: str
    importance: Callable[[], tp.importance.Importance] = field(repr=False)
    needs_gradients: bool = False  # its scores read the task loss's gradients (on ``grad_batches`` batches)
    grad_batches: int = 10
    trains_gates: ClassVar[bool] = False

    @property
    def unit(self) -> str:
        return f"{self.name} importance"

    @property
    def title(self) -> str:
        return self.unit

    def rank(self, job: RankJob) -> Ranking:
        found = self.scores(job.model, job.example_input, job.groups, job.loader, job.device)
        return Ranking(found, found, dict(NO_GATE_PHASE))

    def settings(self) -> dict:
        return {"criterion": self.name, "explored": False}

    def scores(self, model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup], loader=None,
               device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Per-channel importance of every group (gradient criteria read ``loader``'s batches)."""
        importance = self.importance()
        graph = build_graph(model, example_input)
        if self.needs_gradients:
            if loader is None:
                raise ValueError(f"the {self.name} criterion needs training batches (loader)")
            model.zero_grad(set_to_none=True)
            with evaluating(model):
                for x, y in batches(loader, min(self.grad_batches, len(loader))):
                    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        modules = dict(model.named_modules())
        found = {}
        for g in groups:
            root = modules[g.name]
            if g.unit == "head":  # torch-pruning's group through the q/k/v rows and out_proj columns; mean per head
                group = graph.get_pruning_group(root.q, tp.prune_linear_out_channels, list(range(root.q.out_features)))
                found[g.name] = self._score(importance, group, g).view(g.size, -1).mean(dim=1)
                continue
            pruner = graph.get_pruner_of_module(root)
            found[g.name] = self._score(importance, graph.get_pruning_group(root, pruner.prune_out_channels,
                                                                            list(range(g.size))), g)
        model.zero_grad(set_to_none=True)
        return distributed.from_writer(found)  # scored on rank 0's batches: one ranking for every rank

    def _score(self, importance: tp.importance.Importance, group, g: ChannelGroup) -> torch.Tensor:
        imp = importance(group)
        if imp is None:  # e.g. the BN criterion on a group without BatchNorm
            raise UnsupportedModelError(f"the {self.name!r} criterion cannot score group {g.name} (it has no layer "
                                        f"that criterion reads); use another criterion")
        return imp.detach().float().cpu()


L1 = Criterion("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1))
L2 = Criterion("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2))  # DepGraph's group norm
BN = Criterion("bn", tp.importance.BNScaleImportance)
TAYLOR = Criterion("taylor", tp.importance.GroupTaylorImportance, needs_gradients=True)
RANDOM = Criterion("random", tp.importance.RandomImportance)
LAMP = Criterion("lamp", tp.importance.LAMPImportance)
FPGM = Criterion("fpgm", tp.importance.FPGMImportance)
_CRITERIA = (L1, L2, BN, TAYLOR, RANDOM, LAMP, FPGM)
CRITERIA = tuple(c.name for c in _CRITERIA)


@dataclass(frozen=True)
class SparseLearning:
    """torch-pruning's sparse learning as a ranker: the weights first train for ``epochs`` under its pruner's
    group regulariser (its ``regularize`` adds the penalty's gradient after each backward pass; no weight decay
    besides, as its CIFAR scripts train), then the channels are scored by group L2 norm, which the regulariser
    has driven apart. The phase is part of the training budget: a caller takes its epochs from fine-tuning.

    ``growths`` > 0 (GReg): the pruner's ``update_reg`` raises each channel's penalty by up to ``delta_reg``
    that many times, evenly over the phase, the less important channels' the most.
    """

    name: str
    pruner: Callable[..., Any] = field(repr=False)  # tp.pruner.GroupNormPruner or tp.pruner.GrowingRegPruner
    reg: float = 5e-4
    epochs: float = 1.0
    lr: float | None = None       # the phase's learning rate; None: the run's
    growths: int = 0
    delta_reg: float = 0.0
    trains_gates: ClassVar[bool] = False
    unit: ClassVar[str] = "group L2 norm after sparse learning"
    title: ClassVar[str] = unit

    def rank(self, job: RankJob) -> Ranking:
        steps = steps_for(self.epochs, job.loader)
        growing = {"delta_reg": self.delta_reg} if self.growths else {}
        pruner = self.pruner(job.model, job.example_input, importance=L2.importance(), reg=self.reg,
                             global_pruning=True, **growing,
                             ignored_layers=classifier_layers(job.model, job.example_input))

        def grow(step: int) -> dict:  # at the step where the phase's fraction done passes the next k / growths
            if (step + 1) * self.growths // steps > step * self.growths // steps:
                pruner.update_reg()
            return {}

        fit(job.model, job.loader, steps, job.device,
            replace(job.settings.weights("constant"), weight_decay=0.0,
                    lr=job.settings.lr if self.lr is None else self.lr),
            before_step=lambda: pruner.regularize(job.model), after_step=grow, desc=self.name, verbose=job.verbose)
        found = L2.scores(job.model, job.example_input, job.groups)
        return Ranking(found, found, dict(NO_GATE_PHASE))  # no gates: its phase is in settings()

    def settings(self) -> dict:
        return {"criterion": self.name, "explored": False, "reg": self.reg, "epochs": self.epochs, "lr": self.lr,
                "growths": self.growths, "delta_reg": self.delta_reg}


@dataclass(frozen=True)
class Gradual(_Scheduled):
    """A criterion pruned in ``rounds`` over the gate phase, as torch-pruning's ``iterative_steps`` prunes: its
    linear schedule (round ``i`` removes ``i / rounds`` of the cost the budget removes), each round re-scored on
    the weights as they are, the weights training between rounds (an ablation beside IB's squeeze). A removed
    channel is shut by the gates, not cut, so that the planner, the check and the final removal are every other
    ranker's; channels shut in one round leave first in the next."""

    rounds: int = 5
    suffix: ClassVar[str] = "iter"

    def rank(self, job: RankJob) -> Ranking:
        cfg, gates = job.settings, job.gate()
        gates.eval()  # z = mu = 1: a channel passes unless shut
        total = steps_for(cfg.gate_epochs, job.loader)
        removes = tp.pruner.algorithms.scheduler.linear_scheduler(1.0 - job.target, self.rounds)
        removed: dict[str, list[int]] = {}
        taken = 0
        for i in range(1, self.rounds + 1):
            gates.detach()  # the criterion traces the bare network
            found = _first(self.criterion.scores(job.model, job.example_input, job.groups, job.loader, job.device),
                           removed)
            gates.attach(job.model)
            aim = job.target if i == self.rounds else 1.0 - removes[i]
            removed = plan(found, job.cost_model, aim, job.groups, cfg.round_to, cfg.min_channels)[0]
            with gates.shut(removed):
                run = fit(job.model, job.loader, total * i // self.rounds - total * (i - 1) // self.rounds,
                          job.device, cfg.weights("constant"),
                          desc=f"{self.name} {i}/{self.rounds}", verbose=job.verbose)
            taken += run["steps"]
        return Ranking(found, found, {**NO_GATE_PHASE, "steps": taken, "steps_planned": total})

    def settings(self) -> dict:
        return {**super().settings(), "rounds": self.rounds}


def _first(found: dict[str, torch.Tensor], removed: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """``found`` with the ``removed`` channels scored below every other channel of every group."""
    low = min(float(s.min()) for s in found.values()) - 1.0
    out = {n: s.clone() for n, s in found.items()}
    for n, idxs in removed.items():
        out[n][idxs] = low
    return out


def allocated(found: dict[str, torch.Tensor], keep: dict[str, int]) -> dict[str, torch.Tensor]:
    """``found`` re-ranked so that the ``keep[g]`` best channels of each named group by ``found`` rank above,
    and its other channels below, every channel of every group (groups not named keep every channel). Planned
    to the cost of those widths, the planner removes exactly the others."""
    out = {}
    for n, s in found.items():
        k = keep.get(n, s.numel())
        if not 0 <= k <= s.numel():
            raise ValueError(f"group {n} has {s.numel()} channels; cannot keep {k}")
        up = torch.zeros(s.numel())
        up[torch.argsort(s, descending=True, stable=True)[:k]] = 1.0
        out[n] = up * 2.0 - 1.0
    return out


def allocation_cost(cost_model: CostModel, groups: list[ChannelGroup], keep: dict[str, int]) -> float:
    """The budget to give a run ranked by ``Allocated(..., keep)``: the fraction of ``cost_model``'s metric those
    widths cost, plus half the cheapest kept channel's cost: the planner then removes exactly the channels the
    allocation puts last, and torch-pruning's count of the result passes the prune's check even where it sits a
    hair above the estimate (float rounding, a layer the cost model holds constant)."""
    masks = {g.name: (torch.arange(g.size) < keep.get(g.name, g.size)).float().requires_grad_() for g in groups}
    cost = cost_model.cost(masks)
    cost.backward()
    marginal = torch.cat([m.grad[m.detach() > 0] for m in masks.values()])
    cheapest = float(marginal[marginal > 0].min()) if bool((marginal > 0).any()) else 0.0
    return (float(cost.detach()) + 0.5 * cheapest) / cost_model.total


@dataclass(frozen=True)
class Allocated:
    """A ranker's choice of channels within each group at widths another method chose (``keep``: channels kept
    per group): an ablation that swaps the allocation across groups between methods, to tell whether a method
    wins by how many channels each group keeps or by which ones. The run's budget must be the cost of those
    widths (a hair above it); IB's squeeze then shuts the channels the widths leave out."""

    inner: Any  # a Ranker: IB, a criterion or a sparse-learning method (a schedule plans rounds of its own)
    keep: dict[str, int] = field(hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.inner, _Scheduled):
            raise ValueError(f"{self.inner.name} plans its own rounds; give Allocated a one-shot ranker or IB")

    @property
    def name(self) -> str:
        return f"{self.inner.name}_allocated"

    @property
    def unit(self) -> str:
        return self.inner.unit

    @property
    def title(self) -> str:
        return self.inner.title

    @property
    def trains_gates(self) -> bool:
        return self.inner.trains_gates

    def rank(self, job: RankJob) -> Ranking:
        if isinstance(self.inner, IBRanker):
            return replace(self.inner, keep=self.keep).rank(job)
        found = self.inner.rank(job)
        return Ranking(allocated(found.scores, self.keep), found.information, found.report)

    def settings(self) -> dict:
        return {**self.inner.settings(), "criterion": self.name, "keep": dict(self.keep)}


# The settings torch-pruning's CIFAR scripts use (reg 5e-4 for DepGraph's, 1e-4 for GReg's); tune per task.
DEPGRAPH_SL = SparseLearning("depgraph_sl", tp.pruner.GroupNormPruner, reg=5e-4)
GREG = SparseLearning("greg", tp.pruner.GrowingRegPruner, reg=1e-4, growths=10, delta_reg=1e-4)
_ABLATIONS = (IBRanker(squeeze=False), IBRanker(cost_weighted=False), IBRanker(balanced=False),
              IBRanker(cost_weighted=False, balanced=False),
              *(Squeezed(c) for c in _CRITERIA), *(Gradual(c) for c in _CRITERIA))
RANKERS = ("ib", *CRITERIA, DEPGRAPH_SL.name, GREG.name, *(r.name for r in _ABLATIONS))


def ranker(spec: str | Ranker) -> Ranker:
    """The ranker a name stands for ("ib", a torch-pruning criterion or sparse-learning method, or an ablation:
    "ib_oneshot", "<criterion>_squeeze", "<criterion>_iter"); a ranker object is returned as is."""
    if not isinstance(spec, str):
        return spec
    named = {"ib": IBRanker(), **{c.name: c for c in (*_CRITERIA, DEPGRAPH_SL, GREG, *_ABLATIONS)}}
    if spec not in named:
        raise ValueError(f"unknown criterion {spec!r}; expected one of {RANKERS}")
    return named[spec]


def criterion_scores(model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup],
                     criterion: str | Criterion, loader=None, device: torch.device | None = None
                     ) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group by torch-pruning's ``criterion`` (a name or a ``Criterion``)."""
    found = ranker(criterion)
    if not isinstance(found, Criterion):
        raise ValueError(f"{criterion!r} is not a torch-pruning criterion; expected one of {CRITERIA}")
    return found.scores(model, example_input, groups, loader, device)
