"""Accuracy under small adversarial perturbations (FGSM and PGD), for the report's optional robustness section.

The information-bottleneck literature claims compressed representations are more robust; this measures it
instead of repeating it. ``eps`` is in units of each input channel's standard deviation on the evaluated data
(for CIFAR-10 normalised by a std of about 0.25, ``eps = 0.03`` is about 2/255 of the pixel range); inputs are
not clamped to a valid range, since ibprune does not know the normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ibprune.core.modes import evaluating


def _channel_std(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    x = torch.cat([b[0] for b in batches])
    dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
    std = x.float().std(dim=dims, keepdim=True)[:1]
    return std.clamp_min(1e-8)


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor, steps: int) -> torch.Tensor:
    """L-inf attack of ``radius``: one signed-gradient step (FGSM) or ``steps`` projected steps of radius/4 (PGD)."""
    step = radius if steps == 1 else radius / 4
    delta = torch.zeros_like(x) if steps == 1 else (torch.rand_like(x) * 2 - 1) * radius
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-radius, radius)
    return (x + delta).detach()


def adversarial_accuracy(models: dict[str, nn.Module], loader, device: torch.device, eps: float = 0.03,
                         pgd_steps: int = 10, max_examples: int = 1000) -> dict:
    """Clean, FGSM and PGD-``pgd_steps`` accuracy of each model on the first ``max_examples`` of ``loader``."""
    batches, seen = [], 0
    for x, y in loader:
        batches.append((x, y))
        seen += len(y)
        if seen >= max_examples:
            break
    radius = (eps * _channel_std(batches)).to(device)
    out = {"eps": eps, "eps_unit": "input channel std", "examples": seen, "pgd_steps": pgd_steps, "models": {}}
    for name, model in models.items():
        correct = {"clean": 0, "fgsm": 0, f"pgd{pgd_steps}": 0}
        with evaluating(model.to(device)):
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                with torch.no_grad():
                    correct["clean"] += int((model(x).argmax(1) == y).sum())
                for key, steps in (("fgsm", 1), (f"pgd{pgd_steps}", pgd_steps)):
                    adv = _attack(model, x, y, radius, steps)
                    with torch.no_grad():
                        correct[key] += int((model(adv).argmax(1) == y).sum())
        out["models"][name] = {k: v / max(1, seen) for k, v in correct.items()}
    return out
