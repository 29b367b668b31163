"""Will ibprune handle this model? Everything ``compress`` does to it except training, in seconds.

Channel groups, the pruning preflight, a prune to the budget with the gates' means drawn at random (a ranking
that exercises every group), the function check, ONNX export and onnxruntime parity. A model ibprune cannot
prune correctly raises ``UnsupportedModelError`` (or another ``IbpruneError``) naming the layer or operation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ibprune.core.costs import count
from ibprune.core.gates import GateSet
from ibprune.core.probes import random_like
from ibprune.core.prune import preflight, prune_to_budget
from ibprune.core.train import recalibrate_bn
from ibprune.core.verify import sensitivity
from ibprune.outputs.onnx import check_parity, export_onnx
from ibprune.pipeline.config import CompressConfig
from ibprune.pipeline.stages import structure, working_copy
from ibprune.rewrites.attention import HeadAttention


def check_model(model: nn.Module, example_input: torch.Tensor, macs: float = 0.6,
                round_to: int | str | None = CompressConfig.round_to,
                seed: int = CompressConfig.seed, margin: bool = False) -> dict:
    """Prune a copy of ``model`` to ``macs`` without training and verify it; returns what was measured.

    ``model`` is not modified: the check works on a copy made lively (``lively``). Besides what was measured,
    ``check_ratio`` is the function check's worst difference over its tolerance (below 1). With ``margin``
    (one more forward pass per group), ``check_margin`` is how many tolerances a wrong prune (a group's removed
    channels moved to their neighbours) moves it, in the group where that is smallest (``check_margin_group``;
    ``ibprune.core.verify.sensitivity``). Raises ``IbpruneError`` subclasses for models ibprune cannot compress.
    """
    torch.manual_seed(seed)
    x = example_input[:1]
    model = working_copy(model, x.device).eval()
    lively(model, x)
    groups, cost_model = structure(model, x)
    gates = GateSet(groups).attach(model).eval()
    preflight(model, gates, groups, x)
    with torch.no_grad():
        for g in gates.gates.values():
            g.mu.uniform_(0.2, 1.0)
    lively(model, x)  # the gates scale every layer's inputs down: BN statistics for the gated network
    macs_before, params_before = count(model, x)
    result = prune_to_budget(model, gates, groups, x, cost_model, macs, round_to)
    margins = sensitivity(model, gates, groups, result.removed, random_like(x, 2)) if margin else {}
    gates.detach()
    macs_after, params_after = count(result.model, x)
    with torch.no_grad():
        shape_ok = result.model(torch.cat([x, x])).shape == model(torch.cat([x, x])).shape
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(result.model, x, Path(tmp) / "model.onnx")
        onnx_diff = check_parity(path, result.model, x, batch_sizes=(1, 2))
    return {"groups": len(groups), "macs_before": macs_before, "macs_after": macs_after,
            "params_before": params_before, "params_after": params_after, "macs_fraction": macs_after / macs_before,
            "function_max_diff": result.max_abs_diff, "check_ratio": result.check_ratio,
            "check_margin": min(margins.values(), default=None), "check_margin_group": min(margins, key=margins.get,
                                                                                             default=None),
            "onnx_max_diff": onnx_diff, "output_shape_ok": shape_ok,
            "heads_before": _heads(model), "heads_after": _heads(result.model), "model": result.model,
            "removed": result.removed}


@torch.no_grad()
def lively(model: nn.Module, example_input: torch.Tensor, batches: int = 2, batch: int = 4) -> None:
    """Make a randomly initialised model's outputs of order one and dependent on its input, in place.

    At random init many networks compute almost nothing: an all-zero classifier (ViT) makes every output equal,
    a layer scale of 1e-6 (ConvNeXt) damps every branch, and BN layers with their initial statistics let the
    activations of a deep network shrink to nothing (EfficientNet's logits are about 1e-13, GoogLeNet's hardly
    depend on the input). A check on such a network passes a wrong prune. So all-zero weight tensors get small
    random values, constant scales below 1e-3 become 1, and the BN statistics are re-estimated on random inputs.
    """
    for p in model.parameters():
        if p.dim() >= 2 and not p.any():
            p.normal_(0.0, 0.02)
        elif p.numel() > 1 and 0 < float(p.abs().max()) < 1e-3 and bool((p == p.flatten()[0]).all()):
            p.fill_(1.0)
    recalibrate_bn(model, [(random_like(example_input, batch), None) for _ in range(batches)],
                   example_input.device)
    model.eval()


def _heads(model: nn.Module) -> int:
    """Attention heads that ``compress`` can remove (0 when the model has none)."""
    return sum(m.num_heads for m in model.modules() if isinstance(m, HeadAttention))
