"""INT8 deployment: onnxruntime's post-training quantization of an exported model, checked on data.

``quantize_int8`` writes a static QDQ model (per-channel int8 weights, uint8 activations calibrated on training
batches, never the validation data) after onnxruntime's ``quant_pre_process``, or, for a ``dynamic`` recipe,
onnxruntime's dynamic quantization (int8 weights of the matrix products, activations quantized at run time from
their own range: what onnxruntime recommends for transformers, whose activation ranges vary by input).
``quantize_checked`` measures the int8 file's accuracy in onnxruntime against the float32 file's and, while it
loses more than the tolerance, tries the fallbacks onnxruntime's documentation gives, in order: another
calibration method (Entropy, Percentile), the first convolution and the classifier kept in float32, and
``reduce_range`` where the CPU lacks VNNI (without it the u8s8 kernels can saturate). A network without
convolutions tries dynamic quantization first. Every attempt is reported; when none meets the tolerance the
last file is still written but flagged, never presented as good.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ibprune.core.probes import widened
from ibprune.files import atomic_path
from ibprune.outputs.onnx import session

_LOG = logging.getLogger("ibprune")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: the calibration method (``dynamic``: none, the activations' ranges are read at run
    time), the nodes kept in float32, reduced-range weights, and signed activations (int8 instead of uint8; not
    a fallback: kept for comparing kernels)."""

    method: str = "MinMax"     # a CalibrationMethod, or "dynamic"
    keep_edges: bool = False   # the first convolution and the classifier stay float32
    reduce_range: bool = False
    signed_activations: bool = False

    def describe(self) -> str:
        return " + ".join([self.method, *(["first conv and classifier in fp32"] if self.keep_edges else []),
                           *(["reduce_range"] if self.reduce_range else []),
                           *(["int8 activations"] if self.signed_activations else [])])


@dataclass
class Int8Result:
    """The int8 file, the recipe that made it, every attempt with its accuracy, and whether it is trusted."""

    path: Path
    recipe: Recipe
    accuracy: float | None          # top-1 in onnxruntime (None without validation data)
    reference_accuracy: float | None  # the float32 file's, in onnxruntime
    ok: bool                        # within the tolerance (False also when it could not be measured)
    attempts: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"path": str(self.path), "recipe": self.recipe.describe(), "accuracy": self.accuracy,
                "fp32_accuracy": self.reference_accuracy, "ok": self.ok, "attempts": self.attempts}


def calibration_inputs(loader, images: int) -> list[np.ndarray]:
    """Up to ``images`` inputs from ``loader``'s batches (the training data), as float32 arrays (integer inputs,
    token ids, as they are)."""
    out, seen = [], 0
    for x, _ in loader:
        x = widened(x[: images - seen].detach().cpu(), torch.float32).numpy()
        out.append(x)
        seen += len(x)
        if seen >= images:
            break
    if not out:
        raise ValueError("calibration needs at least one training batch")
    return out


