"""Stage checkpoints, so that an interrupted ``compress()`` continues where it stopped.

A run with an output folder keeps ``<out>/checkpoints/``: ``settings.json`` (what the run was asked to do),
``adapt.pt`` (with ``adapt_epochs``: the dense model's fine-tune), ``latency.pt`` (with a latency budget: the MACs
target the timing found), ``gates.pt`` (after the gate phase),
``pruned.pt`` (after pruning) and ``finetune.pt`` (written every epoch of fine-tuning, with optimizer,
scheduler, data-order and random-number state). Each file is written atomically and
loads with ``weights_only=True``. ``resume=True`` skips every finished stage and continues fine-tuning at the
saved step; on the CPU the result is the one an uninterrupted run gives. The folder is deleted once the run's
outputs are written, so a leftover one always means an interrupted run. In a distributed run rank 0 alone reads
and writes the folder (which need exist only on its machine) and sends what it read to the other ranks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ibprune.core import distributed
from ibprune.errors import InputError
from ibprune.files import atomic_path, write_json
from ibprune.weights import load_plain

STAGES = ("adapt", "latency", "gates", "pruned", "finetune")


class Checkpoints:
    """The stage checkpoints of one run in ``folder`` (``None``: a run without output folder keeps none).

    A folder holding checkpoints of an earlier, interrupted run is refused unless ``resume=True``; with it, the
    saved settings must equal ``settings`` (a resumed run must finish the run that was started).
    """

    def __init__(self, folder: str | Path | None, settings: dict, resume: bool = False) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.resumed: list[str] = []
        if self.folder is None:
            return
        distributed.on_writer(lambda: self._start(settings, resume))

    def _start(self, settings: dict, resume: bool) -> None:
        saved = self.folder / "settings.json"
        if saved.is_file():
            if not resume:
                raise InputError(f"{self.folder} holds the checkpoints of an interrupted run: resume it with "
                                 f"resume=True, or delete that folder to start over", settings=("resume",))
            old = json.loads(saved.read_text())
            changed = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                       if old.get(k) != settings.get(k)]
            if changed:
                raise InputError(f"cannot resume from {self.folder}: the run was started with other settings ("
                                 + "; ".join(changed) + ")")
        write_json(saved, settings)

    def has(self, stage: str) -> bool:
        """Whether ``stage`` left a checkpoint."""
        return self.folder is not None and distributed.on_writer((self.folder / f"{stage}.pt").is_file)

    def load(self, stage: str) -> dict | None:
        """The saved state of ``stage``, or ``None`` when it has not finished (or nothing is kept)."""
        if not self.has(stage):
            return None
        state = distributed.on_writer(lambda: load_plain(self.folder / f"{stage}.pt", f"{stage} checkpoint"))
        self.resumed.append(stage)
        return state

    def saver(self, stage: str):
        """A function that saves ``stage``'s state, or ``None`` when nothing is kept."""
        if self.folder is None:
            return None
        return lambda state: self.save(stage, state)

    def save(self, stage: str, state: dict) -> None:
        """Write ``stage``'s state atomically (no-op without a folder)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if self.folder is not None and distributed.is_writer():
            with atomic_path(self.folder / f"{stage}.pt") as tmp:
                torch.save(state, tmp)

    def clear(self) -> None:
        """Delete the checkpoints (the run's outputs are written)."""
        if self.folder is not None and distributed.is_writer():
            shutil.rmtree(self.folder, ignore_errors=True)
