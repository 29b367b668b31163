"""Loading weights into a model: safe by default (``weights_only=True``), with errors that name the problem."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ibprune.errors import CheckpointError


def load_plain(path: str | os.PathLike, what: str, trust: bool = False):
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say which file and why.

    ``trust=True`` unpickles anything (``weights_only=False``): only for files from a source you trust, since
    unpickling can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:  # torch raises several unrelated types for corrupt / unsafe files
        if "Weights only load failed" in str(err) and "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds pickled code (e.g. a whole model object), which is not loaded by default because "
                f"unpickling can run arbitrary code; if you trust the file's source, pass trust_checkpoint=True",
                settings=("trust_checkpoint",)) from None
        raise CheckpointError(f"{path} is not a loadable PyTorch checkpoint: {str(err).splitlines()[0]}") from None


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a bare state dict, or a checkpoint holding one under ``state_dict``/``model``.

    Loaded with ``torch.load(weights_only=True)``: a file that needs arbitrary code to unpickle is refused
    unless ``trust=True`` (then a pickled ``nn.Module`` is accepted too). A ``module.`` prefix (from
    ``DataParallel``) is stripped.
    """
    obj = load_plain(path, "weights file", trust)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
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


def load_weights(model: nn.Module, path: str | os.PathLike, trust_checkpoint: bool = False) -> nn.Module:
    """Load ``path`` into ``model`` strictly; a mismatch lists the missing and unexpected keys.

    ``trust_checkpoint=True`` allows a full pickle (arbitrary code runs while loading it): see ``read_state_dict``.
    """
    state = read_state_dict(path, trust_checkpoint)
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
