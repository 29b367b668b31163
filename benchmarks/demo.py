"""The demo's numbers, measured: digits CNN compressed to <= 50 % MACs, over seeds, with and without rounding.

Reproduce: python benchmarks/demo.py            (about 3 minutes on 2 CPU cores)
Writes benchmarks/results/demo.json and demo.md.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

import ibprune
from ibprune.data.loaders import digits_loaders
from ibprune.demo import DEMO, pretrained_digits_net
from ibprune.files import write_json, write_text
from ibprune.outputs.benchmark import default_threads

RESULTS = Path(__file__).parent / "results"


def run(seed: int, round_to: int) -> dict:
    train, test = digits_loaders(seed=seed)
    t0 = time.perf_counter()
    model = pretrained_digits_net(seed=seed)
    pretrain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = ibprune.compress(model, train, test, seed=seed, round_to=round_to, verbose=False, **DEMO).report
    return {"seed": seed, "round_to": round_to, "pretrain_s": pretrain_s, "compress_s": time.perf_counter() - t0,
            "accuracy": rep["accuracy"], "achieved": rep["achieved"],
            "original": rep["original"], "compressed": rep["compressed"], "timings_s": rep["timings_s"],
            "kept": {k: v["kept"] for k, v in rep["pruned_channels"].items()}}


def table(rows: list[dict]) -> str:
    head = ("| seed | round_to | MACs kept | params kept | acc original | acc gated | acc pruned | acc final "
            "| ORT b1 p50 ms (orig / slim) | ORT b32 p50 ms (orig / slim) | compress s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        a, o, c = r["accuracy"], r["original"]["latency_ms"], r["compressed"]["latency_ms"]
        lines.append(
            f"| {r['seed']} | {r['round_to']} | {r['achieved']['macs']:.3f} | {r['achieved']['params']:.3f} "
            f"| {100 * a['original']:.2f} | {100 * a['gated']:.2f} | {100 * a['pruned']:.2f} "
            f"| {100 * a['finetuned']:.2f} | {o['batch_1']['p50']:.3f} / {c['batch_1']['p50']:.3f} "
            f"| {o['batch_32']['p50']:.3f} / {c['batch_32']['p50']:.3f} | {r['compress_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    rows = [run(seed, rt) for rt in (8, 1) for seed in (0, 1, 2)]
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_threads": default_threads(), "command": "python benchmarks/demo.py"}
    write_json(RESULTS / "demo.json", {"settings": DEMO, "environment": env, "runs": rows})
    drops = [r["accuracy"]["finetuned"] - r["accuracy"]["original"] for r in rows if r["round_to"] == 8]
    md = [
        "# Demo: digits CNN compressed to <= 50 % of its MACs", "",
        f"Measured with `{env['command']}` on {env['cpu_threads']} CPU cores ({env['machine']}, torch "
        f"{env['torch']}), no GPU. Settings: `{DEMO}`; test set: 449 held-out digits (1 image = 0.22 pt).", "",
        table(rows), "",
        f"Accuracy change after compression with the default `round_to=8`: mean {100 * sum(drops) / len(drops):+.2f} "
        f"pt (min {100 * min(drops):+.2f}).", "",
        "`acc gated`: gates trained, eval mode (z = mu); `acc pruned`: channels removed, before fine-tuning. "
        "Latency: onnxruntime CPU p50 over 50 runs after 10 warm-up runs. `round_to=1` keeps exact widths, which "
        "onnxruntime's convolution kernels run slowly; that is why 8 is the default.", "",
    ]
    write_text(RESULTS / "demo.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
