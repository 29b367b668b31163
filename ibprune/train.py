"""One training loop for the gate phase and for fine-tuning, plus evaluation and BN recalibration.

CUDA when available (bf16 autocast, channels_last), CPU otherwise. SGD with Nesterov momentum on the weights
under a warm-up + cosine (or constant) schedule; extra optimizers (the gates' Adam) step alongside; optional
knowledge distillation from a teacher (the original model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` gives CUDA when ``torch.cuda.is_available()``, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class SGDConfig:
    """Weights' optimizer: SGD + Nesterov momentum, warm-up then cosine (or constant) learning rate."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.05          # fraction of the steps spent ramping up linearly
    schedule: str = "cosine"      # "cosine" or "constant"

    def make(self, params: Iterable[nn.Parameter], steps: int):
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


def fit(model: nn.Module, loader, steps: int, device: torch.device, sgd: SGDConfig | None = None, *,
        extra_optimizers: Iterable[torch.optim.Optimizer] = (), penalty: Callable[[], torch.Tensor] | None = None,
        after_step: Callable[[int], dict] | None = None, teacher: nn.Module | None = None,
        distill_weight: float = 0.5, temperature: float = 4.0, desc: str = "train",
        verbose: bool = True) -> dict:
    """Train ``model`` for ``steps`` batches; ``sgd=None`` freezes the weights (only extra optimizers step).

    ``penalty()`` is added to the task loss each step; ``after_step(step)`` runs after the optimizers and may
    return numbers to show in the progress bar. Returns the mean loss and training accuracy.
    """
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    extra = list(extra_optimizers)
    opt = sched = None
    if sgd is not None:
        opt, sched = sgd.make((p for p in model.parameters() if p.requires_grad), steps)
    if teacher is not None:
        teacher.to(device).eval()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(total=steps, desc=desc, disable=None if verbose else True, leave=False, dynamic_ncols=True)
    for step, (x, y) in enumerate(batches(loader, steps)):
        x, y = _prepare(x, device), y.to(device, non_blocking=True)
        with _autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x).float()
                loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(
                    logits.float(), t_logits, temperature)
        total = loss + penalty() if penalty is not None else loss
        if not torch.isfinite(total):
            bar.close()
            raise FloatingPointError(f"{desc}: the loss became {float(total.detach())} at step {step}")
        for o in ([opt] if opt else []) + extra:
            o.zero_grad(set_to_none=True)
        total.backward()
        for o in ([opt] if opt else []) + extra:
            o.step()
        if sched is not None:
            sched.step()
        shown = after_step(step) if after_step is not None else {}
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", **shown)
    bar.close()
    return {"steps": steps, "loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.to(device).eval()
    correct = seen = 0
    for x, y in loader:
        x, y = _prepare(x, device), y.to(device)
        with _autocast(device):
            pred = model(x).argmax(1)
        correct += int((pred == y).sum())
        seen += len(y)
    model.train(was_training)
    return correct / max(1, seen)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, device: torch.device, max_batches: int = 50) -> None:
    """Re-estimate every BatchNorm's running statistics on training batches (no weight changes).

    After the gate phase (noisy gates during training) and after channels are removed, the running statistics
    no longer describe what each BN sees at eval time; a pass over some batches fixes that for free.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.to(device).train()
    for x, _ in batches(loader, min(max_batches, len(loader))):
        with _autocast(device):
            model(_prepare(x, device))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.train(was_training)
