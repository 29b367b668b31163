"""Model factories: the demo CNN and a resolver for ``torchvision:<name>`` / ``module.path:factory`` specs."""

from __future__ import annotations

import importlib

from torch import nn

from ibprune.models.digits import DigitsNet

__all__ = ["DigitsNet", "build"]


def build(spec: str, num_classes: int | None = None) -> nn.Module:
    """A model from ``torchvision:<name>`` or ``package.module:factory`` (called with ``num_classes`` if given)."""
    if ":" not in spec:
        raise ValueError(f"model spec {spec!r} must look like 'torchvision:resnet18' or 'package.module:factory'")
    where, name = spec.split(":", 1)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if where == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ValueError(f"torchvision has no model named {name!r}")
        return torchvision.models.get_model(name, weights=None, **kwargs)
    try:
        module = importlib.import_module(where)
    except ImportError as err:
        raise ValueError(f"cannot import {where!r} for model spec {spec!r}: {err}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{where!r} has no callable {name!r}")
    return factory(**kwargs)
