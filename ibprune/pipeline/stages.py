"""The stages of ``compress``, each a plain function ``(Prepared, Run) -> its output``, and the runner.

``prepare`` builds what every stage reads (``Prepared``: the settings, the working copy of the model, its channel
groups and cost model, the data, the ranker); each stage then reads the outputs of the stages before it from
``Run`` and returns its own. ``run_stages`` iterates the stage list: it times each stage, checkpoints the output
of every stage marked ``saved`` (with the random-number state and the timings so far) and, on a resumed run,
restores those outputs up to the last one saved instead of running them. No stage asks whether it was resumed.
Stages that train for long (``adapt``, ``finetune``) also checkpoint inside, through ``fit``.

Under ``torchrun`` (``ibprune.core.distributed``) every rank runs the training stages on its shard of the data,
the channels to remove are checked to be the same on every rank, and the stages marked ``writer_only`` (export,
timing, the report) run on rank 0 alone, which hands their outputs to the others.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibprune.core import distributed
from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.groups import ChannelGroup, find_groups
from ibprune.core.modes import evaluating, rng_state, set_rng_state
from ibprune.core.prune import block_sizes, coarsest_block, preflight, prune_to_budget, remove_channels
from ibprune.core.rankers import Ranker, RankJob, ranker
from ibprune.core.train import count, fit, pick_device, recalibrate_bn, steps_for
from ibprune.errors import InputError
from ibprune.files import write_json
from ibprune.models.text import TextClassifier, uses_transformers
from ibprune.outputs import benchmark, channels, onnx, quantize, report
from ibprune.outputs.compressed import save_compressed
from ibprune.outputs.hf import save_hf
from ibprune.outputs.robustness import adversarial_accuracy
from ibprune.pipeline.checkpoints import Checkpoints
from ibprune.pipeline.config import CompressConfig
from ibprune.pipeline.inputs import adopted, check_inputs, first_batch
from ibprune.pipeline.latency import LatencyMeter, LatencyPlan, macs_for_latency, meet
from ibprune.rewrites import rewrite

_LOG = logging.getLogger("ibprune")


@dataclass
class Prepared:
    """What every stage reads: made once by ``prepare``, never changed by a stage (``work`` is trained)."""

    cfg: CompressConfig
    metric: str                     # the budget's: "macs", "params" or "latency"
    target: float                   # the budget, a fraction of the original's metric
    device: torch.device
    original: nn.Module             # the model as given (never modified)
    work: nn.Module                 # its rewritten copy on ``device``: adapted, gated, then pruned
    example_input: torch.Tensor
    groups: list[ChannelGroup]
    cost_model: CostModel           # counts MACs for a latency budget, else the budget's metric
    ranker: Ranker
    train: Any                      # in a distributed run, this rank's shard (``ibprune.core.distributed``)
    val: Any = None                 # likewise; ``accuracy`` adds the counts of every rank
    val_all: Any = None             # the whole validation set, for the stages rank 0 runs alone
    teacher: nn.Module | None = None  # given as distill=<model>
    ckpt: Checkpoints = field(default_factory=lambda: Checkpoints(None, {}))
    folder: Path | None = None      # where outputs are written (a scratch folder when the user gave none)
    keep_outputs: bool = False      # whether ``folder`` is the user's
    verbose: bool = True
    _meter: LatencyMeter | None = field(default=None, repr=False)
    _reference_ms: float | None = None
    _calibration: list | None = field(default=None, repr=False)

    def meter(self) -> LatencyMeter:
        """The latency meter of a latency budget, made on first use (a run resumed after pruning times nothing);
        with ``quantize="int8"`` it times every candidate's int8 file, as it will ship."""
        if self._meter is None:
            self._meter = LatencyMeter(self.example_input.cpu(), self.cfg.bench_batch, benchmark.default_threads(),
                                       self.cfg.latency_runs,
                                       calibration=self.calibration() if self.cfg.quantize else None)
        return self._meter

    def calibration(self) -> list:
        """The training inputs that calibrate every int8 file of the run, read from the loader once."""
        if self._calibration is None:
            self._calibration = quantize.calibration_inputs(self.train, self.cfg.calibration_images)
        return self._calibration

    def reference_ms(self) -> float:
        """The original's latency as this process's meter timed it: every later timing is a ratio to it."""
        if self._reference_ms is None:
            self._reference_ms = self.meter()(self.work)
        return self._reference_ms

    def log(self, message: str) -> None:
        if self.verbose:
            _LOG.info(message)

    def accuracy(self, net: nn.Module) -> float | None:
        """Top-1 accuracy on the validation set (every image once, whichever rank holds it)."""
        if self.val is None:
            return None
        correct, seen = distributed.total(*count(net, self.val, self.device))
        return correct / max(1, seen)

    @property
    def distill_name(self) -> str | None:
        """The report's name of the teacher: "teacher" (given), "adapted", "original", or None."""
        if self.teacher is not None:
            return "teacher"
        return ("adapted" if self.cfg.adapt_epochs else "original") if self.cfg.distill else None


