"""Will ibprune handle this model? Everything ``compress`` does to it except training, in seconds.

Channel groups, the pruning preflight, a prune to the budget with the gates' means drawn at random (a ranking
that exercises every group), the function check, ONNX export and onnxruntime parity. A model ibprune cannot
prune correctly raises ``UnsupportedModelError`` (or another ``IbpruneError``) naming the layer or operation.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from ibprune.attention import HeadAttention
from ibprune.costs import CostModel, count
from ibprune.export import check_parity, export_onnx
from ibprune.gates import GateSet
from ibprune.groups import find_groups
from ibprune.prune import preflight, prune_to_budget
from ibprune.rewrite import rewrite


def check_model(model: nn.Module, example_input: torch.Tensor, macs: float = 0.6, round_to: int | None = 8,
                seed: int = 0) -> dict:
    """Prune a copy of ``model`` to ``macs`` without training and verify it; returns what was measured.

    ``model`` is not modified (the copy's all-zero weight tensors get small random values, so that a zero-initialised
    classifier cannot hide a mismatch). Raises ``IbpruneError`` subclasses for models ibprune cannot compress.
    """
    torch.manual_seed(seed)
    model = copy.deepcopy(model).eval()
    with torch.no_grad():  # a zero-initialised layer (ViT's classifier) would make every output equal, and the
        for p in model.parameters():  # function check vacuous: give such weights small random values
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    rewrite(model)
    x = example_input[:1]
    _, groups = find_groups(model, x)
    cost_model = CostModel(model, x, groups)
    gates = GateSet(groups).attach(model)
    preflight(model, gates, groups, x)
    with torch.no_grad():
        for g in gates.gates.values():
            g.mu.uniform_(0.2, 1.0)
    macs_before, params_before = count(model, x)
    result = prune_to_budget(model, gates, groups, x, cost_model, macs, round_to)
    gates.detach()
    macs_after, params_after = count(result.model, x)
    with torch.no_grad():
        shape_ok = result.model(torch.cat([x, x])).shape == model(torch.cat([x, x])).shape
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(result.model, x, Path(tmp) / "model.onnx")
        onnx_diff = check_parity(path, result.model, x, batch_sizes=(1, 2))
    return {"groups": len(groups), "macs_before": macs_before, "macs_after": macs_after,
            "params_before": params_before, "params_after": params_after, "macs_fraction": macs_after / macs_before,
            "function_max_diff": result.max_abs_diff, "onnx_max_diff": onnx_diff, "output_shape_ok": shape_ok,
            "heads_before": _heads(model), "heads_after": _heads(result.model), "model": result.model}


def _heads(model: nn.Module) -> int:
    """Attention heads that ``compress`` can remove (0 when the model has none)."""
    return sum(m.num_heads for m in model.modules() if isinstance(m, HeadAttention))
