"""Torch state that a stage changes for a while and must give back: train/eval mode, numeric precision, the
random-number generators. Every such save-and-restore in ibprune goes through these helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model`` in train (``training=True``) or eval mode inside the block; its previous mode afterwards."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def evaluating(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Eval mode inside the block; the model's previous mode afterwards."""
    return mode(model, False)


@contextlib.contextmanager
def in_float64(*modules: nn.Module):
    """Inside the block the modules compute in float64; after it every tensor has its own dtype again, with its
    exact value (every float32 is a float64). The function check runs so: float32's reordered sums (deleting a
    channel changes the order) grow through a deep residual stream, while a wrong prune changes what a layer
    computes by far more than float64's rounding (evidence: benchmarks/results/coverage.md). Dtypes are
    restored by name: a tensor that surgery replaced inside the block gets its dtype back too, and no old
    tensor is kept alive meanwhile."""
    saved = [{name: t.dtype for name, t in _floating(m)} for m in modules]
    for m in modules:
        for _, t in _floating(m):
            t.data = t.data.to(torch.float64)
    try:
        yield
    finally:
        for m, dtypes in zip(modules, saved):
            for name, t in _floating(m):
                if name in dtypes:
                    t.data = t.data.to(dtypes[name])


def _floating(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()]


@contextlib.contextmanager
def full_precision():
    """TF32 off inside: CUDA convolutions default to TF32, whose ~1e-3 relative error (the same model run
    twice with different kernels) would read as a pruning mismatch at the function check's tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rng_state(loader=None) -> dict:
    """The global CPU (and CUDA) random state, and the loader's own generator's when it has one."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        state["loader"] = gen.get_state()
    if isinstance(getattr(loader, "epoch", None), int):  # a distributed shard: its pass number seeds its order
        state["epoch"] = loader.epoch
    return state


def set_rng_state(state: dict, loader=None) -> None:
    """Restore what ``rng_state`` saved (entries it lacks are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen = getattr(loader, "generator", None)
    if "loader" in state and isinstance(gen, torch.Generator):
        gen.set_state(state["loader"])
    if "epoch" in state and hasattr(loader, "epoch"):
        loader.epoch = state["epoch"]
