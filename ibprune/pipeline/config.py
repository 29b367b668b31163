"""``CompressConfig``: every setting of a compression run, its one default, its check and its help text.

``compress`` and ``compress_sweep`` take these as keywords, a recipe's keys are these field names (in the
section each field names) and the CLI's flags are built from them, so a default is written here and nowhere
else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ibprune.core.prune import INT8_FLOOR
from ibprune.core.rankers import ranker
from ibprune.core.train import OPTIMIZERS, OptimizerConfig
from ibprune.errors import BudgetError, InputError


def _setting(default: Any, help: str, section: str, kind: type | None = None, many: bool = False) -> Any:
    """A field with its recipe ``section``, its ``help`` (the CLI's), the ``kind`` of value it takes and whether
    a list of them is accepted (``many``: a sweep's budgets). ``default=MISSING``: a required field."""
    return field(default=default, metadata={"help": help, "section": section, "kind": kind or type(default),
                                            "many": many})


class _StepKind(type):
    def __instancecheck__(cls, value: Any) -> bool:
        return value == "auto" or isinstance(value, int) and not isinstance(value, bool)


class ChannelStep(metaclass=_StepKind):
    """The kind of ``round_to``: a whole number of channels, or ``"auto"``; as the CLI's type it parses
    either."""

    def __new__(cls, text: str) -> Any:
        return "auto" if text == "auto" else int(text)


ChannelStep.__name__ = "whole number or 'auto'"  # what a wrong value's error names


@dataclass
class CompressConfig:
    """The settings of one ``compress`` run; the budget is one of ``macs``, ``params`` or ``latency``."""

    macs: float | None = _setting(None, "keep at most this fraction of the MACs, e.g. 0.5", "budget", float)
    params: float | None = _setting(None, "keep at most this fraction of the parameters, e.g. 0.5", "budget",
                                    float)
    latency: float | None = _setting(
        None, "keep at most this fraction of the original's onnxruntime CPU latency at the benchmark batch, "
              "measured on this machine, e.g. 0.6", "budget", float)
    gate_epochs: float = _setting(1.0, "epochs of gate training (fractions allowed)", "train")
    finetune_epochs: float = _setting(5.0, "epochs of fine-tuning after pruning", "train")
    adapt_epochs: float = _setting(0.0, "first fine-tune the dense model this long (a model trained on other "
                                        "data than yours)", "train")
    optimizer: str = _setting("auto", "the weights' optimizer: sgd (Nesterov momentum), adamw, or auto: adamw for a "
                                      "transformers model (what they are fine-tuned with), sgd otherwise", "train")
    lr: float | None = _setting(None, "peak learning rate of the weights (default: the optimizer's, 0.01 for sgd, "
                                      "5e-5 for adamw)", "train", float)
    gate_lr: float = _setting(0.02, "Adam learning rate of the gates", "train")
    weight_decay: float | None = _setting(None, "weight decay of the weights, the gates have none (default: the "
                                                "optimizer's, 5e-4 for sgd, 0.01 for adamw)", "train", float)
    beta: float | None = _setting(None, "fixed IB weight of the explore phase (default: set automatically)",
                                  "train", float)
    distill: Any = _setting(False, "fine-tune with distillation from the original (from the adapted model "
                                   "after adapt epochs); compress(distill=<model>) names another teacher",
                            "train", bool)
    round_to: int | str | None = _setting(
        "auto", "keep channel counts a multiple of this; auto: of 16, or less in a group narrower than 64, "
                "and with quantize int8 at least 16 channels while the budget allows (what onnxruntime's "
                "kernels compute: benchmarks/results/widths.md); 1 for exact widths",
        "train", ChannelStep)
    criterion: Any = _setting("ib", "how channels are ranked: ib (the gates) or, for comparisons, torch-pruning's "
                                    "l1, l2, bn, taylor, random, lamp, fpgm, or its sparse learning depgraph_sl, "
                                    "greg (which train the weights first, for their own epochs); ablations: "
                                    "ib_oneshot, ib_uniform (KL not weighted by cost), ib_unbalanced (KL "
                                    "weights not rescaled per unit kind: heads, channels), <criterion>_squeeze (IB's "
                                    "schedule), <criterion>_iter (iterative); compress() also takes a ranker object "
                                    "(ibprune.core.rankers.Ranker)", "train", str)
    rank_per_cost: bool = _setting(False, "rank IB channels by information per unit cost (an ablation)", "train")
    device: str = _setting("auto", "auto | cpu | cuda", "train")
    sync_bn: bool = _setting(False, "under torchrun on GPUs: BatchNorm statistics over the global batch while "
                                    "training (SyncBatchNorm) instead of each rank's own", "train")
    seed: int = _setting(0, "random seed", "train")
    bench_batch: int = _setting(32, "the larger batch size of the latency benchmark", "output")
    latency_runs: int = _setting(50, "timed runs per latency measurement", "output")
    robustness_eps: float | None = _setting(
        None, "add FGSM/PGD accuracy of both models at this L-inf size (in input-std units, e.g. 0.03) to the "
              "report", "output", float)
    quantize: str | None = _setting(
        None, "int8: also write int8 ONNX files of the original and the compressed model (static QDQ calibrated "
              "on training batches; a transformer tries dynamic quantization first), checked on the validation "
              "data in onnxruntime", "output", str)
    calibration_images: int = _setting(256, "training images that calibrate the int8 activations", "output")
    int8_tolerance: float = _setting(0.01, "accuracy (a fraction, 0.01 = one point) an int8 file may lose against "
                                           "its fp32 file before the fallback recipes are tried", "output")
    resume: bool = _setting(False, "continue an interrupted run from the checkpoints in its output folder",
                            "output")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(CompressConfig):  # a Job's own fields are not settings
            value, kind = getattr(self, f.name), f.metadata["kind"]
            if f.metadata["section"] == "budget" or f.name == "device" and not isinstance(value, str):
                continue  # budget(): a BudgetError; a torch.device is a device too
            if value is None and f.default is None or f.name in ("distill", "criterion") and not isinstance(
                    value, (bool, str)):
                continue  # distill=<model>, criterion=<ranker>
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise InputError(f"{f.name} must be a {kind.__name__}, got {value!r}")
        for name in ("gate_epochs", "finetune_epochs", "adapt_epochs", "lr", "gate_lr", "weight_decay"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        ranker(self.criterion)  # a name it does not know: ValueError naming the known ones
        if isinstance(self.round_to, int) and self.round_to < 1:
            raise InputError(f"round_to must be >= 1 (or None), got {self.round_to!r}")
        if self.optimizer not in ("auto", *OPTIMIZERS):
            raise InputError(f"optimizer must be auto, {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.quantize not in (None, "int8"):
            raise InputError(f"quantize must be 'int8' or None, got {self.quantize!r}")
        if not 0 <= self.int8_tolerance < 1:
            raise InputError(f"int8_tolerance must be a fraction in [0, 1), got {self.int8_tolerance!r}")
        for name in ("bench_batch", "latency_runs", "calibration_images"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @classmethod
    def from_keywords(cls, settings: dict[str, Any]) -> CompressConfig:
        """The config of ``compress(**settings)``; an unknown keyword is named, with what is known."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; the settings are: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**settings)

    def for_model(self, transformer: bool) -> CompressConfig:
        """These settings with the optimizer's defaults filled in: ``auto`` is AdamW for a ``transformer``."""
        algorithm = self.optimizer if self.optimizer != "auto" else "adamw" if transformer else "sgd"
        lr, decay = OPTIMIZERS[algorithm]
        return dataclasses.replace(self, optimizer=algorithm, lr=lr if self.lr is None else self.lr,
                                   weight_decay=decay if self.weight_decay is None else self.weight_decay)

    def weights(self, schedule: str = "cosine") -> OptimizerConfig:
        """The weights' optimizer (after ``for_model``)."""
        if self.lr is None or self.weight_decay is None or self.optimizer == "auto":
            raise ValueError("the optimizer's defaults are not filled in: call for_model first")
        return OptimizerConfig(self.lr, self.weight_decay, self.optimizer, schedule=schedule)

    def budget(self) -> tuple[str, float]:
        """``("macs" | "params" | "latency", fraction)``: exactly one budget must be set, in (0, 1)."""
        return budget_of(self.macs, self.params, self.latency)

    @property
    def min_channels(self) -> int:
        """The fewest channels a group keeps while the budget allows: ``INT8_FLOOR`` for ``"auto"`` widths that
        ship as int8 (onnxruntime's int8 convolution is slower below it; in fp32 the budget is better spent
        there: ``benchmarks/results/widths.md``), else one block."""
        return INT8_FLOOR if self.round_to == "auto" and self.quantize == "int8" else 1


def budget_of(macs: float | None, params: float | None, latency: float | None = None) -> tuple[str, float]:
    """``("macs" | "params" | "latency", fraction)`` from the keyword budgets; exactly one must be given, in
    (0, 1)."""
    given = {k: v for k, v in (("macs", macs), ("params", params), ("latency", latency)) if v is not None}
    if len(given) != 1:
        raise BudgetError("give exactly one budget: macs=<fraction>, params=<fraction> or latency=<fraction>")
    (metric, value), = given.items()
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise BudgetError(f"{metric} budget must be a fraction in (0, 1) of the original, got {value!r}")
    return metric, float(value)


def settings_fields(section: str | None = None) -> list[dataclasses.Field]:
    """The fields of ``CompressConfig`` (those of one recipe ``section``, if given)."""
    return [f for f in dataclasses.fields(CompressConfig) if section is None or f.metadata["section"] == section]
