import pytest
import torch
import torch_pruning as tp
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

import ibprune
from ibprune.core.costs import count
from ibprune.core.groups import find_groups
from ibprune.core.rankers import criterion_scores
from ibprune.rewrites.attention import GridAttention, HeadAttention, WindowAttention, WindowAttentionV2, split_heads


class TinyTransformer(nn.Module):
    """Patch embedding, two torch encoder layers, mean pool, linear classifier: a ViT in miniature."""

    def __init__(self, width: int = 32, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, width, 2, stride=2)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_attention_computes_what_multihead_attention_does(batch_first):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    heads = HeadAttention.from_torch(mha).eval()
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 4:] = True
    masks = [{}, {"key_padding_mask": padding}, {"attn_mask": torch.randn(5, 7)},
             {"attn_mask": torch.rand(5, 7) > 0.7, "key_padding_mask": padding}]
    for kwargs in masks:
        for need_weights in (True, False):
            want, want_w = mha(q, kv, kv, need_weights=need_weights, **kwargs)
            got, got_w = heads(q, kv, kv, need_weights=need_weights, **kwargs)
            assert torch.allclose(got, want, atol=1e-5)
            assert (got_w is None) == (want_w is None)
            if want_w is not None:
                assert torch.allclose(got_w, want_w, atol=1e-6)


def test_head_attention_refuses_a_per_head_mask():
    heads = HeadAttention.from_torch(nn.MultiheadAttention(16, 4, batch_first=True)).eval()
    x = torch.randn(3, 5, 16)
    with pytest.raises(ValueError, match="2-D attn_mask"):
        heads(x, x, x, attn_mask=torch.zeros(3 * 4, 5, 5))


def test_split_heads_keeps_the_function_and_refuses_what_it_cannot_represent():
    model = TinyTransformer().eval()
    x = torch.randn(2, 1, 8, 8)
    ref = model(x)
    names = split_heads(model)
    assert names == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert torch.allclose(model(x), ref, atol=1e-5)
    assert split_heads(model) == []  # idempotent
    odd = nn.Sequential(nn.Linear(4, 4))
    odd.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    with pytest.warns(UserWarning, match="keep all their heads.*kdim/vdim"):
        assert split_heads(odd) == []
    assert isinstance(odd.attn, nn.MultiheadAttention)


def test_heads_form_one_group_each_and_their_attention_is_counted():
    model = TinyTransformer().eval()
    x = torch.randn(1, 1, 8, 8)
    torch_pruning_macs, _ = tp.utils.count_ops_and_params(model, x)
    macs_before, _ = count(model, x)
    split_heads(model)
    _, groups = find_groups(model, x)
    heads = {g.name: g for g in groups if g.unit == "head"}
    assert sorted(heads) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    g = heads["encoder.layers.0.self_attn"]
    assert g.size == 4 and g.inputs["encoder.layers.0.self_attn.out_proj"].gates[:9] == [0] * 8 + [1]
    # no channel group reaches into the q / k / v projections
    others = [layer for h in groups if h.unit != "head" for layer in (*h.inputs, *h.outputs)]
    assert not any(layer.endswith((".q", ".k", ".v")) for layer in others)
    # ``count`` counts an original as split (the same number before and after); torch-pruning's own count of
    # nn.MultiheadAttention differs only in the bias additions, which its Linear counter counts once per layer
    # rather than per token: (3 + 1) x 16 tokens x 32 against 4 x 32, in each of the 2 layers
    assert count(model, x)[0] == macs_before
    assert torch_pruning_macs - macs_before == 2 * (4 * 16 * 32 - 4 * 32)


