"""The stage runner: each stage runs once, saved outputs are restored on a resume instead of run again."""

import pytest
import torch

from ibprune.pipeline.checkpoints import Checkpoints
from ibprune.pipeline.stages import Stage, run_stages


class _P:
    """The little of ``Prepared`` the runner reads."""

    def __init__(self, folder, resume=False):
        self.ckpt, self.train = Checkpoints(folder, {"run": 1}, resume), None


def _stages(ran: list[str], fail_at: str | None = None) -> list[Stage]:
    def make(name):
        def run(p, r):
            if name == fail_at:
                raise KeyboardInterrupt
            ran.append(name)
            return {"by": name, "noise": float(torch.rand(()))}
        return run

    return [Stage("latency", make("latency"), "a", state=dict, restore=lambda p, s: s),
            Stage("gates", make("gates"), "b", state=dict, restore=lambda p, s: s),
            Stage("pruned", make("pruned"), "c", state=dict, restore=lambda p, s: s),
            Stage("report", make("report"))]


def test_a_resumed_run_restores_saved_stages_and_runs_the_rest(tmp_path):
    ran: list[str] = []
    torch.manual_seed(0)
    reference = run_stages(_stages(ran), _P(None))
    assert ran == ["latency", "gates", "pruned", "report"] and list(reference.timings) == ["a", "b", "c"]

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run_stages(_stages([], fail_at="pruned"), _P(tmp_path / "ck"))
    again: list[str] = []
    resumed = run_stages(_stages(again), _P(tmp_path / "ck", resume=True))
    assert again == ["pruned", "report"]  # latency and gates were restored, not run
    assert resumed.gates == reference.gates and resumed.latency == reference.latency
    # the random state each saved stage left is restored with it: the rest runs as it would have
    assert resumed.pruned == reference.pruned and resumed.report == reference.report
    assert list(resumed.timings) == ["a", "b", "c"]
