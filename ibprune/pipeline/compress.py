"""``compress()``: the stage list, run by ``ibprune.pipeline.stages.run_stages``.

prepare -> adapt -> (latency plan) -> rank -> prune -> finetune -> (robustness) -> export -> (quantize)
-> benchmark -> report
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ibprune.pipeline import stages as s
from ibprune.pipeline.config import CompressConfig
from ibprune.pipeline.latency import LatencyPlan


@dataclass
class CompressResult:
    """The slim model, the report written to ``report.json``, and the information each channel carried."""

    model: nn.Module
    report: dict
    information: dict[str, torch.Tensor] = field(repr=False)
    removed: dict[str, list[int]] = field(repr=False)


def compress(
    model: nn.Module,
    train_loader,
    val_loader=None,
    *,
    example_input: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    ignored_layers: list[nn.Module] | None = None,
    verbose: bool = True,
    **settings,
) -> CompressResult:
    """Compress a pretrained classifier to a MACs (or params, or latency) budget, in one call.

    ``settings`` are the fields of ``ibprune.pipeline.config.CompressConfig`` (its defaults and checks; an unknown one
    is refused, naming it), e.g. ``macs=0.5, finetune_epochs=5.0``.

    Gates are trained for up to ``gate_epochs`` on ``task loss + beta * weighted KL`` (``beta`` follows the
    budget unless given), the least informative channels are removed until the counted budget holds, the slim
    network is fine-tuned for ``finetune_epochs`` plus whatever the gate phase did not need (it ends once the
    channels to remove are shut; ``distill=True``: from the original as teacher, ``distill=<model>``: from that
    model, e.g. the original already adapted to the data, or a bigger one), and both models are
    exported to ONNX, checked with onnxruntime and benchmarked. With ``out_dir`` the report, both ONNX files and
    the compressed model are written there. ``model`` itself is never modified.

    With ``out_dir``, every stage checkpoints into ``out_dir/checkpoints`` (see ``ibprune.pipeline.checkpoints``);
    ``resume=True`` continues an interrupted run from its last checkpoint instead of refusing the folder.

    ``criterion`` other than ``"ib"`` ("l1", "bn", "taylor", "random": torch-pruning's criteria) skips the gate
    phase and ranks channels by that criterion instead, for comparisons in one harness; any object following
    ``ibprune.core.rankers.Ranker`` may be given instead of a name. ``rank_per_cost=True``
    ranks IB channels by information per unit cost instead of information (an ablation).

    ``latency=f`` keeps the onnxruntime CPU latency (p50 at batch ``bench_batch``, measured on this machine)
    at most ``f`` of the original's: it is translated into a MACs target by timing candidate networks before
    training, and the pruned network is timed and pruned further if it misses (``ibprune.pipeline.latency``).

    ``robustness_eps`` adds FGSM and PGD accuracy of both models at that perturbation size to the report
    (``ibprune.outputs.robustness``; needs ``val_loader``).

    ``adapt_epochs`` first fine-tunes the dense model on ``train_loader``, for a model trained on other data than
    yours (a public checkpoint; here: CIFAR-10 checkpoints trained on lossless images, data in JPEG): the adapted
    model is then the one pruned and, with ``distill=True``, the teacher; the report's ``accuracy`` gives it as
    ``adapted``. Those epochs count in the budget you spend, as the others do.

    ``round_to="auto"`` (the default) removes channels 16 at a time, fewer in groups narrower than 64
    (``ibprune.core.prune.auto_block``), and for an int8 file keeps 16 channels a group while the budget allows
    (``CompressConfig.min_channels``): the widths onnxruntime's kernels compute fast
    (``benchmarks/results/widths.md``); an int fixes the multiple for every group, ``round_to=1`` gives exact
    widths.
    """
    cfg = CompressConfig.from_keywords(settings)
    with _folder(out_dir) as folder:
        p = s.prepare(model, train_loader, val_loader, cfg, example_input=example_input,
                      ignored_layers=ignored_layers, out_dir=out_dir, folder=folder, verbose=verbose)
        run = s.run_stages(stages(p), p)
    return CompressResult(run.pruned.model, run.report, run.pruned.information, run.pruned.removed)


def stages(p: s.Prepared) -> list[s.Stage]:
    """The stages of one run, in order (the latency plan and robustness only when asked for)."""
    listed = [
        s.Stage("teacher", s.adapt, "adapt" if p.cfg.adapt_epochs else None),
        s.Stage("latency", s.plan_latency, state=asdict,
                restore=lambda _, saved: LatencyPlan(**saved)) if p.metric == "latency" else None,
        s.Stage("gates", s.rank, "gates", state=vars, restore=lambda _, saved: s.Ranked(**saved)),
        s.Stage("pruned", s.prune, "prune", state=s.pruned_state, restore=s.restore_pruned),
        s.Stage("finetune", s.finetune, "finetune"),
        s.Stage("robustness", s.robustness, "robustness", writer_only=True)
        if p.cfg.robustness_eps is not None and p.val is not None else None,
        s.Stage("export", s.export, "export", writer_only=True),
        s.Stage("quantize", s.int8, "quantize", writer_only=True) if p.cfg.quantize else None,
        s.Stage("benchmark", s.bench, "benchmark", writer_only=True),
        s.Stage("report", s.write_report, writer_only=True),
    ]
    return [stage for stage in listed if stage is not None]


@contextlib.contextmanager
def _folder(out_dir: str | Path | None):
    """``out_dir``, or a scratch folder deleted afterwards (the ONNX files are written somewhere to time them)."""
    if out_dir is not None:
        yield Path(out_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch)
