"""Multi-head attention whose heads can be gated and removed one by one.

``nn.MultiheadAttention`` cannot lose a head: its inner width must equal ``embed_dim`` (one packed input
projection, ``head_dim = embed_dim // num_heads``) and it applies its output projection functionally, where no
hook sees the heads. ``HeadAttention`` computes the same function with separate ``q``, ``k``, ``v`` projections
of width ``num_heads * head_dim``, an ``attend`` module for the per-head softmax attention, and an
``out_proj`` layer called as a module, so that:

* a head's gate sits at ``out_proj``'s input (its ``head_dim`` channels share one gate), like every other gate;
* removing head ``h`` deletes its rows of ``q``, ``k``, ``v`` and its columns of ``out_proj``, exactly what
  the gated network computes with that gate shut, and lowers ``num_heads``;
* the attention matmuls are counted by torch-pruning's MACs counter (``ibprune.core.costs`` lends it a counter
  for ``Attend`` while it counts).

torchvision's Swin attention has the same problem (it calls its projections' weights functionally), and
MaxViT's packs q/k/v in one projection (``GridAttention`` is its equivalent):
``WindowAttention`` and ``WindowAttentionV2`` are the head-removable equivalents of ``ShiftedWindowAttention``
and ``ShiftedWindowAttentionV2``; a removed head also takes its column of the position-bias table (v1) or its
output of the bias MLP and its temperature (v2).

``split_heads`` swaps every attention layer it can represent exactly for its equivalent with the same weights,
in place.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2


class Attend(nn.Module):
    """``softmax(q k^T * scale + mask) v`` for ``(batch, heads, length, head_dim)`` tensors (``scale``: 1 / sqrt(d)
    unless given)."""

    def __init__(self, num_heads: int, dropout: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        self.num_heads, self.dropout, self.fused = num_heads, dropout, fused

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                need_weights: bool = False, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.dropout if self.training else 0.0
        if self.fused and not need_weights:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale), None
        logits = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
        weights = torch.softmax(logits if mask is None else logits + mask, dim=-1)
        return F.dropout(weights, p) @ v, weights


def _count_attend(module: Attend, inputs: tuple, output) -> None:
    """torch-pruning counter hook: scaling, ``q k^T``, softmax and ``weights v`` (MACs as in its MHA counter)."""
    q, k, v = inputs[:3]
    batch, heads, q_len, d = q.shape
    k_len, d_v = k.shape[-2], v.shape[-1]
    module.__flops__ += int(batch * heads * (q_len * d + q_len * k_len * (d + 1 + d_v)))



class HeadAttention(nn.Module):
    """Drop-in replacement for ``nn.MultiheadAttention`` (same call and outputs) with removable heads."""

    # read by torch's fused Transformer*Layer fast path, which needs nn.MultiheadAttention's packed weights:
    # these values make it take its regular path, which calls this module
    _qkv_same_embed_dim = False
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int | None = None, bias: bool = True,
                 out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = head_dim or embed_dim // num_heads
        self.batch_first = batch_first
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(embed_dim, inner, bias=bias)
        self.k = nn.Linear(embed_dim, inner, bias=bias)
        self.v = nn.Linear(embed_dim, inner, bias=bias)
        self.attend = Attend(num_heads, dropout)
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> HeadAttention:
        """The same function as ``mha`` (weights copied)."""
        new = cls(mha.embed_dim, mha.num_heads, bias=mha.in_proj_bias is not None,
                  out_bias=mha.out_proj.bias is not None, dropout=mha.dropout, batch_first=mha.batch_first)
        new.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype)
        new._load_projections(mha.in_proj_weight, mha.in_proj_bias, mha.out_proj)
        return new.train(mha.training)

    @torch.no_grad()
    def _load_projections(self, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None, out: nn.Linear) -> None:
        """Copy a packed ``[q; k; v]`` projection into ``q``, ``k``, ``v`` (a bias only where the layer has one)
        and ``out`` into ``out_proj``."""
        e = self.q.out_features
        for i, layer in enumerate((self.q, self.k, self.v)):
            layer.weight.copy_(qkv_weight[i * e:(i + 1) * e])
            if layer.bias is not None:
                layer.bias.copy_(qkv_bias[i * e:(i + 1) * e])
        self.out_proj.load_state_dict(out.state_dict())

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        heads = (self.num_heads, self.head_dim)
        q, k, v = (proj(t).unflatten(-1, heads).transpose(1, 2)
                   for proj, t in ((self.q, query), (self.k, key), (self.v, value)))
        mask = self._mask(key_padding_mask, attn_mask, is_causal, q)
        out, weights = self.attend(q, k, v, mask, need_weights)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights

    def _mask(self, key_padding_mask, attn_mask, is_causal, q) -> torch.Tensor | None:
        """One additive float mask, broadcastable to ``(batch, heads, q_len, k_len)``; ``True`` = masked out,
        as in ``nn.MultiheadAttention``."""
        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
            return m.to(q.dtype)

        if attn_mask is None and is_causal:
            q_len = q.shape[-2]
            attn_mask = torch.ones(q_len, q_len, dtype=torch.bool, device=q.device).triu(1)
        mask = None
        if attn_mask is not None:
            if attn_mask.dim() != 2:
                raise ValueError("HeadAttention takes a 2-D attn_mask (q_len, k_len); per-head masks do not "
                                 "survive head removal")
            mask = additive(attn_mask)
        if key_padding_mask is not None:
            pad = additive(key_padding_mask)[:, None, None, :]
            mask = pad if mask is None else mask + pad
        return mask

    def remove_heads(self, heads: list[int]) -> None:
        """Delete ``heads`` (their q/k/v rows and out_proj columns) through torch-pruning's layer pruners."""
        heads = sorted(set(heads))
        if len(heads) >= self.num_heads:
            raise ValueError(f"cannot remove all {self.num_heads} heads")
        keep = [h for h in range(self.num_heads) if h not in heads]
        channels = [h * self.head_dim + i for h in heads for i in range(self.head_dim)]
        for proj in (self.q, self.k, self.v):
            tp.prune_linear_out_channels(proj, channels)
        tp.prune_linear_in_channels(self.out_proj, channels)
        self.num_heads -= len(heads)
        self.attend.num_heads = self.num_heads
        self._remove_position_bias(keep)

    def _remove_position_bias(self, keep: list[int]) -> None:
        """Keep only heads ``keep`` of any per-head parameter besides the projections (none here)."""

    def _keep_bias_columns(self, keep: list[int]) -> None:
        """``_remove_position_bias`` for a ``relative_position_bias_table`` with one column per head."""
        self.relative_position_bias_table = nn.Parameter(self.relative_position_bias_table.data[:, keep].clone())