def test_removing_heads_is_exact_and_updates_num_heads():
    model = TinyTransformer().eval()
    split_heads(model)
    attn = model.encoder.layers[0].self_attn
    x = torch.randn(2, 1, 8, 8)
    shut = {}

    def zero_heads(module, args):  # what a shut gate does: heads 1 and 3 pass nothing into out_proj
        h = args[0].unflatten(-1, (4, 8)).clone()
        h[..., [1, 3], :] = 0
        return (h.flatten(-2),)

    shut["hook"] = attn.out_proj.register_forward_pre_hook(zero_heads)
    ref = model(x)
    shut["hook"].remove()
    attn.remove_heads([3, 1])
    assert attn.num_heads == 2 and attn.q.out_features == 16 and attn.out_proj.in_features == 16
    assert torch.allclose(model(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="cannot remove all"):
        attn.remove_heads([0, 1])


def test_a_transformer_compresses_through_heads_and_mlp_units(tmp_path, random_loader):
    model = TinyTransformer().eval()
    loader = random_loader(n=32)
    r = ibprune.compress(model, loader, loader, macs=0.6, gate_epochs=0.5, finetune_epochs=0.5, round_to=4,
                         out_dir=tmp_path, latency_runs=2, verbose=False)
    assert r.report["achieved"]["macs"] <= 0.6 and r.report["onnx"]["max_abs_diff"] < 1e-4
    kept_heads = [r.model.get_submodule(f"encoder.layers.{i}.self_attn").num_heads for i in range(2)]
    assert all(1 <= k <= 4 for k in kept_heads) and sum(kept_heads) < 8
    assert r.report["pruned_channels"]["encoder.layers.0.self_attn"]["total"] == 4
    assert isinstance(model.encoder.layers[0].self_attn, nn.MultiheadAttention)  # the input model is untouched
    # the compressed file rebuilds from a fresh original, heads and all
    rebuilt = ibprune.load_compressed(TinyTransformer(), tmp_path / "compressed.pt").eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(rebuilt(x), r.model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_criteria_score_heads(criterion, random_loader):
    model = TinyTransformer().eval()
    split_heads(model)
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(model, x)
    attention = model.encoder.layers[1].self_attn
    d = attention.head_dim
    with torch.no_grad():  # head 2 made large; head 1 cut off from the output (its out_proj columns zero)
        for proj in (attention.q, attention.k, attention.v):
            proj.weight[2 * d:3 * d] *= 10.0
        attention.out_proj.weight[:, d:2 * d] = 0.0
    scores = criterion_scores(model, x, groups, criterion, random_loader(n=16), torch.device("cpu"))
    heads = scores["encoder.layers.1.self_attn"]
    assert heads.shape == (4,) and torch.isfinite(heads).all()
    assert int(heads.argmax()) == 2 and int(heads.argmin()) == 1


def test_a_criterion_that_cannot_score_a_group_names_it():
    model = TinyTransformer().eval()  # no BatchNorm anywhere: the bn criterion has nothing to read
    split_heads(model)
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(model, x)
    with pytest.raises(ibprune.UnsupportedModelError, match="'bn' criterion cannot score group"):
        criterion_scores(model, x, groups, "bn")


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])  # (6, 10): padded to whole windows
@pytest.mark.parametrize("version", [1, 2])
def test_window_attention_computes_what_swin_attention_does_and_loses_heads_exactly(size, version):
    torch_class, our_class = {1: (ShiftedWindowAttention, WindowAttention),
                              2: (ShiftedWindowAttentionV2, WindowAttentionV2)}[version]
    swa = torch_class(16, [4, 4], [2, 2], num_heads=4).eval()
    if version == 2:  # away from the initial values, so that a head mix-up would show
        with torch.no_grad():
            swa.logit_scale.uniform_(1.0, 3.0)
    new = our_class.from_torch(swa).eval()
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        assert torch.allclose(new(x), swa(x), atol=1e-5)
        shut = new.out_proj.register_forward_pre_hook(
            lambda m, a: (a[0].unflatten(-1, (4, 4)).index_fill(-2, torch.tensor([0, 2]), 0.0).flatten(-2),))
        ref = new(x)
        shut.remove()
        new.remove_heads([2, 0])
        assert new.num_heads == 2 and new._position_bias().shape[0] == 2
        assert torch.allclose(new(x), ref, atol=1e-5)


def test_swin_attention_is_split_and_counted_with_its_matmuls():
    block = nn.Sequential(ShiftedWindowAttention(16, [4, 4], [2, 2], num_heads=4))
    x = torch.randn(1, 8, 8, 16)
    before, _ = count(block, x)  # counted as split_heads makes it (the functional original hides its matmuls)
    assert split_heads(block) == ["0"] and isinstance(block[0], WindowAttention)
    after, _ = count(block, x)
    projections = 4 * 64 * 16 * 16 + 4 * 16  # q, k, v, out_proj over 64 tokens, plus one bias add each
    attention = 4 * 4 * (16 * 4 + 16 * 16 * (4 + 1 + 4))  # 4 windows x 4 heads of 16 tokens, head_dim 4
    assert before == after == projections + attention


def test_grid_attention_computes_what_maxvit_attention_does_and_loses_heads_exactly():
    rpa = RelativePositionalMultiHeadAttention(32, 8, 16).eval()  # 4 heads over groups of 16 tokens
    with torch.no_grad():
        rpa.relative_position_bias_table.normal_()
    new = GridAttention.from_torch(rpa).eval()
    x = torch.randn(2, 3, 16, 32)
    with torch.no_grad():
        assert torch.allclose(new(x), rpa(x), atol=1e-5)
        shut = new.out_proj.register_forward_pre_hook(
            lambda m, a: (a[0].unflatten(-1, (4, 8)).index_fill(-2, torch.tensor([3]), 0.0).flatten(-2),))
        ref = new(x)
        shut.remove()
        new.remove_heads([3])
        assert new.num_heads == 3 and new.relative_position_bias_table.shape[1] == 3
        assert torch.allclose(new(x), ref, atol=1e-5)
