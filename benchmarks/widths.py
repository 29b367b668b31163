"""Which channel widths make pruning pay in onnxruntime: ``round_to`` 4, 8, 16, 32 and ``"auto"``, side by side.

The same budget (0.5 of the MACs) pruned with each ``round_to``, fp32 and int8, timed in interleaved rounds at
batch 1 and the large batch, with the layout conversions onnxruntime inserts into each optimised graph and
where each file's time goes (onnxruntime's profiler, by operator).

* CIFAR-10 (JPEG) ResNet-56, pretrained (``../shared``): one IB explore phase (half a gate epoch) shared by every
  ``round_to`` (as a sweep shares it across budgets), then per ``round_to`` ``ibprune.compress`` with
  ``quantize="int8"``: the squeeze (half a gate epoch), the prune, one fine-tuning epoch, fp32 and int8 files
  with their accuracy on the 10,000 test images measured in onnxruntime.
* torchvision resnet18, resnet50, mobilenet_v2 at 224x224, random weights (latency only), pruned by L1 without
  training.

Commands (2 CPU cores; ``time`` and ``profile`` on a quiet machine):
    python benchmarks/widths.py build                # ResNet-56 about 8 minutes per round_to, resumable
    python benchmarks/widths.py time --rounds 5
    python benchmarks/widths.py profile
    python benchmarks/widths.py aggregate            # widths.json, widths.md, widths.png
Cells: ``benchmarks/results/widths/cells/<model>.json``; model files under ``.../widths/work/`` (not committed).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploy import SHARED, environment, profiled_runs, time_interleaved, timing_settings, write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CELLS = RESULTS / "widths" / "cells"
WORK = RESULTS / "widths" / "work"
STEPS = (4, 8, 16, 32, "auto")
BATCH = {"resnet56": 64, "resnet18": 32, "resnet50": 32, "mobilenet_v2": 32}
MACS = 0.5
#: ResNet-56 at looser budgets with ``"auto"``, whose floor of 16 channels keeps stage 1 whole: accuracy
#: against latency beside round_to 8 at 0.5
LOOSER = {"resnet56": (0.6, 0.7)}


def variants(model: str) -> dict[str, tuple[int | str, float]]:
    """name -> (round_to, MACs budget): every ``STEPS`` at ``MACS``, then ``auto`` at the ``LOOSER`` budgets."""
    out = {f"r{step}": (step, MACS) for step in STEPS}
    out.update({f"rauto@{m}": ("auto", m) for m in LOOSER.get(model, ())})
    return out


def _cell(model: str) -> dict:
    path = CELLS / f"{model}.json"
    return json.loads(path.read_text()) if path.exists() else {"model": model, "variants": {}}


def _save(cell: dict) -> None:
    from ibprune.files import write_json

    write_json(CELLS / f"{cell['model']}.json", cell)


def _widths(report: dict) -> dict[str, int]:
    return {name: v["kept"] for name, v in report["pruned_channels"].items()}


def build_resnet56(args) -> None:
    import ibprune
    from ibprune.core.rankers import IBRanker
    from ibprune.data.cifar import cifar10_loaders
    from ibprune.errors import BudgetError
    from ibprune.models import cifar_resnet
    from ibprune.pipeline.config import CompressConfig
    from ibprune.pipeline.sweep import _explore
    from ibprune.weights import load_weights

    torch.manual_seed(0)
    train, _, test = cifar10_loaders(SHARED / "data" / "cifar10-jpeg", 128, "cpu", seed=0)
    dense = load_weights(cifar_resnet.cifar_resnet56(), SHARED / "models" / "cifar10-resnet" /
                         "resnet56-4bfd9763.th").eval()
    x = next(iter(train))[0][:1]
    recipe = dict(macs=MACS, gate_epochs=1.0, finetune_epochs=args.finetune_epochs, lr=0.02, device="cpu")
    cell = _cell("resnet56")
    cell.update(data="CIFAR-10 JPEG test set (10,000 images)",
                recipe=f"one IB explore (0.5 gate epoch, seed 0) shared; per round_to compress(macs={MACS}, "
                       f"squeeze 0.5 gate epoch, finetune_epochs={args.finetune_epochs:g}, lr=0.02, "
                       "quantize='int8', calibration 256 training images)")
    start, explored, x, _ = _explore(dense, train, CompressConfig(**recipe, resume=True),
                                      WORK / "resnet56", x, None, False)
    for key, (step, macs) in variants("resnet56").items():
        if key in cell["variants"]:
            continue
        t0 = time.perf_counter()
        try:
            res = ibprune.compress(start, train, test, example_input=x, out_dir=WORK / "resnet56" / key,
                                   **{**recipe, "gate_epochs": 0.5, "macs": macs}, round_to=step,
                                   criterion=IBRanker(explored),
                                   quantize="int8", bench_batch=BATCH["resnet56"], latency_runs=3, verbose=False)
        except BudgetError as err:
            cell["variants"][key] = {"round_to": step, "budget": macs, "status": "unreachable", "reason": str(err)}
        else:
            rep = res.report
            cell["variants"][key] = {
                "round_to": step, "budget": macs, "status": "ok", "macs": rep["achieved"]["macs"],
                "widths": _widths(rep), "notes": rep["notes"],
                "fp32_accuracy": rep["onnx"]["accuracy"], "int8_accuracy": rep["int8"]["compressed"]["accuracy"],
                "int8_recipe": rep["int8"]["compressed"]["recipe"], "pytorch_accuracy": rep["compressed"]["accuracy"],
                "dense_fp32_accuracy": rep["onnx"]["original_accuracy"],
                "dense_int8_accuracy": rep["int8"]["original"]["accuracy"], "compress_s": time.perf_counter() - t0}
        print(f"[widths] resnet56 {key}: {cell['variants'][key]}", flush=True)
        cell["environment"] = environment()
        _save(cell)


def build_torchvision(name: str, args) -> None:
    import torchvision

    import ibprune
    from ibprune.errors import BudgetError
    from ibprune.outputs import quantize as q
    from ibprune.outputs.onnx import export_onnx

    torch.manual_seed(0)
    dense = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    data = [(torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))) for _ in range(4)]
    calibration = [torch.randn(8, 3, 224, 224).numpy() for _ in range(4)]
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    cell = _cell(name)
    cell["data"] = "random weights and inputs: latency only"
    for step in STEPS:
        if f"r{step}" in cell["variants"]:
            continue
        try:
            res = ibprune.compress(dense, data, None, example_input=x, macs=MACS, criterion="l1",
                                   finetune_epochs=0.0, round_to=step, verbose=False, bench_batch=BATCH[name],
                                   latency_runs=3, device="cpu", quantize="int8")  # widths for int8
        except BudgetError as err:
            cell["variants"][f"r{step}"] = {"round_to": step, "status": "unreachable", "reason": str(err)}
        else:
            fp32 = export_onnx(res.model.eval(), x, folder / f"r{step}.fp32.onnx")
            q.quantize_int8(fp32, folder / f"r{step}.int8.onnx", calibration)
            cell["variants"][f"r{step}"] = {"round_to": step, "status": "ok", "macs": res.report["achieved"]["macs"],
                                            "widths": _widths(res.report)}
        _save(cell)
    if not (folder / "dense.int8.onnx").exists():
        q.quantize_int8(export_onnx(dense, x, folder / "dense.fp32.onnx"), folder / "dense.int8.onnx", calibration)
    cell["environment"] = environment()
    _save(cell)


def build_signed(model: str) -> None:
    """``dense.s8s8`` and ``r16.s8s8``: the int8 recipe with int8 instead of uint8 activations, to compare the
    kernels (calibrated as the uint8 files were: training images for ResNet-56, random inputs otherwise)."""
    from ibprune.outputs import quantize as q

    fp32 = files(model)
    if model == "resnet56":
        from ibprune.data.cifar import cifar10_loaders

        calibration = q.calibration_inputs(cifar10_loaders(SHARED / "data" / "cifar10-jpeg", 128, "cpu", seed=0)[0],
                                           256)
    else:
        torch.manual_seed(0)
        calibration = [torch.randn(8, 3, 224, 224).numpy() for _ in range(4)]
    for name in ("dense", "r16"):
        out = WORK / model / f"{name}.s8s8.onnx"
        if f"{name}.fp32" in fp32 and not out.exists():
            q.quantize_int8(fp32[f"{name}.fp32"], out, calibration, q.Recipe(signed_activations=True))


def files(model: str) -> dict[str, Path]:
    """name -> ONNX file: ``dense.fp32`` ... ``r16.int8``, for every variant that was built."""
    if model == "resnet56":
        base = WORK / "resnet56"
        out = {"dense.fp32": base / "r8" / "original.onnx", "dense.int8": base / "r8" / "original.int8.onnx"}
        for key in variants(model):
            out.update({f"{key}.fp32": base / key / "model.onnx", f"{key}.int8": base / key / "model.int8.onnx"})
        out.update({f"{n}.s8s8": base / f"{n}.s8s8.onnx" for n in ("dense", "r16")})
    else:
        out = {p.name.removesuffix(".onnx"): p for p in sorted((WORK / model).glob("*.onnx"))}
    return {name: p for name, p in out.items() if p.exists()}


def _input(model: str) -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32) if model == "resnet56" else torch.zeros(1, 3, 224, 224)


def time_cells(args) -> None:
    for model in args.models:
        if "dense.fp32" not in files(model):
            sys.exit(f"no files for {model}: run `widths.py build --models {model}` first")
        cell = _cell(model)
        cell["latency_ms"] = time_interleaved(files(model), _input(model), (1, BATCH[model]), args.threads,
                                              args.rounds, args.runs)
        cell["timing"] = timing_settings(args)
        _save(cell)


def layout(path: Path, x: torch.Tensor, batch: int, threads: int, runs: int) -> dict:
    """What onnxruntime makes of one file: the optimised graph's operators (``domain:op``), the layout
    conversions among them, and each operator's share of the time at ``batch`` (its profiler, ``runs`` runs)."""
    import numpy as np

    feed = np.zeros((batch, *x.shape[1:]), np.float32)
    graph, kernels, _ = profiled_runs(path, feed, threads, runs, WORK)
    ops = collections.Counter(f"{n.domain or 'onnx'}:{n.op_type}" for n in graph.node)
    inits = {i.name: list(i.dims) for i in graph.initializer}
    weight = {"Conv": 1, "QLinearConv": 3}  # where each convolution keeps its filter
    width = {n.name: inits[n.input[weight[n.op_type]]][0] for n in graph.node
             if n.op_type in weight and n.input[weight[n.op_type]] in inits}
    spent: collections.Counter = collections.Counter()
    by_width: collections.Counter = collections.Counter()  # convolution time by filter count
    for node, (op, us) in kernels.items():
        spent[op] += us
        if node in width:
            by_width[width[node]] += us
    total = sum(spent.values())
    return {"ops": dict(sorted(ops.items())), "layout_conversions": sum(
                v for k, v in ops.items() if k.split(":")[1] in ("ReorderInput", "ReorderOutput", "Transpose")),
            "time_share": {k: v / total for k, v in spent.most_common()}, "profiled_batch": batch,
            # filters as the optimised graph stores them: fp32 blocked convolutions pad them to 16
            "conv_time_by_filters": {str(w): t / total for w, t in sorted(by_width.items())}}


