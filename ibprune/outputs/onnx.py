"""ONNX export (one self-contained file, dynamic batch) and its check against PyTorch with onnxruntime."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ibprune.core.probes import random_like, widened
from ibprune.errors import ExportMismatchError
from ibprune.files import atomic_path

#: The last few exports (a fingerprint of the network and its input -> the file written, its size and time), so
#: that exporting the same network again (the original model, once per budget of a sweep, or in each run of a
#: session) copies the file instead of tracing the network again: the exporter takes seconds even for a small
#: network.
_EXPORTED: OrderedDict[str, tuple[Path, int, int]] = OrderedDict()
_REMEMBERED = 2


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike) -> Path:
    """Export ``model`` (a CPU float32 copy, eval mode) to ``path`` with a dynamic batch dimension (and the
    dimensions ``model.dynamic_dims`` names).

    Uses ``torch.onnx.export``'s default (dynamo) exporter with weights embedded in the file, writes atomically
    and runs ``onnx.checker`` on the result. A network exported moments ago with the same input (the same
    classes, structure, weights and buffers: ``_fingerprint``) is copied from that file, if it is still there
    unchanged.
    """
    path = Path(path)
    cpu = copy.deepcopy(model).cpu().float().eval()
    x = widened(example_input.detach().cpu(), torch.float32)
    x = torch.cat([x, x]) if x.shape[0] == 1 else x  # a batch of 1 would be specialised away
    key = _fingerprint(cpu, x)
    earlier = _EXPORTED.get(key)
    with atomic_path(path, suffix=".onnx") as tmp:
        if earlier is not None and _unchanged(*earlier):
            shutil.copyfile(earlier[0], tmp)
        else:
            torch.onnx.export(cpu, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=(_dynamic(cpu),), external_data=False, verbose=False)
        onnx.checker.check_model(str(tmp))
    for other in [k for k, (p, _, _) in _EXPORTED.items() if p == path.resolve()]:
        del _EXPORTED[other]  # that file is this network's now
    stat = path.stat()
    _EXPORTED[key] = (path.resolve(), stat.st_size, stat.st_mtime_ns)
    _EXPORTED.move_to_end(key)
    while len(_EXPORTED) > _REMEMBERED:
        _EXPORTED.popitem(last=False)
    return path


def _unchanged(path: Path, size: int, mtime_ns: int) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns)


def _fingerprint(model: nn.Module, x: torch.Tensor) -> str:
    """What decides the exported file: each module's class (the very class object, so a class defined again
    in a session is another network), the structure as printed, every parameter and buffer, the declared
    dynamic dimensions, the input's shape and type, and torch's version."""
    h = hashlib.sha256()
    h.update(repr((model, [id(type(m)) for m in model.modules()], getattr(model, "dynamic_dims", {}),
                   tuple(x.shape), x.dtype, torch.__version__)).encode())
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        h.update(repr((name, t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dynamic(model: nn.Module) -> dict[int, torch.export.Dim]:
    """The input dimensions the file leaves free: the batch, and what the model declares in ``dynamic_dims``
    (a text classifier's sequence length)."""
    return {0: torch.export.Dim("batch"), **{d: torch.export.Dim(name)
                                             for d, name in getattr(model, "dynamic_dims", {}).items()}}


def onnx_opset(path: str | os.PathLike) -> int:
    """The default-domain opset the file was exported with."""
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def session(path: str | os.PathLike, threads: int = 1, spinning: bool = True,
            level: ort.GraphOptimizationLevel | None = None,
            optimized_path: str | os.PathLike | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session with an explicit thread count; ``spinning=False`` stops its idle threads from
    busy-waiting (two sessions timed in turn would otherwise slow each other down). ``level``: the graph
    optimisation (onnxruntime's default, full, when None); ``optimized_path``: where to write the optimised graph."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if level is not None:
        opts.graph_optimization_level = level
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_parity(path: str | os.PathLike, model: nn.Module, example_input: torch.Tensor,
                 batch_sizes: tuple[int, ...] = (1, 3), rtol: float = 1e-4, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and PyTorch on random inputs at each batch size (and, for each
    dimension the model declares dynamic besides the batch, at half the example's size there).

    Raises ``ExportMismatchError`` when onnxruntime's output is further from the exact (float64) result than
    ``rtol`` times the largest magnitude of that output, or, in a deep network where float32 rounding alone
    goes further, than ten times as far as PyTorch's own float32 output is: relative to the output's scale and
    to float32's noise at it, so neither tiny logits nor a long residual stream decide the verdict.
    """
    cpu = copy.deepcopy(model).cpu().float().eval()
    exact = copy.deepcopy(cpu).double()
    sess = session(path)
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    example = example_input.cpu()
    shorter = [example.narrow(d, 0, max(1, example.shape[d] // 2)) for d in getattr(model, "dynamic_dims", {})]
    for like, b in [(example, b) for b in batch_sizes] + [(s, batch_sizes[-1]) for s in shorter]:
        x = random_like(like, b, gen)
        ref, truth = cpu(x).numpy(), exact(widened(x)).numpy()
        out = sess.run(None, {name: x.numpy()})[0]
        shape = f"input {tuple(x.shape)}"
        if out.shape != ref.shape:
            raise ExportMismatchError(f"{path}: ONNX output shape {out.shape} != PyTorch {ref.shape} at {shape}")
        diff = float(np.abs(out - ref).max())
        tolerance = max(rtol * float(np.abs(truth).max()), 10 * float(np.abs(ref - truth).max()))
        if not np.isfinite(diff) or float(np.abs(out - truth).max()) > tolerance:
            raise ExportMismatchError(f"{path}: onnxruntime differs from PyTorch by {diff:.3g} at {shape} "
                                      f"(tolerance {tolerance:.3g})")
        worst = max(worst, diff)
    return worst
