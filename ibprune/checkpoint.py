"""Loading weights into a model: safe by default (``weights_only=True``), with errors that name the problem."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ibprune.errors import IbpruneError


class CheckpointError(IbpruneError):
    """A weights file is missing, unreadable, or does not fit the model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a bare state dict, or a checkpoint holding one under ``state_dict``/``model``.

    Loaded with ``torch.load(weights_only=True)``: a file that needs arbitrary code to unpickle is refused.
    A ``module.`` prefix (from ``DataParallel``) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt / unsafe files
        raise CheckpointError(f"{path} is not a loadable PyTorch checkpoint: {str(err).splitlines()[0]}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model`` strictly; a mismatch lists the missing and unexpected keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    missing, unexpected = [], []
    if not wrong:
        # modules may accept a checkpoint without some of their keys (e.g. a fixed shortcut conv)
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", wrong)) if keys]
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(parts))
    return model
