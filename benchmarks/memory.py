"""Peak memory of ``compress`` on the pretrained CIFAR-10 ResNet-56 at batch 128, and whether repeated runs in one
process grow it.

Each run is a full ``compress`` call (gate phase, prune, fine-tune, ONNX export and parity, latency benchmark,
report and checkpoints written to a scratch folder) with short training stages: memory depends on the model,
batch and data, not on how many steps are taken. A thread samples the process's resident set size (RSS) every
20 ms; on CUDA the allocator's peak is read too. After each run the garbage collector runs and the RSS is read
again: if a sweep leaked models, optimizers or ONNX sessions, that number would climb run after run.

Reproduce (2 CPU cores, about 2-3 minutes a run):
    python benchmarks/memory.py --runs 8
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import ibprune
from ibprune.core.train import pick_device
from ibprune.data.cifar import cifar10_loaders
from ibprune.files import write_json, write_text
from ibprune.models import cifar_resnet
from ibprune.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = Path(__file__).parent / "results"
MB = 2 ** 20


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (1 << 12)


class PeakRSS:
    """Samples the RSS in a background thread; ``peak`` is the largest value since ``start``."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.peak = rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gate-steps", type=int, default=20)
    p.add_argument("--finetune-steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    data = SHARED / "data" / "cifar10-jpeg"
    weights = SHARED / "models" / "cifar10-resnet" / "resnet56-4bfd9763.th"
    if not data.is_dir() or not weights.is_file():
        sys.exit(f"needs the CIFAR-10 JPEG data and the ResNet-56 checkpoint under {SHARED}")
    device = pick_device(args.device)
    start = rss()
    train, val, _ = cifar10_loaders(data, args.batch_size, device, val_size=1000)
    pretrained = load_weights(cifar_resnet.cifar_resnet56(), weights).eval()
    baseline = rss()
    runs = []
    for i in range(args.runs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out, PeakRSS() as peak:
            result = ibprune.compress(pretrained, train, val, example_input=torch.randn(1, 3, 32, 32), macs=0.5,
                                      gate_epochs=args.gate_steps / len(train),
                                      finetune_epochs=args.finetune_steps / len(train), out_dir=out,
                                      device=device, bench_batch=64, latency_runs=10, verbose=False)
        achieved = result.report["achieved"]["macs"]
        del result
        gc.collect()
        run = {"run": i, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak.peak / MB,
               "rss_after_mb": rss() / MB, "achieved_macs": achieved}
        if device.type == "cuda":
            run["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / MB
            run["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / MB
        runs.append(run)
        print(run, flush=True)
    after = [r["rss_after_mb"] for r in runs]
    growth = (after[-1] - after[1]) / max(1, len(after) - 2) if len(after) > 2 else float("nan")
    summary = {
        "model": "cifar_resnet56", "batch_size": args.batch_size, "budget_macs": 0.5, "runs": runs,
        "rss_before_data_mb": start / MB, "rss_with_data_and_model_mb": baseline / MB,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_growth_per_run_mb": growth,  # from run 2 on: run 1 also pays one-off lazy initialisation
        "ru_maxrss_mb": __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024,
        "settings": vars(args),
        "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                        "machine": platform.machine(), "python": platform.python_version()},
    }
    write_json(RESULTS / "memory.json", summary)
    rows = [f"| {r['run'] + 1} | {r['peak_rss_mb']:.0f} | {r['rss_after_mb']:.0f} | "
            + (f"{r['cuda_peak_allocated_mb']:.0f} | " if "cuda_peak_allocated_mb" in r else "— | ")
            + f"{r['wall_s']:.0f} |" for r in runs]
    write_text(RESULTS / "memory.md", "\n".join([
        "# Peak memory of `compress` (CIFAR-10 ResNet-56, batch 128)", "",
        f"Measured on {device} ({torch.get_num_threads()} torch threads, {platform.machine()}), torch "
        f"{torch.__version__}: {args.runs} full `compress` runs to 0.5 MACs in one process (gate phase "
        f"{args.gate_steps} steps, fine-tune {args.finetune_steps} steps, export, onnxruntime parity and latency, "
        "report and checkpoints), RSS sampled every 20 ms.", "",
        f"- RSS before loading anything: {start / MB:.0f} MB; with the decoded CIFAR-10 tensors (uint8) and the "
        f"model: {baseline / MB:.0f} MB",
        f"- peak RSS over all runs: **{summary['peak_rss_mb']:.0f} MB**",
        f"- RSS growth per run from run 2 on, after garbage collection: **{growth:+.1f} MB**", "",
        "| run | peak RSS (MB) | RSS after run (MB) | CUDA peak allocated (MB) | wall (s) |",
        "| --- | --- | --- | --- | --- |", *rows, "",
        f"Reproduce: `python benchmarks/memory.py --runs {args.runs}`.", ""]))


if __name__ == "__main__":
    main()