class WindowAttention(HeadAttention):
    """torchvision's ``ShiftedWindowAttention`` (Swin) with removable heads: attention within (shifted) windows
    of a ``(batch, height, width, channels)`` map, plus a learned bias per head and relative position."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int,
                 qkv_bias: bool = True, proj_bias: bool = True, attention_dropout: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, bias=qkv_bias, out_bias=proj_bias, dropout=attention_dropout,
                         batch_first=True)
        self.window_size, self.shift_size, self.dropout = list(window_size), list(shift_size), dropout
        # torch.onnx cannot export the fused CPU attention kernel over a (batch x windows) dimension (torch 2.14)
        self.attend.fused = False
        wh, ww = self.window_size
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        self.register_buffer("relative_position_index", ((rel[..., 0] + wh - 1) * (2 * ww - 1)
                                                         + rel[..., 1] + ww - 1).flatten())
        self._init_position_bias()

    def _init_position_bias(self) -> None:
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), self.num_heads))

    def _copy_position_bias(self, swa: nn.Module) -> None:
        self.relative_position_bias_table.copy_(swa.relative_position_bias_table)

    def _position_bias(self) -> torch.Tensor:
        """``(heads, tokens, tokens)``: the bias each head adds to its attention logits."""
        n = self.window_size[0] * self.window_size[1]
        return self.relative_position_bias_table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)

    def _scaled(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Queries and keys as the logits use them, and the scale of ``q k^T``."""
        return q, k, None

    _remove_position_bias = HeadAttention._keep_bias_columns

    @classmethod
    def from_torch(cls, swa: nn.Module) -> WindowAttention:
        """The same function as torchvision's ``ShiftedWindowAttention`` ``swa`` (weights copied)."""
        new = cls(swa.proj.in_features, swa.window_size, swa.shift_size, swa.num_heads, swa.qkv.bias is not None,
                  swa.proj.bias is not None, swa.attention_dropout, swa.dropout)
        new.to(swa.proj.weight.device, swa.proj.weight.dtype)
        new._load_projections(swa.qkv.weight, swa.qkv.bias, swa.proj)
        with torch.no_grad():
            new._copy_position_bias(swa)
        return new.train(swa.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        (wh, ww), shift = self.window_size, list(self.shift_size)
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        ph, pw = x.shape[1], x.shape[2]
        shift = [0 if wh >= ph else shift[0], 0 if ww >= pw else shift[1]]
        if sum(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (x.view(b, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
                   .reshape(-1, wh * ww, c))                                    # (b * windows, tokens, c)
        heads = (self.num_heads, self.head_dim)
        q, k, v = (proj(windows).unflatten(-1, heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        q, k, scale = self._scaled(q, k)
        mask = self._position_bias().unsqueeze(0)                                # (1, heads, n, n)
        if sum(shift):
            mask = (mask + self._shift_mask(ph, pw, shift, x).unsqueeze(1)).repeat(b, 1, 1, 1)
        out, _ = self.attend(q, k, v, mask, scale=scale)
        out = F.dropout(self.out_proj(out.transpose(1, 2).flatten(2)), self.dropout, self.training)
        out = out.view(b, ph // wh, pw // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
        if sum(shift):
            out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
        return out[:, :h, :w, :].contiguous()

    def _shift_mask(self, ph: int, pw: int, shift: list[int], like: torch.Tensor) -> torch.Tensor:
        """``(windows, n, n)``: -100 between tokens that the cyclic shift brought from different regions."""
        (wh, ww) = self.window_size
        region = like.new_zeros((ph, pw))
        label = 0
        for rows in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
            for cols in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
                region[rows[0]:rows[1], cols[0]:cols[1]] = label
                label += 1
        region = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
        differs = region.unsqueeze(1) != region.unsqueeze(2)
        return torch.zeros_like(differs, dtype=like.dtype).masked_fill(differs, -100.0)


class WindowAttentionV2(WindowAttention):
    """torchvision's ``ShiftedWindowAttentionV2`` (Swin v2) with removable heads: cosine attention with a learned
    temperature per head, and a position bias per head from a small MLP (``cpb_mlp``)."""

    def _init_position_bias(self) -> None:
        self.k.register_parameter("bias", None)  # v2 zeroes the key bias
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(self.num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, self.num_heads,
                                                                                           bias=False))
        wh, ww = self.window_size
        self.register_buffer("relative_coords_table", torch.zeros(1, 2 * wh - 1, 2 * ww - 1, 2))

    def _copy_position_bias(self, swa: nn.Module) -> None:
        self.logit_scale.copy_(swa.logit_scale)
        self.cpb_mlp.load_state_dict(swa.cpb_mlp.state_dict())
        self.relative_coords_table.copy_(swa.relative_coords_table)

    def _position_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        return 16 * torch.sigmoid(table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1))

    def _scaled(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        temperature = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        return F.normalize(q, dim=-1) * temperature, F.normalize(k, dim=-1), 1.0

    def _remove_position_bias(self, keep: list[int]) -> None:
        tp.prune_linear_out_channels(self.cpb_mlp[2], [i for i in range(self.cpb_mlp[2].out_features)
                                                        if i not in keep])
        self.logit_scale = nn.Parameter(self.logit_scale.data[keep].clone())


class GridAttention(HeadAttention):
    """torchvision's MaxViT ``RelativePositionalMultiHeadAttention`` with removable heads: attention within each
    of ``G`` groups of ``P`` tokens of a ``(batch, G, P, features)`` tensor, plus a bias per head and relative
    position."""

    def __init__(self, feat_dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__(feat_dim, feat_dim // head_dim, head_dim, batch_first=True)
        self.scale = feat_dim ** -0.5  # MaxViT scales by the full width, not the head width: kept as a constant
        self.attend.fused = False  # as in WindowAttention: batch x groups defeats torch.onnx's fused kernel
        self.max_seq_len = max_seq_len
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * int(math.sqrt(max_seq_len)) - 1) ** 2,
                                                                     self.num_heads))
        self.register_buffer("relative_position_index", torch.zeros(max_seq_len, max_seq_len, dtype=torch.long))

    @classmethod
    def from_torch(cls, rpa: nn.Module) -> GridAttention:
        """The same function as torchvision's ``RelativePositionalMultiHeadAttention`` ``rpa`` (weights copied)."""
        new = cls(rpa.merge.out_features, rpa.head_dim, rpa.max_seq_len)
        new.to(rpa.merge.weight.device, rpa.merge.weight.dtype)
        new._load_projections(rpa.to_qkv.weight, rpa.to_qkv.bias, rpa.merge)
        with torch.no_grad():
            new.relative_position_bias_table.copy_(rpa.relative_position_bias_table)
            new.relative_position_index.copy_(rpa.relative_position_index.view(new.max_seq_len, -1))
        return new.train(rpa.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        tokens = x.reshape(b * g, p, -1)
        heads = (self.num_heads, self.head_dim)
        q, k, v = (proj(tokens).unflatten(-1, heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
        mask = bias.view(self.max_seq_len, self.max_seq_len, -1).permute(2, 0, 1).unsqueeze(0)
        out, _ = self.attend(q, k, v, mask, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).flatten(2)).view(b, g, p, -1)

    _remove_position_bias = HeadAttention._keep_bias_columns


def representable(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot become a ``HeadAttention`` exactly, or ``None`` when it can."""
    if not mha._qkv_same_embed_dim:
        return "keys/values of another width (kdim/vdim)"
    if mha.bias_k is not None:
        return "learned key/value biases (add_bias_kv)"
    if mha.add_zero_attn:
        return "add_zero_attn"
    return None


#: torchvision attention classes (exact type) -> their head-removable equivalents
EQUIVALENTS = {ShiftedWindowAttention: WindowAttention, ShiftedWindowAttentionV2: WindowAttentionV2,
               RelativePositionalMultiHeadAttention: GridAttention}


def splittable(model: nn.Module) -> bool:
    """Whether ``split_heads`` would replace any layer of ``model``."""
    return any(type(m) in EQUIVALENTS or isinstance(m, nn.MultiheadAttention) and representable(m) is None
               for m in model.modules())


def split_heads(model: nn.Module) -> list[str]:
    """Replace, in place, every attention layer of ``model`` that ``HeadAttention`` (``nn.MultiheadAttention``)
    or one of ``EQUIVALENTS`` (torchvision's Swin and MaxViT attention) represents exactly.

    Returns the names of the replaced modules; the others stay (their heads are not pruned) with a warning.
    Idempotent.
    """
    replaced, kept = [], []
    for name, module in list(model.named_modules()):
        if type(module) in EQUIVALENTS:
            new = EQUIVALENTS[type(module)].from_torch(module)
        elif isinstance(module, nn.MultiheadAttention):
            why = representable(module) if name else "the model itself"
            if why is not None:
                kept.append(f"{name} ({why})")
                continue
            new = HeadAttention.from_torch(module)
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
        replaced.append(name)
    if kept:
        warnings.warn(f"{len(kept)} attention layer(s) keep all their heads: {', '.join(kept[:3])}"
                      + (" ..." if len(kept) > 3 else ""), stacklevel=2)
    return replaced
