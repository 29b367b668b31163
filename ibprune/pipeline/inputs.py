"""Checks that run before any training, so that a bad input fails in seconds with a message that names it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ibprune.core.modes import evaluating
from ibprune.data.text import PackedBatches
from ibprune.errors import InputError
from ibprune.models.text import TextClassifier


def adopted(model: nn.Module, train_loader, val_loader=None) -> tuple[nn.Module, object, object]:
    """A ``transformers`` sequence classifier and loaders of tokenised dict batches as the pipeline takes them:
    the model behind one packed input (``TextClassifier``), the batches as ``(pack(ids, mask), labels)``
    (``PackedBatches``); anything else as it is."""
    if type(model).__module__.startswith("transformers.") and hasattr(model, "config"):
        model = TextClassifier(model)
    if not isinstance(model, TextClassifier):  # only a text model's batches are looked at here
        return model, train_loader, val_loader
    return model, *(PackedBatches(loader) if _yields_dicts(loader) else loader
                    for loader in (train_loader, val_loader))


def _yields_dicts(loader) -> bool:
    if loader is None or isinstance(loader, PackedBatches):
        return False
    try:
        return isinstance(next(iter(loader)), Mapping)
    except (StopIteration, TypeError):
        return False  # first_batch names the problem


def first_batch(loader, name: str = "train_loader") -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's first ``(inputs, targets)`` batch, or an ``InputError`` saying what is wrong with it."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise InputError(f"{name} yields no batches (is the dataset empty?)") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)
            and isinstance(batch[1], torch.Tensor)):
        raise InputError(f"{name} must yield (inputs, targets) tensor pairs, got {type(batch).__name__}")
    return batch[0], batch[1]


@torch.no_grad()
def check_inputs(model: nn.Module, train_loader, example_input: torch.Tensor) -> int:
    """Run ``model`` on ``example_input`` and on a training batch; returns the number of classes.

    Fails with ``InputError`` when the model cannot run on the input, returns something other than a
    ``(batch, classes)`` tensor of logits, or the targets fall outside its classes.
    """
    x, y = first_batch(train_loader)
    device = next(model.parameters()).device
    with evaluating(model):
        try:
            out = model(example_input.to(device))
        except Exception as err:
            raise InputError(f"the model fails on example_input of shape {tuple(example_input.shape)} "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        if not isinstance(out, torch.Tensor):
            raise InputError(f"the model returns {type(out).__name__}, not a tensor of logits: wrap it so that "
                             "forward() returns the logits tensor")
        if out.dim() != 2:
            raise InputError(f"the model returns a tensor of shape {tuple(out.shape)}; ibprune compresses "
                             "classifiers, whose output is (batch, classes)")
        if tuple(x.shape[1:]) != tuple(example_input.shape[1:]):
            raise InputError(f"training inputs have shape {tuple(x.shape[1:])} per example but example_input "
                             f"has {tuple(example_input.shape[1:])}")
    classes = out.shape[1]
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.dim() != 1:
        raise InputError(f"targets must be a 1-D tensor of class indices, got {y.dtype} of shape {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(f"targets range over [{int(y.min())}, {int(y.max())}] but the model has {classes} "
                         f"outputs (classes 0..{classes - 1})")
    return classes
