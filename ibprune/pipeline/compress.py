"""``compress()``: groups -> gates -> gate training -> prune -> fine-tune -> export -> benchmark -> report."""

from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.groups import find_groups
from ibprune.core.modes import evaluating, rng_state, set_rng_state
from ibprune.core.objective import train_gates
from ibprune.core.prune import preflight, prune_to_budget, remove_channels
from ibprune.core.rankers import criterion_scores
from ibprune.core.train import SGDConfig, evaluate, fit, pick_device, recalibrate_bn, steps_for
from ibprune.errors import InputError
from ibprune.files import write_json
from ibprune.outputs import benchmark as bench
from ibprune.outputs import channels as info_picture
from ibprune.outputs import onnx as export
from ibprune.outputs import report
from ibprune.outputs.compressed import save_compressed
from ibprune.outputs.robustness import adversarial_accuracy
from ibprune.pipeline.checkpoints import Checkpoints
from ibprune.pipeline.config import CompressConfig
from ibprune.pipeline.inputs import check_inputs, first_batch
from ibprune.pipeline.latency import LatencyMeter, LatencyPlan, macs_for_latency
from ibprune.pipeline.latency import meet as meet_latency
from ibprune.rewrites import rewrite

_LOG = logging.getLogger("ibprune")


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
    explored: dict | None = None,
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
    phase and ranks channels by that criterion instead, for comparisons in one harness. ``rank_per_cost=True``
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

    ``explored`` (from ``compress_sweep``) starts the gate phase from gates already explored on this model and
    spends ``gate_epochs`` on the squeeze alone.

    ``round_to=8`` keeps every group's width a multiple of 8: odd widths defeat the vectorised conv kernels
    (a digits CNN at half its MACs ran 1.5x *slower* in onnxruntime unrounded); ``round_to=1`` for exact widths.
    """
    cfg = CompressConfig.from_keywords(settings)
    metric, target = cfg.budget()
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    log = _LOG.info if verbose else (lambda *a, **k: None)

    original = model
    given = isinstance(cfg.distill, nn.Module)
    teacher = copy.deepcopy(cfg.distill).eval() if given else None
    distill_name = "teacher" if given else ("adapted" if cfg.adapt_epochs and cfg.distill
                                            else "original" if cfg.distill else None)
    work = copy.deepcopy(model).to(dev)
    rewrite(work)  # attention heads, channel shuffles: exposed to pruning, same function
    if example_input is None:
        example_input = first_batch(train_loader)[0][:1]
    example_input = example_input[:1].to(dev)
    classes = check_inputs(work, train_loader, example_input)
    if teacher is not None:
        _check_teacher(teacher.to(dev), classes, example_input)
    if cfg.criterion != "ib":  # a criterion ranks without a gate phase
        cfg = dataclasses.replace(cfg, gate_epochs=0.0)
    identity = {"budget": {metric: target}, "gate_epochs": cfg.gate_epochs, "finetune_epochs": cfg.finetune_epochs,
                "adapt_epochs": cfg.adapt_epochs, "lr": cfg.lr, "gate_lr": cfg.gate_lr,
                "weight_decay": cfg.weight_decay, "beta": cfg.beta, "distill": distill_name,
                "round_to": cfg.round_to, "criterion": cfg.criterion, "rank_per_cost": cfg.rank_per_cost,
                "seed": cfg.seed,
                "explored": explored is not None,
                "train_batches": len(train_loader), "input_shape": list(example_input.shape),
                "model": {k: list(v.shape) for k, v in work.state_dict().items()}}
    ckpt = Checkpoints(Path(out_dir) / "checkpoints" if out_dir is not None else None, identity, cfg.resume)

    t0 = time.perf_counter()
    adapt_dense(work, train_loader, dev, ckpt, cfg.adapt_epochs, cfg.lr, cfg.weight_decay, verbose)
    if cfg.distill and not given:  # the model pruned: the original, or the original adapted
        teacher = copy.deepcopy(work).eval()
    adapt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, groups = find_groups(work, example_input, ignored_layers)
    cost_model = CostModel(work, example_input, groups, "macs" if metric == "latency" else metric)
    orig_macs, orig_params = cost_model.macs, cost_model.params
    meter = timing = None
    cut = target  # the fraction of the cost model's metric to prune to
    stage = ckpt.load("pruned")
    if metric == "latency" and stage is None:  # a MACs target found by timing candidates, kept for a resume
        meter = LatencyMeter(example_input.cpu(), cfg.bench_batch, bench.default_threads(), cfg.latency_runs)
        saved = ckpt.load("latency")
        if saved is None:
            searched = time.perf_counter()
            timing = macs_for_latency(work, example_input, groups, cost_model, target, meter,
                                      round_to=cfg.round_to)
            timing.seconds = time.perf_counter() - searched
            t0 += timing.seconds  # the gate phase's time leaves the search out
        else:  # resumed: later timings are ratios to this run's timing of the original
            timing = LatencyPlan(**saved)
            timing.original_ms = meter(work)
        ckpt.save("latency", asdict(timing))
        cut = timing.macs
        log(f"[ibprune] latency budget {target:.3f} of {timing.original_ms:.3g} ms (onnxruntime, batch "
            f"{cfg.bench_batch}, {meter.threads} thread(s)): pruning to {cut:.3f} of the MACs")

    def accuracy(net: nn.Module) -> float | None:
        return evaluate(net, val_loader, dev) if val_loader is not None else None

    log(f"[ibprune] {len(groups)} channel groups, {sum(g.size for g in groups)} channels; "
        f"{orig_macs / 1e6:.2f} M MACs, {orig_params / 1e6:.3f} M params; target {metric} <= {target:.3f}")

    if stage is None:
        stage = ckpt.load("gates")
        first = None  # the model as given, and (adapt_epochs) as adapted: before any gate is attached
        if stage is None:
            first = {"original": accuracy(copy.deepcopy(original)), "adapted": accuracy(work)} if cfg.adapt_epochs \
                else {"original": accuracy(work)}
        importance = None  # a criterion's scores, taken before any gate is attached
        if stage is None and cfg.criterion != "ib":
            importance = criterion_scores(work, example_input, groups, cfg.criterion, train_loader, dev)
        gates = GateSet(groups).to(dev).attach(work)
        preflight(work, gates, groups, example_input)  # an unprunable model fails here, before any training
        if stage is None:
            stage = _gate_stage(work, gates, cost_model, train_loader, dev, cut, importance, explored,
                                gate_epochs=cfg.gate_epochs, beta=cfg.beta, lr=cfg.lr, gate_lr=cfg.gate_lr,
                                weight_decay=cfg.weight_decay, round_to=cfg.round_to, per_cost=cfg.rank_per_cost,
                                verbose=verbose)
            stage["accuracy"] = {**first, "gated": accuracy(work)}
            stage["timings"] = {**({"adapt": adapt_s} if cfg.adapt_epochs else {}),
                                "gates": time.perf_counter() - t0}
            stage["rng"] = rng_state(train_loader)
            ckpt.save("gates", stage)
        else:
            work.load_state_dict(stage["model"])
            gates.load_state_dict(stage["gates"])
            gates.eval()
            log("[ibprune] resumed after the gate phase")
        set_rng_state(stage["rng"], train_loader)
        t0 = time.perf_counter()

        def prune(fraction: float):
            return prune_to_budget(work, gates, groups, example_input, cost_model, fraction, cfg.round_to,
                                   importance=stage["information"] if cfg.criterion != "ib" else None,
                                   per_cost=cfg.rank_per_cost)

        pruned = prune(cut) if timing is None else meet_latency(prune, meter, timing)
        gates.detach()
        slim = pruned.model
        acc = dict(stage["accuracy"], pruned=accuracy(slim))
        recalibrate_bn(slim, train_loader, dev)
        acc["pruned_bn_recalibrated"] = accuracy(slim)
        stage.update(model=slim.state_dict(), removed=pruned.removed, fraction=pruned.fraction,
                     max_abs_diff=pruned.max_abs_diff, accuracy=acc, rng=rng_state(train_loader),
                     latency=asdict(timing) if timing is not None else None,
                     timings=dict(stage["timings"], prune=time.perf_counter() - t0))
        stage.pop("gates", None)
        ckpt.save("pruned", stage)
    else:
        slim = remove_channels(copy.deepcopy(original).to(dev).eval(), example_input, stage["removed"])
        slim.load_state_dict(stage["model"])
        set_rng_state(stage["rng"], train_loader)
        log("[ibprune] resumed after pruning")
    acc, timings, removed = dict(stage["accuracy"]), dict(stage["timings"]), stage["removed"]
    notes = []
    if metric != "latency" and stage["fraction"] < target - 0.03:
        notes.append(f"achieved {metric} {stage['fraction']:.3f} is more than 0.03 below the budget {target:.3f}: "
                     f"the channel widths (round_to={cfg.round_to}) allow no closer fit")
    log(f"[ibprune] pruned to {stage['fraction']:.3f} of the original {cost_model.metric} "
        f"(function check max diff {stage['max_abs_diff']:.2g}); accuracy {_fmt(acc)}")

    t0 = time.perf_counter()
    gate_report = stage["gate_report"]  # steps the gate phase did not need go to the fine-tune
    finetune_steps = (steps_for(cfg.finetune_epochs, train_loader)
                      + gate_report.get("steps_planned", gate_report["steps"]) - gate_report["steps"])
    tuned = fit(slim, train_loader, finetune_steps, dev,
                SGDConfig(lr=cfg.lr, weight_decay=cfg.weight_decay), teacher=teacher, desc="finetune",
                verbose=verbose,
                checkpoint=ckpt.saver("finetune"), resume=ckpt.load("finetune"))
    slim.eval()
    acc["finetuned"] = accuracy(slim)
    timings["finetune"] = time.perf_counter() - t0
    if tuned["nan_recoveries"]:
        notes.append("the fine-tune loss became non-finite once: it was rolled back to its last checkpoint and "
                     "continued at half the learning rate")

    robust = None
    if cfg.robustness_eps is not None and val_loader is not None:
        t0 = time.perf_counter()
        robust = adversarial_accuracy({"original": copy.deepcopy(original).to(dev), "compressed": slim},
                                      val_loader, dev, cfg.robustness_eps)
        timings["robustness"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(out_dir) if out_dir is not None else Path(scratch)
        paths, entries, diffs = _export_and_benchmark(original, slim, example_input, folder, acc, timings,
                                                      (1, cfg.bench_batch), cfg.latency_runs)
        information = stage["information"]
        rep = {
            "schema": 1,
            "target": {metric: target},
            "original": entries["original"],
            "compressed": entries["compressed"],
            "achieved": _achieved(entries, orig_macs, orig_params, cfg.bench_batch),
            "onnx": {"path": str(paths["compressed"]) if out_dir is not None else None,
                     "original_path": str(paths["original"]) if out_dir is not None else None,
                     "max_abs_diff": diffs["compressed"], "original_max_abs_diff": diffs["original"],
                     "opset": export.onnx_opset(paths["compressed"])},
            "pruned_channels": {g.name: {"kept": g.size - len(removed.get(g.name, [])), "total": g.size,
                                         "unit": g.unit} for g in groups},
            "accuracy": acc,
            "criterion": cfg.criterion, "rank_per_cost": cfg.rank_per_cost,
            "gates": dict(stage["gate_report"], epochs=cfg.gate_epochs, beta_given=cfg.beta is not None,
                          information_nats={g.name: float(information[g.name].sum()) for g in groups}
                          if cfg.criterion == "ib" else None),
            "finetune": {"epochs": cfg.finetune_epochs, "steps": finetune_steps, "distill": distill_name,
                         "lr": cfg.lr,
                         "nan_recoveries": tuned["nan_recoveries"]},
            "robustness": robust,
            "latency_budget": stage.get("latency"),
            "resumed_from": ckpt.resumed[-1] if ckpt.resumed else None,
            "notes": notes,
            "timings_s": timings,
            "environment": {"torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
                            "python": platform.python_version(), "machine": platform.machine()},
        }
        if metric == "latency" and rep["achieved"]["latency"] > target:
            notes.append(f"the final benchmark timed the compressed model at {rep['achieved']['latency']:.3f} of "
                         f"the original's latency, over the budget {target:.3f}: timing noise on a busy machine, "
                         "or no narrower network met it (see latency_budget)")
        if out_dir is not None:
            unit = "nats" if cfg.criterion == "ib" else f"{cfg.criterion} importance"
            position = {name: i for i, (name, _) in enumerate(original.named_modules())}
            prof = info_picture.profile({n: information[n] for n in sorted(information, key=position.get)},
                                        removed, unit)
            write_json(folder / "information.json", prof)
            info_picture.plot(prof, folder / "information.png",
                              "Information per channel" if cfg.criterion == "ib" else f"{cfg.criterion} importance")
            rep["information"] = {"unit": unit, "json": "information.json", "plot": "information.png"}
            report.write(folder, rep)
            save_compressed(folder / "compressed.pt", slim, removed, example_input)
            ckpt.clear()
    log(report.summary(rep))
    return CompressResult(slim, rep, information, removed)


@torch.no_grad()
def _check_teacher(teacher: nn.Module, classes: int, example_input: torch.Tensor) -> None:
    """A teacher must take the model's input and give ``(batch, classes)`` outputs, as the model does."""
    with evaluating(teacher):
        try:
            out = teacher(example_input)
        except Exception as e:  # noqa: BLE001 - any failure here means the teacher does not fit the data
            raise InputError(f"distill: the teacher model fails on the example input: {e}") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(example_input), classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"distill: the teacher's output has shape {shape}, the model's "
                         f"{(len(example_input), classes)}: distillation needs the same outputs")


