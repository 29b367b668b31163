"""Hugging Face encoder self-attention (BERT, MiniLM, RoBERTa, ELECTRA) with heads that can be gated and removed.

``transformers`` builds these layers as ``XAttention`` = ``self`` (``query``, ``key``, ``value`` projections and
the attention) + ``output`` (``dense``, dropout, ``LayerNorm(dense + residual)``), and computes the attention in
a function it picks at run time, where no hook sees the heads. ``EncoderAttention`` computes the same function
with ``ibprune.rewrites.attention``'s ``HeadAttention`` parts, ``output.dense`` becoming its ``out_proj``, so the
head gates, head removal and the attention MACs work as for torchvision's attention. The layers are recognised
by their structure, not imported, so ``transformers`` stays an optional dependency.
"""

from __future__ import annotations

import torch
from torch import nn

from ibprune.rewrites.attention import HeadAttention


def _linear(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def is_encoder_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a ``transformers`` BERT-style self-attention block that ``EncoderAttention``
    represents exactly (cross-attention and relative position embeddings are not)."""
    inner, out = getattr(module, "self", None), getattr(module, "output", None)
    return (isinstance(inner, nn.Module) and isinstance(out, nn.Module)
            and all(_linear(inner, p) for p in ("query", "key", "value")) and _linear(out, "dense")
            and isinstance(getattr(out, "LayerNorm", None), nn.LayerNorm)
            and not getattr(module, "is_cross_attention", False)
            and getattr(inner, "position_embedding_type", "absolute") == "absolute"
            and hasattr(inner, "attention_head_size"))


class EncoderAttention(HeadAttention):
    """``LayerNorm(dropout(out_proj(attention(x))) + x)``, called as ``transformers`` calls its attention block
    (``hidden_states, attention_mask, ...``) and returning ``(output, None)``."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, attention_dropout: float,
                 hidden_dropout: float, eps: float) -> None:
        super().__init__(hidden, num_heads, head_dim=head_dim, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(hidden_dropout)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    @classmethod
    def from_hf(cls, block: nn.Module) -> EncoderAttention:
        """The same function as ``block`` (weights copied)."""
        inner, out = block.self, block.output
        d = inner.attention_head_size
        new = cls(inner.query.in_features, inner.query.out_features // d, d, inner.dropout.p, out.dropout.p,
                  out.LayerNorm.eps)
        new.to(out.dense.weight.device, out.dense.weight.dtype)
        for mine, theirs in ((new.q, inner.query), (new.k, inner.key), (new.v, inner.value),
                             (new.out_proj, out.dense), (new.LayerNorm, out.LayerNorm)):
            mine.load_state_dict(theirs.state_dict())
        return new.train(block.training)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args,
                **kwargs) -> tuple[torch.Tensor, None]:
        heads = (self.num_heads, self.head_dim)
        q, k, v = (proj(hidden_states).unflatten(-1, heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out, _ = self.attend(q, k, v, _additive(attention_mask, q))
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return self.LayerNorm(self.dropout(out) + hidden_states), None


def _additive(mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """``transformers``' attention mask as an additive float mask: its boolean masks mean True = attend (the
    opposite of ``nn.MultiheadAttention``'s), its float masks are additive already."""
    if mask is None or mask.dtype != torch.bool:
        return mask if mask is None else mask.to(q.dtype)
    return torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)


def split_encoder_heads(model: nn.Module) -> list[str]:
    """Replace, in place, every BERT-style self-attention block of ``model`` by its ``EncoderAttention``; the
    names of the replaced modules. Idempotent."""
    replaced = []
    for name, module in list(model.named_modules()):
        if name and is_encoder_attention(module):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, EncoderAttention.from_hf(module))
            replaced.append(name)
    return replaced
