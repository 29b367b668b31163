"""Hugging Face encoder self-attention (BERT, MiniLM, RoBERTa, ELECTRA, DistilBERT) with heads that can be gated
and removed.

``transformers`` builds these layers in two layouts (``Layout``): BERT's ``XAttention`` = ``self`` (``query``,
``key``, ``value`` projections and the attention) + ``output`` (``dense``, dropout, ``LayerNorm(dense +
residual)``), and DistilBERT's ``q_lin``/``k_lin``/``v_lin``/``out_lin``, whose block applies the residual and
its ``sa_layer_norm`` outside. Either computes the attention in a function it picks at run time, where no hook
sees the heads. ``EncoderAttention`` computes the same function with ``ibprune.rewrites.attention``'s
``HeadAttention`` parts, the output projection becoming its ``out_proj``, so the head gates, head removal and the
attention MACs work as for torchvision's attention. The layers are recognised by their structure, not imported,
so ``transformers`` stays an optional dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ibprune.rewrites.attention import HeadAttention


@dataclass(frozen=True)
class Layout:
    """Where a ``transformers`` attention block keeps its parts (submodule names; ``core``: the module with
    ``attention_head_size``, the attention dropout and the config); ``norm`` and ``hidden_dropout`` only when the
    block ends in ``LayerNorm(dropout(out) + residual)`` itself."""

    q: str
    k: str
    v: str
    out: str
    core: str
    norm: str | None = None
    hidden_dropout: str | None = None


BERT = Layout("self.query", "self.key", "self.value", "output.dense", "self", "output.LayerNorm", "output.dropout")
DISTILBERT = Layout("q_lin", "k_lin", "v_lin", "out_lin", "")


def _linear(module: nn.Module, name: str) -> bool:
    try:
        return isinstance(module.get_submodule(name), nn.Linear)
    except AttributeError:
        return False


def layout_of(module: nn.Module) -> Layout | None:
    """The ``Layout`` of a ``transformers`` self-attention block that ``EncoderAttention`` represents exactly
    (cross-attention, causal attention and relative position embeddings are not), else None."""
    for layout in (BERT, DISTILBERT):
        if not all(_linear(module, n) for n in (layout.q, layout.k, layout.v, layout.out)):
            continue
        core = module.get_submodule(layout.core)
        if (hasattr(core, "attention_head_size") and not getattr(module, "is_cross_attention", False)
                and not getattr(core, "is_causal", False)
                and getattr(core, "position_embedding_type", "absolute") == "absolute"
                and (layout.norm is None or isinstance(module.get_submodule(layout.norm), nn.LayerNorm))):
            return layout
    return None


def is_encoder_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a self-attention block ``EncoderAttention`` represents (``layout_of``)."""
    return layout_of(module) is not None


class EncoderAttention(HeadAttention):
    """``out_proj(attention(x))``, followed by ``LayerNorm(dropout(.) + x)`` for a block that holds its norm,
    called as ``transformers`` calls its attention block (``hidden_states, attention_mask, ...``) and returning
    ``(output, None)``."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, attention_dropout: float,
                 layout: Layout = BERT, hidden_dropout: float = 0.0, eps: float = 1e-12) -> None:
        super().__init__(hidden, num_heads, head_dim=head_dim, dropout=attention_dropout, batch_first=True)
        self.layout = layout
        self.dropout = nn.Dropout(hidden_dropout)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps) if layout.norm else None

    @classmethod
    def from_hf(cls, block: nn.Module) -> EncoderAttention:
        """The same function as ``block`` (weights copied)."""
        layout = layout_of(block)
        core, q, out = (block.get_submodule(n) for n in (layout.core, layout.q, layout.out))
        d = core.attention_head_size
        norm = block.get_submodule(layout.norm) if layout.norm else None
        new = cls(q.in_features, q.out_features // d, d, core.dropout.p, layout,
                  block.get_submodule(layout.hidden_dropout).p if layout.hidden_dropout else 0.0,
                  norm.eps if norm is not None else 1e-12)
        new.to(out.weight.device, out.weight.dtype)
        for mine, theirs in new._pairs(block):
            mine.load_state_dict(theirs.state_dict())
        # what it takes to build the block back (``to_hf``): its class, config and place in the encoder
        new.hf_class, new.hf_config, new.layer_idx = type(block), core.config, getattr(core, "layer_idx", None)
        return new.train(block.training)

    def _pairs(self, block: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """Each of this module's layers with the layer of a ``transformers`` block that holds the same weights."""
        names = [self.layout.q, self.layout.k, self.layout.v, self.layout.out]
        mine = [self.q, self.k, self.v, self.out_proj]
        if self.layout.norm:
            names, mine = names + [self.layout.norm], mine + [self.LayerNorm]
        return [(m, block.get_submodule(n)) for m, n in zip(mine, names)]

    @torch.no_grad()
    def to_hf(self) -> nn.Module:
        """The ``transformers`` block this module was made from, with this module's heads and weights: its
        q/k/v and output projections as narrow as the heads kept (``transformers`` 5 reads the number of heads
        off the projections' width, so the block runs as it is)."""
        where = {} if self.layer_idx is None else {"layer_idx": self.layer_idx}
        block = self.hf_class(self.hf_config, **where).to(self.q.weight.device, self.q.weight.dtype)
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
        if self.LayerNorm is None:  # the block adds the residual and normalises
            return out, None
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
