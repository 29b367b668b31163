"""Latency budgets, measured: does ``compress(latency=f)`` deliver a network that runs within ``f``?

For each budget the report's own numbers are kept: the MACs target the timing search chose, every candidate
it timed, each pruning of the trained network and its time, and the final benchmark of both models
(onnxruntime CPU p50, ``--runs`` runs after 10 warm-up runs, every core of this machine). A budget no network
reaches is recorded with the error it raised. Run it on a quiet machine: the timings are the point.

Reproduce (2 CPU cores: about 2 minutes for the digits CNN, 6 for CIFAR-10 ResNet-20 with ../shared):
    python benchmarks/latency_budget.py
Writes benchmarks/results/latency_budget.json and latency_budget.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import ibprune
from ibprune.errors import BudgetError
from ibprune.files import write_json, write_text
from ibprune.outputs.benchmark import default_threads

RESULTS = Path(__file__).parent / "results"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def digits(seed: int):
    from ibprune.data.loaders import digits_loaders
    from ibprune.demo import pretrained_digits_net

    train, test = digits_loaders(seed=seed)
    return pretrained_digits_net(seed=seed), train, test, {"gate_epochs": 10.0, "finetune_epochs": 5.0,
                                                          "lr": 0.01, "bench_batch": 32}


def resnet20(seed: int):
    from ibprune.data.cifar import cifar10_loaders
    from ibprune.models.cifar_resnet import cifar_resnet20
    from ibprune.weights import load_weights

    train, val, _ = cifar10_loaders(SHARED / "data" / "cifar10-jpeg", 128, torch.device("cpu"), val_size=5000,
                                    seed=seed)
    net = load_weights(cifar_resnet20(), SHARED / "models" / "cifar10-resnet" / "resnet20-12fca82f.th").eval()
    return net, train, val, {"gate_epochs": 0.25, "finetune_epochs": 0.25, "lr": 0.02, "bench_batch": 64}


MODELS = {"digits": (digits, (0.9, 0.8, 0.7, 0.5)), "resnet20": (resnet20, (0.8, 0.6))}


def run(name: str, target: float, runs: int, seed: int = 0) -> dict:
    build, _ = MODELS[name]
    model, train, val, settings = build(seed)
    t0 = time.perf_counter()
    try:
        rep = ibprune.compress(model, train, val, latency=target, latency_runs=runs, seed=seed, verbose=False,
                               **settings).report
    except BudgetError as err:
        return {"model": name, "target": target, "error": str(err), "seconds": time.perf_counter() - t0}
    batch = f"batch_{settings['bench_batch']}"
    return {"model": name, "target": target, "settings": settings, "seconds": time.perf_counter() - t0,
            "search": rep["latency_budget"], "achieved": rep["achieved"], "notes": rep["notes"],
            "latency_ms": {"original": rep["original"]["latency_ms"][batch]["p50"],
                           "compressed": rep["compressed"]["latency_ms"][batch]["p50"]},
            "accuracy": {"original": rep["accuracy"]["original"], "compressed": rep["accuracy"]["finetuned"]}}


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | batch | budget | MACs target (search, s) | prunings: MACs -> latency | MACs kept | "
             "final benchmark: ms (original / compressed) | latency kept | met | accuracy (original -> compressed) |",
             "|" + " --- |" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['target']:.2f} | refused: {r['error']} | | | | | | |")
            continue
        s, a, ms = r["search"], r["achieved"], r["latency_ms"]
        prunings = ", ".join(f"{p['macs']:.3f} -> {p['latency']:.3f}" for p in s["pruned"])
        acc = r["accuracy"]
        lines.append(
            f"| {r['model']} | {r['settings']['bench_batch']} | {r['target']:.2f} "
            f"| {s['macs']:.3f} ({s['seconds']:.0f} s) | {prunings} "
            f"| {a['macs']:.3f} | {ms['original']:.3f} / {ms['compressed']:.3f} | {a['latency']:.3f} "
            f"| {'yes' if a['latency'] <= r['target'] else 'no'} "
            f"| {100 * acc['original']:.2f} -> {100 * acc['compressed']:.2f} % |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS),
                   default=["digits"] + (["resnet20"] if (SHARED / "data" / "cifar10-jpeg").is_dir() else []))
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    rows = [run(name, target, args.runs) for name in args.models for target in MODELS[name][1]]
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_threads": default_threads(), "command": "python benchmarks/latency_budget.py"}
    write_json(RESULTS / "latency_budget.json", {"environment": env, "rows": rows})
    md = ["# Latency budgets: `compress(latency=f)`", "",
          f"Measured with `{env['command']}` on {env['cpu_threads']} CPU cores ({env['machine']}, torch "
          f"{env['torch']}), no GPU; onnxruntime p50 over {args.runs} runs, {env['cpu_threads']} threads. "
          "`MACs target`: what the timing search (L1-planned candidates, bisection) chose before training; "
          "`prunings`: each pruning of the trained network, as timed then (fraction of the original's latency); "
          "`latency kept`: the final benchmark's compressed / original p50. Short training (digits: 10 + 5 "
          "epochs; ResNet-20: a quarter epoch each of gates and fine-tuning): accuracies are not the point here.",
          "", *table(rows), ""]
    write_text(RESULTS / "latency_budget.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
