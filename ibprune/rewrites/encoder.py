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
        for mine, theirs in new._pairs(block):
            mine.load_state_dict(theirs.state_dict())
        # what it takes to build the block back (``to_hf``): its class, config and place in the encoder
        new.hf_class, new.hf_config, new.layer_idx = type(block), inner.config, getattr(inner, "layer_idx", None)
        return new.train(block.training)

    def _pairs(self, block: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """Each of this module's layers with the layer of a ``transformers`` block that holds the same weights."""
        return [(self.q, block.self.query), (self.k, block.self.key), (self.v, block.self.value),
                (self.out_proj, block.output.dense), (self.LayerNorm, block.output.LayerNorm)]

    @torch.no_grad()
    def to_hf(self) -> nn.Module:
        """The ``transformers`` block this module was made from, with this module's heads and weights: its
        q/k/v and output projections as narrow as the heads kept (``transformers`` 5 reads the number of heads
        off the projections' width, so the block runs as it is)."""
        block = self.hf_class(self.hf_config, layer_idx=self.layer_idx).to(self.q.weight.device, self.q.weight.dtype)
        for mine, theirs in self._pairs(block):
            if isinstance(theirs, nn.Linear):
                theirs.in_features, theirs.out_features = mine.in_features, mine.out_features
            theirs.weight = nn.Parameter(mine.weight.detach().clone())
            theirs.bias = None if mine.bias is None else nn.Parameter(mine.bias.detach().clone())
        return block.train(self.training)

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
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        return mask.to(q.dtype)
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


def join_encoder_heads(model: nn.Module) -> list[str]:
    """Undo ``split_encoder_heads`` in place: every ``EncoderAttention`` back to its ``transformers`` block (with
    the heads it kept), so that ``save_pretrained`` writes the library's own names; the replaced names."""
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, EncoderAttention) and name:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.to_hf())
            replaced.append(name)
    return replaced
