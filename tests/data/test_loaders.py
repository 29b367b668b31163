import pytest

from ibprune.data.loaders import digits_loaders, digits_tensors, image_folder_loaders


def test_digits_split_is_disjoint_and_standardised():
    train, test = digits_tensors()
    assert len(train) + len(test) == 1797 and len(test) == 449
    x = train.tensors[0]
    assert x.shape[1:] == (1, 8, 8) and abs(float(x.mean())) < 1e-4
    tr, te = digits_loaders(batch_size=32)
    xb, yb = next(iter(tr))
    assert xb.shape == (32, 1, 8, 8) and yb.max() <= 9


def test_image_folder(tmp_path, image_tree):
    image_tree(tmp_path)
    train, val = image_folder_loaders(tmp_path, input_size=16, batch_size=4, workers=0)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16)
    assert len(val.dataset) == 6 and val.dataset.classes == ["cat", "dog"]


def test_image_folder_needs_a_train_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/"):
        image_folder_loaders(tmp_path, input_size=16)
