"""Criteria benchmark on CIFAR-10 (JPEG): does IB pruning beat the usual criteria at equal budget?

Every cell (model, method, budget, seed) is one resumable run writing its own JSON under
``benchmarks/results/cifar10/cells/``; a finished cell is skipped, so the grid can be spread over sittings. A cell
checkpoints every epoch under ``benchmarks/results/cifar10/work/`` and a killed one continues from its last epoch
when run again (its record names the stage it resumed from), so even a 20-epoch ResNet-56 cell on 2 CPU cores,
about 1.5 hours, can span sittings.
All methods see the same data, augmentation, seeds and total number of epochs:

* ``ib``: ``--gate-epochs`` of gate training, then ``epochs - gate_epochs`` of fine-tuning;
* ``l1``, ``bn``, ``taylor``, ``random``, ``lamp``, ``fpgm``: torch-pruning's criteria, one-shot prune, ``epochs``
  of fine-tuning;
* ``depgraph_sl``, ``greg``: torch-pruning's sparse learning (DepGraph's group regulariser, growing
  regularisation), ``--sl-epochs`` of regularised training, then the group-L2 prune and the remaining epochs of
  fine-tuning (``--reg``, ``--delta-reg``: their strengths, a row suffixed ``_reg`` / ``_dr``);
* ``--metric params``: the budgets are fractions of the parameters instead of the MACs (rows ``method@params``:
  at equal MACs IB keeps more parameters than the criteria, so both readings are shown);
* ``dense``: the unpruned model fine-tuned for ``epochs`` (the accuracy to compare against on JPEG data);
* the ranking apart from the schedule: ``ib_oneshot`` (IB's explore half, then a one-shot prune by information;
  the squeeze's steps fine-tune) and ``l1_squeeze``, ``taylor_squeeze``, ... (the criterion ranks the dense
  model, and IB's squeeze shuts the channels its ranking removes over ``--gate-epochs`` before the prune),
  ``l1_iter``, ... (torch-pruning's iterative schedule over ``--gate-epochs``: 5 rounds, re-scored each);
* the allocation apart from the ranking: ``--widths-from LABEL`` (``_alloc_LABEL``) prunes each group to the
  widths the cell of method ``LABEL`` (same model, epochs, budget and seed) kept, the method choosing only which
  channels within each group (``ibprune.core.rankers.Allocated``; IB's squeeze shuts the rest).

The criteria rank channels globally by torch-pruning's group-normalised importance, as torch-pruning's global
pruning does; ``ib`` ranks by information (nats), which the gate phase has shaped with each channel's cost.
Every method keeps widths a multiple of 8 (ibprune's default ``round_to``; ``--round-to 4`` gives every method
finer widths, a row suffixed ``_r4``). Ablations: ``ib_per_cost`` ranks IB information per unit cost (it counts
the cost twice: the gate phase already weighs each channel's KL by it), ``l1_per_cost`` ranks L1 that way too;
``--distill`` fine-tunes every pruned method against the original (``_kd``), ``--distill-dense`` against the
dense model fine-tuned as long on the same seed (``_kdd``; a diagnostic, not an equal budget: the teacher's
epochs come on top; every dense cell keeps its weights under ``work/teachers/``, and a missing one is run first);
``--beta`` and ``--gate-epochs`` change IB's gate phase (``_b``, ``_g``), ``--lr`` every method's learning rate
(``_lr``). ``--adapt E --distill`` (``_kd_..._aE``) is the equal-budget answer to ``--distill-dense``: the
first ``E`` epochs of the budget fine-tune the dense model (``compress(adapt_epochs=E)``), which is then pruned
and distilled from; the remaining epochs go to the gate phase and the fine-tune as before. ``--from-dense E``
(``_fdE``) starts every pruned method from the dense cell of ``E`` epochs instead of the checkpoint: the case of a
user whose model already fits their data (with ``--distill``, it is also the teacher). Its fair baseline is the
dense cell of ``E`` + ``--epochs`` epochs: as many epochs in all.

5,000 training images are held out as a validation split (stage accuracies in the cells are on it); the final
accuracy is on the 10,000 test images.

Reproduce (2 CPU cores: about 4 minutes a ResNet-20 cell, 14-16 minutes a ResNet-56 one):
    python benchmarks/cifar10.py run --model resnet20 --epochs 3 --budgets 0.5 0.4 --seeds 0 1
    python benchmarks/cifar10.py run --model resnet20 --round-to 4 --methods ib l1 taylor --seeds 0 1 2
    python benchmarks/cifar10.py run --model resnet56 --round-to 4 --methods ib l1 taylor --seeds 0 1
    python benchmarks/cifar10.py run --model resnet56 --methods ib l1 taylor --budgets 0.4 --seeds 0 1
    python benchmarks/cifar10.py run --model resnet56 --round-to 4 --epochs 6 --methods dense ib taylor l1 \
        --budgets 0.5 --seeds 0      # and ib --seeds 1; the same with --epochs 10 --methods dense ib
    python benchmarks/cifar10.py run --model resnet20 --round-to 4 --methods ib l1 --budgets 0.5 --seeds 0 1 \
        --distill-dense              # the diagnostic: a teacher adapted to the JPEG data
    python benchmarks/cifar10.py run --model resnet20 --round-to 4 --methods ib l1 taylor --budgets 0.5 --seeds 0 1 \
        --adapt 1 --distill          # adapt first, then prune and distil from the adapted model
    python benchmarks/cifar10.py run --model resnet56 --round-to 4 --epochs 10 --methods ib --budgets 0.5 --seeds 0 \
        --adapt 1 --distill
    python benchmarks/cifar10.py run --model resnet56 --round-to 4 --methods ib l1 --budgets 0.5 --seeds 1 \
        --from-dense 10 --distill      # needs the dense 10-epoch cell of seed 1 (its weights under work/teachers)
    python benchmarks/cifar10.py run --model resnet56 --epochs 10 --methods dense --seeds 0 1 2 &&
    python benchmarks/cifar10.py run --model resnet56 --epochs 20 --methods dense --seeds 0 1 2 &&
    python benchmarks/cifar10.py run --model resnet56 --round-to 4 --epochs 10 --from-dense 10 --distill \
        --methods ib l1 taylor bn random --seeds 0 1 2   # the 10 + 10 epoch grid (H200: ~3 min a cell, 12 at once)
    python benchmarks/cifar10.py latency      # on a quiet machine: every cell's architecture not yet timed
    python benchmarks/cifar10.py latency --fresh --cells 'resnet56-e6-*'   # re-time a table's rows side by side
    python benchmarks/cifar10.py layout --rounds 5 --runs 200 --cells resnet56-e10-ib_kd_r4_fd10-macs0.50-s0 \
        resnet56-e20-ib-macs0.50-s0      # batch-1 latency and onnxruntime's blocked layout (cifar10_layout.md)
    python benchmarks/cifar10.py aggregate

On a GPU machine, ``--jobs N`` runs N cells at once, each in its own process: a ResNet-56 step is hundreds of
small kernels, and many processes fill the card only under CUDA MPS. On one H200 with MPS, 16 ResNet-56 cells of
20 epochs ran in 6.5 minutes (a 1-epoch gate phase took 52 s); without MPS, 10 cells did not finish a 2-epoch
gate phase in 4.5 minutes.
    nvidia-cuda-mps-control -d
    OMP_NUM_THREADS=1 python benchmarks/cifar10.py run --model resnet56 --epochs 20 \
        --methods dense ib l1 taylor --jobs 14 --latency-runs 10 &
    OMP_NUM_THREADS=1 python benchmarks/cifar10.py run --model resnet56 --epochs 20 --gate-epochs 2 \
        --methods ib --seeds 0 --jobs 2 --latency-runs 10
    python benchmarks/cifar10.py latency      # back on the 2-core machine: in-run latency there is contended
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import ibprune
from ibprune.core.costs import CostModel, count
from ibprune.core.groups import find_groups
from ibprune.core.prune import remove_channels
from ibprune.core.rankers import DEPGRAPH_SL, GREG, Allocated, SparseLearning, allocation_cost, ranker
from ibprune.core.train import OPTIMIZERS, OptimizerConfig, evaluate, fit, pick_device, steps_for
from ibprune.data.cifar import TensorLoader, cifar10_loaders, load_cifar10
from ibprune.files import atomic_path, write_figure, write_json, write_text
from ibprune.models import cifar_resnet
from ibprune.outputs import benchmark as bench
from ibprune.outputs import onnx as export
from ibprune.pipeline.checkpoints import Checkpoints
from ibprune.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = Path(__file__).parent / "results"
CELLS = RESULTS / "cifar10" / "cells"
WORK = RESULTS / "cifar10" / "work"  # checkpoints of unfinished cells (not committed), deleted as each one ends
LATENCY = RESULTS / "cifar10_latency.json"  # quiet-machine latency per cell (`latency`)
LAYOUT = RESULTS / "cifar10_layout"  # .json / .md: batch-1 latency and onnxruntime's blocked layout (`layout`)
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
SPARSE = {r.name: r for r in (DEPGRAPH_SL, GREG)}  # torch-pruning's sparse learning: a phase before the prune
BASE = ("ib", "depgraph_sl", "greg", "lamp", "fpgm", "l1", "taylor", "bn", "random")  # the columns, in order
# the ranking apart from the schedule: IB pruned one-shot, the criteria under IB's squeeze (``Squeezed``)
SCHEDULED = ("l1", "taylor", "lamp", "fpgm", "bn", "random")  # the criteria run under other schedules
SCHEDULES = ("ib_oneshot", *(f"{c}_{s}" for c in SCHEDULED for s in ("squeeze", "iter")))
METHODS = (*BASE, "dense", "ib_per_cost", *SCHEDULES)
PUBLISHED = [  # lossless CIFAR-10, 100+ fine-tune epochs on a GPU; from the papers, not measured here
    ("DepGraph (Torch-Pruning)", "resnet56", 93.53, 93.77, 2.13),
    ("DepGraph (Torch-Pruning)", "resnet56", 93.53, 93.64, 2.57),
    ("Group-L1", "resnet56", 93.53, 92.93, 2.12),
    ("ResRep", "resnet56", 93.71, 93.71, 2.12),
    ("HRank", "resnet56", 93.26, 93.17, 2.00),
]


def label(method: str, args) -> str:
    """The method's name in results: a run with non-default settings is its own row (``_g``: IB gate epochs,
    ``_b``: IB explore beta, ``_kd`` / ``_kdd``: distillation from the original / from the fine-tuned dense model,
    ``_r``: widths rounded to another multiple, ``_a``: adapt first, ``_fd``: start from the dense cell of E epochs,
    ``_lr``: another learning rate, ``_alloc_L``: at the widths of method ``L``'s cell)."""
    name = method
    if gated(method):
        name += f"_g{args.gate_epochs:g}" if args.gate_epochs != 1.0 else ""
        name += f"_b{args.beta:g}" if args.beta else ""
    if method in SPARSE:
        name += f"_sl{args.sl_epochs:g}" if args.sl_epochs != 1.0 else ""
        name += f"_reg{args.reg:g}" if args.reg is not None else ""
        name += f"_dr{args.delta_reg:g}" if args.delta_reg is not None and method == "greg" else ""
    if method != "dense":
        name += "_kdd" if args.distill_dense else "_kd" if args.distill else ""
        name += f"_r{args.round_to}" if args.round_to != 8 else ""
        name += f"_a{args.adapt:g}" if args.adapt else ""
        name += f"_fd{args.from_dense:g}" if args.from_dense else ""
    name += f"_lr{args.lr:g}" if args.lr != 0.02 else ""
    # last, so that the row reads <ranking's own label>_alloc_<donor's label>
    return name + (f"_alloc_{args.widths_from}" if args.widths_from and method != "dense" else "")