def adapt_dense(model: nn.Module, loader, device: torch.device, ckpt: Checkpoints, epochs: float, lr: float,
                weight_decay: float, verbose: bool) -> None:
    """Fine-tune the dense ``model`` in place for ``epochs`` (nothing at 0): the ``adapt`` stage, checkpointed
    every epoch into ``ckpt``, which a resumed run restores instead of training again."""
    if epochs:
        fit(model, loader, steps_for(epochs, loader), device, SGDConfig(lr=lr, weight_decay=weight_decay),
            desc="adapt", verbose=verbose, checkpoint=ckpt.saver("adapt"), resume=ckpt.load("adapt"))
        model.eval()


def _gate_stage(work, gates, cost_model, loader, dev, target, importance, explored, *, gate_epochs, beta, lr,
                gate_lr, weight_decay, round_to, per_cost, verbose) -> dict:
    """Rank the channels: train the IB gates, or (``importance`` given: a criterion's scores) keep those.

    ``explored``: weights, gates and ``beta`` after a shared explore phase; only the squeeze runs.

    Returns the stage's checkpoint: the (gated) weights, the gates, the ranking and the gate schedule's summary.
    """
    if importance is not None:
        gates.eval()  # untrained gates pass everything (z = mu = 1), without the training noise
        information = importance
        report = {"steps": 0, "steps_planned": 0, "beta_explore": None, "beta_final": None,
                  "still_open_to_remove": 0}
    else:
        steps = steps_for(gate_epochs, loader)
        if explored is not None:
            work.load_state_dict(explored["model"])
            gates.load_state_dict(explored["gates"])
            beta = explored["beta"]
        pressure = train_gates(work, gates, cost_model, loader, dev, target, steps, beta=beta, lr=lr,
                               gate_lr=gate_lr, weight_decay=weight_decay, round_to=round_to, per_cost=per_cost,
                               explore=0.0 if explored is not None else 0.5, verbose=verbose)
        information = gates.information()
        report = {"steps": pressure.steps_taken, "steps_planned": steps, "beta_explore": pressure.beta_explore,
                  "beta_final": pressure.beta,
                  "still_open_to_remove": pressure.open_to_remove()}
    return {"model": work.state_dict(), "gates": gates.state_dict(), "gate_report": report,
            "information": {k: v.detach().cpu() for k, v in information.items()}}


