"""Is the validation split unseen? How far each finished CIFAR cell's validation accuracy sits above its test one.

The 5,000-image validation split of ``benchmarks/cifar10.py`` is held out of the JPEG training set, but the
pretrained checkpoints in ``../shared`` were trained on all 50,000 training images (in their lossless form).
If the pretrained network remembers them, the validation split rewards whatever keeps the pretrained function,
and a choice made on it is biased toward such settings. This reads the committed cells (no training): for every
ResNet-20 3-epoch pruned cell, the gap ``validation after the fine-tune - test`` against the validation accuracy
right after the prune (how much of the pretrained function survived it), by method and learning rate.

    python benchmarks/val_leak.py          # writes benchmarks/results/val_leak.json and prints the table
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / "benchmarks" / "results" / "cifar10" / "cells"
OUT = ROOT / "benchmarks" / "results" / "val_leak.json"


def cells() -> list[dict]:
    rows = []
    for path in sorted(CELLS.glob("resnet20-e3-*.json")):
        c = json.loads(path.read_text())
        stages = c.get("val_accuracy_by_stage") or {}
        if c.get("budget_macs") is None or "finetuned" not in stages:
            continue
        after_prune = stages.get("pruned_bn_recalibrated", stages.get("pruned"))
        rows.append({"cell": path.stem, "method": c["method"], "lr": c["lr"], "budget": c["budget_macs"],
                     "gap": 100 * (stages["finetuned"] - c["test_accuracy"]), "after_prune": 100 * after_prune,
                     "original_val": 100 * stages["original"] if "original" in stages else None})
    return rows


def main() -> None:
    rows = cells()
    gap, kept = np.array([r["gap"] for r in rows]), np.array([r["after_prune"] for r in rows])
    by = defaultdict(list)
    for r in rows:
        by[f"{r['method']} (lr {r['lr']:g})"].append(r["gap"])
    summary = {
        "cells": len(rows),
        "pearson_gap_vs_after_prune": float(np.corrcoef(gap, kept)[0, 1]),
        "mean_gap_after_prune_below_40": float(gap[kept < 40].mean()), "n_below_40": int((kept < 40).sum()),
        "mean_gap_after_prune_60_up": float(gap[kept >= 60].mean()), "n_60_up": int((kept >= 60).sum()),
        "by_method": {k: {"mean_gap": statistics.mean(v), "cells": len(v)} for k, v in sorted(by.items())},
        "rows": rows,
    }
    OUT.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(rows)} cells; Pearson r(gap, validation right after the prune) = "
          f"{summary['pearson_gap_vs_after_prune']:.2f}; mean gap {summary['mean_gap_after_prune_below_40']:.2f} "
          f"points where under 40 % survived the prune ({summary['n_below_40']} cells), "
          f"{summary['mean_gap_after_prune_60_up']:.2f} where 60 % or more did ({summary['n_60_up']} cells)")
    for k, v in summary["by_method"].items():
        print(f"  {k:40s} gap {v['mean_gap']:.2f} ({v['cells']} cells)")


if __name__ == "__main__":
    main()