def gated(method: str) -> bool:
    """Whether the method trains IB gates (a gate phase of ``--gate-epochs``, counted in its budget)."""
    return method.startswith("ib") or method.endswith(("_squeeze", "_iter"))


def cell_path(model: str, method: str, budget: float | None, seed: int, epochs: float, metric: str = "macs") -> Path:
    tag = method if budget is None else f"{method}-{metric}{budget:.2f}"
    return CELLS / f"{model}-e{epochs:g}-{tag}-s{seed}.json"


def checkpoint_path(model: str) -> Path:
    return SHARED / "models" / "cifar10-resnet" / CHECKPOINTS[model]


def pretrained(model: str) -> torch.nn.Module:
    net = getattr(cifar_resnet, f"cifar_{model}")()
    return load_weights(net, checkpoint_path(model)).eval()


def weights_sha256(args, method: str, seed: int) -> dict[str, str | None]:
    """The sha256 of the weight files a cell starts from and distils from (None: no teacher), so that a row's
    cells can be shown to share them."""
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    start = checkpoint_path(args.model) if method == "dense" or not args.from_dense else \
        teacher_path(args, seed, args.from_dense)
    teacher = None if method == "dense" else teacher_path(args, seed) if args.distill_dense else \
        start if args.distill else None
    return {"start": digest(start), "teacher": digest(teacher) if teacher else None}


def teacher_path(args, seed: int, epochs: float | None = None) -> Path:
    """Where the dense cell of these settings (of ``epochs``, default the budget's) keeps its fine-tuned weights,
    for ``--distill-dense`` and ``--from-dense``."""
    return WORK / "teachers" / f"{args.model}-e{epochs or args.epochs:g}-lr{args.lr:g}-s{seed}.pt"


def dense_weights(model: str, path: Path) -> torch.nn.Module:
    """The pretrained ``model`` with a dense cell's fine-tuned weights from ``path``."""
    net = pretrained(model)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def adapted_start(args, seed: int) -> torch.nn.Module:
    """``--from-dense E``: the dense cell of E epochs' fine-tuned weights (same seed and lr), a model that already
    fits the JPEG data."""
    path = teacher_path(args, seed, args.from_dense)
    if not path.exists():
        sys.exit(f"--from-dense {args.from_dense:g}: no weights at {path}; run the dense cell first: "
                 f"cifar10.py run --model {args.model} --epochs {args.from_dense:g} --methods dense --seeds {seed}")
    return dense_weights(args.model, path)


def dense_teacher(args, seed: int) -> torch.nn.Module:
    """The dense cell's fine-tuned model for ``seed``: its kept weights, or the dense cell run now (its record
    written too, unless one exists), leaving the caller's random state as it was."""
    path = teacher_path(args, seed)
    if not path.exists():
        outer = torch.get_rng_state()
        cell = cell_path(args.model, "dense", None, seed, args.epochs)
        record = run_cell(args, "dense", None, seed, WORK / cell.stem)
        if not cell.exists():
            write_json(cell, record)
        shutil.rmtree(WORK / cell.stem, ignore_errors=True)
        torch.set_rng_state(outer)
    return dense_weights(args.model, path)


def sparse_ranker(args, method: str) -> SparseLearning | None:
    """``depgraph_sl`` / ``greg`` with this run's phase length and strengths (torch-pruning's defaults where
    none is given); None for other methods."""
    if method not in SPARSE:
        return None
    base = SPARSE[method]
    return dataclasses.replace(base, epochs=args.sl_epochs, reg=base.reg if args.reg is None else args.reg,
                               delta_reg=base.delta_reg if args.delta_reg is None else args.delta_reg)


