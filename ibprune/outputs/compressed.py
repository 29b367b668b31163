"""The compressed-model file: slim weights and the removed channels as plain data, rebuilt on the original
architecture (no pickled code)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ibprune.core.prune import remove_channels
from ibprune.errors import CheckpointError
from ibprune.files import atomic_path
from ibprune.weights import load_plain

FORMAT = "ibprune.compressed/1"


def save_compressed(path: str | os.PathLike, model: nn.Module, removed: dict[str, list[int]],
                    example_input: torch.Tensor) -> Path:
    """Save a compressed model as plain data (loadable with ``weights_only=True``), atomically.

    The file holds the slim weights and which channels of which group were removed, not pickled code: rebuild
    it with ``load_compressed(original_architecture, path)``.
    """
    data = {"format": FORMAT, "removed": {k: [int(i) for i in v] for k, v in removed.items()},
            "input_shape": [int(d) for d in example_input.shape], "input_dtype": str(example_input.dtype),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return Path(path)


def load_compressed(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild a compressed model: ``model`` is a fresh instance of the *original* architecture (any weights).

    The saved channels are removed from it through torch-pruning, then the slim weights are loaded strictly.
    No code is unpickled (``weights_only=True``).
    """
    path = Path(path)
    data = load_plain(path, "compressed model")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ibprune compressed model (format {FORMAT!r})")
    device = next(model.parameters()).device
    try:
        remove_channels(model.eval(), _example(data, device), data["removed"])
    except (KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not fit this architecture: {str(err).splitlines()[0]}") from None
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this architecture: {str(err).splitlines()[0]}") from None
    return model


def _example(data: dict, device: torch.device) -> torch.Tensor:
    """An input of the saved shape and dtype to trace the model with: zeros, or for integer inputs (token ids
    over an attention mask) ones, a token every mask attends to."""
    dtype = getattr(torch, data.get("input_dtype", "torch.float32").removeprefix("torch."))
    fill = torch.zeros if dtype.is_floating_point else torch.ones
    return fill(data["input_shape"], dtype=dtype, device=device)
