"""One training loop for the gate phase and for fine-tuning, plus evaluation and BN recalibration.

CUDA when available (bf16 autocast, channels_last), CPU otherwise. SGD with Nesterov momentum (or AdamW) on the
weights under a warm-up + cosine (or constant) schedule; extra optimizers (the gates' Adam) step alongside; optional
knowledge distillation from a teacher (the original model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ibprune.core import distributed
from ibprune.core.modes import evaluating, mode, rng_state, set_rng_state


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` gives CUDA when ``torch.cuda.is_available()``, else the CPU; in a distributed run a CUDA device
    without an index is this rank's own GPU."""
    if isinstance(device, torch.device):
        return distributed.local_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.local_device(torch.device(device))


#: the weights' optimizers and their default (learning rate, weight decay): SGD with Nesterov momentum, what
#: convolutional nets are trained with, and AdamW (decoupled weight decay), what transformers are fine-tuned with
OPTIMIZERS = {"sgd": (0.01, 5e-4), "adamw": (5e-5, 0.01)}


@dataclass
class OptimizerConfig:
    """The weights' optimizer (``algorithm``: a key of ``OPTIMIZERS``) under a warm-up then cosine (or constant)
    learning rate."""

    lr: float
    weight_decay: float
    algorithm: str = "sgd"
    momentum: float = 0.9         # SGD's
    warmup: float = 0.05          # fraction of the steps spent ramping up linearly
    schedule: str = "cosine"      # "cosine" or "constant"

    def make(self, params: Iterable[nn.Parameter], steps: int):
        if self.algorithm == "adamw":
            opt = torch.optim.AdamW(list(params), lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(list(params), lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0,
                                  weight_decay=self.weight_decay)
        warm = max(1, int(self.warmup * steps))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if self.schedule == "constant":
                return 1.0
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def steps_for(epochs: float, loader) -> int:
    """Number of optimizer steps in ``epochs`` (fractions allowed) passes over ``loader``."""
    return max(0, math.ceil(epochs * len(loader)))


def batches(loader, steps: int) -> Iterator:
    """``steps`` batches, cycling through ``loader`` as often as needed."""
    done = 0
    while done < steps:
        for batch in loader:
            if done >= steps:
                return
            yield batch
            done += 1


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


def _prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's soft-target loss: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                    reduction="batchmean") * t * t


class _Stream:
    """Batches cycled from a loader; its position (the pass's starting random state + batches taken) can be saved
    and restored, so a resumed run sees the same batches in the same order."""

    def __init__(self, loader) -> None:
        self.loader, self.it, self.taken, self.start = loader, None, 0, None

    def next(self):
        if self.it is not None:
            try:
                self.taken += 1
                return next(self.it)
            except StopIteration:
                pass
        self.start, self.it, self.taken = rng_state(self.loader), iter(self.loader), 1
        return next(self.it)

    def position(self) -> dict | None:
        return None if self.it is None else {"start": self.start, "taken": self.taken}

    def seek(self, position: dict | None, now: dict) -> None:
        """Replay the pass up to ``position``, then set the global random state to ``now``."""
        self.it = None
        if position is not None:
            set_rng_state(position["start"], self.loader)
            self.start, self.it, self.taken = position["start"], iter(self.loader), position["taken"]
            for _ in range(self.taken):
                next(self.it)
        set_rng_state({k: v for k, v in now.items() if k != "loader"})


def fit(model: nn.Module, loader, steps: int, device: torch.device, optimizer: OptimizerConfig | None = None, *,
        extra_optimizers: Iterable[torch.optim.Optimizer] = (), penalty: Callable[[], torch.Tensor] | None = None,
        after_step: Callable[[int], dict] | None = None, teacher: nn.Module | None = None,
        distill_weight: float = 0.5, temperature: float = 4.0, desc: str = "train", verbose: bool = True,
        checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
        checkpoint_every: int | None = None, stop: Callable[[], bool] | None = None,
        before_step: Callable[[], None] | None = None, also: nn.Module | None = None) -> dict:
    """Train ``model`` for ``steps`` batches; ``optimizer=None`` freezes the weights (only extra optimizers step).

    ``penalty()`` is added to the task loss each step; ``after_step(step)`` runs after the optimizers and may
    return numbers to show in the progress bar; ``stop()``, asked after each step, ends the run early when it
    returns True (the learning-rate schedule still spans ``steps``); ``before_step()`` runs between the backward
    pass and the optimizers (a regulariser that edits the gradients, as torch-pruning's sparse learning does).
    ``checkpoint(state)`` receives the full training state every ``checkpoint_every`` steps (default: each pass
    over ``loader``) and at the end;
    ``resume=state`` continues from one. A non-finite loss rolls back to the last such state and halves the
    learning rate, once; the second time (or with ``extra_optimizers``, whose owners are not saved) it raises
    ``FloatingPointError``. Under ``torchrun`` the steps run data-parallel (``ibprune.core.distributed``): give
    each rank its shard as ``loader``, and in ``also`` what trains beside ``model`` (the gates) so that its
    gradients are averaged too; only rank 0 shows progress and saves checkpoints.
    Returns the steps taken, the mean loss and the training accuracy.
    """
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    t = _Training(model, loader, steps, optimizer, extra_optimizers, before_step)
    net = distributed.data_parallel(model, also, device)
    if teacher is not None:
        teacher.to(device).eval()
    every = max(1, checkpoint_every or min(steps, len(loader)) or 1)
    if resume is not None:
        t.restore(resume)
    last_good = copy.deepcopy(t.snapshot()) if not t.extra else None
    bar = tqdm(total=steps, initial=t.step, desc=desc, disable=None if verbose and distributed.is_writer() else True,
               leave=False, dynamic_ncols=True)
    while t.step < steps:
        step = t.step
        x, y = t.stream.next()
        x, y = _prepare(x, device), y.to(device, non_blocking=True)
        logits, loss = _task_loss(net, x, y, device, teacher, distill_weight, temperature)
        total = loss + penalty() if penalty is not None else loss
        if not distributed.everywhere(bool(torch.isfinite(total))):  # every rank rolls back, or none
            _roll_back(t, last_good, float(total.detach()), desc, bar)
            continue
        t.descend(total)
        shown = after_step(step) if after_step is not None else {}
        t.count(loss, logits, y)
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{t.sums[0] / t.sums[2]:.3f}", acc=f"{t.sums[1] / t.sums[2]:.3f}", **shown)
        done = stop is not None and t.step < steps and stop()
        if t.step % every == 0 or t.step == steps or done:
            if checkpoint is not None and distributed.is_writer():
                checkpoint(t.snapshot())
            if last_good is not None:
                last_good = copy.deepcopy(t.snapshot())
        if done:
            break
    bar.close()
    loss_sum, correct, seen = t.sums
    return {"steps": t.step, "loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
            "nan_recoveries": t.nan_recoveries}


class _Training:
    """What one ``fit`` changes as it runs: the weights, the optimizers, the data position and the running sums;
    ``snapshot`` saves all of it (with the random state) and ``restore`` puts it back."""

    def __init__(self, model: nn.Module, loader, steps: int, optimizer: OptimizerConfig | None,
                 extra: Iterable[torch.optim.Optimizer], before_step: Callable[[], None] | None = None) -> None:
        self.model, self.extra, self.before_step = model, list(extra), before_step
        self.opt = self.sched = None
        if optimizer is not None:
            self.opt, self.sched = optimizer.make((p for p in model.parameters() if p.requires_grad), steps)
        self.stream = _Stream(loader)
        self.step, self.sums, self.nan_recoveries = 0, [0.0, 0, 0], 0

    def snapshot(self) -> dict:
        return {"step": self.step, "sums": list(self.sums), "nan_recoveries": self.nan_recoveries,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict() if self.opt else None,
                "scheduler": self.sched.state_dict() if self.sched else None,
                "extra": [o.state_dict() for o in self.extra], "rng": rng_state(), "stream": self.stream.position()}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.opt is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        for o, saved in zip(self.extra, state["extra"]):
            o.load_state_dict(saved)
        self.step, self.sums, self.nan_recoveries = state["step"], list(state["sums"]), state["nan_recoveries"]
        self.stream.seek(state["stream"], state["rng"])

    def descend(self, total: torch.Tensor) -> None:
        """One optimizer step of every optimizer on ``total``, then the schedule's."""
        optimizers = ([self.opt] if self.opt else []) + self.extra
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        total.backward()
        if self.before_step is not None:
            self.before_step()
        for o in optimizers:
            o.step()
        if self.sched is not None:
            self.sched.step()

    def count(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.sums[0] += float(loss.detach()) * len(y)
        self.sums[1] += int((logits.argmax(1) == y).sum())
        self.sums[2] += len(y)
        self.step += 1

    def halve_lr(self) -> None:
        if self.opt is not None:
            self.sched.base_lrs = [b * 0.5 for b in self.sched.base_lrs]
            for g in self.opt.param_groups:
                g["lr"] *= 0.5


def _task_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               teacher: nn.Module | None, distill_weight: float, temperature: float):
    """The logits and the cross-entropy, mixed with the distillation loss when there is a ``teacher``."""
    with _autocast(device):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x).float()
            loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(logits.float(), t_logits,
                                                                                    temperature)
    return logits, loss