def blocked_macs(path: Path, block: int = 16) -> tuple[int, int]:
    """The convolutions' MACs as written, and as a layout that computes channels in blocks of ``block`` computes
    them (each conv's output and, for a dense conv that does not read the image, input channels rounded up to a
    whole block): onnxruntime's fp32 NCHWc convolution pads its filters so (a pruned 8-wide conv runs 16-wide)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.output)}
    up = lambda n: -(-n // block) * block  # noqa: E731
    image = {v.name for v in model.graph.input}
    written = blocked = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        out, (o, i, *kernel) = shapes[node.output[0]], inits[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        per_pixel = math.prod(kernel) * out[2] * out[3]
        written += o * i * per_pixel
        reads_image = node.input[0] in image
        blocked += (up(o) * (up(i) if group == 1 and not reads_image else i)) * per_pixel
    return written, blocked


def profile_cells(args) -> None:
    for model in args.models:
        cell = _cell(model)
        cell["layout"] = {name: layout(p, _input(model), BATCH[model], args.threads, args.runs)
                          for name, p in files(model).items()}
        for name, p in files(model).items():
            if name.endswith(".fp32"):
                cell["layout"][name]["conv_macs"], cell["layout"][name]["conv_macs_in_blocks_of_16"] = \
                    blocked_macs(p)
        _save(cell)
        for name, info in cell["layout"].items():
            print(f"[profile] {model} {name}: conversions {info['layout_conversions']}, "
                  + ", ".join(f"{k} {v:.0%}" for k, v in list(info["time_share"].items())[:3]), flush=True)


def aggregate(args) -> None:
    write_results(CELLS, "widths", markdown, plot)


def _on_grid(widths: dict[str, int], block: int = 16) -> str:
    return f"{sum(w % block == 0 for w in widths.values())}/{len(widths)}"


def _label(v: dict) -> str:
    if "round_to" not in v:
        return "dense"
    return f"{v['round_to']}" + (f" at {v['budget']}" if v.get("budget", MACS) != MACS else "")


def markdown(cells: list[dict]) -> str:
    lines = ["# Channel widths and onnxruntime: round_to 4, 8, 16, 32 and auto", "",
             f"Each model pruned to {MACS} of its MACs with each `round_to` (`auto`: 16 channels at a time, fewer "
             "in groups narrower than 64, `ibprune.core.prune.auto_block`, and, as `compress` builds it for an "
             "int8 file, no group below 16 channels while the budget allows, `INT8_FLOOR`; *auto at 0.6*: a "
             "looser budget), exported, quantized (static QDQ int8) "
             "and timed in interleaved rounds; speed-up against the dense fp32 file of the same round. *as 16-blocks "
             "compute*: the convolutions' MACs with every width rounded up to a multiple of 16, as onnxruntime's "
             "blocked fp32 convolution pads them, against the dense model's. *on the "
             "16-grid*: groups whose kept width is a multiple of 16 (onnxruntime's blocked fp32 layout with "
             "AVX-512); *conversions*: layout conversions (ReorderInput/ReorderOutput/Transpose) in the graph "
             "onnxruntime optimises for this machine, fp32 / int8; *reorder time*: their share of the fp32 file's "
             f"time at the large batch (onnxruntime's profiler); *int8 time in convs of < 16 filters*: the int8 file's "
             "time share in convolutions with fewer than 16 output channels. Reproduce: "
             "`python benchmarks/widths.py build`, then `time --rounds 5`, `profile`, `aggregate` on a quiet "
             "machine.", ""]
    for c in cells:
        t, lat = c["timing"], c["latency_ms"]
        big = [b for b in lat if b != "batch_1"][0]
        env = t["environment"]
        lines += [f"## {c['model']}", "", f"{c['data']}; onnxruntime {env['onnxruntime']}, {t['threads']} "
                  f"thread(s) on {env['cpus']} {env['machine']} cores{' with VNNI' if env.get('vnni') else ''}; "
                  f"{t['rounds']} rounds of {t['runs']} runs, {t['when']}." + (f" {c['recipe']}." if "recipe" in c
                                                                             else ""), "",
                  "| round_to | MACs kept | as 16-blocks compute | on the 16-grid | accuracy fp32 / int8 | fp32 b1 "
                  f"| fp32 {big.split('_')[1]} | int8 b1 | int8 {big.split('_')[1]} | conversions | reorder time "
                  "| int8 time in convs of < 16 filters |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lay = c.get("layout", {})
        dense_blocks = lay.get("dense.fp32", {}).get("conv_macs_in_blocks_of_16")
        rows = [("dense", {"status": "ok", "macs": 1.0})] + list(c["variants"].items())
        for name, v in rows:
            if v["status"] != "ok":
                lines.append(f"| {_label(v)} | — | — | — | — | {v['reason'][:120]} | | | | | | |")
                continue
            acc = (f"{100 * v['fp32_accuracy']:.2f} / {100 * v['int8_accuracy']:.2f} %" if "fp32_accuracy" in v
                   else "—")
            times = [f"{lat[b][f'{name}.{k}']['p50']:.2f} ms ({lat[b][f'{name}.{k}']['speedup']:.2f}x)"
                     if f"{name}.{k}" in lat[b] else "—" for k in ("fp32", "int8") for b in ("batch_1", big)]
            blocks = lay.get(f"{name}.fp32", {}).get("conv_macs_in_blocks_of_16")
            blocks = f"{blocks / dense_blocks:.3f}" if blocks and dense_blocks else "—"
            conv = "/".join(str(lay[f"{name}.{k}"]["layout_conversions"]) if f"{name}.{k}" in lay else "—"
                            for k in ("fp32", "int8"))
            share = lay.get(f"{name}.fp32", {}).get("time_share", {})
            reorder = sum(share.get(k, 0.0) for k in ("ReorderInput", "ReorderOutput"))
            narrow = lay.get(f"{name}.int8", {}).get("conv_time_by_filters")
            narrow = "—" if narrow is None else f"{sum(t for w, t in narrow.items() if int(w) < 16):.0%}"
            lines.append(f"| {_label(v)} | {v['macs']:.3f} | {blocks} | "
                         f"{_on_grid(v['widths']) if 'widths' in v else '—'} | {acc} | " + " | ".join(times)
                         + f" | {conv} | {reorder:.1%} | {narrow} |")
        signed = [n for n in ("dense", "r16") if f"{n}.s8s8" in lat[big]]
        if signed:
            lines += ["", "int8 activations against uint8 (weights int8 in both), p50 ms:", "",
                      "| file | uint8 b1 | int8 b1 | uint8 " + big.split("_")[1] + " | int8 " + big.split("_")[1]
                      + " |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {n} | " + " | ".join(f"{lat[b][f'{n}.{k}']['p50']:.2f}" for b in ("batch_1", big)
                                              for k in ("int8", "s8s8")) + " |" for n in signed]
        lines.append("")
    return "\n".join(lines + _kernels_markdown())


def _kernels_markdown() -> list[str]:
    path = RESULTS / "widths" / "kernels.json"
    if not path.exists():
        return []
    k = json.loads(path.read_text())
    t, env = k["timing"], k["timing"]["environment"]
    lines = ["## Convolutions by width", "", f"{k['layers']}, `python benchmarks/widths.py kernels`: time per MAC at "
             f"batch 64 (picoseconds; fp32 and int8 of one width interleaved), onnxruntime {env['onnxruntime']}, "
             f"{t['threads']} thread(s) on {env['cpus']} {env['machine']} cores"
             f"{' with VNNI' if env.get('vnni') else ''}, "
             f"{t['rounds']} rounds of {t['runs']} runs, {t['when']}.", "",
             "| width | fp32 b1 | fp32 b64 | int8 b1 | int8 b64 | fp32 ps/MAC | int8 ps/MAC | int8 speed-up b64 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for w, lat in k["latency_ms"].items():
        macs = 64 * k["macs_per_image"][w]
        f1, f64 = lat["batch_1"][f"w{w}.fp32"]["p50"], lat["batch_64"][f"w{w}.fp32"]["p50"]
        i1, i64 = lat["batch_1"][f"w{w}.int8"]["p50"], lat["batch_64"][f"w{w}.int8"]
        lines.append(f"| {w} | {f1:.3f} ms | {f64:.2f} ms | {i1:.3f} ms | {i64['p50']:.2f} ms | "
                     f"{1e9 * f64 / macs:.1f} | {1e9 * i64['p50'] / macs:.1f} | {i64['speedup']:.2f}x |")
    return [*lines, ""]


def plot(cells: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    from ibprune.files import write_figure

    fig = Figure(figsize=(4.5 * len(cells), 4))
    for ax, c in zip(fig.subplots(1, len(cells), squeeze=False)[0], cells):
        lat = c["latency_ms"]
        ok = [n for n, v in c["variants"].items() if v["status"] == "ok"]
        for batch, style in zip(lat, ("-", "--")):
            for kind in ("fp32", "int8"):
                ys = [lat[batch].get(f"{n}.{kind}", {}).get("speedup", float("nan")) for n in ok]
                ax.plot(range(len(ok)), ys, style, marker="o" if kind == "fp32" else "s",
                        label=f"{kind}, {batch.replace('_', ' ')}")
        ax.set_xticks(range(len(ok)), [n.removeprefix("r") for n in ok])
        ax.set_xlabel("round_to")
        ax.set_ylabel("speed-up against dense fp32")
        ax.set_title(f"{c['model']} at {MACS} MACs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(path, fig)


#: widths of the ``kernels`` study: convolutions of this many filters, reading as many channels
KERNEL_WIDTHS = (4, 8, 12, 16, 20, 24, 32, 48, 64)


def kernels(args) -> None:
    """Time per MAC of onnxruntime's convolutions by width: a stack of four 3x3 convolutions (``w`` channels in
    and out, ReLU between, 32x32 like ResNet-56's first stage) for each width, fp32 and int8 (calibrated on
    random inputs), timed in interleaved rounds. Writes ``widths/kernels.json``."""
    from torch import nn

    from ibprune.files import write_json
    from ibprune.outputs import quantize as q
    from ibprune.outputs.onnx import export_onnx

    torch.manual_seed(0)
    folder = WORK / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    files, macs = {}, {}
    for w in KERNEL_WIDTHS:
        net = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(w, w, 3, padding=1), nn.ReLU())]).eval()
        x = torch.randn(1, w, 32, 32)
        fp32 = export_onnx(net, x, folder / f"w{w}.fp32.onnx")
        q.quantize_int8(fp32, folder / f"w{w}.int8.onnx", [torch.randn(8, w, 32, 32).numpy() for _ in range(4)])
        files.update({f"w{w}.fp32": fp32, f"w{w}.int8": folder / f"w{w}.int8.onnx"})
        macs[w] = 4 * w * w * 9 * 32 * 32
    timing = {}
    for w in KERNEL_WIDTHS:  # one width at a time (inputs differ), its fp32 and int8 interleaved
        timing[w] = time_interleaved({k: v for k, v in files.items() if k.startswith(f"w{w}.")},
                                     torch.zeros(1, w, 32, 32), (1, 64), args.threads, args.rounds, args.runs,
                                     reference=f"w{w}.fp32")
    out = {"layers": "4 x (Conv2d(w, w, 3, padding=1) + ReLU) at 32x32", "macs_per_image": macs,
           "latency_ms": {str(w): t for w, t in timing.items()}, "timing": timing_settings(args),
           "environment": environment()}
    write_json(RESULTS / "widths" / "kernels.json", out)


def build(args) -> None:
    CELLS.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        build_resnet56(args) if model == "resnet56" else build_torchvision(model, args)
        build_signed(model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("build", "time", "profile", "kernels", "aggregate"):
        s = sub.add_parser(name)
        s.add_argument("--models", nargs="+", default=list(BATCH))
        if name == "build":
            s.add_argument("--finetune-epochs", type=float, default=1.0, help="ResNet-56: fine-tuning epochs")
        if name in ("time", "profile", "kernels"):
            s.add_argument("--threads", type=int, default=2)
            s.add_argument("--runs", type=int, default=20)
        if name in ("time", "kernels"):
            s.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    {"build": build, "time": time_cells, "profile": profile_cells, "kernels": kernels,
     "aggregate": aggregate}[args.command](args)


if __name__ == "__main__":
    main()
