"""Data parallelism on ``torch.distributed``: what a run does differently when ``torchrun`` started it.

Nothing here starts processes or moves tensors by hand: ``torchrun`` launches the ranks, ``init_from_env``
joins its process group (NCCL on CUDA, gloo on the CPU), ``DistributedDataParallel`` averages the gradients,
``DistributedSampler`` shards the training data, and ``torch.distributed``'s collectives share a decision made
on one rank. With no process group (or a group of one) every function is the single-process identity, so the
rest of the code reads the same either way.

The rules a distributed run keeps: every rank trains on its own shard of each pass (reshuffled per pass with
the run's seed); the gradients, and so the weights and gates, stay identical on every rank; whatever is decided
from data one rank saw (criterion scores, BatchNorm statistics) is decided on rank 0 and sent to the others;
evaluation counts every validation image exactly once; only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ibprune.errors import IbpruneError

_LOG = logging.getLogger("ibprune")

T = TypeVar("T")

#: How long a rank waits on the others (a collective, the rendezvous) before it fails instead of hanging.
TIMEOUT = datetime.timedelta(minutes=5)


class DistributedMismatchError(IbpruneError):
    """The ranks of a distributed run disagree on something that must be identical on all of them."""


def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Rank 0 (or the only process): the one that logs, shows progress and writes files."""
    return rank() == 0


