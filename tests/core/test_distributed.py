"""Data parallelism under torchrun: shards, one decision, one writer, and the single-process identity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def _torchrun(tmp_path: Path, ranks: int, port: int, nodes: int = 1,
              command: list[str] | None = None) -> tuple[str, list[dict], Path]:
    """``JOB`` (or ``python -m <command>``) on ``ranks`` ranks as a user launches it, 1 thread a rank: one
    ``torchrun --nproc-per-node`` (loopback rendezvous), or ``nodes`` torchrun processes of ``ranks // nodes``
    each meeting at a c10d endpoint (``--nnodes``, ``--node-rank``), as on several machines. Their output, each
    rank's architecture and accuracy (``JOB`` alone), and the output folder."""
    job, out, ranked = tmp_path / "job.py", tmp_path / f"out{ranks}-{nodes}", tmp_path / f"ranks{ranks}-{nodes}"
    job.write_text(JOB.replace("{settings!r}", repr(SETTINGS)))
    ranked.mkdir()
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(ranks // nodes)]
    if nodes == 1:
        torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    else:
        torchrun += ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                     "--rdzv-id", "test"]
    script = ["-m", *command, "--out", str(out)] if command else [str(job), str(out), str(ranked)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = [subprocess.Popen([*torchrun, *(["--node-rank", str(n)] if nodes > 1 else []), *script],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for n in range(nodes)]
    logs = [proc.communicate(timeout=300) for proc in launched]
    assert all(proc.returncode == 0 for proc in launched), "\n".join(err[-3000:] for _, err in logs)
    return "".join(log for log, _ in logs), [json.loads((ranked / f"rank{r}.json").read_text())
                                             for r in range(ranks) if not command], out


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


def test_two_nodes_meet_at_a_rendezvous_endpoint_and_sweep_as_one_job(tmp_path):
    # the command line (python -m ibprune joins torchrun's group itself) and a sweep, on two torchrun processes
    # as on two machines: the removal is compared across the ranks before each cut (check_same fails loudly)
    sweep = ["ibprune", "sweep", "--model", "ibprune.demo:pretrained_digits_net", "--data", "digits",
             "--macs", "0.6,0.4", "--gate-epochs", "0.5", "--finetune-epochs", "0.25", "--round-to", "1",
             "--latency-runs", "2", "--bench-batch", "4"]
    log, _, out = _torchrun(tmp_path, 2, 29541, nodes=2, command=sweep)
    assert log.count("channel groups") == 3  # rank 0 alone speaks: the shared explore, then each budget
    assert sorted(p.name for p in out.iterdir()) == ["explore.json", "macs0.40", "macs0.60", "sweep.json",
                                                     "sweep.md", "sweep.png"]
    assert all(sorted(p.name for p in (out / b).iterdir()) == FILES for b in ("macs0.40", "macs0.60"))
    summary = json.loads((out / "sweep.json").read_text())
    assert [round(p["budget"], 2) for p in summary["points"]] == [0.6, 0.4]


def test_sync_batchnorm_keeps_the_layers_and_their_function_and_is_refused_on_the_cpu(digits_net, monkeypatch):
    x = torch.randn(6, 1, 8, 8)
    plain = [m for m in digits_net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    expected = digits_net.train()(x)
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(IbpruneError, match="sync_bn needs CUDA"):
        distributed.sync_batchnorm(digits_net, torch.device("cpu"))
    assert distributed.sync_batchnorm(digits_net, torch.device("cuda")) == len(plain) > 0
    synced = [m for m in digits_net.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert synced == plain  # the very same layer objects: graph, hooks and checkpoints still refer to them
    torch.testing.assert_close(digits_net(x), expected)  # no process group: its own batch's statistics
    distributed.plain_batchnorm(digits_net)
    assert all(type(m) is torch.nn.BatchNorm2d for m in plain) and not hasattr(plain[0], "process_group")
    torch.testing.assert_close(digits_net.eval()(x), digits_net(x))


FAULT_JOB = """
import os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
import ibprune
from ibprune.data.loaders import digits_tensors
from ibprune.models import DigitsNet


class Slow(Dataset):
    '''The digits, slowed on a first attempt so that a test can kill the job mid fine-tune.'''
    def __init__(self, data, delay):
        self.data, self.delay = data, delay
    def __len__(self):
        return len(self.data)
    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.data[i]


out, delay, resume = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "resume"
dist.init_process_group("gloo")
out.with_suffix(f".pid{dist.get_rank()}").write_text(str(os.getpid()))
if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
    delay = 0.0
torch.manual_seed(0)
train, test = digits_tensors(0)
loader = DataLoader(Slow(train, delay), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
ibprune.compress(DigitsNet(width=16), loader, DataLoader(test, batch_size=256), macs=0.5, gate_epochs=0.5,
                 finetune_epochs=4, round_to=1, lr=0.02, latency_runs=2, bench_batch=4, out_dir=out,
                 resume=resume, verbose=False)
dist.destroy_process_group()
"""


def _fault_job(tmp_path: Path, name: str, port: int, delay: float = 0.0, resume: bool = False,
               restarts: int = 0) -> subprocess.Popen:
    """``FAULT_JOB`` on 2 ranks under one ``torchrun`` (1 thread a rank), writing ``tmp_path/name``, launched as
    the README says for restarts: a c10d rendezvous whose store the ranks do not share with the agent
    (``distributed.RESTARTABLE``), since a shared one keeps the first attempt's addresses and a restarted rank
    can connect to the dead one's."""
    job = tmp_path / "fault_job.py"
    job.write_text(FAULT_JOB)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", name, "--max-restarts", str(restarts),
                "--monitor-interval", "0.2"]
    return subprocess.Popen([*torchrun, str(job), str(tmp_path / name), str(delay), "resume" if resume else "new"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **distributed.RESTARTABLE})


def _mid_finetune(tmp_path: Path, name: str, proc: subprocess.Popen) -> list[int]:
    """Wait until ``name``'s fine-tune has saved its first checkpoint; the ranks' process ids."""
    saved, deadline = tmp_path / name / "checkpoints" / "finetune.pt", time.monotonic() + 240
    while not saved.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no fine-tune checkpoint within 240 s"
        time.sleep(0.02)
    return [int((tmp_path / f"{name}.pid{r}").read_text()) for r in range(2)]


def _weights(folder: Path) -> dict:
    return torch.load(folder / "compressed.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The 2-rank job run through, as every interrupted one must end."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = _fault_job(tmp, "ref", 29561)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]
    return tmp / "ref"


def test_the_whole_job_killed_mid_finetune_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    victim = _fault_job(tmp_path, "run", 29571, delay=0.002)
    pids = _mid_finetune(tmp_path, "run", victim)
    for pid in [victim.pid, *pids]:  # kill -9 of every process: the launcher and both ranks
        os.kill(pid, signal.SIGKILL)
    victim.wait()
    step = torch.load(tmp_path / "run" / "checkpoints" / "finetune.pt", weights_only=True)["step"]
    assert 0 < step < 4 * 22, step  # killed mid fine-tune (22 steps a pass of the 32-image shards)
    assert not (tmp_path / "run" / "report.json").exists()
    resumed = _fault_job(tmp_path, "run", 29572, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["resumed_from"] == "finetune"
    a, b = _weights(uninterrupted), _weights(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # gloo on the CPU: the same weights


def test_a_dead_rank_is_restarted_by_torchrun_and_the_job_resumes(tmp_path, uninterrupted):
    job = _fault_job(tmp_path, "run", 29581, delay=0.002, restarts=1)
    os.kill(_mid_finetune(tmp_path, "run", job)[1], signal.SIGKILL)
    log = job.communicate(timeout=300)[0]
    assert job.returncode == 0, log[-3000:]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["resumed_from"] == "finetune"
    a, b = _weights(uninterrupted), _weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_dead_rank_stops_the_job_with_an_error_naming_it(tmp_path):
    job = _fault_job(tmp_path, "run", 29591, delay=0.002)
    os.kill(_mid_finetune(tmp_path, "run", job)[1], signal.SIGKILL)
    killed = time.monotonic()
    log = job.communicate(timeout=distributed.TIMEOUT.total_seconds())[0]  # never a hang
    assert job.returncode != 0 and time.monotonic() - killed < 60
    assert "rank      : 1" in log and "Signal 9 (SIGKILL)" in log, log[-3000:]
    assert not (tmp_path / "run" / "report.json").exists()


def test_restarts_without_the_unshared_store_are_warned_of(monkeypatch, caplog):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    distributed.warn_if_not_restartable()
    assert not caplog.records  # torchrun started with RESTARTABLE: nothing to say
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    distributed.warn_if_not_restartable()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in caplog.text and "--max-restarts 2" in caplog.text