@dataclass
class Ranked:
    """``rank``: the trained weights and gates, the ranking, the gate phase's summary and accuracies so far."""

    model: dict
    gates: dict
    scores: dict[str, torch.Tensor]
    information: dict[str, torch.Tensor]
    gate_report: dict
    accuracy: dict


@dataclass
class Pruned:
    """``prune``: the slim model, what was removed, and what it carries forward from the stages before."""

    model: nn.Module
    removed: dict[str, list[int]]
    fraction: float
    max_abs_diff: float
    information: dict[str, torch.Tensor]
    gate_report: dict
    accuracy: dict
    latency: dict | None
    below_floor: bool = False  # the budget cut groups below ``cfg.min_channels``


@dataclass
class Tuned:
    accuracy: dict
    steps: int
    nan_recoveries: int


@dataclass
class Exported:
    """``export``: both ONNX files, their parity with PyTorch and their accuracy run by onnxruntime."""

    paths: dict[str, Path]
    max_abs_diff: dict[str, float]
    accuracy: dict[str, float | None]


@dataclass
class Run:
    """The stages' outputs so far, by stage name."""

    teacher: nn.Module | None = None
    latency: LatencyPlan | None = None
    gates: Ranked | None = None
    pruned: Pruned | None = None
    finetune: Tuned | None = None
    robustness: dict | None = None
    export: Exported | None = None
    quantize: dict[str, quantize.Int8Result] | None = None
    benchmark: dict[str, dict] | None = None
    report: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline. ``saved``: its output is checkpointed (``state`` makes it plain data and
    ``restore`` rebuilds it); ``timing``: the report's name for its seconds (``None``: not reported);
    ``writer_only``: in a distributed run, rank 0 alone runs it (it writes or times files) and sends its output
    to the other ranks."""

    name: str
    run: Callable[[Prepared, Run], Any]
    timing: str | None = None
    state: Callable[[Any], dict] | None = None
    restore: Callable[[Prepared, dict], Any] | None = None
    writer_only: bool = False

    @property
    def saved(self) -> bool:
        return self.state is not None


def run_stages(stages: list[Stage], p: Prepared) -> Run:
    """Run ``stages`` in order; on a resumed run, restore the saved ones up to the last saved instead."""
    run = Run()
    last = max((i for i, s in enumerate(stages) if s.saved and p.ckpt.has(s.name)), default=-1)
    for i, stage in enumerate(stages):
        if stage.saved and i <= last:
            saved = p.ckpt.load(stage.name)
            if saved is not None:
                setattr(run, stage.name, stage.restore(p, saved["output"]))
                run.timings = dict(saved["timings"])
                set_rng_state(saved["rng"], p.train)
                continue
        t0 = time.perf_counter()
        output = distributed.on_writer(partial(stage.run, p, run)) if stage.writer_only else stage.run(p, run)
        setattr(run, stage.name, output)
        if stage.timing is not None:
            run.timings[stage.timing] = time.perf_counter() - t0
        if stage.saved:
            p.ckpt.save(stage.name, {"output": stage.state(getattr(run, stage.name)), "timings": run.timings,
                                     "rng": rng_state(p.train)})
    return run


def prepare(model: nn.Module, train_loader, val_loader, cfg: CompressConfig, *, example_input=None,
            ignored_layers=None, out_dir=None, folder: Path | None = None, verbose: bool = True) -> Prepared:
    """Everything before the first stage: seed, device, the working copy, input checks, channel groups, cost
    model, the ranker and the stage checkpoints; fails with an ``IbpruneError`` before any training. A
    ``transformers`` classifier and loaders of tokenised dict batches are taken as they come (``adopted``)."""
    metric, target = cfg.budget()
    model, train_loader, val_loader = adopted(model, train_loader, val_loader)
    if metric == "latency" and distributed.active():
        raise InputError("a latency budget is timed on one machine; under torchrun give a macs or params budget "
                         "(a single-process run can find the MACs a latency needs)", settings=("latency",))
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    if example_input is None:
        example_input = first_batch(train_loader)[0][:1]
    example_input = example_input[:1].to(dev)
    work = working_copy(model, dev)
    if cfg.sync_bn:
        distributed.sync_batchnorm(work, dev)
    classes = check_inputs(work, train_loader, example_input)
    teacher = copy.deepcopy(cfg.distill).eval() if isinstance(cfg.distill, nn.Module) else None
    if teacher is not None:
        check_teacher(teacher.to(dev), classes, example_input)
    cfg = cfg.for_model(uses_transformers(model))
    chosen = ranker(cfg.criterion)
    if not chosen.trains_gates:  # a criterion ranks without a gate phase
        cfg = dataclasses.replace(cfg, gate_epochs=0.0)
    groups, cost_model = structure(work, example_input, ignored_layers, "macs" if metric == "latency" else metric)
    p = Prepared(cfg, metric, target, dev, model, work, example_input, groups, cost_model, chosen,
                 distributed.shard_train(train_loader, cfg.seed), distributed.shard_eval(val_loader), val_loader,
                 teacher, folder=folder, keep_outputs=out_dir is not None,
                 verbose=verbose and distributed.is_writer())
    if out_dir is not None:
        distributed.warn_if_not_restartable()
        p.ckpt = Checkpoints(Path(out_dir) / "checkpoints", settings_identity(p), distributed.resuming(cfg.resume))
        if distributed.restarted():
            p.log(f"[ibprune] torchrun restart {distributed.restarted()}: resuming from the stage checkpoints")
    p.log(f"[ibprune] {len(groups)} channel groups, {sum(g.size for g in groups)} channels; "
          f"{cost_model.macs / 1e6:.2f} M MACs, {cost_model.params / 1e6:.3f} M params; "
          f"target {metric} <= {target:.3f}")
    return p


def working_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` on ``device`` with its structure exposed to pruning (attention heads, channel
    shuffles), computing the same function."""
    work = copy.deepcopy(model).to(device)
    rewrite(work)
    return work


