"""Deployment speed: the ONNX files a user ships, fp32 and int8, dense and pruned, timed side by side.

Two commands, so that the (long, CPU-heavy) model building and the (noise-sensitive) timing can run apart:

``build`` makes each model's files under ``benchmarks/results/deploy/work/<model>/`` (not committed: ONNX
files) and writes a cell ``benchmarks/results/deploy/cells/<model>.json`` (accuracies in onnxruntime, MACs,
the int8 recipe). A finished cell is skipped.
* CIFAR-10 (JPEG) ResNet-56: the pretrained dense model from ``../shared`` and IB at 0.5 and 0.4 MACs,
  compressed here by ``ibprune.compress`` with a CPU recipe (``--epochs``, default 3: 1 gate epoch, the rest
  fine-tuning; widths by ``--round-to``, by default ``compress``'s), accuracy on the 10,000 test images run
  by onnxruntime.
* torchvision resnet18, resnet50, mobilenet_v2 at 224x224 with random weights (latency only: their accuracy
  means nothing and is not reported), dense and pruned to 0.5 MACs by L1 (no training), int8 calibrated on
  random inputs.

``time`` times every file of a model in interleaved rounds (each round times each file once, in turn) at
batch 1 and the large batch, with ``--threads`` onnxruntime threads, and keeps p50 and p90 of the medians
over rounds, plus each file's speed-up against the dense fp32 file *of the same round*. ``aggregate`` writes
``deploy.json``, ``deploy.md`` and ``deploy.png`` (accuracy against batch-1 latency).

Reproduce (2 CPU cores, quiet machine for ``time``):
    python benchmarks/deploy.py build            # ResNet-56 cells about 15 minutes each on 2 cores
    python benchmarks/deploy.py time --rounds 5
    python benchmarks/deploy.py aggregate
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = Path(__file__).parent / "results"
CELLS = RESULTS / "deploy" / "cells"
WORK = RESULTS / "deploy" / "work"
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2")
BATCH = {"resnet56": 64, **dict.fromkeys(TORCHVISION, 32)}


def _files(model: str) -> dict[str, Path]:
    """name -> ONNX file of every variant of ``model`` that ``build`` wrote."""
    return {p.name.removesuffix(".onnx"): p for p in sorted((WORK / model).glob("*.onnx"))}


def build_resnet56(args) -> dict:
    import ibprune
    from ibprune.data.cifar import cifar10_loaders
    from ibprune.models import cifar_resnet
    from ibprune.outputs import quantize as q
    from ibprune.outputs.onnx import export_onnx
    from ibprune.weights import load_weights

    torch.manual_seed(0)
    train, _, test = cifar10_loaders(SHARED / "data" / "cifar10-jpeg", 128, "cpu", seed=0)
    dense = load_weights(cifar_resnet.cifar_resnet56(), SHARED / "models" / "cifar10-resnet" /
                         "resnet56-4bfd9763.th").eval()
    folder = WORK / "resnet56"
    folder.mkdir(parents=True, exist_ok=True)
    calibration = q.calibration_inputs(train, args.calibration_images)
    cell = {"model": "resnet56", "data": "CIFAR-10 JPEG test set (10,000 images)", "variants": {},
            "note": "dense: the pretrained checkpoint as given, trained on lossless CIFAR-10 and not fine-tuned on "
                    "these JPEG images (README, CIFAR-10 ResNets); the pruned models were trained on them for "
                    "the epochs of their recipe, so their accuracy is not comparable with the dense one."}
    x = next(iter(train))[0][:1]
    for name, budget in (("dense", None), ("ib0.50", 0.5), ("ib0.40", 0.4)):
        if budget is None:
            net, macs, extra = dense, 1.0, {}
        else:
            t0 = time.perf_counter()
            res = ibprune.compress(dense, train, None, example_input=x, macs=budget, gate_epochs=1.0,
                                   finetune_epochs=args.epochs - 1.0, lr=0.02, round_to=args.round_to, verbose=False,
                                   bench_batch=BATCH["resnet56"], latency_runs=5, device="cpu", quantize="int8")
            net, macs = res.model.eval(), res.report["achieved"]["macs"]
            extra = {"notes": [n for n in res.report["notes"] if "not verified" not in n],  # checked below
                     "recipe": f"compress(macs={budget}, gate_epochs=1, finetune_epochs={args.epochs - 1:g}, "
                               f"lr=0.02, round_to={args.round_to!r}, quantize='int8'), seed 0",
                     "compress_s": time.perf_counter() - t0}
        fp32 = export_onnx(net, x, folder / f"{name}.fp32.onnx")
        result = q.quantize_checked(fp32, folder / f"{name}.int8.onnx", calibration, test, tolerance=0.01)
        cell["variants"][name] = {"macs": macs, "fp32_accuracy": result.reference_accuracy,
                                  "int8_accuracy": result.accuracy, "int8": result.summary(), **extra}
        print(f"[deploy] resnet56 {name}: fp32 {result.reference_accuracy:.4f} int8 {result.accuracy:.4f} "
              f"({result.recipe.describe()})", flush=True)
    return cell


def build_torchvision(name: str, args) -> dict:
    import torchvision

    import ibprune
    from ibprune.outputs import quantize as q
    from ibprune.outputs.onnx import export_onnx

    torch.manual_seed(0)
    dense = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    data = [(torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))) for _ in range(4)]
    res = ibprune.compress(dense, data, None, example_input=x, macs=0.5, criterion="l1", finetune_epochs=0.0,
                           round_to=args.round_to, verbose=False, bench_batch=BATCH[name], latency_runs=3, device="cpu",
                           quantize="int8")  # the widths compress builds for an int8 file
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    calibration = [torch.randn(8, 3, 224, 224).numpy() for _ in range(4)]
    cell = {"model": name, "data": "random weights and inputs: latency only", "variants": {}}
    for variant, net, macs in (("dense", dense, 1.0), ("l1_0.50", res.model.eval(), res.report["achieved"]["macs"])):
        fp32 = export_onnx(net, x, folder / f"{variant}.fp32.onnx")
        q.quantize_int8(fp32, folder / f"{variant}.int8.onnx", calibration)
        cell["variants"][variant] = {"macs": macs}
    return cell


def build(args) -> None:
    from ibprune.files import write_json

    CELLS.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        path = CELLS / f"{model}.json"
        if path.exists():
            continue
        print(f"[deploy] building {model}", flush=True)
        cell = build_resnet56(args) if model == "resnet56" else build_torchvision(model, args)
        cell.update(round_to=args.round_to, environment=environment())
        write_json(path, cell)


def time_interleaved(files: dict[str, Path], x: torch.Tensor, batches: tuple[int, ...], threads: int,
                     rounds: int, runs: int, reference: str = "dense.fp32") -> dict:
    """``batch_<b>`` -> file name -> p50, p90 (medians over rounds) and the speed-up against ``reference``'s
    time of the same round. Each round times every file once, in turn."""
    from ibprune.outputs.benchmark import time_runs
    from ibprune.outputs.onnx import session

    timing = {}
    for batch in batches:
        sessions = {name: session(p, threads, spinning=False) for name, p in files.items()}
        p50s: dict[str, list[float]] = {name: [] for name in files}
        p90s: dict[str, list[float]] = {name: [] for name in files}
        for _ in range(rounds):
            for name, sess in sessions.items():  # interleaved: every file once per round
                t = time_runs(sess, x, batch, warmup=3, runs=runs)
                p50s[name].append(t["p50"])
                p90s[name].append(t["p90"])
        timing[f"batch_{batch}"] = {
            name: {"p50": statistics.median(p50s[name]), "p90": statistics.median(p90s[name]),
                   "speedup": statistics.median(d / r for d, r in zip(p50s[reference], p50s[name]))}
            for name in files}
        print(f"[time] batch {batch}: " + ", ".join(
            f"{n} {v['p50']:.2f} ms ({v['speedup']:.2f}x)" for n, v in timing[f"batch_{batch}"].items()), flush=True)
    return timing


def time_files(args) -> None:
    from ibprune.files import write_json

    for model in args.models:
        path = CELLS / f"{model}.json"
        if not path.exists():
            sys.exit(f"no cell for {model}: run `deploy.py build --models {model}` first")
        cell = json.loads(path.read_text())
        x = torch.zeros(1, *((3, 32, 32) if model == "resnet56" else (3, 224, 224)))
        cell["latency_ms"] = time_interleaved(_files(model), x, (1, BATCH[model]), args.threads, args.rounds,
                                              args.runs)
        cell["timing"] = timing_settings(args)
        write_json(path, cell)


def timing_settings(args) -> dict:
    """How a cell was timed, and where and when."""
    return {"threads": args.threads, "rounds": args.rounds, "runs": args.runs, "environment": environment(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def aggregate(args) -> None:
    write_results(CELLS, "deploy", markdown, plot)


def write_results(cells_dir: Path, stem: str, to_markdown, to_plot) -> None:
    """``<stem>.json``, ``.md`` and ``.png`` under the results folder, from the timed cells in ``cells_dir``."""
    from ibprune.files import write_json, write_text

    cells = [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]
    cells = [c for c in cells if "latency_ms" in c]
    write_json(RESULTS / f"{stem}.json", {"cells": cells})
    write_text(RESULTS / f"{stem}.md", to_markdown(cells))
    to_plot(cells, RESULTS / f"{stem}.png")


def markdown(cells: list[dict]) -> str:
    lines = ["# Deployment speed: fp32 and int8 ONNX files, dense and pruned", "",
             "onnxruntime CPU, interleaved rounds; p50 (ms) and speed-up against the dense fp32 file of the same "
             "round. Reproduce: `python benchmarks/deploy.py build && python benchmarks/deploy.py time && "
             "python benchmarks/deploy.py aggregate`.", ""]
    for c in cells:
        t = c["timing"]
        batches = list(c["latency_ms"])
        env = t["environment"]
        widths = ("widths by `round_to='auto'` (16-channel blocks, at least 16 channels a group while the budget "
                  "allows)" if c["round_to"] == "auto" else f"widths a multiple of {c['round_to']}")
        lines += [f"## {c['model']}", "", f"{c['data']}; {widths}; onnxruntime "
                  f"{env['onnxruntime']}, {t['threads']} thread(s) on {env['cpus']} {env['machine']} cores"
                  f"{' with VNNI' if env.get('vnni') else ''}; {t['rounds']} rounds of {t['runs']} runs, {t['when']}.",
                  "",
                  "| file | MACs kept | accuracy (onnxruntime) | " + " | ".join(
                      f"{b.replace('_', ' ')} p50 / p90 (speed-up)" for b in batches) + " |",
                  "| --- | --- | --- |" + " --- |" * len(batches)]
        for name in c["latency_ms"][batches[0]]:
            variant, kind = name.rsplit(".", 1)
            v = c["variants"][variant]
            acc = v.get(f"{kind}_accuracy")
            cells_ = [f"{c['latency_ms'][b][name]['p50']:.2f} / {c['latency_ms'][b][name]['p90']:.2f} "
                      f"({c['latency_ms'][b][name]['speedup']:.2f}x)" for b in batches]
            lines.append(f"| {variant} {kind} | {v['macs']:.3f} | {'—' if acc is None else f'{100 * acc:.2f} %'} | "
                         + " | ".join(cells_) + " |")
        for variant, v in c["variants"].items():
            if "recipe" in v:
                lines.append(f"\n{variant}: `{v['recipe']}`; int8: {v['int8']['recipe']}."
                             + "".join(f" Note: {n}." for n in v.get("notes", [])))
        if "note" in c:
            lines.append(f"\n{c['note']}")
        big = batches[-1]
        if "ib0.50" in c["variants"]:  # the targets: int8 at 0.5 MACs against dense fp32
            v, lat = c["variants"]["ib0.50"], c["latency_ms"]
            lines.append(f"\nib0.50 int8 against dense fp32: {lat['batch_1']['ib0.50.int8']['speedup']:.2f}x at "
                         f"batch 1 (target 2x), {lat[big]['ib0.50.int8']['speedup']:.2f}x at {big.replace('_', ' ')} "
                         f"(target 3x); int8 accuracy {100 * (v['int8_accuracy'] - v['fp32_accuracy']):+.2f} points "
                         "against its fp32 file (target within 1).")
            lines += _why_not_3x(lat[big]["dense.fp32"]["p50"])
        for variant, v in c["variants"].items():
            if v["macs"] < 1.0:
                ratio = c["latency_ms"][big][f"{variant}.fp32"]["speedup"] * v["macs"]
                lines.append(f"\n{variant} fp32 at {big.replace('_', ' ')}: speed-up / MACs ratio = {ratio:.2f} "
                             f"({c['latency_ms'][big][f'{variant}.fp32']['speedup']:.2f}x for {1 / v['macs']:.2f}x "
                             "fewer MACs).")
        lines.append("")
    return "\n".join(lines)


def _why_not_3x(dense_fp32_ms: float) -> list[str]:
    """What ResNet-56's 16-wide first stage costs in int8, from the profile in ``widths.py``'s cell: the time no
    pruning can remove, since a convolution narrower than 16 filters runs slower in int8 (``widths.md``)."""
    path = RESULTS / "widths" / "cells" / "resnet56.json"
    if not path.exists():
        return []
    c = json.loads(path.read_text())
    share = c["layout"]["dense.int8"]["conv_time_by_filters"].get("16", 0.0)
    batch = f"batch_{c['layout']['dense.int8']['profiled_batch']}"
    stage = share * c["latency_ms"][batch]["dense.int8"]["p50"]
    return [f"\nWhy not 3x at {batch.replace('_', ' ')}: 3x means {dense_fp32_ms / 3:.1f} ms. "
            f"In the dense int8 file the 16-filter convolutions (the first stage) take {100 * share:.0f} % of the "
            f"time, {stage:.1f} ms "
            "(onnxruntime profiler, `widths.py profile`); the widths for int8 keep that stage whole, since narrower "
            "int8 convolutions run slower, which leaves "
            f"{dense_fp32_ms / 3 - stage:.1f} ms for the two later stages, which hold two thirds of the MACs."]


def plot(cells: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    from ibprune.files import write_figure

    rated = [c for c in cells if any(v.get("fp32_accuracy") is not None for v in c["variants"].values())]
    if not rated:
        return
    fig = Figure(figsize=(5 * len(rated), 4))
    for ax, c in zip(np.atleast_1d(fig.subplots(1, len(rated))), rated):
        lat = c["latency_ms"]["batch_1"]
        for name, t in lat.items():
            variant, kind = name.rsplit(".", 1)
            acc = c["variants"][variant].get(f"{kind}_accuracy")
            ax.plot(t["p50"], 100 * acc, "o" if kind == "fp32" else "s", label=name)
            ax.annotate(name, (t["p50"], 100 * acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("onnxruntime CPU latency p50, batch 1 (ms)")
        ax.set_ylabel("test accuracy in onnxruntime (%)")
        ax.set_title(c["model"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig)


def profiled_runs(path: Path, feed: np.ndarray, threads: int, runs: int, scratch: Path,
                  spinning: bool = True):
    """Run one file ``runs`` + 2 times (2 warm-up) under onnxruntime's profiler: the graph as onnxruntime
    optimised it, each node's kernel time summed over every run (microseconds, by node name) with its operator,
    and each run's wall time (ms). The part every per-operator breakdown shares; the grouping is the caller's."""
    import onnx
    import onnxruntime as ort

    scratch.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.optimized_model_filepath = str(scratch / "optimised.onnx")
    opts.enable_profiling, opts.profile_file_prefix = True, str(scratch / "trace")
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(scratch / "optimised.onnx").graph
    name = sess.get_inputs()[0].name
    walls = []
    for _ in range(runs + 2):
        start = time.perf_counter()
        sess.run(None, {name: feed})
        walls.append(1e3 * (time.perf_counter() - start))
    trace = Path(sess.end_profiling())
    kernels: dict[str, tuple[str, float]] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            op, spent = kernels.get(node, (event["args"]["op_name"], 0.0))
            kernels[node] = (op, spent + event["dur"])
    trace.unlink()
    return graph, kernels, walls


def environment() -> dict:
    import onnxruntime

    from ibprune.outputs.quantize import has_vnni

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "cpus": len(__import__("os").sched_getaffinity(0)),
            "vnni": has_vnni()}


def main() -> None:
    from ibprune.pipeline.config import ChannelStep, CompressConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--models", nargs="+", default=["resnet56", *TORCHVISION])
    b.add_argument("--epochs", type=float, default=3.0, help="ResNet-56: total epochs of compress (1 gate epoch)")
    b.add_argument("--round-to", type=ChannelStep, default=CompressConfig.round_to)
    b.add_argument("--calibration-images", type=int, default=256)
    t = sub.add_parser("time")
    t.add_argument("--models", nargs="+", default=["resnet56", *TORCHVISION])
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--runs", type=int, default=30)
    sub.add_parser("aggregate")
    args = p.parse_args()
    {"build": build, "time": time_files, "aggregate": aggregate}[args.command](args)


if __name__ == "__main__":
    main()