def run_cell(args, method: str, budget: float | None, seed: int, work: Path) -> dict:
    """One cell; it checkpoints into ``work`` every epoch and continues from there if it was interrupted."""
    device = pick_device(args.device)
    sparse = sparse_ranker(args, method)
    torch.manual_seed(seed)
    train, val, test = cifar10_loaders(SHARED / "data" / "cifar10-jpeg", args.batch_size, device, val_size=5000,
                                       seed=seed)
    start = 0.0 if method == "dense" else args.from_dense  # epochs of the dense cell a pruned method starts from
    net = adapted_start(args, seed) if start else pretrained(args.model)
    example = torch.randn(1, 3, 32, 32)
    t0 = time.perf_counter()
    if method == "dense":
        net.to(device)
        ckpt = Checkpoints(work, {"method": "dense", "epochs": args.epochs, "lr": args.lr, "seed": seed}, resume=True)
        fit(net, train, steps_for(args.epochs, train), device,
            OptimizerConfig(lr=args.lr, weight_decay=OPTIMIZERS["sgd"][1]), desc="dense",
            checkpoint=ckpt.saver("finetune"), resume=ckpt.load("finetune"))
        resumed = ckpt.resumed[-1] if ckpt.resumed else None
        with atomic_path(teacher_path(args, seed)) as tmp:  # the teacher of --distill-dense
            torch.save(net.state_dict(), tmp)
        with tempfile.TemporaryDirectory() as tmp:
            path = export.export_onnx(net, example, Path(tmp) / "dense.onnx")
            entry = bench.profile(net, path, example, batch_sizes=(1, 64), runs=args.latency_runs)
        stages = {"finetuned": evaluate(net, val, device)}
        kept = gate_run = None
        achieved = {"macs": 1.0, "params": 1.0}
        timings = {"finetune": time.perf_counter() - t0}
    else:
        teacher = dense_teacher(args, seed) if args.distill_dense else args.distill
        gate_epochs = args.gate_epochs if gated(method) else 0.0
        criterion = ranker(sparse or ("ib" if method == "ib_per_cost" else method))
        target = budget
        if args.widths_from:
            keep = donor_widths(args, budget, seed)
            _, groups = find_groups(net, example)
            criterion = Allocated(criterion, keep)
            target = allocation_cost(CostModel(net, example, groups, args.metric), groups, keep)
        result = ibprune.compress(net, train, val, example_input=example, **{args.metric: target},
                                  criterion=criterion,
                                  rank_per_cost=method == "ib_per_cost", adapt_epochs=args.adapt,
                                  gate_epochs=gate_epochs,  # sparse learning's epochs come from the fine-tune too
                                  finetune_epochs=args.epochs - args.adapt - gate_epochs
                                  - (sparse.epochs if sparse else 0.0), lr=args.lr,
                                  gate_lr=args.gate_lr, beta=args.beta, device=device, seed=seed, bench_batch=64,
                                  latency_runs=args.latency_runs, round_to=args.round_to, distill=teacher,
                                  out_dir=work, resume=True)
        net, rep = result.model, result.report
        resumed = rep["resumed_from"]
        entry, stages, achieved, timings = rep["compressed"], rep["accuracy"], rep["achieved"], rep["timings_s"]
        kept = {k: v["kept"] for k, v in rep["pruned_channels"].items()}
        if args.widths_from and kept != keep:
            raise RuntimeError(f"the allocation was not kept: {kept} instead of {keep}")
        gate_run = {k: rep["gates"][k] for k in ("steps", "steps_planned", "beta_explore", "beta_final")}
    return {
        "model": args.model, "method": label(method, args), "seed": seed, "budget_metric": args.metric,
        "budget_macs": budget if args.metric == "macs" else None,
        "budget_params": budget if args.metric == "params" else None,
        "epochs": args.epochs,
        "gate_epochs": args.gate_epochs if gated(method) else 0.0, "beta": args.beta, "lr": args.lr,
        "sparse_learning": sparse.settings() if sparse else None,
        "weights_sha256": weights_sha256(args, method, seed),
        "adapt_epochs": 0.0 if method == "dense" else args.adapt,
        "start": f"dense-e{start:g}" if start else "pretrained",
        "distill": False if method == "dense" else "dense" if args.distill_dense else args.distill,
        "round_to": args.round_to,
        "gate_run": gate_run, "test_accuracy": evaluate(net, test, device), "val_accuracy_by_stage": stages,
        "test_halves_accuracy": {h: evaluate(net, part, device) for h, part in test_halves(test).items()},
        "achieved": achieved, "kept_channels": kept, "macs": entry["macs"], "params": entry["params"],
        "latency_ms": entry["latency_ms"], "timings_s": timings,
        "wall_s": time.perf_counter() - t0, "resumed_from": resumed,  # then the times cover the last sitting only
        "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                        "machine": platform.machine(), "python": platform.python_version()},
    }


def test_halves(test: TensorLoader) -> dict[str, TensorLoader]:
    """The test set in two fixed halves of 5,000 images (one permutation, seed 0, whatever the cell's seed).

    The 5,000-image validation split is held out of the JPEG training set, but the pretrained checkpoints were
    trained on all 50,000 training images (lossless): the dense ResNet-20 scores about 86.5 % there against 81 %
    on the test set, so that split rewards whatever keeps the pretrained function (``cifar10_findings.md``).
    Half ``a`` is data no model here has seen, to choose settings on; half ``b`` is then the test set to report.
    """
    order = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0)).to(test.labels.device)
    half = len(order) // 2
    return {h: TensorLoader(test.images[idx], test.labels[idx], test.batch_size, False, test.device)
            for h, idx in (("a", order[:half]), ("b", order[half:]))}


def donor_widths(args, budget: float, seed: int) -> dict[str, int]:
    """The widths per group that the cell of method ``--widths-from`` kept at this model, epochs, budget, seed."""
    path = cell_path(args.model, args.widths_from, budget, seed, args.epochs, args.metric)
    if not path.exists():
        sys.exit(f"--widths-from {args.widths_from}: no cell {path.name} to take the widths from; run it first")
    return json.loads(path.read_text())["kept_channels"]


def cmd_run(args) -> None:
    if not (SHARED / "data" / "cifar10-jpeg").is_dir():
        sys.exit(f"no CIFAR-10 data at {SHARED / 'data' / 'cifar10-jpeg'}")
    cells = []  # seed by seed, so that a partial grid already compares every method on the first seeds
    for s in args.seeds:
        cells += [("dense", None, s)] if "dense" in args.methods else []
        cells += [(m, b, s) for b in args.budgets for m in args.methods if m != "dense"]
    todo = []
    for method, budget, seed in cells:
        path = cell_path(args.model, label(method, args), budget, seed, args.epochs, args.metric)
        if path.exists():
            print(f"[skip] {path.name}")
        else:
            todo.append((method, budget, seed, path))
    if args.jobs > 1:
        return _run_parallel(args, todo)
    for method, budget, seed, path in todo:
        print(f"[run ] {path.name}", flush=True)
        write_json(path, run_cell(args, method, budget, seed, WORK / path.stem))
        shutil.rmtree(WORK / path.stem, ignore_errors=True)
        print(f"[done] {path.name}", flush=True)