def restarted() -> int:
    """How many times ``torchrun``'s elastic agent has restarted this job (``--max-restarts``; 0 on the first
    attempt and outside ``torchrun``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def resuming(asked: bool) -> bool:
    """Whether a run resumes from its checkpoints: when asked to, and always after a ``torchrun`` restart."""
    return asked or restarted() > 0


#: The environment ``torchrun --max-restarts`` needs for a restart to reconnect: with the c10d rendezvous's
#: store shared with the ranks (torch's default), the ranks of a restarted attempt can read the dead attempt's
#: addresses from it and fail to connect (pytorch/pytorch#135712).
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def warn_if_not_restartable() -> None:
    """Log, on rank 0, that elastic restarts may fail to reconnect when ``torchrun`` was started without
    ``RESTARTABLE``; nothing when no restart was asked for or the rendezvous store is not shared."""
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts and is_writer() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        name, value = next(iter(RESTARTABLE.items()))
        _LOG.warning("[ibprune] torchrun --max-restarts %d with the rendezvous store shared with the ranks: a "
                     "restarted attempt can fail to connect (pytorch/pytorch#135712); start torchrun with %s=%s",
                     restarts, name, value)


def init_from_env() -> bool:
    """Join the process group ``torchrun`` set up (its ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` variables):
    NCCL with one GPU per local rank on CUDA, gloo on the CPU. False, and nothing done, outside ``torchrun`` or
    when a group already exists (a caller that initialised its own)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    _LOG.debug("rank %d of %d joined the process group", rank(), world_size())
    return True


def finish() -> None:
    """Leave the process group ``init_from_env`` joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int) -> int:
    """Each rank's share of a global batch of ``batch_size``: the learning rate stays the one given for the
    global batch, so a run on N ranks steps as a single process with that batch does."""
    if batch_size % world_size():
        raise IbpruneError(f"batch size {batch_size} does not split evenly over {world_size()} ranks: give a "
                           f"multiple of {world_size()}", settings=("batch_size",))
    return batch_size // world_size()


def local_device(device: torch.device) -> torch.device:
    """A CUDA device as this rank's own GPU (``LOCAL_RANK``) in a distributed run; anything else as it is."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Make ``model``'s BatchNorm layers ``SyncBatchNorm`` (statistics of the global batch while training) in a
    distributed run on GPUs; returns how many. The layers stay the same objects (only their class changes), so
    the dependency graph, the gates' hooks and the checkpoints that refer to them keep working; in eval mode,
    and without a process group, a ``SyncBatchNorm`` computes what the ``BatchNorm`` did. ``plain_batchnorm``
    turns them back."""
    if not active():
        return 0
    if device.type != "cuda":
        raise IbpruneError("sync_bn needs CUDA: torch's SyncBatchNorm has no CPU implementation (under gloo "
                           "each rank normalises by its own batch; leave sync_bn off)", settings=("sync_bn",))
    layers = [m for m in model.modules() if type(m) in _BATCHNORMS]
    for m in layers:
        m.plain_class, m.process_group = type(m), None
        m.__class__ = nn.SyncBatchNorm
    return len(layers)


def plain_batchnorm(model: nn.Module) -> None:
    """Turn the layers ``sync_batchnorm`` changed back into the BatchNorm they were: the model leaves the run
    as it came (exportable, and loadable without a process group)."""
    for m in model.modules():
        if type(m) is nn.SyncBatchNorm and hasattr(m, "plain_class"):
            m.__class__ = m.plain_class
            del m.plain_class, m.process_group


class ShardedLoader:
    """This rank's shard of a ``DataLoader``'s dataset: ``DistributedSampler`` (equal shards, so every rank
    takes as many steps), reshuffled each pass from the run's seed and the pass number when the original
    shuffles. ``epoch`` is its position, which a resumed run restores (``ibprune.core.modes.rng_state``)."""

    def __init__(self, loader: DataLoader, seed: int) -> None:
        shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
        self.sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed, drop_last=loader.drop_last)
        self.loader = _like(loader, loader.dataset, self.sampler)
        self.dataset, self.epoch = loader.dataset, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


def _like(loader: DataLoader, dataset, sampler=None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` batched and collated as ``loader`` is."""
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last)


def shard_train(loader: Any, seed: int) -> Any:
    """This rank's shard of the training data (the loader itself in a single process): a ``DataLoader`` over a
    map-style dataset, or a loader with its own ``shard(rank, world_size)`` (``ibprune.data.cifar``'s)."""
    if not active():
        return loader
    if hasattr(loader, "shard"):
        return loader.shard(rank(), world_size())
    if isinstance(loader, DataLoader) and hasattr(loader.dataset, "__len__"):
        return ShardedLoader(loader, seed)
    raise IbpruneError(f"a distributed run cannot shard a training loader of type {type(loader).__name__}: give a "
                       "torch DataLoader over a map-style Dataset (or a loader with shard(rank, world_size))")


def shard_eval(loader: Any) -> Any:
    """This rank's share of an evaluation loader, every image in exactly one rank's share (no padding, unlike
    the training shards), for ``count`` to add up."""
    if not active() or loader is None:
        return loader
    if hasattr(loader, "shard"):
        return loader.shard(rank(), world_size(), pad=False)
    if isinstance(loader, DataLoader) and hasattr(loader.dataset, "__len__"):
        return _like(loader, Subset(loader.dataset, range(rank(), len(loader.dataset), world_size())))
    raise IbpruneError(f"a distributed run cannot shard an evaluation loader of type {type(loader).__name__}: "
                       "give a torch DataLoader over a map-style Dataset")


def total(*counts: int) -> list[int]:
    """``counts`` summed over the ranks."""
    if not active():
        return list(counts)
    t = torch.tensor(counts, dtype=torch.float64)
    dist.all_reduce(_on_backend(t))
    return [int(v) for v in t.cpu()]


def everywhere(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a choice all ranks must make alike, such as rolling back)."""
    if not active():
        return flag
    t = _on_backend(torch.tensor([int(flag)]))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _on_backend(t: torch.Tensor) -> torch.Tensor:
    """``t`` where the process group's backend can reduce it (NCCL: on this rank's GPU; gloo: the CPU)."""
    if dist.get_backend() == "nccl":
        return t.cuda()
    return t


def from_writer(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled by ``broadcast_object_list``): a decision made once."""
    if not active():
        return obj
    box = [obj if is_writer() else None]
    dist.broadcast_object_list(box, src=0, device=torch.device("cuda") if dist.get_backend() == "nccl" else None)
    return box[0]


def on_writer(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone (reading or writing files, timing), its result on every rank; an error it
    raises is raised on every rank, so that none waits for the others forever."""
    if not active():
        return fn()
    result = error = None
    if is_writer():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - sent to every rank and raised there
            error = e
    result, error = from_writer((result, error))
    if error is not None:
        raise error
    return result


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into ``module`` on every rank (BatchNorm statistics each rank estimated
    on its own shard, say)."""
    if not active():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            moved = _on_backend(t.detach())
            dist.broadcast(moved, src=0)
            if moved is not t:
                t.copy_(moved)


def check_same(value: Any, what: str) -> None:
    """Fail on every rank, naming the ranks that differ from rank 0, unless ``value`` is equal on all of them."""
    if not active():
        return
    seen: list[Any] = [None] * world_size()
    dist.all_gather_object(seen, value)
    differ = [r for r, v in enumerate(seen) if v != seen[0]]
    if differ:
        raise DistributedMismatchError(f"{what} differ between ranks: rank(s) {differ} disagree with rank 0 "
                                       f"({seen[differ[0]]!r} against {seen[0]!r})")


class Together(nn.Module):
    """The model and what trains beside it (the gates, attached to it by hooks) as one module, so that
    ``DistributedDataParallel`` averages the gradients of both."""

    def __init__(self, model: nn.Module, also: nn.Module | None) -> None:
        super().__init__()
        self.model, self.also = model, also

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def data_parallel(model: nn.Module, also: nn.Module | None, device: torch.device) -> nn.Module:
    """What ``fit`` calls forward on: ``model`` itself in a single process, else ``model`` (with ``also``)
    under ``DistributedDataParallel``, which averages every gradient over the ranks in the backward pass."""
    if not active():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None
    return nn.parallel.DistributedDataParallel(Together(model, also), device_ids=ids)
