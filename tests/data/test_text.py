import pytest
import torch

from ibprune.data.text import class_names, csv_loaders, pack
from ibprune.errors import InputError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "great", "awful", "the", "was"]


def tokenizer():
    transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def write_csvs(folder, train_rows, test_rows):
    folder.mkdir(exist_ok=True)
    for name, rows in (("train.csv", train_rows), ("test.csv", test_rows)):
        lines = ["text,label"] + [f'"{t}",{y}' for t, y in rows]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_csv_text_becomes_packed_ids_and_masks_of_one_length_with_string_labels_indexed(tmp_path):
    folder = write_csvs(tmp_path / "d", [("the film was great", "pos"), ("awful, awful plot", "neg")] * 3,
                        [("good film", "pos")])
    train, test, names = csv_loaders(folder, tokenizer(), seq_len=6, batch_size=4)
    assert names == ["neg", "pos"]
    x, y = next(iter(test))
    assert x.shape == (1, 2, 6) and x.dtype == torch.int64 and y.tolist() == [1]
    assert x[0, 0].tolist() == [2, 5, 7, 3, 0, 0] and x[0, 1].tolist() == [1, 1, 1, 1, 0, 0]  # [CLS] good film [SEP]
    assert sum(len(b[1]) for b in train) == 6 and next(iter(train))[0].shape[-1] == 6  # truncated to 6


def test_integer_labels_keep_their_order_and_bad_files_say_what_is_wrong(tmp_path):
    assert class_names(["10", "2", "1"]) == ["1", "2", "10"]
    folder = write_csvs(tmp_path / "d", [("good", 0), ("bad", 1)], [("good", 2)])
    with pytest.raises(InputError, match="labels that train.csv lacks: 2"):
        csv_loaders(folder, tokenizer())
    (folder / "test.csv").write_text("sentence,label\ngood,0\n")
    with pytest.raises(InputError, match="columns 'text' and 'label'"):
        csv_loaders(folder, tokenizer())
    with pytest.raises(InputError, match="no such file"):
        csv_loaders(tmp_path / "nowhere", tokenizer())


def test_pack_puts_the_mask_under_the_ids():
    assert pack(torch.tensor([[7, 8]]), torch.tensor([[1, 0]])).tolist() == [[[7, 8], [1, 0]]]
