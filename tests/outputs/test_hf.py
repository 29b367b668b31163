"""A compressed transformers encoder, in one command, saved as a folder that from_pretrained loads with its
per-layer widths."""

import json

import numpy as np
import pytest
import torch

import ibprune
from ibprune.cli import main
from ibprune.outputs.hf import MODELING, save_hf
from ibprune.outputs.onnx import session
from tests.data.test_text import WORDS, tokenizer, write_csvs
from tests.rewrites.test_encoder import TINY, padded, tiny

transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")


def _widths(hf) -> list[tuple[int, int]]:
    """Per layer: the attention's inner width (heads x head size) and the FFN's units."""
    encoder = next(m for n, m in hf.named_modules() if n.endswith("encoder"))
    return [(layer.attention.self.query.out_features, layer.intermediate.dense.out_features)
            for layer in encoder.layer]


def _logits(hf, x: torch.Tensor) -> torch.Tensor:
    return hf(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def _sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """A task the tiny encoder can learn: does the sentence say 'great'?"""
    g = torch.Generator().manual_seed(seed)
    words = WORDS[5:]
    rows = []
    for _ in range(n):
        picked = torch.randint(len(words), (int(torch.randint(3, 12, (1,), generator=g)),), generator=g)
        text = " ".join(words[i] for i in picked)
        rows.append((text, "yes" if "great" in text.split() else "no"))
    return rows


def test_the_command_line_compresses_a_local_hf_model_on_csv_text_into_a_from_pretrained_folder(tmp_path):
    tiny().hf.save_pretrained(tmp_path / "model")
    tokenizer().save_pretrained(tmp_path / "model")
    data = write_csvs(tmp_path / "text", _sentences(256, 0), _sentences(96, 1))
    out = tmp_path / "out"
    assert main(["--quiet", "compress", "--model", f"hf:{tmp_path / 'model'}", "--data", f"csv:{data}",
                 "--seq-len", "16", "--macs", "0.5", "--gate-epochs", "0.5", "--finetune-epochs", "0.5",
                 "--round-to", "1", "--batch-size", "32", "--latency-runs", "2", "--bench-batch", "4",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["achieved"]["macs"] <= 0.5  # and the function check passed, or compress would have failed
    assert report["finetune"]["optimizer"] == "adamw"  # what transformers are fine-tuned with, by default
    assert (out / "hf" / MODELING).is_file() and json.loads((out / "hf" / "config.json").read_text())["pruned_linears"]
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out / "hf", trust_remote_code=True)
    assert sum(w[0] for w in _widths(loaded)) < 2 * TINY["hidden_size"]  # heads went
    sess = session(out / "model.onnx")
    for x in (padded(), padded(3, 16)):  # the folder and the ONNX file compute the same, padding included
        np.testing.assert_allclose(_logits(loaded.eval(), x).detach().numpy(), sess.run(None, {"input": x.numpy()})[0],
                                   atol=1e-5)


def test_a_reloaded_slim_model_saves_again_unchanged(tmp_path):
    slim = ibprune.check_model(tiny("roberta"), padded()[1:2], macs=0.5)["model"]
    save_hf(slim.hf, tmp_path / "a")
    once = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "a", trust_remote_code=True)
    save_hf(once, tmp_path / "a")  # over the folder it was loaded from: replaced whole
    twice = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "a", trust_remote_code=True)
    x = padded()
    assert _widths(twice) == _widths(once) != [(TINY["hidden_size"], TINY["intermediate_size"])] * 2
    torch.testing.assert_close(_logits(twice.eval(), x), slim.eval()(x), rtol=1e-5, atol=1e-6)


def test_a_slim_distilbert_reloads_from_its_folder_and_from_the_compressed_file(tmp_path):
    from ibprune.outputs.compressed import save_compressed
    from tests.rewrites.test_encoder import tiny

    x = padded()
    report = ibprune.check_model(tiny("distilbert"), x[1:2], macs=0.5)
    slim, removed = report["model"].eval(), report["removed"]
    assert any(removed[n] for n in removed if n.endswith("attention"))  # heads went, and FFN units
    assert any(removed[n] for n in removed if n.endswith("lin1"))
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        save_hf(slim.hf, tmp_path / "hf"), trust_remote_code=True).eval()
    torch.testing.assert_close(_logits(loaded, x), slim(x), rtol=1e-5, atol=1e-6)
    save_compressed(tmp_path / "compressed.pt", slim, removed, x[:1])
    rebuilt = ibprune.load_compressed(tiny("distilbert"), tmp_path / "compressed.pt").eval()
    torch.testing.assert_close(rebuilt(x), slim(x), rtol=1e-5, atol=1e-6)
