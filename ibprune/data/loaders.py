"""Data loaders: scikit-learn's bundled 8x8 digits (the demo) and ImageFolder trees."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def digits_tensors(seed: int = 0, test_fraction: float = 0.25) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 handwritten digits as ``(N, 1, 8, 8)`` standardised tensors, split train / test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader and ordered test loader over the digits."""
    train, test = digits_tensors(seed)
    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(test, batch_size=256))


def image_folder_loaders(root: str | Path, input_size: int, batch_size: int = 64, workers: int = 2,
                         seed: int = 0) -> tuple[DataLoader, DataLoader | None]:
    """Loaders over ``root/train/<class>/*`` and, if present, ``root/val`` (or ``root/test``).

    Images are resized to ``input_size``; training adds a padded random crop and a horizontal flip.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root}: expected an ImageFolder tree with a 'train/' folder of class folders")
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = [transforms.Resize(input_size), transforms.CenterCrop(input_size)]
    train_tf = transforms.Compose([*resize, transforms.RandomCrop(input_size, padding=max(1, input_size // 8)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([*resize, transforms.ToTensor(), norm])
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(datasets.ImageFolder(root / "train", train_tf), batch_size=batch_size, shuffle=True,
                       num_workers=workers, generator=gen, drop_last=False)
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    val = None if val_dir is None else DataLoader(datasets.ImageFolder(val_dir, eval_tf), batch_size=256,
                                                  num_workers=workers)
    return train, val