def structure(work: nn.Module, example_input: torch.Tensor, ignored_layers=None,
              metric: str = "macs") -> tuple[list[ChannelGroup], CostModel]:
    """The channel groups of ``work`` and its cost model (counting ``metric``)."""
    _, groups = find_groups(work, example_input, ignored_layers)
    return groups, CostModel(work, example_input, groups, metric)


def settings_identity(p: Prepared) -> dict:
    """What a resumed run must share with the run it finishes (``Checkpoints`` compares it)."""
    cfg = p.cfg
    return {"budget": {p.metric: p.target}, "gate_epochs": cfg.gate_epochs, "finetune_epochs": cfg.finetune_epochs,
            "adapt_epochs": cfg.adapt_epochs, "optimizer": cfg.optimizer, "lr": cfg.lr, "gate_lr": cfg.gate_lr,
            "weight_decay": cfg.weight_decay,
            "beta": cfg.beta, "distill": p.distill_name, "round_to": cfg.round_to, "rank_per_cost": cfg.rank_per_cost,
            "seed": cfg.seed, **p.ranker.settings(), "train_batches": len(p.train),
            "world_size": distributed.world_size(), "sync_bn": cfg.sync_bn,
            "input_shape": list(p.example_input.shape),
            "model": {k: list(v.shape) for k, v in p.work.state_dict().items()}}


@torch.no_grad()
def check_teacher(teacher: nn.Module, classes: int, example_input: torch.Tensor) -> None:
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


# --- the stages ---------------------------------------------------------------------------------------------


def adapt(p: Prepared, run: Run) -> nn.Module | None:
    """Fine-tune the dense model for ``adapt_epochs`` (none at 0); returns the teacher a distilled fine-tune
    learns from (the given one, else the model as it is now, adapted or not)."""
    adapt_dense(p.work, p.train, p.device, p.ckpt, p.cfg, p.verbose)
    if p.teacher is not None or not p.cfg.distill:
        return p.teacher
    return copy.deepcopy(p.work).eval()


