"""A sweep against separate runs: is training the gates once for several budgets cheaper, and is it as good?

The demo's digits CNN (the demo's settings: 30 gate epochs, 10 fine-tune epochs) is compressed to four MACs
budgets twice: by ``compress_sweep`` (one shared explore phase) and by four separate ``compress`` calls. Both
give every budget the same gate schedule (the explore half, then its own squeeze until the channels it removes
are shut), so accuracy should match within noise and the wall time should drop by three explore phases.

Reproduce (2 CPU cores, about 3 minutes):
    python benchmarks/sweep.py
Writes benchmarks/results/sweep/ (the sweep's own outputs: sweep.md, sweep.png, one folder per budget) and
benchmarks/results/sweep_vs_separate.{json,md}.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import torch

import ibprune
from ibprune.data.loaders import digits_loaders
from ibprune.demo import DEMO, pretrained_digits_net
from ibprune.files import write_json, write_text

RESULTS = Path(__file__).parent / "results"
BUDGETS = [0.7, 0.5, 0.35, 0.25]
EPS = 0.1  # robustness section: L-inf attack size in units of the input's std


def _robust_row(name: str, acc: dict) -> str:
    return f"| {name} | " + " | ".join(f"{100 * acc[k]:.2f} %" for k in ("clean", "fgsm", "pgd10")) + " |"


def main() -> None:
    train, test = digits_loaders(seed=0)
    model = pretrained_digits_net(seed=0)
    settings = {k: v for k, v in DEMO.items() if k != "macs"} | {"robustness_eps": EPS}
    out = RESULTS / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    sweep = ibprune.compress_sweep(model, train, test, budgets=BUDGETS, out_dir=out, verbose=False, **settings)
    sweep_s = time.perf_counter() - t0
    separate, separate_s = {}, 0.0
    for b in BUDGETS:
        t0 = time.perf_counter()
        rep = ibprune.compress(model, train, test, macs=b, verbose=False, **settings).report
        separate_s += time.perf_counter() - t0
        separate[b] = {"accuracy": rep["compressed"]["accuracy"], "macs": rep["achieved"]["macs"]}
    robust = {b: sweep.results[b].report["robustness"]["models"] for b in BUDGETS}
    rows = [{"budget": b, "sweep_accuracy": sweep.results[b].report["compressed"]["accuracy"],
             "sweep_fgsm": robust[b]["compressed"]["fgsm"], "sweep_pgd10": robust[b]["compressed"]["pgd10"],
             "sweep_macs": sweep.results[b].report["achieved"]["macs"],
             "separate_accuracy": separate[b]["accuracy"], "separate_macs": separate[b]["macs"]} for b in BUDGETS]
    result = {"budgets": BUDGETS, "settings": settings, "rows": rows, "sweep_s": sweep_s, "separate_s": separate_s,
              "explore_once_s": sweep.summary["time_s"]["explore_once"],
              "original_accuracy": sweep.summary["original"]["accuracy"],
              "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "device": "cpu"}}
    write_json(RESULTS / "sweep_vs_separate.json", result)
    write_text(RESULTS / "sweep_vs_separate.md", "\n".join([
        "# One sweep against separate runs (digits CNN, the demo's settings)", "",
        f"Measured on the CPU ({torch.get_num_threads()} torch threads, {platform.machine()}), torch "
        f"{torch.__version__}. Original accuracy {100 * result['original_accuracy']:.2f} %.", "",
        f"- `compress_sweep` over {len(BUDGETS)} budgets: **{sweep_s:.1f} s** (the shared explore phase: "
        f"{result['explore_once_s']:.1f} s)",
        f"- {len(BUDGETS)} separate `compress` calls: **{separate_s:.1f} s**",
        f"- saved: {separate_s - sweep_s:.1f} s ({100 * (1 - sweep_s / separate_s):.0f} %)", "",
        "| MACs budget | sweep: MACs kept | sweep: accuracy | separate: MACs kept | separate: accuracy |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {r['budget']} | {r['sweep_macs']:.3f} | {100 * r['sweep_accuracy']:.2f} % | {r['separate_macs']:.3f} "
          f"| {100 * r['separate_accuracy']:.2f} % |" for r in rows), "",
        f"Robustness (the sweep's models; FGSM and PGD-10 at eps = {EPS} input std, on the "
        f"{sweep.results[BUDGETS[0]].report['robustness']['examples']} test digits): does compressing more make "
        "the network more robust, as the IB literature suggests?", "",
        "| model | clean | FGSM | PGD-10 |", "| --- | --- | --- | --- |",
        _robust_row("original", robust[BUDGETS[0]]["original"]),
        *(_robust_row(f"macs <= {b}", robust[b]["compressed"]) for b in BUDGETS), "",
        "The sweep's own report, with its Pareto plot: [`sweep/sweep.md`](sweep/sweep.md).", "",
        "Reproduce: `python benchmarks/sweep.py`.", ""]))
    print((RESULTS / "sweep_vs_separate.md").read_text())


if __name__ == "__main__":
    main()
