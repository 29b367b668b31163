"""Text classifiers as ibprune's pipeline sees a model: one input tensor, logits out.

A ``transformers`` sequence classifier takes token ids and an attention mask and returns an output object;
``TextClassifier`` takes both stacked in one int64 tensor of shape ``(batch, 2, seq_len)``
(``ibprune.data.text.pack``) and returns the logits, so that every stage (gates, pruning, the function check,
ONNX export, the latency benchmark) handles it as it handles an image classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TextClassifier(nn.Module):
    """A ``transformers`` ``...ForSequenceClassification`` model behind one packed input
    (``ibprune.data.text.pack``)."""

    #: input dimensions whose size may change between calls besides the batch (ONNX export keeps them dynamic)
    dynamic_dims = {2: "sequence"}

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def uses_transformers(model: nn.Module) -> bool:
    """Whether ``model`` is, or holds, a module of the ``transformers`` library (trained with AdamW by default)."""
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


def from_pretrained(source: str, num_classes: int | None = None) -> tuple[TextClassifier, object]:
    """A ``transformers`` sequence classifier and its tokenizer from a local folder (or, where the Hugging Face
    hub is reachable, a hub name). With ``num_classes`` a head of that many classes replaces any the folder
    holds (a plain encoder gets a fresh one: train it with ``adapt_epochs``)."""
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ValueError("a Hugging Face model needs the [text] extra: pip install 'ibprune[text]'") from None
    extra = {} if num_classes is None else {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    source = str(Path(source).expanduser()) if source.startswith("~") else source
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, **extra)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        where = "a local folder without a model" if Path(source).is_dir() else (
            "not a local folder, and the Hugging Face hub could not provide it (offline?)")
        raise ValueError(f"cannot load the Hugging Face model {source!r}: {where} ({str(err).splitlines()[0]})") \
            from None
    return TextClassifier(model.eval()), tokenizer