def _roll_back(t: _Training, last_good: dict | None, value: float, desc: str, bar) -> None:
    """A non-finite loss: back to the last saved state at half the learning rate, once; else an error."""
    if last_good is None or t.nan_recoveries >= 1:
        bar.close()
        again = " again after halving the learning rate" if t.nan_recoveries else ""
        raise FloatingPointError(f"{desc}: the loss became {value} at step {t.step}{again}; "
                                 "nothing non-finite was saved")
    step = t.step
    t.restore(copy.deepcopy(last_good))
    t.nan_recoveries += 1
    t.halve_lr()
    bar.write(f"[ibprune] {desc}: loss {value} at step {step}: rolled back to step {t.step}, learning rate halved")
    bar.n = t.step


def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode; the model's mode is restored)."""
    correct, seen = count(model, loader, device)
    return correct / max(1, seen)


@torch.no_grad()
def count(model: nn.Module, loader, device: torch.device) -> tuple[int, int]:
    """``(correct, seen)``: top-1 hits of ``model`` on ``loader`` and the images it saw."""
    correct = seen = 0
    with evaluating(model.to(device)):
        for x, y in loader:
            x, y = _prepare(x, device), y.to(device)
            with _autocast(device):
                pred = model(x).argmax(1)
            correct += int((pred == y).sum())
            seen += len(y)
    return correct, seen


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, device: torch.device, max_batches: int = 50) -> None:
    """Re-estimate every BatchNorm's running statistics on training batches (no weight changes).

    After the gate phase (noisy gates during training) and after channels are removed, the running statistics
    no longer describe what each BN sees at eval time; a pass over some batches fixes that for free.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    with mode(model.to(device), True):
        for x, _ in batches(loader, min(max_batches, len(loader))):
            with _autocast(device):
                model(_prepare(x, device))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    distributed.broadcast_state(model)  # each rank saw its own shard: rank 0's statistics for all
