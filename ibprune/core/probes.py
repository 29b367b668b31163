"""Inputs made up to exercise a model: the function check, the ONNX parity check and ``check_model`` feed the
network random inputs shaped like the user's example, never data.

Image models take floats; text models (``ibprune.models.text``) take integer token ids and masks, for which a
normal draw is meaningless and may leave the vocabulary. ``random_like`` draws each kind as it can be.
"""

from __future__ import annotations

import torch


def random_like(example: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``batch`` random inputs of ``example``'s shape per row, on its device: standard normal floats, or, for
    integer inputs, values that each channel (dim 1) of ``example`` holds, drawn uniformly (token ids stay in
    the vocabulary, a mask stays 0/1)."""
    shape = (batch, *example.shape[1:])
    if example.is_floating_point():
        return torch.randn(shape, generator=generator, dtype=example.dtype).to(example.device)
    channels = example.unsqueeze(1) if example.dim() == 1 else example
    out = torch.empty((batch, *channels.shape[1:]), dtype=example.dtype)
    for c in range(channels.shape[1]):
        values = channels[:, c].unique().cpu()
        out[:, c] = values[torch.randint(len(values), out[:, c].shape, generator=generator)]
    return out.view(shape).to(example.device)


def widened(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``x`` in ``dtype`` if it holds floats; integer inputs (token ids) stay as they are."""
    return x.to(dtype) if x.is_floating_point() else x
