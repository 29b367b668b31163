"""Text classifiers as ibprune's pipeline sees a model: one input tensor, logits out.

A ``transformers`` sequence classifier takes token ids and an attention mask and returns an output object;
``TextClassifier`` takes both stacked in one int64 tensor of shape ``(batch, 2, seq_len)`` (``pack``) and
returns the logits, so that every stage (gates, pruning, the function check, ONNX export, the latency
benchmark) handles it as it handles an image classifier.
"""

from __future__ import annotations

import torch
from torch import nn


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, 2, seq_len)`` int64: the token ids over the attention mask (1: a token, 0: padding)."""
    return torch.stack([input_ids, attention_mask], dim=1).long()


class TextClassifier(nn.Module):
    """A ``transformers`` ``...ForSequenceClassification`` model behind one packed input (``pack``)."""

    #: input dimensions whose size may change between calls besides the batch (ONNX export keeps them dynamic)
    dynamic_dims = {2: "sequence"}

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
