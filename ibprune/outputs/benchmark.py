"""What a model costs: MACs, parameters, ONNX file bytes and onnxruntime CPU latency."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ibprune.core.costs import count
from ibprune.core.probes import random_like, widened
from ibprune.outputs.onnx import session


def default_threads() -> int:
    """Cores this process may use (the latency benchmark never oversubscribes them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def latency(path: str | os.PathLike, example_input: torch.Tensor, batch: int, threads: int,
            warmup: int = 10, runs: int = 50) -> dict[str, float]:
    """onnxruntime CPU latency in ms at ``batch``: p50 and p90 over ``runs`` timed runs after ``warmup``."""
    return time_runs(session(path, threads), example_input, batch, warmup, runs)


def time_runs(sess, example_input: torch.Tensor, batch: int, warmup: int = 10, runs: int = 50) -> dict[str, float]:
    """``latency`` on an open onnxruntime session."""
    name = sess.get_inputs()[0].name
    x = random_like(widened(example_input.detach().cpu(), torch.float32), batch,
                    torch.Generator().manual_seed(0)).numpy()
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def profile(model: nn.Module, onnx_path: str | os.PathLike, example_input: torch.Tensor, *,
            batch_sizes: tuple[int, ...] = (1, 32), threads: int | None = None, runs: int = 50,
            accuracy: float | None = None) -> dict:
    """One report entry: MACs, params, ONNX bytes, accuracy (if given) and latency at each batch size."""
    threads = threads or default_threads()
    macs, params = count(model, example_input.to(next(model.parameters()).device))
    lat: dict = {f"batch_{b}": latency(onnx_path, example_input, b, threads, runs=runs) for b in batch_sizes}
    lat["threads"] = threads
    return {"macs": macs, "params": params, "onnx_bytes": Path(onnx_path).stat().st_size,
            "accuracy": accuracy, "latency_ms": lat}
