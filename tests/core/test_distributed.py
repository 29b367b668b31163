"""Data parallelism under torchrun: shards, one decision, one writer, and the single-process identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ibprune.core import distributed
from ibprune.data.cifar import TensorLoader
from ibprune.errors import IbpruneError


def _images(n: int = 21) -> TensorLoader:
    return TensorLoader(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(),
                        torch.arange(n), batch_size=4, train=True, seed=3, pad=0)


def _labels(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


@pytest.mark.parametrize("world", [2, 3])
def test_tensor_loader_shards_train_evenly_and_evaluate_every_image_once(world):
    train = [_images().shard(r, world) for r in range(world)]
    seen = [_labels(s) for s in train]
    assert len({len(s) for s in seen}) == 1 and all(len(s) == -(-21 // world) for s in seen)  # as many steps each
    assert set().union(*seen) == set(range(21))
    assert [len(s) for s in train] == [len(list(iter(s))) for s in train]
    held = [_images().shard(r, world, pad=False) for r in range(world)]
    for h in held:
        h.train = False
    assert sorted(sum((_labels(h) for h in held), [])) == list(range(21))  # each image in exactly one shard
    assert _labels(train[0]) != _labels(train[0])  # a new order each pass


def test_without_a_process_group_everything_is_the_single_process_path(digits_net):
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)), batch_size=4)
    assert not distributed.active() and distributed.is_writer() and distributed.world_size() == 1
    assert distributed.shard_train(loader, 0) is loader and distributed.shard_eval(loader) is loader
    assert distributed.total(3, 5) == [3, 5] and distributed.from_writer({"a": 1}) == {"a": 1}
    assert distributed.data_parallel(digits_net, None, torch.device("cpu")) is digits_net
    assert distributed.per_rank_batch(64) == 64
    distributed.check_same({"x": 1}, "anything")


def test_a_loader_that_cannot_be_sharded_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(IbpruneError, match="cannot shard a training loader of type list"):
        distributed.shard_train([(torch.zeros(1), torch.zeros(1))], 0)


SETTINGS = {"gate_epochs": 0.5, "finetune_epochs": 1.0, "round_to": 1, "latency_runs": 2, "bench_batch": 4}
JOB = """
import json, logging, sys
import torch.distributed as dist
import ibprune
from ibprune.data.loaders import digits_loaders
from ibprune.demo import pretrained_digits_net

SETTINGS = {settings!r}
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
dist.init_process_group("gloo")  # the caller's own group: the Python API under torchrun
train, val = digits_loaders(64 // dist.get_world_size(), seed=0)  # one global batch of 64
result = ibprune.compress(pretrained_digits_net(), train, val, macs=0.5, **SETTINGS, out_dir=sys.argv[1])
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump({"shapes": {k: list(v.shape) for k, v in result.model.state_dict().items()},
               "accuracy": result.report["accuracy"]["finetuned"]}, f)
dist.destroy_process_group()
"""


def _torchrun(tmp_path: Path, ranks: int, port: int, nodes: int = 1) -> tuple[str, list[dict], Path]:
    """``JOB`` on ``ranks`` ranks as a user launches it, 1 thread a rank: one ``torchrun --nproc-per-node``
    (loopback rendezvous), or ``nodes`` torchrun processes of ``ranks // nodes`` each meeting at a c10d endpoint
    (``--nnodes``, ``--node-rank``), as on several machines. Their output, each rank's architecture and
    accuracy, and the output folder."""
    job, out, ranked = tmp_path / "job.py", tmp_path / f"out{ranks}-{nodes}", tmp_path / f"ranks{ranks}-{nodes}"
    job.write_text(JOB.replace("{settings!r}", repr(SETTINGS)))
    ranked.mkdir()
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(ranks // nodes)]
    if nodes == 1:
        torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    else:
        torchrun += ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                     "--rdzv-id", "test"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = [subprocess.Popen([*torchrun, *(["--node-rank", str(n)] if nodes > 1 else []), str(job), str(out),
                                  str(ranked)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for n in range(nodes)]
    logs = [proc.communicate(timeout=300) for proc in launched]
    assert all(proc.returncode == 0 for proc in launched), "\n".join(err[-3000:] for _, err in logs)
    return "".join(log for log, _ in logs), [json.loads((ranked / f"rank{r}.json").read_text())
                                             for r in range(ranks)], out


FILES = ["compressed.pt", "deployed.png", "information.json", "information.png", "model.onnx", "original.onnx",
         "report.json", "report.md"]  # and no checkpoints left behind


def test_two_ranks_decide_once_write_once_and_match_one_process(tmp_path):
    log, ranks, out = _torchrun(tmp_path, 2, 29531)
    assert ranks[0]["shapes"] == ranks[1]["shapes"]  # the same architecture on both ranks
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]  # evaluated over the whole validation set, once
    assert log.count("channel groups") == 1 and log.count("ORT latency batch 1") == 1  # rank 0 alone speaks
    assert sorted(p.name for p in out.iterdir()) == FILES
    import ibprune
    from ibprune.data.loaders import digits_loaders
    from ibprune.demo import pretrained_digits_net

    single = ibprune.compress(pretrained_digits_net(), *digits_loaders(64, seed=0), macs=0.5, **SETTINGS,
                              verbose=False).report["accuracy"]["finetuned"]
    # Two runs' accuracies on the 450 digits test images differ by about 0.8 points (binomial, p ~ 0.985),
    # so 2 points is 2.5 standard deviations: the same global batch and seed must land that close.
    assert abs(ranks[0]["accuracy"] - single) <= 0.02


def test_two_nodes_meet_at_a_rendezvous_endpoint_and_run_as_one_job(tmp_path):
    log, ranks, out = _torchrun(tmp_path, 2, 29541, nodes=2)  # two torchrun processes, as on two machines
    assert ranks[0] == ranks[1]
    assert log.count("channel groups") == 1 and sorted(p.name for p in out.iterdir()) == FILES
