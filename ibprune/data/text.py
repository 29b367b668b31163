"""Text classification data as the pipeline takes it: ``(pack(ids, mask), label)`` batches, tokenised once.

``csv_loaders`` reads a folder with ``train.csv`` and ``test.csv`` (columns ``text`` and ``label``; labels as
integers or as strings, which become class indices in sorted order), tokenised by the model's own tokenizer
to ``seq_len`` tokens (truncated, padded), so every batch has the sequence length the MACs budget counts.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ibprune.errors import InputError


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, 2, seq_len)`` int64: the token ids over the attention mask (1: a token, 0: padding), the one
    input tensor ``ibprune.models.text.TextClassifier`` takes."""
    return torch.stack([input_ids, attention_mask], dim=1).long()


def read_csv(path: str | Path) -> tuple[list[str], list[str]]:
    """The ``text`` and ``label`` columns of a CSV file with a header row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (a text data folder holds train.csv and test.csv)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"text", "label"} <= set(rows[0]):
        raise InputError(f"{path}: needs a header row with the columns 'text' and 'label'")
    return [r["text"] for r in rows], [r["label"].strip() for r in rows]


def class_names(labels: list[str]) -> list[str]:
    """The classes in index order: integer labels by value, others sorted as strings."""
    names = sorted(set(labels))
    return sorted(names, key=int) if all(n.lstrip("-").isdigit() for n in names) else names


def encode(texts: list[str], tokenizer: Callable, seq_len: int) -> torch.Tensor:
    """``texts`` tokenised to exactly ``seq_len`` tokens each, packed (``pack``)."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return pack(enc["input_ids"], enc["attention_mask"])


def csv_loaders(folder: str | Path, tokenizer: Callable, seq_len: int = 128, batch_size: int = 32,
                seed: int = 0) -> tuple[DataLoader, DataLoader, list[str]]:
    """Shuffled training and ordered test loaders over ``folder/train.csv`` and ``folder/test.csv``, and the
    class names in index order."""
    train_text, train_labels = read_csv(Path(folder) / "train.csv")
    test_text, test_labels = read_csv(Path(folder) / "test.csv")
    names = class_names(train_labels)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(test_labels) - set(index))
    if unknown:
        raise InputError(f"{folder}/test.csv has labels that train.csv lacks: {', '.join(unknown[:5])}")

    def dataset(texts: list[str], labels: list[str]) -> TensorDataset:
        return TensorDataset(encode(texts, tokenizer, seq_len), torch.tensor([index[v] for v in labels]))

    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(dataset(train_text, train_labels), batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(dataset(test_text, test_labels), batch_size=batch_size), names)
