"""CIFAR-10 from torchvision's format, an ImageFolder tree, or the JPEG tarballs; decoded once, augmented on tensors.

Decoding 50,000 JPEGs every epoch would dominate training on 2 cores, so images are decoded once into a uint8
tensor, cached on disk (``$IBPRUNE_CACHE`` or ``~/.cache/ibprune``), and batches are cropped (4-pixel
padding), flipped and normalised as tensors, on the GPU when there is one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ibprune.data.loaders import IMAGENET_MEAN, IMAGENET_STD
from ibprune.files import atomic_path, cache_dir

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def detect(root: str | Path) -> str:
    """``"tarballs"``, ``"torchvision"`` or ``"imagefolder"``: which CIFAR-10 layout ``root`` holds."""
    root = Path(root)
    if (root / "train.tar.gz").is_file() and (root / "test.tar.gz").is_file():
        return "tarballs"
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "torchvision"
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        return "imagefolder"
    raise FileNotFoundError(f"{root}: no CIFAR-10 here (expected train.tar.gz + test.tar.gz, torchvision's "
                            "cifar-10-batches-py, or train/ and test/ class folders)")


def load_cifar10(root: str | Path) -> dict[str, torch.Tensor]:
    """``{"train_x", "train_y", "test_x", "test_y"}``: uint8 ``(N, 3, 32, 32)`` images and int64 labels."""
    root = Path(root).resolve()
    kind = detect(root)
    stamp = "".join(f"{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(root.iterdir()))
    cached = cache_dir() / f"cifar10-{kind}-{hashlib.sha256((str(root) + stamp).encode()).hexdigest()[:16]}.pt"
    if cached.is_file():
        return torch.load(cached, weights_only=True)
    if kind == "torchvision":
        from torchvision.datasets import CIFAR10

        base = root.parent if (root / "data_batch_1").is_file() else root
        data = {}
        for split, train in (("train", True), ("test", False)):
            ds = CIFAR10(str(base), train=train, download=False)
            data[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            data[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.long)
    else:
        data = {}
        for split in ("train", "test"):
            if kind == "tarballs":
                x, y = _decode_tarball(root / f"{split}.tar.gz")
            else:
                folder = root / split if (root / split).is_dir() else root / "val"
                x, y = _decode_folder(folder)
            data[f"{split}_x"], data[f"{split}_y"] = x, y
    with atomic_path(cached) as tmp:
        torch.save(data, tmp)
    return data


def _to_tensor(blobs: list[bytes], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.long)


def _decode_tarball(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    blobs, labels = [], []
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members:
            cls = Path(m.name).parent.name
            if cls not in CLASSES:
                raise ValueError(f"{path}: {m.name} is not under a CIFAR-10 class folder")
            blobs.append(tar.extractfile(m).read())
            labels.append(CLASSES.index(cls))
    return _to_tensor(blobs, labels)


def _decode_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir()) if f.is_file()]
    return _to_tensor([f.read_bytes() for f, _ in files], [i for _, i in files])


class TensorLoader:
    """Batches of a uint8 image tensor as normalised floats on ``device``; training batches are augmented.

    Iterating gives ``(x, y)`` like a ``DataLoader``; each pass reshuffles (training) with a seeded generator,
    so runs are repeatable.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128, train: bool = False,
                 device: str | torch.device = "cpu", seed: int = 0, pad: int = 4,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.train, self.pad = batch_size, train, pad
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world, self.even = 0, 1, True

    def shard(self, rank: int, world: int, pad: bool = True) -> TensorLoader:
        """This rank's shard of a distributed run: each pass, every ``world``-th image of the order all ranks
        share (one seed), from ``rank``; ``pad``: the order padded with its first images so that every shard is
        as long (training), else each image in exactly one shard (evaluation)."""
        out = copy.copy(self)
        out.generator = torch.Generator()
        out.generator.set_state(self.generator.get_state())
        out.rank, out.world, out.even = rank, world, pad
        return out

    def _places(self) -> torch.Tensor:
        """The places of each pass's order this loader takes: all, or its shard's (padded when ``even``)."""
        n = len(self.labels)
        places = torch.arange(n)
        if self.world > 1:
            places = torch.cat([places, places[:(-n) % self.world if self.even else 0]])[self.rank::self.world]
        return places

    def __len__(self) -> int:
        return (len(self._places()) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator) if self.train else torch.arange(n))[self._places()]
        n = len(order)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size].to(self.device)
            x = self.images[idx].float().div_(255.0)
            if self.train:
                x = self._augment(x)
            yield (x - self.mean) / self.std, self.labels[idx]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=self.generator).to(self.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=self.generator).to(self.device)
        rows = (dy[:, None] + torch.arange(h, device=self.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=self.device))[:, None, None, :]
        batch = torch.arange(b, device=self.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=self.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
        flip = (torch.rand(b, generator=self.generator) < 0.5).to(self.device)
        return torch.where(flip[:, None, None, None], x.flip(3), x)


def cifar10_loaders(root: str | Path, batch_size: int = 128, device: str | torch.device = "cpu",
                    val_size: int = 0, seed: int = 0) -> tuple[TensorLoader, TensorLoader | None, TensorLoader]:
    """``(train, val, test)`` loaders; ``val_size`` images held out of the training set (``val`` is None at 0).

    The held-out split is fixed by ``seed`` and stratified by nothing but chance; use it for every choice
    (``beta``, learning rates, epochs) so the test set stays untouched.
    """
    d = load_cifar10(root)
    order = torch.randperm(len(d["train_y"]), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:val_size], order[val_size:]
    train = TensorLoader(d["train_x"][kept], d["train_y"][kept], batch_size, True, device, seed)
    val = TensorLoader(d["train_x"][held], d["train_y"][held], 500, False, device) if val_size else None
    return train, val, TensorLoader(d["test_x"], d["test_y"], 500, False, device)