def adapt_dense(model: nn.Module, loader, device: torch.device, ckpt: Checkpoints, cfg: CompressConfig,
                verbose: bool) -> None:
    """Fine-tune the dense ``model`` in place for ``cfg.adapt_epochs`` (nothing at 0), checkpointed every epoch
    into ``ckpt``, which a resumed run restores instead of training again."""
    if cfg.adapt_epochs:
        fit(model, loader, steps_for(cfg.adapt_epochs, loader), device,
            cfg.weights(), desc="adapt", verbose=verbose,
            checkpoint=ckpt.saver("adapt"), resume=ckpt.load("adapt"))
        model.eval()


def plan_latency(p: Prepared, run: Run) -> LatencyPlan:
    """A latency budget as a MACs target, found by timing candidate networks before any training."""
    searched = time.perf_counter()
    plan = macs_for_latency(p.work, p.example_input, p.groups, p.cost_model, p.target, p.meter(),
                            round_to=p.cfg.round_to, min_channels=p.cfg.min_channels)
    # the search's first timing, the original's, is the reference
    p._reference_ms = plan.original_ms
    plan.seconds = time.perf_counter() - searched
    p.log(f"[ibprune] latency budget {p.target:.3f} of {plan.original_ms:.3g} ms (onnxruntime, batch "
          f"{p.cfg.bench_batch}, {p.meter().threads} thread(s)): pruning to {plan.macs:.3f} of the MACs")
    return plan


def rank(p: Prepared, run: Run) -> Ranked:
    """Score every channel with the ranker (the IB gate phase, or a criterion), after the pruning preflight."""
    first = ({"original": p.accuracy(copy.deepcopy(p.original)), "adapted": p.accuracy(p.work)}
             if p.cfg.adapt_epochs else {"original": p.accuracy(p.work)})
    job = rank_job(p, _cut(p, run))
    ranking = p.ranker.rank(job)
    gates = job.gate()  # a ranker that trains no gates: untrained gates (z = mu = 1) pass everything
    gates.eval()
    accuracy = {**first, "gated": p.accuracy(p.work)}
    gates.detach()
    return Ranked(p.work.state_dict(), gates.state_dict(),
                  {k: v.detach().cpu() for k, v in ranking.scores.items()},
                  {k: v.detach().cpu() for k, v in ranking.information.items()}, ranking.report, accuracy)


def rank_job(p: Prepared, target: float) -> RankJob:
    """What a ranker reads of this run, pruning to ``target``; its ``gate()`` runs the pruning preflight."""
    return RankJob(p.work, p.groups, p.cost_model, p.example_input, p.train, p.device, target, p.cfg, p.verbose,
                   preflight=lambda model, gates: preflight(model, gates, p.groups, p.example_input))


def _cut(p: Prepared, run: Run) -> float:
    """The fraction of the cost model's metric to prune to."""
    return run.latency.macs if run.latency is not None else p.target


def prune(p: Prepared, run: Run) -> Pruned:
    """Remove the lowest-ranked channels until the budget holds (a latency budget: as timed), checked."""
    ranked = run.gates
    gates = GateSet(p.groups).to(p.device).attach(p.work)
    p.work.load_state_dict(ranked.model)
    gates.load_state_dict(ranked.gates)
    gates.eval()

    def to(fraction: float):
        return prune_to_budget(p.work, gates, p.groups, p.example_input, p.cost_model, fraction, p.cfg.round_to,
                               min_channels=p.cfg.min_channels,
                               importance={k: v.to(p.device) for k, v in ranked.scores.items()})

    if run.latency is None:
        result = to(p.target)
    else:  # timed against this process's timing of the original
        run.latency.original_ms = p.reference_ms()
        result = meet(to, p.meter(), run.latency)
    gates.detach()
    distributed.check_same(result.removed, "the channels to remove")  # one decision, the same on every rank
    slim, accuracy = result.model, dict(ranked.accuracy)
    accuracy["pruned"] = p.accuracy(slim)
    recalibrate_bn(slim, p.train, p.device)
    accuracy["pruned_bn_recalibrated"] = p.accuracy(slim)
    return Pruned(slim, result.removed, result.fraction, result.max_abs_diff, ranked.information,
                  ranked.gate_report, accuracy, asdict(run.latency) if run.latency is not None else None,
                  result.below_floor)


def pruned_state(out: Pruned) -> dict:
    return {**{k: v for k, v in vars(out).items() if k != "model"}, "model": out.model.state_dict()}


def restore_pruned(p: Prepared, saved: dict) -> Pruned:
    """The slim model rebuilt on the original architecture and loaded with the saved weights."""
    slim = remove_channels(copy.deepcopy(p.original).to(p.device).eval(), p.example_input, saved["removed"])
    slim.load_state_dict(saved["model"])
    if p.cfg.sync_bn:
        distributed.sync_batchnorm(slim, p.device)
    p.log("[ibprune] resumed after pruning")
    return Pruned(**{**saved, "model": slim})