def _export_and_benchmark(original, slim, example_input, folder: Path, acc: dict, timings: dict,
                          batch_sizes: tuple[int, ...], runs: int):
    """Export both models to ONNX, check each against PyTorch with onnxruntime, and profile both."""
    t0 = time.perf_counter()
    paths = {"original": folder / "original.onnx", "compressed": folder / "model.onnx"}
    diffs = {}
    for key, net in (("original", original), ("compressed", slim)):
        export.export_onnx(net, example_input, paths[key])
        diffs[key] = export.check_parity(paths[key], net, example_input)
    timings["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    entries = {key: bench.profile(net, paths[key], example_input, batch_sizes=batch_sizes, runs=runs,
                                  accuracy=acc[a])
               for key, net, a in (("original", original, "original"), ("compressed", slim, "finetuned"))}
    timings["benchmark"] = time.perf_counter() - t0
    return paths, entries, diffs


def _achieved(entries: dict, orig_macs: int, orig_params: int, batch: int) -> dict:
    """Fractions of the original kept: MACs, params, and onnxruntime p50 latency at ``batch`` (recorded)."""
    o, c = entries["original"], entries["compressed"]
    key = f"batch_{batch}"
    return {"macs": c["macs"] / orig_macs, "params": c["params"] / orig_params,
            "latency": c["latency_ms"][key]["p50"] / o["latency_ms"][key]["p50"], "latency_batch": batch}


def _fmt(acc: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if v is not None) or "n/a (no val_loader)"