def onnx_accuracy(path: str | os.PathLike, loader, threads: int | None = None) -> float:
    """Top-1 accuracy of the ONNX file itself, run by onnxruntime over ``loader``."""
    sess = session(path, threads or 1)
    name = sess.get_inputs()[0].name
    correct = seen = 0
    for x, y in loader:
        logits = sess.run(None, {name: widened(x.detach().cpu(), torch.float32).numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        seen += len(y)
    return correct / max(1, seen)


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it = iter([{name: b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def quantize_int8(fp32: str | os.PathLike, out: str | os.PathLike, calibration: list[np.ndarray],
                  recipe: Recipe | None = None) -> Path:
    """An int8 copy of ``fp32`` at ``out``, atomically: by ``recipe``, else by the first of ``fallbacks`` (static
    QDQ, per-channel int8 weights and uint8 activations, for a convolutional net; dynamic for a transformer)."""
    recipe = recipe or fallbacks(convolutional=convolutional(fp32))[0]
    with _prepared(fp32) as prepared:
        return _quantize(prepared, out, calibration, recipe)


@contextlib.contextmanager
def _prepared(fp32: str | os.PathLike):
    """``fp32`` after onnxruntime's ``quant_pre_process`` (shape inference, graph optimisation), in a scratch
    folder: the path and the loaded model."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # auto_merge: a text model's sequence axis meets axes of other symbolic names (the mask's, the
        # positions'); the symbolic shape inference merges them instead of giving up
        quant_pre_process(str(fp32), str(prepared), auto_merge=True)
        yield prepared, onnx.load(str(prepared))


def _quantize(prepared: tuple[Path, onnx.ModelProto], out: str | os.PathLike, calibration: list[np.ndarray],
              recipe: Recipe) -> Path:
    path, model = prepared
    name = model.graph.input[0].name
    excluded = _edges(model) if recipe.keep_edges else None
    if recipe.method == "dynamic":
        with atomic_path(out, suffix=".onnx") as target:
            quantize_dynamic(str(path), str(target), per_channel=True, reduce_range=recipe.reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
        return Path(out)
    # the calibrators print their histogram settings: the library logs, it does not print
    with atomic_path(out, suffix=".onnx") as target, contextlib.redirect_stdout(io.StringIO()):
        # uint8 activations and int8 weights: the pairing onnxruntime's x86 int8 (VNNI) kernels are built for
        # (int8 activations against uint8: benchmarks/results/widths.md); without VNNI, reduce_range avoids
        # their saturation (a fallback)
        activations = QuantType.QInt8 if recipe.signed_activations else QuantType.QUInt8
        quantize_static(str(path), str(target), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=recipe.reduce_range, activation_type=activations,
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, recipe.method),
                        nodes_to_exclude=excluded)
    return Path(out)


def _edges(model: onnx.ModelProto) -> list[str]:
    """The first convolution and the last matrix product (the classifier) of the graph, by node name."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return [*convs[:1], *heads[-1:]]


def has_vnni() -> bool | None:
    """Whether this CPU has VNNI (x86 int8 dot products); ``None`` when it cannot be told."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "vnni" in flags


def fallbacks(vnni: bool | None = None, convolutional: bool = True) -> list[Recipe]:
    """The recipes tried in order; ``reduce_range`` only where the CPU may lack VNNI. A network without
    convolutions (a transformer) tries dynamic quantization first."""
    vnni = has_vnni() if vnni is None else vnni
    tried = [Recipe("MinMax"), Recipe("Entropy"), Recipe("Percentile"), Recipe("MinMax", keep_edges=True)]
    first = [] if convolutional else [Recipe("dynamic")]
    return first + tried + ([] if vnni else [Recipe("MinMax", keep_edges=True, reduce_range=True)])


def convolutional(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at ``path`` holds a convolution."""
    return any(n.op_type == "Conv" for n in onnx.load(str(path), load_external_data=False).graph.node)


def quantize_checked(fp32: str | os.PathLike, out: str | os.PathLike, calibration: list[np.ndarray],
                     val_loader=None, tolerance: float = 0.01, recipes: list[Recipe] | None = None,
                     reference: float | None = None) -> Int8Result:
    """``quantize_int8`` with the first recipe whose int8 file, run by onnxruntime on ``val_loader``, keeps the
    float32 file's accuracy (``reference``, measured when not given) within ``tolerance`` (a fraction: 0.01 is
    one point). Without validation data only the first recipe runs and the result is unchecked (``ok`` False,
    accuracy None)."""
    recipes = recipes or fallbacks(convolutional=convolutional(fp32))
    if val_loader is None:
        path = quantize_int8(fp32, out, calibration, recipes[0])
        return Int8Result(path, recipes[0], None, None, False, [{**asdict(recipes[0]), "accuracy": None}])
    if reference is None:
        reference = onnx_accuracy(fp32, val_loader)
    with _prepared(fp32) as prepared:  # pre-processed once for every recipe
        return _first_within(prepared, Path(fp32).name, out, calibration, val_loader, tolerance, recipes, reference)


def _first_within(prepared, name: str, out, calibration, val_loader, tolerance: float, recipes: list[Recipe],
                  reference: float) -> Int8Result:
    """The recipes in turn until one keeps ``reference`` within ``tolerance``; else the best, flagged."""
    attempts = []
    for recipe in recipes:
        path = _quantize(prepared, out, calibration, recipe)
        accuracy = onnx_accuracy(path, val_loader)
        attempts.append({**asdict(recipe), "accuracy": accuracy})
        if accuracy >= reference - tolerance:
            return Int8Result(path, recipe, accuracy, reference, True, attempts)
        _LOG.info(f"[ibprune] int8 ({recipe.describe()}) of {name}: accuracy {accuracy:.4f} against "
                  f"fp32 {reference:.4f}, more than {tolerance:.3f} lost; trying the next recipe")
    best = max(attempts, key=lambda a: a["accuracy"])
    recipe = Recipe(**{f.name: best[f.name] for f in fields(Recipe)})
    if recipe != recipes[-1]:  # the file on disk is the last attempt's: write the best one again
        path = _quantize(prepared, out, calibration, recipe)
    return Int8Result(path, recipe, best["accuracy"], reference, False, attempts)