def finetune(p: Prepared, run: Run) -> Tuned:
    """Fine-tune the slim model for ``finetune_epochs`` plus the steps the gate phase did not need."""
    pruned, gate_report = run.pruned, run.pruned.gate_report
    p.log(f"[ibprune] pruned to {pruned.fraction:.3f} of the original {p.cost_model.metric} "
          f"(function check max diff {pruned.max_abs_diff:.2g}); accuracy {_fmt(pruned.accuracy)}")
    steps = (steps_for(p.cfg.finetune_epochs, p.train)
             + gate_report.get("steps_planned", gate_report["steps"]) - gate_report["steps"])
    tuned = fit(pruned.model, p.train, steps, p.device, p.cfg.weights(),
                teacher=run.teacher, desc="finetune", verbose=p.verbose, checkpoint=p.ckpt.saver("finetune"),
                resume=p.ckpt.load("finetune"))
    distributed.plain_batchnorm(pruned.model.eval())
    return Tuned(dict(pruned.accuracy, finetuned=p.accuracy(pruned.model)), steps, tuned["nan_recoveries"])


def robustness(p: Prepared, run: Run) -> dict:
    """FGSM and PGD accuracy of the original and the compressed model (``robustness_eps``)."""
    return adversarial_accuracy({"original": copy.deepcopy(p.original).to(p.device), "compressed": run.pruned.model},
                                p.val_all, p.device, p.cfg.robustness_eps)


def export(p: Prepared, run: Run) -> Exported:
    """Both models to ONNX, each checked against PyTorch with onnxruntime (on random inputs, and with
    validation data: the files' own accuracy, run by onnxruntime)."""
    paths = {"original": p.folder / "original.onnx", "compressed": p.folder / "model.onnx"}
    diffs, accuracy = {}, {}
    for key, net in (("original", p.original), ("compressed", run.pruned.model)):
        onnx.export_onnx(net, p.example_input, paths[key])
        diffs[key] = onnx.check_parity(paths[key], net, p.example_input)
        accuracy[key] = quantize.onnx_accuracy(paths[key], p.val_all) if p.val_all is not None else None
    return Exported(paths, diffs, accuracy)


def int8(p: Prepared, run: Run) -> dict[str, quantize.Int8Result]:
    """int8 files of both models (``quantize.fallbacks``: static QDQ calibrated on training batches, or dynamic
    for a transformer), each checked against its fp32 file in onnxruntime (``quantize="int8"``)."""
    return {key: quantize.quantize_checked(path, path.with_suffix(".int8.onnx"), p.calibration(), p.val_all,
                                           p.cfg.int8_tolerance, reference=run.export.accuracy[key])
            for key, path in run.export.paths.items()}


def bench(p: Prepared, run: Run) -> dict[str, dict]:
    """MACs, params, file size and onnxruntime latency of both models (batch 1 and ``bench_batch``), and of
    their int8 files when there are any."""
    acc = run.finetune.accuracy
    nets = {"original": p.original, "compressed": run.pruned.model}
    files = {"original": (run.export.paths["original"], acc["original"]),
             "compressed": (run.export.paths["compressed"], acc["finetuned"]),
             **{f"{key}_int8": (result.path, result.accuracy) for key, result in (run.quantize or {}).items()}}
    return {key: benchmark.profile(nets[key.removesuffix("_int8")], path, p.example_input,
                                   batch_sizes=(1, p.cfg.bench_batch), runs=p.cfg.latency_runs, accuracy=accuracy)
            for key, (path, accuracy) in files.items()}


def _fmt(acc: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if v is not None) or "n/a (no val_loader)"