def _run_parallel(args, todo: list[tuple]) -> None:
    """Each cell in its own process, ``args.jobs`` at a time (a GPU machine's cores share one card); each
    process's output goes to ``cifar10/logs/<cell>.log``. The data is decoded once, before the first start."""
    load_cifar10(SHARED / "data" / "cifar10-jpeg")
    logs = CELLS.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, bench.default_threads() // args.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    skip = {"methods", "budgets", "seeds", "jobs", "command"}
    common = []
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key in skip or value is None or value is False:
            continue
        common += [flag] if value is True else [flag, str(value)]

    def one(cell: tuple) -> str:
        method, budget, seed, path = cell
        argv = [sys.executable, __file__, "run", *common, "--methods", method, "--seeds", str(seed)]
        argv += ["--budgets", str(budget)] if budget is not None else []
        with open(logs / f"{path.stem}.log", "w") as log:
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        status = "done" if code == 0 and path.exists() else f"FAILED (exit {code}, see {log.name})"
        print(f"[{status}] {path.name}", flush=True)
        return status

    print(f"[run ] {len(todo)} cells, {args.jobs} at a time, {threads} thread(s) each", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        failed = [s for s in pool.map(one, todo) if s != "done"]
    if failed:
        sys.exit(f"{len(failed)} of {len(todo)} cells failed")


def rebuild(cell: dict, groups: dict[str, int], example: torch.Tensor) -> torch.nn.Module:
    """A cell's architecture: the pretrained model cut to the widths the cell kept (which channels does not
    matter for speed). ``groups``: each group's full width."""
    net = pretrained(cell["model"])
    kept = cell.get("kept_channels") or {}
    removed = {n: list(range(k, groups[n])) for n, k in kept.items() if k < groups[n]}
    return remove_channels(net, example, removed).eval()


def _matching(patterns: list[str]) -> list[Path]:
    """The cells whose names match any of the globs ``patterns``."""
    return sorted({p for pattern in patterns for p in CELLS.glob(f"{pattern}.json")})


def _full_widths(models: set[str], example: torch.Tensor) -> dict[str, dict[str, int]]:
    """Each model's channel groups and their full widths (what ``rebuild`` cuts from)."""
    return {m: {g.name: g.size for g in find_groups(pretrained(m), example)[1]} for m in models}


def _time_interleaved(sessions: dict, example: torch.Tensor, batches: tuple[int, ...], args) -> dict:
    """Each session's p50 and p90 (ms) at each batch size, the median over ``args.rounds`` rounds that each time
    every session once (``args.runs`` runs), so the machine's drift over the sitting falls on all of them alike."""
    times: dict = {key: [] for key in sessions}
    for r in range(args.rounds):
        for key, sess in sessions.items():
            times[key].append({b: bench.time_runs(sess, example, b, runs=args.runs) for b in batches})
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    return {key: {b: {q: float(np.median([t[b][q] for t in ts])) for q in ("p50", "p90")} for b in batches}
            for key, ts in times.items()}


def _quiet_entry(measured: dict, stem: str, cell: dict) -> dict | None:
    """The quiet-machine latency measured for this run of the cell; None when there is none or it was measured
    for an earlier run of the cell (entries record the MACs of the run they measured)."""
    entry = measured.get(stem)
    return entry if entry and entry.get("macs") == cell["macs"] else None


def _architecture(cell: dict) -> tuple:
    """What latency depends on: the model and the widths kept (the dense model keeps them all)."""
    return cell["model"], tuple(sorted((cell.get("kept_channels") or {}).items()))


def cmd_latency(args) -> None:
    """onnxruntime CPU latency of every cell's architecture, measured on a quiet machine in one sitting.

    Each distinct architecture is exported once and timed ``--rounds`` times, the rounds interleaved across
    architectures (all of them timed once, then all again), and each figure is the median over rounds: this
    machine's speed drifts by 5-20 % between sittings (one ResNet-56 network timed 65.5 ms in one sitting and
    53.7 ms in another), so only networks timed side by side compare. ``--cells`` picks cells by globs on their
    names; ``--fresh`` re-times those already measured. A sitting is written when it ends (its figures only
    compare with each other)."""
    measured = json.loads(LATENCY.read_text())["cells"] if LATENCY.exists() else {}
    example = torch.randn(1, 3, 32, 32)
    todo: dict[tuple, list[tuple[str, dict]]] = {}
    for path in _matching(args.cells):
        cell = json.loads(path.read_text())
        if (not args.fresh and _quiet_entry(measured, path.stem, cell)) or (
                cell.get("kept_channels") is None and cell["method"] != "dense"):
            continue
        todo.setdefault(_architecture(cell), []).append((path.stem, cell))
    if not todo:
        sys.exit(f"no cell matching {' '.join(args.cells)} needs timing (--fresh re-times measured ones)")
    widths = _full_widths({a[0] for a in todo}, example)
    batches = (1, 64)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for i, (arch, cells) in enumerate(todo.items()):
            net = rebuild(cells[0][1], widths[arch[0]], example)
            sessions[arch] = export.session(export.export_onnx(net, example, Path(tmp) / f"{i}.onnx"), args.threads)
        print(f"{len(sessions)} architectures ({sum(map(len, todo.values()))} cells), {args.rounds} rounds",
              flush=True)
        timed = _time_interleaved(sessions, example, batches, args)
    sitting = time.strftime("%Y-%m-%dT%H:%M")
    for arch, cells in todo.items():
        lat = {f"batch_{b}": timed[arch][b] for b in batches}
        for stem, cell in cells:
            measured[stem] = dict(lat, threads=args.threads, macs=cell["macs"], rounds=args.rounds, sitting=sitting)
        print(f"{cells[0][0]} (+{len(cells) - 1} alike): {lat['batch_1']['p50']:.3f} / "
              f"{lat['batch_64']['p50']:.2f} ms", flush=True)
    write_json(LATENCY, {"cells": measured, "runs": args.runs, "machine": platform.machine(),
                         "onnxruntime": onnxruntime.__version__})


def cmd_layout(args) -> None:
    """Why pruned networks gain little at batch 1 on a CPU: onnxruntime's full optimisation runs convolutions in a
    channel-blocked layout (16 channels with AVX-512, 8 with AVX2) wherever the widths allow, and converts layouts
    (``ReorderOutput``) around the convs whose widths do not. For the dense model, each ``--cells`` architecture
    and the same with every width rounded up to 16: the layout conversions in the optimised graph, and the p50
    latency at batch 1 and 64 with the full optimisation and without the blocked layout (``ORT_ENABLE_EXTENDED``),
    all timed side by side in ``--rounds`` interleaved rounds."""
    import onnx

    example = torch.randn(1, 3, 32, 32)
    archs: dict[str, dict] = {}
    for path in _matching(args.cells):
        cell = json.loads(path.read_text())
        archs.setdefault(f"{cell['model']}-dense", {"model": cell["model"], "kept_channels": None})
        if cell.get("kept_channels"):
            archs[path.stem] = cell
    if not archs:
        sys.exit(f"no cell matching {' '.join(args.cells)}")
    widths = _full_widths({c["model"] for c in archs.values()}, example)
    for name, cell in [(n, c) for n, c in archs.items() if c["kept_channels"]]:
        full = widths[cell["model"]]
        archs[f"{name} (widths up to 16)"] = dict(cell, kept_channels={
            g: min(full[g], -(-k // 16) * 16) for g, k in cell["kept_channels"].items()})
    levels = {"all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cell) in enumerate(archs.items()):
            net = rebuild(cell, widths[cell["model"]], example)
            path = export.export_onnx(net, example, Path(tmp) / f"{i}.onnx")
            rows[name] = {"macs": count(net, example)[0]}
            for level, value in levels.items():
                optimized = Path(tmp) / f"{i}-{level}.opt.onnx"
                sessions[name, level] = export.session(path, args.threads, level=value, optimized_path=optimized)
                graph = onnx.load(optimized).graph
                rows[name][f"reorders_{level}"] = sum(n.op_type == "ReorderOutput" for n in graph.node)
        timed = _time_interleaved(sessions, example, (1, 64), args)
    for (name, level), by_batch in timed.items():
        for b, q in by_batch.items():
            rows[name][f"p50_ms_b{b}_{level}"] = q["p50"]
    env = {"threads": args.threads, "rounds": args.rounds, "runs": args.runs, "machine": platform.machine(),
           "onnxruntime": onnxruntime.__version__, "sitting": time.strftime("%Y-%m-%dT%H:%M")}
    write_json(LAYOUT.with_suffix(".json"), {"rows": rows, "environment": env})
    md = ["# Batch-1 latency and onnxruntime's blocked layout", "",
          f"onnxruntime {env['onnxruntime']} on the CPU ({env['machine']}), {args.threads} threads, p50 of "
          f"{args.runs} runs, median of {args.rounds} interleaved rounds, {env['sitting']}. `reorders`: layout "
          "conversions (`ReorderOutput`) in the fully optimised graph; `all`: full optimisation (blocked layout "
          "where the widths allow); `extended`: without the blocked layout. Architectures: the cells' kept widths "
          "(`cifar10/cells`), and the same rounded up to multiples of 16.", "",
          "| architecture | MACs (M) | reorders | b1 all (ms) | b1 extended (ms) | b64 all (ms) | b64 extended (ms) |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {n} | {r['macs'] / 1e6:.1f} | {r['reorders_all']} | {r['p50_ms_b1_all']:.3f} | "
           f"{r['p50_ms_b1_extended']:.3f} | {r['p50_ms_b64_all']:.2f} | {r['p50_ms_b64_extended']:.2f} |"
           for n, r in rows.items()]
    md += ["", f"Reproduce: `python benchmarks/cifar10.py layout --cells {' '.join(args.cells)}` on a quiet machine.",
           ""]
    write_text(LAYOUT.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


def cmd_aggregate(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [dict(json.loads(p.read_text()), cell=p.stem) for p in sorted(CELLS.glob("*.json"))]
    if not cells:
        sys.exit("no cells yet: run `python benchmarks/cifar10.py run` first")
    quiet = json.loads(LATENCY.read_text())["cells"] if LATENCY.exists() else {}
    quiet = {c["cell"]: e for c in cells if (e := _quiet_entry(quiet, c["cell"], c))}
    rows: dict[tuple, list[dict]] = {}
    for c in cells:
        params = c.get("budget_metric") == "params"  # a params budget: its own rows, method@params
        rows.setdefault((c["model"], c["epochs"], c["method"] + ("@params" if params else ""),
                         c["budget_params"] if params else c["budget_macs"]), []).append(c)
    table = []
    for (model, epochs, method, budget), cs in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                     -(kv[0][3] or 1), kv[0][2])):
        acc = torch.tensor([c["test_accuracy"] for c in cs]) * 100
        table.append({
            "model": model, "epochs": epochs, "method": method, "budget_macs": budget, **_spread(acc),
            "test_accuracies": [float(a) for a in acc],
            "macs_fraction": sum(c["achieved"]["macs"] for c in cs) / len(cs),
            "params_fraction": sum(c["achieved"]["params"] for c in cs) / len(cs),
            "pruned_val_accuracy": _mean([c["val_accuracy_by_stage"].get("pruned") for c in cs]),
            "val_accuracy": _mean([c["val_accuracy_by_stage"].get("finetuned") for c in cs]),
            "val_accuracy_by_seed": {str(c["seed"]): c["val_accuracy_by_stage"].get("finetuned") for c in cs},
            "test_accuracy_by_seed": {str(c["seed"]): float(a) for c, a in zip(cs, acc, strict=True)},
            # cells from before the gentler explore and the early end of the squeeze record no gate_run
            "earlier_gate_phase": method.startswith("ib") and any("gate_run" not in c for c in cs),
            "latency_b1_p50_ms": _mean([quiet.get(c["cell"], c["latency_ms"])["batch_1"]["p50"] for c in cs]),
            "latency_b64_p50_ms": _mean([quiet.get(c["cell"], c["latency_ms"])["batch_64"]["p50"] for c in cs]),
            "latency_quiet": all(c["cell"] in quiet for c in cs),
            "gate_epochs": cs[0]["gate_epochs"], "wall_s": _mean([c["wall_s"] for c in cs]),
            # epochs of the dense cell the run started from (``--from-dense``); they count in its total budget
            "start_epochs": _start_epochs(cs[0]),
            "environments": sorted({_environment(c) for c in cs}),
            "weights_sha256": sorted({str((c.get("weights_sha256") or {}).get("start")) for c in cs}),
        })
    env = cells[0]["environment"]
    write_json(RESULTS / "cifar10.json", {"rows": table, "published": [
        {"method": m, "model": mo, "base": b, "pruned": p, "speedup": s} for m, mo, b, p, s in PUBLISHED],
        "environment": env})
    quiet_threads = ", ".join(sorted({str(v["threads"]) for v in quiet.values()})) or "—"
    where: dict[str, set] = {}  # each environment and the model/epoch rows it measured
    for c in cells:
        e = c["environment"]
        text = f"{e.get('gpu') or e['device']} ({e['machine']}), torch {e['torch']}, {e['threads']} torch thread(s)"
        where.setdefault(text, set()).add((c["model"], c["epochs"]))
    devices = [f"{text} ({'; '.join(f'{m} {ep:g} ep' for m, ep in sorted(rows))})"
               for text, rows in sorted(where.items())]
    headline = _headline(table)  # the side-by-side rows, for the table and the plot
    md = ["# CIFAR-10 (JPEG) criteria benchmark", "",
          f"Measured on {'; '.join(devices)}. Accuracy: top-1 on the "
          "10,000 JPEG test images. What the rows mean, protocol by protocol: `benchmarks/cifar10_findings.md`.",
          "", *_comparison(*headline), "", *_params_budget(table), "", *_schedules(table), "", *_allocations(table), "",
          *_tuning(table), "",
          "## Every run, ablations included", "",
          "Mean ± std over seeds. Every method sees the same "
          "data, augmentation and total epochs; `ib` spends part of them on the gate phase. `pruned (val)`: "
          "accuracy right after pruning, before fine-tuning, on the 5,000 held-out training images (the pretrained "
          "checkpoint was trained on their lossless versions, so validation accuracies run higher than test "
          "ones). Latency: onnxruntime CPU p50 of the cell's architecture, measured one cell at a time on a quiet "
          f"machine with {quiet_threads} threads by `cifar10.py latency`; a `*` marks rows measured inside their "
          f"runs while other runs shared the 2 cores (indicative only). {EARLIER}", "",
          "| model | epochs | method | budget (of the MACs; @params: of the params) | MACs kept | params kept | "
          "test acc (%) | seeds "
          "| pruned (val, %) | final (val, %) | ORT p50 b1 / b64 (ms) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        pv, fv = ("—" if v is None else f"{100 * v:.1f}" for v in (r["pruned_val_accuracy"], r["val_accuracy"]))
        epochs = _epochs_text(r["start_epochs"] + r["epochs"], r["start_epochs"])
        md.append(f"| {r['model']} | {epochs} | {r['method']}{' †' if r['earlier_gate_phase'] else ''} | "
                  f"{'—' if r['budget_macs'] is None else r['budget_macs']} | {r['macs_fraction']:.3f} | "
                  f"{r['params_fraction']:.3f} | {_mean_text(r)} | "
                  f"{r['seeds']} | {pv} | {fv} | {r['latency_b1_p50_ms']:.3f} / {r['latency_b64_p50_ms']:.2f}"
                  f"{'' if r['latency_quiet'] else ' *'} |")
    md += ["", "Published results (lossless CIFAR-10, 100+ fine-tune epochs on a GPU; quoted from the papers, "
           "**not measured here** and not comparable with JPEG numbers):", "",
           "| method | model | base acc | pruned acc | MACs reduction |", "| --- | --- | --- | --- | --- |",
           *(f"| {m} | {mo} | {b} | {p} | {s}x |" for m, mo, b, p, s in PUBLISHED), "",
           "Reproduce: `python benchmarks/cifar10.py run --model resnet20 --epochs 3 --budgets 0.5 0.4 "
           "--seeds 0 1` (`--round-to 4` for the ×4 rows; ResNet-56: `run --model resnet56 --round-to 4 --methods "
           "ib l1 taylor --seeds 0 1`; the `from dense 10 ep` rows: `run --model resnet56 --round-to 4 --epochs 10 "
           "--from-dense 10 --distill --methods ib l1 taylor bn random --seeds 0 1 2` after the dense cells of 10 "
           "and 20 epochs), then `python benchmarks/cifar10.py latency` on a quiet machine and "
           "`python benchmarks/cifar10.py aggregate`. The script's docstring lists every command.", ""]
    write_text(RESULTS / "cifar10.md", "\n".join(md))
    _plot(plt, *headline)
    print("\n".join(md))


EARLIER = ("†: IB's earlier gate phase (explore at 0.3 of the gradient-balance beta, a squeeze of fixed length), "
           "not yet re-run with the current one.")


def _headline(table: list[dict]) -> tuple[dict[tuple, dict[str, dict]], dict[tuple, dict]]:
    """The rows compared side by side, keyed by (model, total epochs, protocol, budget, start epochs): each
    criterion's row (IB's default gate phase; distillation only after adapting); and the dense rows by (model,
    epochs)."""
    grid: dict[tuple, dict[str, dict]] = {}
    dense = {(r["model"], r["epochs"]): r for r in table if r["method"] == "dense"}
    for r in table:  # IB's row may have a shorter gate phase (1-epoch budgets); a plain one wins if both exist
        m = re.fullmatch(rf"({'|'.join(BASE)})(_g[\d.]+)?(_kd)?(_r4)?(_a[\d.]+)?(_fd[\d.]+)?", r["method"])
        if m and (m[1] == "ib" or not m[2]) and bool(m[3]) == bool(m[5] or m[6]):  # distil only from adapted
            protocol = f"×{4 if m[4] else 8}" + (f", adapt {m[5][2:]} ep + distill" if m[5] else "")
            start = r["start_epochs"]
            protocol += f", from dense {start:g} ep + distill" if start else ""
            row = grid.setdefault((r["model"], start + r["epochs"], protocol, r["budget_macs"], start), {})
            if m[1] not in row or not m[2]:
                row[m[1]] = r
    _chosen(table, grid)
    return grid, dense


def _epochs_text(total: float, start: float) -> str:
    """A headline row's epochs: ``E + n`` for a run started from the dense model of E epochs."""
    return f"{start:g} + {total - start:g}" if start else f"{total:g}"


def _plot(plt, grid: dict, dense: dict) -> None:
    """``cifar10.png``: accuracy against MACs kept, one panel per model, total epochs and protocol of the
    headline table: every criterion, and the dense model fine-tuned as many epochs."""
    panels: dict[tuple, dict[str, list[dict]]] = {}
    for (model, total, protocol, _, start), row in sorted(grid.items()):
        panel = panels.setdefault((model, total, protocol, start), {})
        for method, r in row.items():
            panel.setdefault(method, []).append(r)
    cols, rows = 4, -(-len(panels) // 4)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.6, 3.6 * rows), squeeze=False)
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate((*BASE, "dense"))}
    for ax, ((model, total, protocol, start), panel) in zip(axes.flat, panels.items()):
        if (model, total) in dense:
            panel = {**panel, "dense": [dense[model, total]]}
        for method, pts in panel.items():
            ax.errorbar([r["macs_fraction"] for r in pts], [r["test_accuracy_mean"] for r in pts],
                        yerr=[r["test_accuracy_std"] for r in pts], fmt="*" if method == "dense" else "o",
                        ms=10 if method == "dense" else 6, capsize=3, color=colours[method], label=method)
        ax.set_title(f"{model}, {_epochs_text(total, start)} ep, {protocol}", fontsize=9)
        ax.set_xlim(0.3, 1.05)
        ax.set_xlabel("MACs kept (fraction of the original)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%), JPEG", fontsize=8)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=9)
    fig.suptitle("Accuracy against MACs kept: the criteria side by side (same data, seeds and epochs per panel)")
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (4.2 * cols + 1.6), 1))
    write_figure(RESULTS / "cifar10.png", fig)


def _comparison(grid: dict, dense: dict) -> list[str]:
    """The headline table: per model, total epochs, protocol and budget, each criterion's test accuracy side by
    side, the dense model fine-tuned as many epochs, and IB's margin."""
    out = ["## Criteria side by side", "",
           "Test accuracy (%), mean ± std (seeds). Same data, seeds, augmentation and total epochs per row; widths "
           "kept a multiple of 4 or 8 for every method of the row; `adapt 1 ep + distill`: the budget's first epoch "
           "fine-tunes the dense model, which is then pruned and distilled from (`compress(adapt_epochs=1, "
           "distill=True)`); `from dense E ep + distill`: every method starts from the dense model fine-tuned E "
           "epochs (a model that already fits the data) and distils from it; its epochs count `E + ` the methods' "
           "own, and the dense column is the dense model fine-tuned as many epochs in all; `settings chosen on "
           "validation`: each method at its best try on the validation split (its suffix after the accuracy; "
           "widths, phase lengths, strengths and learning rate as the table `Settings tried on validation` "
           "below chose them, at 0.5 MACs, and kept at 0.4). "
           "**Bold**: the best pruned model of the row. "
           "`ib − best`: IB's mean minus the best other criterion's, ± its standard error (from the two rows' "
           f"seed spreads, where both have 2+ seeds). {EARLIER} ‡: the row's cells ran in more than one "
           "environment (device, torch, precision) or started from different weights (cells record the sha256 of "
           "the weights they start from and distil from; those run before 2026-12-02 do not).", "",
           "| model | epochs | widths, protocol | MACs budget | " + " | ".join(BASE) + " | dense | ib − best |",
           "| --- | --- | --- | --- | " + " | ".join("---" for _ in BASE) + " | --- | --- |"]
    for (model, total, protocol, budget, start), row in sorted(grid.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                              kv[0][2], -kv[0][3])):
        best = max(row.values(), key=lambda r: r["test_accuracy_mean"])
        cells = []
        for m in BASE:
            if m not in row:
                cells.append("—")
                continue
            r = row[m]
            text = f"{_mean_text(r)} ({r['seeds']})"
            if protocol == CHOSEN:  # the try's settings, as the tuning table names them
                text += f", `{r['method'].removeprefix(m)}`" if r["method"] != m else ""
            elif "_g" in r["method"]:
                text += f", gates {r['gate_epochs']:g} ep"
            text += " †" if r["earlier_gate_phase"] else ""
            cells.append(f"**{text}**" if r is best and len(row) > 1 else text)
        d = dense.get((model, total))  # fine-tuned as many epochs in all
        others = [r for m, r in row.items() if m != "ib"]
        margin = _margin(row["ib"], max(others, key=lambda r: r["test_accuracy_mean"])) if "ib" in row and others \
            else "—"
        out.append(f"| {model} | {_epochs_text(total, start)} | {protocol}{_mixed(row)} | {budget} | "
                   + " | ".join(cells) + " | "
                   + (f"{d['test_accuracy_mean']:.2f} ({d['seeds']})" if d else "—") + f" | {margin} |")
    return out


def _by_widths(table: list[dict], pattern: str) -> dict[tuple, dict[str, dict]]:
    """The rows whose method fully matches ``pattern`` (group 1: the column's name, group 2: ``_r4`` or none), by
    (model, epochs, widths, budget), then column."""
    rows: dict[tuple, dict[str, dict]] = {}
    for r in table:
        if m := re.fullmatch(pattern, r["method"]):
            rows.setdefault((r["model"], r["epochs"], f"×{4 if m[2] else 8}", r["budget_macs"]), {})[m[1]] = r
    return rows


def _row_lines(rows: dict[tuple, dict[str, dict]], columns: list[str], cell) -> list[str]:
    """One table line per (model, epochs, widths, budget), largest budget first; ``cell(r)`` fills a column."""
    return [f"| {model} | {epochs:g} | {widths} | {budget} | "
            + " | ".join(cell(row[c]) if c in row else "—" for c in columns) + " |"
            for (model, epochs, widths, budget), row in sorted(rows.items(), key=lambda kv: (*kv[0][:3], -kv[0][3]))]


def _params_budget(table: list[dict]) -> list[str]:
    """The other reading of "equal budget": every method at the same fraction of the params (``--metric
    params``), its accuracy and the MACs it kept (at equal MACs, IB keeps more params)."""
    rows = _by_widths(table, rf"({'|'.join(BASE)})(_r4)?@params")
    if not rows:
        return []
    return ["## At equal params", "",
            "Test accuracy (%), mean ± std (seeds), and the fraction of the MACs kept, when the budget is a fraction "
            "of the parameters (`compress(params=...)`); same protocol as the plain rows above.", "",
            "| model | epochs | widths | params budget | " + " | ".join(BASE) + " |",
            "| --- | --- | --- | --- | " + " | ".join("---" for _ in BASE) + " |",
            *_row_lines(rows, list(BASE),
                        lambda r: f"{_mean_text(r)} ({r['seeds']}), MACs {r['macs_fraction']:.2f}")]


def _schedules(table: list[dict]) -> list[str]:
    """How much of IB's lead is its ranking and how much its schedule: each ranking pruned one-shot, under IB's
    squeeze and on torch-pruning's iterative schedule, side by side (rows where such an ablation ran)."""
    kinds = [("ib_oneshot", "ib"), *((c, f"{c}_squeeze", f"{c}_iter") for c in SCHEDULED)]
    names = "|".join(n for kind in kinds for n in kind)
    rows = {k: v for k, v in _by_widths(table, rf"({names})(_r4)?").items() if any(n in v for n in SCHEDULES)}
    if not rows:
        return []
    # a ranking's columns only where one of its other schedules ran
    used = [n for kind in kinds if any(name in row for row in rows.values() for name in kind if name in SCHEDULES)
            for n in kind]
    for row in rows.values():  # every column on the seeds the row's schedule ablations ran
        seeds = sorted({s for n in SCHEDULES if n in row for s in row[n]["test_accuracy_by_seed"]})
        for n in row:
            row[n] = {**row[n], **_on_seeds(row[n], seeds)}
    return ["## The ranking or the schedule?", "",
            "Test accuracy (%), mean ± std over the seeds the row's ablations ran (every column on those seeds), "
            "plain protocol. One-shot: the channels are cut at once (IB "
            "after its explore half; the criteria on the dense model); `_squeeze`: IB's schedule, the channels the "
            "ranking removes shut by gates over the gate phase while the weights train, then cut; `_iter`: "
            "torch-pruning's iterative schedule over the gate phase (5 rounds, linear, re-scored each round). Same "
            "total epochs per row.", "",
            "| model | epochs | widths | MACs budget | " + " | ".join(used) + " |",
            "| --- | --- | --- | --- | " + " | ".join("---" for _ in used) + " |",
            *_row_lines(rows, used, lambda r: f"{_mean_text(r)} ({r['seeds']})")]


def _allocations(table: list[dict]) -> list[str]:
    """The allocation swap: a method's ranking at another method's widths (``--widths-from``) beside both
    methods at their own, so a lead reads as how many channels each group keeps or as which ones."""
    index = {(r["model"], r["epochs"], r["budget_macs"], r["method"]): r for r in table}
    lines = []
    for r in table:
        if not (m := re.fullmatch(r"(.+)_alloc_(.+)", r["method"])):
            continue
        # a ranking at another's finer widths runs with `--round-to 4`: its own row may be the ×8 one
        own, donor = (index.get((r["model"], r["epochs"], r["budget_macs"], name))
                      or index.get((r["model"], r["epochs"], r["budget_macs"], name.replace("_r4", "")))
                      for name in m.groups())
        text = [f"{_mean_text(_on_seeds(x, r['test_accuracy_by_seed']))} ({len(r['test_accuracy_by_seed'])})"
                if x else "—" for x in (own, r, donor)]
        lines.append(f"| {r['model']} | {r['epochs']:g} | {r['budget_macs']} | {m[1]} | {text[0]} | {m[2]} | "
                     f"{text[1]} | {text[2]} |")
    if not lines:
        return []
    return ["## How many channels, or which ones?", "",
            "Test accuracy (%), mean ± std over the seeds the swap ran (all three columns on those seeds): a "
            "method at its own widths, the same method's ranking at the "
            "widths another method's cell kept (same seed; `--widths-from`: it chooses only which channels "
            "within each group), and that other method at those widths with its own ranking. Where a ranking "
            "gains at the other's widths, the widths (the allocation across groups) carry the lead.", "",
            "| model | epochs | MACs budget | ranking | its own widths | widths of | at those widths | "
            "their own method |", "| --- | --- | --- | --- | --- | --- | --- | --- |", *sorted(lines)]


TUNE = ("resnet20", 3.0, 0.5)  # (model, epochs, MACs budget) of the tries each method's settings are chosen by


def _base(method: str) -> str | None:
    """The column a row's method belongs to: the longest name in ``BASE`` it is or starts with."""
    return max((m for m in BASE if method == m or method.startswith(m + "_")), key=len, default=None)


def _tries(table: list[dict]) -> dict[str, list[dict]]:
    """Every try of each method's settings at ``TUNE`` (the plain protocol: no distillation, adapting or
    ablation) with ``compared``, its validation accuracy after the fine-tune averaged over the seeds every try of
    the method ran (so that a try of three seeds and one of one are read on equal evidence), best first (a tie
    goes to the higher accuracy right after the prune): the number the choice reads, never the test accuracy."""
    tries: dict[str, list[dict]] = {}
    for r in table:
        # a protocol or an ablation is no try of settings; a schedule (IB one-shot, a criterion squeezed or
        # iterated) is a try of its ranking's settings, as the gate phase's length is
        protocol = re.search(r"_(kdd?|a[\d.]+|fd[\d.]+|per_cost|alloc)(_|$)", r["method"])
        tune = (r["model"], r["epochs"], r["budget_macs"]) == TUNE and r["val_accuracy"] is not None
        if tune and not protocol and (base := _base(r["method"])):
            tries.setdefault(base, []).append(r)
    for rs in tries.values():
        common = set.intersection(*(set(r["val_accuracy_by_seed"]) for r in rs))
        for r in rs:
            r["compared"] = _mean([r["val_accuracy_by_seed"][s] for s in common]) if common else r["val_accuracy"]
            r["compared_seeds"] = sorted(common) if common else sorted(r["val_accuracy_by_seed"])
    return {base: sorted(rs, key=lambda r: (-round(r["compared"], 4), -(r["pruned_val_accuracy"] or 0.0)))
            for base, rs in tries.items()}


def _chosen(table: list[dict], grid: dict[tuple, dict[str, dict]]) -> None:
    """Add to ``grid`` the rows of each method at the settings chosen on validation (its best try, widths
    included), at every budget of ``TUNE``'s model and epochs."""
    best = {base: rs[0]["method"] for base, rs in _tries(table).items()}
    for r in table:
        base = _base(r["method"])
        if (r["model"], r["epochs"]) == TUNE[:2] and base and best.get(base) == r["method"]:
            grid.setdefault((r["model"], r["epochs"], CHOSEN, r["budget_macs"], 0.0), {})[base] = r


CHOSEN = "settings chosen on validation"  # the headline protocol of each method at its best try's settings


def _tuning(table: list[dict]) -> list[str]:
    """The table of every try at ``TUNE``, each method's best (its chosen settings) first."""
    tries = _tries(table)
    out = [f"## Settings tried on validation ({TUNE[0]}, {TUNE[1]:g} epochs, {TUNE[2]} MACs)", "",
           "Each method's tries, best validation accuracy (5,000 held-out training images, after the fine-tune) "
           "first, in **bold**: the mean over the seeds every try of the method ran (`compared on`), so that tries "
           "are read on equal evidence; a tie goes to the higher accuracy right after the prune. The best try "
           "gives the settings of the method's `settings chosen on validation` rows above. Suffixes: `_reg` / "
           "`_dr` regularisation strength / growth, `_sl` sparse-learning epochs, `_lr` learning rate, `_r4` "
           "widths of 4, `_g` gate epochs, `_b` explore beta. The validation split flatters whatever keeps the "
           "pretrained function (`cifar10_findings.md`). Test accuracy is shown but never chosen by.", "",
           "| method | try | final (val, %) | compared on seeds | final (val, %), all its seeds | pruned (val, %) "
           "| test (%) | seeds |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for base in BASE:
        for i, r in enumerate(tries.get(base, [])):
            pv = "—" if r["pruned_val_accuracy"] is None else f"{100 * r['pruned_val_accuracy']:.1f}"
            val = f"{100 * r['compared']:.2f}"
            out.append(f"| {base if i == 0 else ''} | {r['method']} | {f'**{val}**' if i == 0 else val} | "
                       f"{' '.join(r['compared_seeds'])} | {100 * r['val_accuracy']:.2f} | {pv} | "
                       f"{r['test_accuracy_mean']:.2f} | {r['seeds']} |")
    return out


def _environment(cell: dict) -> str:
    """Where a cell ran: device kind, torch version and precision (bf16 autocast on CUDA, fp32 on the CPU)."""
    e = cell["environment"]
    return f"{e.get('gpu') or e['device']}, torch {e['torch']}, {'bf16' if e.get('gpu') else 'fp32'}"


def _mixed(row: dict[str, dict]) -> str:
    """' ‡' when a headline row's cells ran in more than one environment or from different start weights (of
    those that record them)."""
    envs = {e for r in row.values() for e in r["environments"]}
    starts = {h for r in row.values() for h in r["weights_sha256"]} - {"None"}
    return " ‡" if len(envs) > 1 or len(starts) > 1 else ""


def _on_seeds(r: dict, seeds) -> dict:
    """``r``'s test accuracy over ``seeds`` only (those of a row it is compared with), as ``_mean_text`` reads it."""
    return _spread(torch.tensor([r["test_accuracy_by_seed"][s] for s in seeds if s in r["test_accuracy_by_seed"]]))


def _spread(acc: torch.Tensor) -> dict:
    """Seeds, mean and spread (std over seeds; 0 for one seed) of test accuracies in %."""
    return {"seeds": len(acc), "test_accuracy_mean": float(acc.mean()),
            "test_accuracy_std": float(acc.std()) if len(acc) > 1 else 0.0}


def _mean_text(r: dict) -> str:
    """Mean test accuracy, ± the spread over seeds when there are 2+ (one seed has no spread to show)."""
    text = f"{r['test_accuracy_mean']:.2f}"
    return text if r["seeds"] < 2 else f"{text} ± {r['test_accuracy_std']:.2f}"


def _margin(ib: dict, best: dict) -> str:
    """IB's mean minus ``best``'s, with the difference's standard error when both rows have 2+ seeds."""
    text = f"{ib['test_accuracy_mean'] - best['test_accuracy_mean']:+.2f}"
    if min(ib["seeds"], best["seeds"]) < 2:
        return text
    se = (ib["test_accuracy_std"] ** 2 / ib["seeds"] + best["test_accuracy_std"] ** 2 / best["seeds"]) ** 0.5
    return f"{text} ± {se:.2f}"


def _start_epochs(cell: dict) -> float:
    """Epochs of the dense cell a cell started from (``--from-dense``; 0 from the checkpoint)."""
    start = cell.get("start", "pretrained")
    return 0.0 if start == "pretrained" else float(start.removeprefix("dense-e"))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the cells that have no result yet")
    r.add_argument("--model", choices=sorted(CHECKPOINTS), default="resnet20")
    r.add_argument("--methods", nargs="+", choices=METHODS, default=[*BASE, "dense"])
    r.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.4])
    r.add_argument("--metric", choices=("macs", "params"), default="macs",
                   help="what the budgets are fractions of (params: rows suffixed @params in the tables)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    r.add_argument("--epochs", type=float, default=3.0, help="total epoch budget of every method")
    r.add_argument("--gate-epochs", type=float, default=1.0, help="of those, the gate phase of `ib`")
    r.add_argument("--lr", type=float, default=0.02)
    r.add_argument("--gate-lr", type=float, default=0.02)
    r.add_argument("--sl-epochs", type=float, default=1.0,
                   help="of the epochs, the sparse-learning phase of depgraph_sl and greg (as ib's gate phase)")
    r.add_argument("--reg", type=float, help="their regularisation strength (default: torch-pruning's scripts')")
    r.add_argument("--delta-reg", type=float, help="greg: the growth of its penalty at each of its 10 growths")
    r.add_argument("--beta", type=float, help="fixed explore beta for ib (default: calibrated)")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--distill", action="store_true", help="fine-tune (every pruned method) against the original")
    r.add_argument("--distill-dense", action="store_true",
                   help="fine-tune against the dense model fine-tuned as long (diagnostic: the teacher costs epochs)")
    r.add_argument("--adapt", type=float, default=0.0,
                   help="epochs of the budget spent first fine-tuning the dense model, which is then pruned (and, "
                        "with --distill, the teacher)")
    r.add_argument("--from-dense", type=float, default=0.0,
                   help="start every pruned method from the dense cell of this many epochs (same seed; its weights "
                        "must exist), a model that already fits the data; with --distill, it is the teacher")
    r.add_argument("--round-to", type=int, default=8, help="keep every width a multiple of this (1: exact)")
    r.add_argument("--widths-from", metavar="LABEL",
                   help="prune to the widths the cell of this method label kept (e.g. ib_r4): the allocation swap")
    r.add_argument("--device", default="auto")
    r.add_argument("--latency-runs", type=int, default=50, help="timed onnxruntime runs per in-run latency")
    r.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process (GPU machine)")
    def timing(name: str, help: str) -> argparse.ArgumentParser:
        """A subcommand that times architectures on this machine's CPU, in interleaved rounds."""
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--threads", type=int, default=2)
        sp.add_argument("--runs", type=int, default=50, help="timed runs per round and batch size")
        sp.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median over them is kept")
        return sp

    lat = timing("latency", "measure every cell's architecture's ORT latency (run on a quiet machine)")
    lat.add_argument("--cells", nargs="+", default=["*"],
                     help="globs on cell names, e.g. 'resnet56-e6-*macs0.50-*' 'resnet56-e6-dense-*'")
    lat.add_argument("--fresh", action="store_true", help="re-time the chosen cells even if already measured")
    lay = timing("layout", "batch-1 latency with and without onnxruntime's blocked layout")
    lay.add_argument("--cells", nargs="+", default=["resnet56-e10-ib_kd_r4_fd10-macs0.50-s0"],
                     help="globs on cell names; the dense model of each cell's model is timed too")
    sub.add_parser("aggregate", help="write cifar10.json, cifar10.md and cifar10.png from the cells")
    args = p.parse_args(argv)
    {"run": cmd_run, "latency": cmd_latency, "layout": cmd_layout, "aggregate": cmd_aggregate}[args.command](args)


if __name__ == "__main__":
    main()
