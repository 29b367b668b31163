"""Several budgets from one gate phase: ``compress_sweep()``, ``sweep.json``/``sweep.md`` and the Pareto plot.

The gate phase's first half (explore: every channel shows how much the task needs it) does not depend on the
budget, so a sweep runs it once; each budget then gets its own squeeze (the second half), pruning, fine-tuning,
export and benchmark from that shared state, exactly as ``compress`` would run them, in ``<out>/<metric><b>/``.
Compared with one ``compress`` per budget this saves ``(n - 1)`` explore phases; ``sweep.json`` reports the
measured explore time and that saving.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ibprune.core import distributed
from ibprune.core.rankers import IBRanker
from ibprune.errors import BudgetError
from ibprune.files import write_figure, write_json, write_text
from ibprune.models.text import uses_transformers
from ibprune.pipeline.checkpoints import Checkpoints
from ibprune.pipeline.compress import CompressResult, compress
from ibprune.pipeline.config import CompressConfig, budget_of
from ibprune.pipeline.stages import adapt_dense, prepare, rank_job


@dataclass
class SweepResult:
    """One ``CompressResult`` per budget (budget -> result; a budget resumed from disk has ``model=None``)."""

    results: dict[float, CompressResult]
    summary: dict


def compress_sweep(
    model: nn.Module,
    train_loader,
    val_loader=None,
    *,
    budgets: Sequence[float],
    metric: str = "macs",
    out_dir: str | Path,
    example_input: torch.Tensor | None = None,
    ignored_layers: list[nn.Module] | None = None,
    verbose: bool = True,
    **settings,
) -> SweepResult:
    """Compress ``model`` to each of ``budgets`` (fractions of its ``metric``: "macs" or "params").

    Each budget gets what ``compress(..., gate_epochs=gate_epochs)`` gives it, except that the explore half of
    the gate phase is run once and shared. Writes ``<out>/<metric><budget>/`` (the usual outputs per budget)
    and ``sweep.json``, ``sweep.md``, ``sweep.png`` (accuracy against size and against ONNX latency).
    ``settings`` are ``CompressConfig``'s, as for ``compress``, without a budget of their own.
    ``resume=True`` keeps finished budgets and the saved explore phase.
    ``adapt_epochs`` fine-tunes the dense model once, first; every budget starts from the adapted model (and,
    with ``distill=True``, learns from it), so the reports' ``original`` is the adapted model.
    """
    budgets = sweep_budgets(metric, budgets)
    cfg = CompressConfig.from_keywords(settings)
    if any(v is not None for v in (cfg.macs, cfg.params, cfg.latency)):
        raise BudgetError("a sweep's budgets are given as budgets=[...], not as macs=, params= or latency=")
    out = Path(out_dir)

    def folder(b: float) -> Path:
        return out / f"{metric}{b:.2f}"

    resume = distributed.resuming(cfg.resume)
    done = distributed.on_writer(lambda: {b: _read(folder(b) / "report.json") for b in budgets
                                          if resume and (folder(b) / "report.json").is_file()})
    pending = [b for b in budgets if b not in done]
    explored = ckpt = None
    if pending:
        first = dataclasses.replace(cfg, **{metric: budgets[0]}, resume=resume)
        model, explored, example_input, ckpt = _explore(model, train_loader, first, out, example_input,
                                                        ignored_layers, verbose)
    results: dict[float, CompressResult] = {}
    for b in budgets:
        if b in pending:
            results[b] = compress(model, train_loader, val_loader, example_input=example_input, out_dir=folder(b),
                                  ignored_layers=ignored_layers, verbose=verbose,
                                  **{**settings, metric: b, "gate_epochs": cfg.gate_epochs / 2, "adapt_epochs": 0.0,
                                     "device": example_input.device, "criterion": IBRanker(explored)})
        else:
            results[b] = CompressResult(None, done[b], {}, {})
    points = [_point(b, folder(b), results[b].report) for b in budgets]
    summary = _summary(metric, points, results[budgets[0]].report, distributed.on_writer(
        lambda: _read(out / "explore.json")))
    if distributed.is_writer():  # under torchrun rank 0 alone writes
        write_json(out / "sweep.json", summary)
        write_text(out / "sweep.md", markdown(summary))
        plot(summary, out / "sweep.png")
    if ckpt is not None:
        ckpt.clear()
    return SweepResult(results, summary)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _explore(model: nn.Module, train_loader, cfg: CompressConfig, out: Path, example_input, ignored_layers,
             verbose: bool) -> tuple[nn.Module, dict, torch.Tensor, Checkpoints]:
    """The dense model adapted (``adapt_epochs``) and the explore phase shared by every budget, each saved for a
    resume; returns the model each budget compresses, the explored state, the example input and the
    checkpoints."""
    t0 = time.perf_counter()
    p = prepare(model, train_loader, None, cfg, example_input=example_input, ignored_layers=ignored_layers,
                verbose=verbose)
    cfg = cfg.for_model(uses_transformers(model))  # the optimizer's defaults, as prepare filled them in
    setup = time.perf_counter() - t0  # the explore's share of the preamble (the adapt epochs are not)
    p.ckpt = Checkpoints(out / "checkpoints", {
        "metric": p.metric, "adapt_epochs": cfg.adapt_epochs, "gate_epochs": cfg.gate_epochs, "lr": cfg.lr,
        "optimizer": cfg.optimizer, "gate_lr": cfg.gate_lr, "beta": cfg.beta, "seed": cfg.seed,
        "train_batches": len(p.train),
        "world_size": distributed.world_size(), "model": {k: list(v.shape) for k, v in model.state_dict().items()}},
        cfg.resume)
    adapt_dense(p.work, p.train, p.device, p.ckpt, cfg, p.verbose)
    start = copy.deepcopy(p.work) if cfg.adapt_epochs else model
    distributed.plain_batchnorm(start)  # each budget's run makes its own copy synced (sync_bn)
    explored = p.ckpt.load("gates")
    if explored is None:
        t0 = time.perf_counter()
        job = rank_job(p, p.target)
        job.gate()
        trained = time.perf_counter()
        explored = IBRanker().explore(job, cfg.gate_epochs / 2)
        p.ckpt.save("gates", explored)
        if distributed.is_writer():
            write_json(out / "explore.json", {"seconds": setup + time.perf_counter() - t0, "beta": explored["beta"],
                                              "training_seconds": time.perf_counter() - trained})
    return start, explored, p.example_input, p.ckpt


def sweep_budgets(metric: str, budgets: Sequence[float]) -> list[float]:
    """The distinct budgets, largest first, each checked to be a fraction in (0, 1) of ``metric``."""
    if metric not in ("macs", "params"):
        raise BudgetError(f"metric must be 'macs' or 'params', got {metric!r}")
    if not budgets:
        raise BudgetError(f"give at least one budget, e.g. {metric}=[0.7, 0.5, 0.35]")
    return sorted({budget_of(**{"macs": None, "params": None, metric: b})[1] for b in budgets}, reverse=True)


def _point(budget: float, folder: Path, rep: dict) -> dict:
    c = rep["compressed"]
    return {"budget": budget, "folder": folder.name, "achieved": rep["achieved"], "accuracy": c["accuracy"],
            "accuracy_by_stage": rep["accuracy"], "macs": c["macs"], "params": c["params"],
            "onnx_bytes": c["onnx_bytes"], "latency_ms": c["latency_ms"], "seconds": sum(rep["timings_s"].values()),
            "timings_s": rep["timings_s"], "int8": _int8_point(rep, "compressed")}


def _int8_point(rep: dict, key: str) -> dict | None:
    """The int8 file of ``key`` (``quantize="int8"``): its accuracy in onnxruntime, latency and size."""
    entry = (rep.get("int8") or {}).get(key)
    return None if entry is None else {k: entry[k] for k in ("accuracy", "ok", "onnx_bytes", "latency_ms")}


def _summary(metric: str, points: list[dict], first: dict, explore: dict) -> dict:
    """The sweep's figures. The time saved is measured: each separate ``compress`` run would train its own
    explore phase (``training_seconds`` of wall-clock here), while the sweep trained one and set it up once."""
    o, explore_s = first["original"], explore["seconds"]
    return {
        "schema": 1, "metric": metric,
        "original": {**{k: o[k] for k in ("macs", "params", "onnx_bytes", "accuracy", "latency_ms")},
                     "int8": _int8_point(first, "original")},
        "points": points,
        "time_s": {"explore_once": explore_s, "total": explore_s + sum(p["seconds"] for p in points),
                   "explore_training": explore["training_seconds"],
                   "saved_vs_separate_runs": len(points) * explore["training_seconds"] - explore_s},
        "environment": first["environment"],
    }


def _latency_key(entry: dict) -> str:
    sizes = sorted(int(k.split("_")[1]) for k in entry["latency_ms"] if k.startswith("batch_"))
    return f"batch_{sizes[-1]}"


def markdown(summary: dict) -> str:
    """``sweep.md``: one row per budget, the original first, and the time the shared explore phase saved."""
    o, metric = summary["original"], summary["metric"]
    key = _latency_key(o)

    def acc(v):
        return "n/a" if v is None else f"{100 * v:.2f} %"

    int8 = o.get("int8") is not None

    def q(e):  # the int8 file's columns
        i = e.get("int8")
        return "" if not int8 else "| n/a | n/a " if i is None else (
            f"| {acc(i['accuracy'])}{'' if i['ok'] else ' (not verified)'} | {i['latency_ms'][key]['p50']:.3f} ")

    rows = [f"| original | 1.000 | 1.000 | {acc(o['accuracy'])} | {o['latency_ms'][key]['p50']:.3f} {q(o)}| — |"]
    for p in summary["points"]:
        rows.append(f"| {metric} <= {p['budget']:.2f} | {p['achieved']['macs']:.3f} | {p['achieved']['params']:.3f} "
                    f"| {acc(p['accuracy'])} | {p['latency_ms'][key]['p50']:.3f} {q(p)}| [`{p['folder']}/`]"
                    f"({p['folder']}/report.md) |")
    t = summary["time_s"]
    batch = key.replace("_", " ")
    return "\n".join([
        "# ibprune sweep", "",
        f"| model | MACs kept | params kept | accuracy | ORT p50 {batch} (ms) "
        + (f"| int8 accuracy (onnxruntime) | int8 ORT p50 {batch} (ms) " if int8 else "") + "| report |",
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if int8 else "") + " --- |", *rows, "",
        "![accuracy against size and latency](sweep.png)", "",
        f"The explore half of the gate phase ran once ({t['explore_once']:.1f} s, of which "
        f"{t['explore_training']:.1f} s training) for all {len(summary['points'])} budgets; separate `compress` "
        f"runs would train it for each, {t['saved_vs_separate_runs']:.1f} s more. Whole sweep: {t['total']:.1f} s.",
        ""])


def plot(summary: dict, path: str | Path) -> Path:
    """Accuracy against MACs kept and against measured ONNX latency; original starred, each point labelled."""
    from matplotlib.figure import Figure  # not pyplot: a report never switches the caller's backend

    o, pts = summary["original"], summary["points"]
    key = _latency_key(o)
    if o["accuracy"] is None:
        raise ValueError("a sweep plot needs accuracies: pass a val_loader")
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, x_of, label in ((axes[0], lambda e, a: a, "MACs kept (fraction of the original)"),
                            (axes[1], lambda e, a: e["latency_ms"][key]["p50"],
                             f"onnxruntime CPU latency p50, {key.replace('_', ' ')} (ms)")):
        xs = [x_of(p, p["achieved"]["macs"]) for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        ax.plot(xs, ys, "o-", color="tab:blue", label="ibprune fp32" if o.get("int8") else "ibprune")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"{summary['metric']}<={p['budget']:.2f}", (x, y), textcoords="offset points",
                        xytext=(4, -10), fontsize=8)
        ax.plot([x_of(o, 1.0)], [100 * o["accuracy"]], "*", ms=14, color="tab:red", label="original")
        if ax is axes[1] and all(e.get("int8") for e in (o, *pts)):  # quantize="int8": the files shipped
            ax.plot([x_of(p["int8"], 0) for p in pts], [100 * p["int8"]["accuracy"] for p in pts], "s--",
                    color="tab:blue", fillstyle="none", label="ibprune int8")
            ax.plot([x_of(o["int8"], 0)], [100 * o["int8"]["accuracy"]], "P", ms=11, color="tab:red",
                    label="original int8")
        ax.margins(x=0.08, y=0.2)  # room for the labels; the original never hides behind the legend
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Accuracy-size trade-off")
    fig.tight_layout()
    return write_figure(path, fig)
