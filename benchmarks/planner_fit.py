"""How often the planner lands within 0.03 under a MACs budget that some combination of widths meets.

Brute force over every legal combination of whole blocks (in score order, as ``plan_removal`` forms them) on
small nets with coarse widths, against three planners: the greedy fill alone, the knapsack alone
(``EXHAUSTIVE = 0``) and the default (exhaustive up to 20,000 combinations). Random scores, seeds 0-5.
Writes ``results/planner_fit.json``. Run: ``python benchmarks/planner_fit.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

import ibprune.core.prune as prune
from ibprune.core.costs import CostModel
from ibprune.core.groups import find_groups
from ibprune.files import write_json
from ibprune.models import DigitsNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.core.test_prune import Branchy  # noqa: E402  the issue's net: concatenated branches, depthwise, SE

TARGETS = [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def fraction(cm: CostModel, removed: dict) -> float:
    keep = {n: torch.ones(s) for n, s in cm.sizes.items()}
    for n, i in removed.items():
        keep[n][i] = 0
    return cm.fraction(keep)


def main() -> None:
    nets = [(f"branchy{w}", Branchy(w), torch.randn(1, 3, 16, 16)) for w in (16, 24, 32)]
    nets += [(f"digits{w}", DigitsNet(width=w), torch.randn(1, 1, 8, 8)) for w in (16, 24)]
    modes = {"greedy fill": (lambda lost, f, counts, t, tol: counts, prune.EXHAUSTIVE),
             "knapsack": (prune._fit_window, 0), "default": (prune._fit_window, prune.EXHAUSTIVE)}
    tally = {m: {"cases": 0, "fit_exists": 0, "landed": 0} for m in modes}
    for _name, net, x in nets:
        net.eval()
        _, groups = find_groups(net, x)
        cm = CostModel(net, x, groups)
        for step in (8, 16):
            opts = {g.name: range(max(1, g.size // step)) for g in groups}
            for target, seed in itertools.product(TARGETS, range(6)):
                g = torch.Generator().manual_seed(seed)
                score = {gr.name: torch.rand(gr.size, generator=g) for gr in groups}
                best = max((f for ks in itertools.product(*opts.values())
                            if (f := fraction(cm, {n: torch.argsort(score[n], stable=True)[:k * step].tolist()
                                                   for n, k in zip(opts, ks)})) <= target), default=0.0)
                for mode, (fit, limit) in modes.items():
                    prune._fit_window, prune.EXHAUSTIVE = fit, limit
                    try:
                        got = fraction(cm, prune.plan_removal(score, cm, target, round_to=step))
                    except Exception:
                        continue
                    t = tally[mode]
                    t["cases"] += 1
                    t["fit_exists"] += best >= target - 0.03
                    t["landed"] += best >= target - 0.03 and got >= target - 0.03
    prune._fit_window, prune.EXHAUSTIVE = modes["default"]
    write_json(Path(__file__).parent / "results" / "planner_fit.json",
               {"tolerance": 0.03, "targets": TARGETS, "seeds": list(range(6)), "widths": [8, 16],
                "nets": [n for n, _, _ in nets], "modes": tally})
    print(tally)


if __name__ == "__main__":
    main()
