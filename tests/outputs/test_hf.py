"""A compressed transformers encoder, in one call, saved as a folder that from_pretrained loads with its
per-layer widths."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ibprune
from ibprune.models.text import pack
from ibprune.outputs.hf import MODELING, save_hf
from tests.rewrites.test_encoder import TINY, padded, tiny

transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")


def _widths(hf) -> list[tuple[int, int]]:
    """Per layer: the attention's inner width (heads x head size) and the FFN's units."""
    encoder = next(m for n, m in hf.named_modules() if n.endswith("encoder"))
    return [(layer.attention.self.query.out_features, layer.intermediate.dense.out_features)
            for layer in encoder.layer]


def _logits(hf, x: torch.Tensor) -> torch.Tensor:
    return hf(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def _loader(n: int, seed: int, shuffle: bool) -> DataLoader:
    """A task the tiny encoder can learn: does the text hold token 7? Padded to 16, lengths 6-16."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (n, 16), generator=g)
    mask = (torch.arange(16)[None] < torch.randint(6, 17, (n, 1), generator=g)).long()
    ids = ids * mask
    return DataLoader(TensorDataset(pack(ids, mask), (ids == 7).any(1).long()), batch_size=32, shuffle=shuffle,
                      generator=g)


def test_a_tiny_encoder_compresses_in_one_call_and_reloads_with_from_pretrained(tmp_path):
    model = tiny()
    result = ibprune.compress(model, _loader(256, 0, True), _loader(96, 1, False), macs=0.5, gate_epochs=0.5,
                              finetune_epochs=0.5, round_to=1, latency_runs=2, bench_batch=4, out_dir=tmp_path,
                              verbose=False)
    assert result.report["achieved"]["macs"] <= 0.5  # and the function check passed, or compress would raise
    folder = tmp_path / "hf"
    assert (folder / MODELING).is_file() and json.loads((folder / "config.json").read_text())["pruned_linears"]
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    x = padded()
    slim = result.model.eval()
    assert _widths(loaded) == [(a.num_heads * a.head_dim, layer.intermediate.dense.out_features) for layer, a in
                               ((layer, layer.attention) for layer in slim.hf.bert.encoder.layer)]
    assert sum(w[0] for w in _widths(loaded)) < 2 * TINY["hidden_size"]  # heads went
    torch.testing.assert_close(_logits(loaded, x), slim(x), rtol=1e-5, atol=1e-6)
    assert result.model(x).shape == model(x).shape


def test_a_reloaded_slim_model_saves_again_unchanged(tmp_path):
    slim = ibprune.check_model(tiny("roberta"), padded()[1:2], macs=0.5)["model"]
    save_hf(slim.hf, tmp_path / "a")
    once = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "a", trust_remote_code=True)
    save_hf(once, tmp_path / "a")  # over the folder it was loaded from: replaced whole
    twice = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "a", trust_remote_code=True)
    x = padded()
    assert _widths(twice) == _widths(once) != [(TINY["hidden_size"], TINY["intermediate_size"])] * 2
    torch.testing.assert_close(_logits(twice.eval(), x), slim.eval()(x), rtol=1e-5, atol=1e-6)
