"""The slim text classifier as a ``transformers`` folder that ``from_pretrained`` loads.

``transformers`` builds every layer of an encoder from one config (``num_attention_heads``,
``intermediate_size``), so a model whose layers kept different numbers of heads and FFN units does not fit a
plain config. The folder therefore holds, beside ``save_pretrained``'s own files (the weights under the
library's names), the width of every linear layer that differs from the config's (``pruned_linears`` in
``config.json``) and a ten-line model class (``modeling_ibprune.py``, named in ``auto_map``) that narrows those
layers before the weights load: ``transformers``' mechanism for architectures it does not ship. Load it with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from ibprune.files import atomic_folder
from ibprune.rewrites.encoder import join_encoder_heads

MODELING = "modeling_ibprune.py"

_CLASS = '''"""Written by ibprune: {base} with the layer widths ibprune pruned it to (config.pruned_linears)."""

from torch import nn
from transformers import {base}


class Slim{base}({base}):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        for name, (out_features, in_features) in config.pruned_linears.items():
            layer = self.get_submodule(name)
            layer.in_features, layer.out_features = in_features, out_features
            layer.weight = nn.Parameter(layer.weight.new_empty(out_features, in_features))
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias.new_empty(out_features))
'''


def save_hf(hf_model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the (slim) ``transformers`` classifier ``hf_model`` to ``folder`` (atomically); ``hf_model`` itself is
    not changed."""
    model = copy.deepcopy(hf_model).cpu().eval()
    join_encoder_heads(model)
    library = next(c for c in type(model).__mro__ if c.__module__.startswith("transformers."))  # not a Slim one
    with torch.device("meta"):
        dense = library(model.config)  # the widths the config alone gives
    narrowed = {name: list(m.weight.shape) for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and m.weight.shape != dense.get_submodule(name).weight.shape}
    base = library.__name__
    model.config.pruned_linears = narrowed
    model.config.auto_map = {"AutoModelForSequenceClassification": f"{MODELING[:-3]}.Slim{base}"}
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        (tmp / MODELING).write_text(_CLASS.format(base=base))
    return Path(folder)