def write_report(p: Prepared, run: Run) -> dict:
    """The report (``report.build``); with an output folder also the channel picture, the report files and the
    compressed model, after which the stage checkpoints are deleted."""
    pruned, cfg = run.pruned, p.cfg
    rep = report.build(
        target={p.metric: p.target}, entries=run.benchmark, counted=(p.cost_model.macs, p.cost_model.params),
        bench_batch=cfg.bench_batch, onnx=_onnx_entry(p, run.export),
        pruned_channels={g.name: {"kept": g.size - len(pruned.removed.get(g.name, [])), "total": g.size,
                                  "unit": g.unit} for g in p.groups},
        accuracy=run.finetune.accuracy, ranking={"criterion": p.ranker.name, "rank_per_cost": cfg.rank_per_cost},
        gates=dict(pruned.gate_report, epochs=cfg.gate_epochs, beta_given=cfg.beta is not None,
                   information_nats={g.name: float(pruned.information[g.name].sum()) for g in p.groups}
                   if p.ranker.trains_gates else None),
        finetune={"epochs": cfg.finetune_epochs, "steps": run.finetune.steps, "distill": p.distill_name,
                  "optimizer": cfg.optimizer, "lr": cfg.lr,
                  "nan_recoveries": run.finetune.nan_recoveries},
        robustness=run.robustness, latency_budget=pruned.latency, int8=_int8_entry(p, run),
        resumed_from=p.ckpt.resumed[-1] if p.ckpt.resumed else None, notes=_notes(p, run), timings=run.timings,
        device=p.device)
    if p.keep_outputs:
        rep["information"] = _channel_picture(p, pruned)
        report.write(p.folder, rep)
        save_compressed(p.folder / "compressed.pt", pruned.model, pruned.removed, p.example_input)
        if isinstance(pruned.model, TextClassifier):  # also as a transformers folder (from_pretrained)
            save_hf(pruned.model.hf, p.folder / "hf")
        p.ckpt.clear()
    p.log(report.summary(rep))
    return rep


def _onnx_entry(p: Prepared, exported: Exported) -> dict:
    paths = exported.paths
    return {"path": str(paths["compressed"]) if p.keep_outputs else None,
            "original_path": str(paths["original"]) if p.keep_outputs else None,
            "max_abs_diff": exported.max_abs_diff["compressed"],
            "original_max_abs_diff": exported.max_abs_diff["original"],
            "opset": onnx.onnx_opset(paths["compressed"]),
            "accuracy": exported.accuracy["compressed"], "original_accuracy": exported.accuracy["original"]}


def _int8_entry(p: Prepared, run: Run) -> dict | None:
    if not run.quantize:
        return None
    return {"calibration": {"images": p.cfg.calibration_images, "data": "training batches"},
            "tolerance": p.cfg.int8_tolerance,
            **{key: {**result.summary(), **run.benchmark[f"{key}_int8"]} for key, result in run.quantize.items()}}


def _notes(p: Prepared, run: Run) -> list[str]:
    notes = []
    if p.metric != "latency" and run.pruned.fraction < p.target - 0.03:
        group, step = coarsest_block(p.cost_model, run.pruned.removed, block_sizes(p.groups, p.cfg.round_to))
        notes.append(f"achieved {p.metric} {run.pruned.fraction:.3f} is more than 0.03 below the budget "
                     f"{p.target:.3f}: the search over the channel widths (round_to={p.cfg.round_to}) found no "
                     f"closer fit; the coarsest step is group {group!r}, one block of which is {step:.3f} of the "
                     f"{p.metric}")
    if run.pruned.below_floor:
        notes.append(f"the budget left channel groups narrower than {p.cfg.min_channels} channels, which "
                     f"onnxruntime's int8 convolution runs slower than {p.cfg.min_channels}: a looser budget may run "
                     "as fast (benchmarks/results/widths.md)")
    for key, result in (run.quantize or {}).items():
        if not result.ok:
            why = ("no validation data to check it on" if result.accuracy is None else
                   f"every recipe lost more than {p.cfg.int8_tolerance:.3f} of the fp32 accuracy "
                   f"{result.reference_accuracy:.4f} (best: {result.accuracy:.4f})")
            notes.append(f"the {key} int8 file {result.path.name} is not verified: {why}")
    if run.finetune.nan_recoveries:
        notes.append("the fine-tune loss became non-finite once: it was rolled back to its last checkpoint and "
                     "continued at half the learning rate")
    return notes


def _channel_picture(p: Prepared, pruned: Pruned) -> dict:
    """``information.json`` and ``information.png``: every channel's score, the removed ones marked."""
    position = {name: i for i, (name, _) in enumerate(p.original.named_modules())}
    info = pruned.information
    prof = channels.profile({n: info[n] for n in sorted(info, key=position.get)}, pruned.removed, p.ranker.unit)
    write_json(p.folder / "information.json", prof)
    channels.plot(prof, p.folder / "information.png", p.ranker.title)
    return {"unit": p.ranker.unit, "json": "information.json", "plot": "information.png"}
