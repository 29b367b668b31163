"""Exact rewrites that make more of a model prunable, applied before anything else looks at it.

Each replaces a layer by one that computes the same function but exposes its structure: attention layers
whose heads can be gated and removed (``ibprune.rewrites.attention``; ``transformers`` encoders:
``ibprune.rewrites.encoder``), channel shuffles torch-pruning can trace
(``ibprune.rewrites.shuffle``). ``compress`` rewrites its working copy; ``remove_channels`` rewrites the original the
same way, so a compressed model rebuilds from the original architecture.
"""

from __future__ import annotations

from torch import nn

from ibprune.rewrites.attention import split_heads
from ibprune.rewrites.encoder import split_encoder_heads
from ibprune.rewrites.shuffle import split_shuffles


def rewrite(model: nn.Module) -> list[str]:
    """Apply every rewrite to ``model`` in place; the names of the replaced modules. Idempotent."""
    return split_heads(model) + split_encoder_heads(model) + split_shuffles(model)
