"""Data-parallel training speed: one process against several under ``torchrun``, on ibprune's own training path.

What it times is the fine-tune as ``compress`` runs it: the pretrained CIFAR-10 ResNet (``../shared``), the CIFAR
tensor loader with its augmentation, sharded by ``ibprune.core.distributed.shard_train``, and
``ibprune.core.train.fit`` (SGD, DistributedDataParallel when several ranks run), at one global batch. Each
configuration is a fresh process group, launched as a user would launch it:

* ``1x1``: one process, one torch thread (``python``, no launcher);
* ``2x1``: two processes of one thread each (``torchrun --nproc-per-node 2``, gloo);
* ``1x2``: one process with two threads: what the same two cores give without ``torchrun``;
* ``cuda``/``cuda-torchrun``: one GPU without and under ``torchrun --nproc-per-node 1`` (``--device cuda``).

A worker runs ``--warmup`` steps, then times ``--steps`` steps between two barriers; images/s counts the
global batch. The epoch's wall time is derived from it (the 45,000 training images the CIFAR benchmark trains
on, ``45000 / images/s``), not timed. Configurations alternate within each round and every round starts with
a different one, so that a machine that drifts shows in the spread rather than in one configuration; the
figures are medians over rounds.

Reproduce (2 CPU cores, quiet machine; about 5 minutes):
    python benchmarks/distributed.py time --rounds 3
On a GPU machine:
    python benchmarks/distributed.py time --model resnet56 --device cuda --configs cuda cuda-torchrun --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results"
TRAIN_IMAGES = 45_000  # the CIFAR benchmark's training split (5,000 images held out for validation)

#: configuration -> (processes, torch threads a process, device)
CONFIGS = {"1x1": (1, 1, "cpu"), "2x1": (2, 1, "cpu"), "1x2": (1, 2, "cpu"),
           "cuda": (1, 0, "cuda"), "cuda-torchrun": (1, 0, "cuda")}


def worker(args: argparse.Namespace) -> None:
    """One rank: the timed fine-tune steps; rank 0 writes what it measured to ``args.result``."""
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cifar10 import pretrained

    from ibprune.core import distributed
    from ibprune.core.train import fit, pick_device
    from ibprune.data.cifar import cifar10_loaders
    from ibprune.pipeline.config import CompressConfig

    joined = distributed.init_from_env()
    device = pick_device(args.device)
    train, _, _ = cifar10_loaders(SHARED / "data" / "cifar10-jpeg", distributed.per_rank_batch(args.batch), device,
                                  val_size=5000, seed=0)
    loader, model = distributed.shard_train(train, 0), pretrained(args.model)
    sgd = CompressConfig().for_model(False).weights()  # the fine-tune's own optimizer, learning rate, weight decay
    fit(model, loader, args.warmup, device, sgd, verbose=False)
    _barrier(dist, device)
    start = time.perf_counter()
    fit(model, loader, args.steps, device, sgd, verbose=False)
    _barrier(dist, device)
    seconds = time.perf_counter() - start
    if distributed.is_writer():
        Path(args.result).write_text(json.dumps({
            "seconds": seconds, "images": args.steps * args.batch, "world_size": distributed.world_size(),
            "threads": torch.get_num_threads(), "backend": dist.get_backend() if joined else None,
            "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}))
    if joined:
        distributed.finish()


def _barrier(dist, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()


def _launch(config: str, args: argparse.Namespace, port: int) -> dict:
    """One configuration's worker(s), as a user launches them; what rank 0 measured."""
    procs, threads, device = CONFIGS[config]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        script = [__file__, "worker", "--model", args.model, "--device", device, "--batch", str(args.batch),
                  "--steps", str(args.steps), "--warmup", str(args.warmup), "--result", str(result)]
        launcher = [sys.executable]
        if procs > 1 or config.endswith("torchrun"):
            launcher = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(procs),
                        "--master-addr", "127.0.0.1", "--master-port", str(port)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        done = subprocess.run([*launcher, *script], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{config} failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def time_configs(args: argparse.Namespace) -> None:
    measured: dict[str, list[dict]] = {c: [] for c in args.configs}
    for r in range(args.rounds):
        order = args.configs[r % len(args.configs):] + args.configs[:r % len(args.configs)]
        for i, config in enumerate(order):
            m = _launch(config, args, 29600 + 10 * r + i)
            measured[config].append(m)
            print(f"[round {r}] {config}: {m['images'] / m['seconds']:.1f} images/s", flush=True)
    write(args, measured)


def _row(config: str, runs: list[dict], base: float) -> dict:
    rates = [m["images"] / m["seconds"] for m in runs]
    rate = statistics.median(rates)
    procs, threads, _ = CONFIGS[config]
    return {"config": config, "processes": procs, "threads_per_process": runs[0]["threads"],
            "backend": runs[0]["backend"], "world_size": runs[0]["world_size"], "images_per_s": rate,
            "images_per_s_rounds": rates, "epoch_seconds": TRAIN_IMAGES / rate, "speedup": rate / base}


READING = """What the rows say and what they do not: `2x1` against `1x1` is what a second rank adds to the data-parallel
fine-tune (the shards, DDP's gradient all-reduce over gloo, the per-rank augmentation); `2x1` against `1x2` is
whether that path uses a second core as well as torch's own threads do in one process. On one machine's CPUs
that is all: nothing here measures all-reduce across a network (several machines) or NCCL between GPUs, where
data parallelism is what users launch `torchrun` for. The GPU rows, where present, time one GPU without and
under `torchrun --nproc-per-node 1`: a world of one takes ibprune's single-process path (no DDP), so they say
what the launcher costs, nothing about scaling over GPUs."""


def write(args: argparse.Namespace, measured: dict[str, list[dict]]) -> None:
    base = statistics.median(m["images"] / m["seconds"] for m in measured[args.configs[0]])
    rows = [_row(c, runs, base) for c, runs in measured.items()]
    env = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
           "device": next(iter(measured.values()))[0]["device"], "gpu": next(iter(measured.values()))[0]["gpu"],
           "model": args.model, "global_batch": args.batch, "steps": args.steps, "warmup": args.warmup,
           "rounds": args.rounds, "command": "python benchmarks/distributed.py " + " ".join(sys.argv[1:])}
    name = f"distributed_{args.model}_{env['device'].split(':')[0]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = [f"# Data-parallel fine-tune speed: {args.model} on {env['gpu'] or 'the CPU'}", "",
             f"`{env['command']}`: {env['machine']}, {env['cpus']} CPUs, torch {env['torch']}; global batch "
             f"{args.batch}, {args.steps} timed steps after {args.warmup} warm-up steps, median of {args.rounds} "
             "interleaved rounds. Script and what each configuration means: `benchmarks/distributed.py`. The "
             f"epoch's wall time is derived ({TRAIN_IMAGES:,} images / images/s), not timed.", "",
             "| configuration | processes x threads | backend | images/s (rounds) | epoch (s) | speed-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rounds = ", ".join(f"{v:.0f}" for v in r["images_per_s_rounds"])
        lines.append(f"| {r['config']} | {r['processes']} x {r['threads_per_process']} | {r['backend'] or '—'} | "
                     f"{r['images_per_s']:.1f} ({rounds}) | {r['epoch_seconds']:.0f} | {r['speedup']:.2f}x |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines + ["", READING]) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("time", "worker"):
        sp = sub.add_parser(name)
        sp.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56"])
        sp.add_argument("--batch", type=int, default=128, help="the global batch")
        sp.add_argument("--steps", type=int, default=40)
        sp.add_argument("--warmup", type=int, default=5)
    sub.choices["time"].add_argument("--rounds", type=int, default=3)
    sub.choices["time"].add_argument("--configs", nargs="+", default=["1x1", "2x1", "1x2"], choices=list(CONFIGS))
    sub.choices["worker"].add_argument("--device", default="cpu")
    sub.choices["worker"].add_argument("--result", required=True)
    args = parser.parse_args()
    if not (SHARED / "data" / "cifar10-jpeg").is_dir():
        sys.exit(f"no CIFAR-10 data at {SHARED / 'data' / 'cifar10-jpeg'}")
    worker(args) if args.command == "worker" else time_configs(args)


if __name__ == "__main__":
    main()
