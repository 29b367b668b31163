"""Is the information estimate faithful? Rank correlation of channel scores with the loss each channel's removal costs.

On the pretrained CIFAR-10 ResNet-20 (JPEG data from ``../shared``), for channels sampled across every channel
group: the increase in validation loss when that channel alone is removed (its gate forced to zero at every
reader, which is exactly what pruning it does), against each criterion's score for it:

* ``ib``: information (nats) of gates trained on the frozen pretrained network with an unweighted KL;
* ``ib_cost``: the same with each channel's KL weighted by its MACs cost, as ``compress`` trains them;
* ``l1``, ``bn``, ``taylor``: torch-pruning's group L1 magnitude, BN scale and Taylor importance, normalised
  per group as its global pruning (and ibprune's baselines) rank them.

Spearman's rho is reported over all sampled channels together (the global ranking pruning uses) and within each
group (the mean of per-group rhos, weighted by the channels sampled), where per-group normalisation cannot matter.
The gates are trained with the weights frozen (only the gates learn) so that every score describes the same
network the ablations are measured on; BN layers stay in eval mode throughout.

Reproduce (2 CPU cores, about 30 minutes; `--reuse` keeps the ablations of the last run):
    python benchmarks/faithfulness.py
Writes benchmarks/results/faithfulness.{json,md,png}.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.groups import find_groups
from ibprune.core.objective import calibrate_beta
from ibprune.core.rankers import criterion_scores
from ibprune.core.train import fit, steps_for
from ibprune.data.cifar import cifar10_loaders
from ibprune.files import write_figure, write_json, write_text
from ibprune.models import cifar_resnet
from ibprune.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = Path(__file__).parent / "results"
CPU = torch.device("cpu")
CRITERIA = ("l1", "bn", "taylor")


class Frozen(nn.Module):
    """Wraps a network so that ``train()`` leaves it in eval mode: BN keeps its statistics, nothing drifts."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gate_information(net, groups, loader, steps: int, weights: dict[str, torch.Tensor], gate_lr: float,
                     scale: float, batches) -> dict:
    """Train gates only (weights frozen, BN in eval) with ``beta * sum w_c KL_c / sum w_c``; nats per channel.

    ``beta`` is ``scale`` x the gradient-balance value (``compress`` explores at 0.1)."""
    gates = GateSet(groups).attach(net)
    for p in net.parameters():
        p.requires_grad_(False)
    gates.train()
    beta = calibrate_beta(net, gates, weights, loader, CPU, scale=scale)
    opt = torch.optim.Adam(gates.parameters(), lr=gate_lr)

    def clamp(step: int) -> dict:
        with torch.no_grad():
            for g in gates.gates.values():
                g.log_sigma2.clamp_(-12.0, 0.0)
        return {}

    fit(Frozen(net), loader, steps, CPU, None, extra_optimizers=[opt],
        penalty=lambda: beta * gates.weighted_kl(weights), after_step=clamp, desc="gates")
    gates.eval()
    gated_loss, gated_acc = val_loss(net, gates, batches)
    gates.detach()
    for p in net.parameters():
        p.requires_grad_(True)
    return {"beta": beta, "information": gates.information(), "gated_val_loss": gated_loss,
            "gated_val_accuracy": gated_acc}


@torch.no_grad()
def val_loss(net, gates: GateSet, batches, shut: dict | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` with the ``shut`` channels' gates at zero."""
    total = correct = seen = 0.0
    with gates.shut(shut or {}):
        for x, y in batches:
            out = net(x)
            total += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
    return total / seen, correct / seen


def spearman(a, b) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties get their average rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            tied = v == value
            r[tied] = r[tied].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=256, help="channels to ablate, spread over all groups")
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--gate-epochs", type=float, default=1.0)
    p.add_argument("--gate-lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beta-scales", type=float, nargs="+", default=[0.3, 0.1, 0.03],
                   help="explore beta as a multiple of the gradient-balance value (compress uses 0.1)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the ablation losses of an earlier run with the same channels and images")
    args = p.parse_args()
    data = SHARED / "data" / "cifar10-jpeg"
    if not data.is_dir():
        sys.exit(f"needs the CIFAR-10 JPEG data under {data}")
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    train, val, _ = cifar10_loaders(data, 128, CPU, val_size=5000, seed=args.seed)
    batches = []
    for x, y in val:
        batches.append((x, y))
        if sum(len(b[1]) for b in batches) >= args.val_images:
            break

    def pretrained() -> nn.Module:
        net = cifar_resnet.cifar_resnet20()
        return load_weights(net, SHARED / "models" / "cifar10-resnet" / "resnet20-12fca82f.th").eval()

    net = pretrained()
    example = torch.randn(1, 3, 32, 32)
    _, groups = find_groups(net, example)
    costs = CostModel(net, example, groups, "macs").channel_costs()
    uniform = {n: torch.ones_like(c) for n, c in costs.items()}
    steps = steps_for(args.gate_epochs, train)
    scores, gate_runs = {}, {}
    for scale in args.beta_scales:
        for kind, weights in (("ib", uniform), ("ib_cost", costs)):
            torch.manual_seed(args.seed)
            net_ = pretrained()
            out = gate_information(net_, groups, train, steps, weights, args.gate_lr, scale, batches)
            name = f"{kind}@{scale:g}"
            scores[name] = out.pop("information")
            gate_runs[name] = out
            print(name, out, flush=True)
    for crit in CRITERIA:
        scores[crit] = criterion_scores(pretrained(), example, groups, crit, train, CPU)
    names = list(scores)

    # channels to ablate: every group contributes in proportion to its size (at least 8)
    total = sum(g.size for g in groups)
    gen = torch.Generator().manual_seed(args.seed)
    sample = []
    for g in groups:
        k = min(g.size, max(8, round(args.channels * g.size / total)))
        sample += [(g.name, int(c)) for c in torch.randperm(g.size, generator=gen)[:k]]
    gates = GateSet(groups).attach(net).eval()
    base_loss, base_acc = val_loss(net, gates, batches)
    previous = {}
    if args.reuse and (RESULTS / "faithfulness.json").is_file():
        import json

        old = json.loads((RESULTS / "faithfulness.json").read_text())
        if old["val_images"] == sum(len(b[1]) for b in batches):
            previous = {(r["group"], r["channel"]): r for r in old["rows"]}
    rows = []
    t0 = time.perf_counter()
    for i, (name, c) in enumerate(sample):
        if (name, c) in previous:
            loss_up, acc_drop = previous[(name, c)]["loss_increase"], previous[(name, c)]["accuracy_drop"]
        else:
            loss, acc = val_loss(net, gates, batches, {name: [c]})
            loss_up, acc_drop = loss - base_loss, base_acc - acc
        rows.append({"group": name, "channel": c, "loss_increase": loss_up, "accuracy_drop": acc_drop,
                     **{s: float(scores[s][name][c]) for s in names}})
        if i % 32 == 0:
            print(f"[{i}/{len(sample)}] {time.perf_counter() - t0:.0f} s", flush=True)

    target = [r["loss_increase"] for r in rows]
    result = {"model": "cifar_resnet20", "channels": len(rows), "val_images": sum(len(b[1]) for b in batches),
              "base_val_loss": base_loss, "base_val_accuracy": base_acc, "gate_steps": steps, "gate_runs": gate_runs,
              "scores": names, "spearman_global": {s: spearman([r[s] for r in rows], target) for s in names},
              "spearman_within_group": {}, "rows": rows, "settings": vars(args),
              "wall_s": time.perf_counter() - t_start,
              "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "device": "cpu"}}
    for s in names:
        per, weights = [], []
        for g in groups:
            rs = [r for r in rows if r["group"] == g.name]
            if len(rs) >= 3:
                per.append(spearman([r[s] for r in rs], [r["loss_increase"] for r in rs]))
                weights.append(len(rs))
        result["spearman_within_group"][s] = float(np.average(per, weights=weights))
    write_json(RESULTS / "faithfulness.json", result)
    scatter(result, RESULTS / "faithfulness.png")
    write_text(RESULTS / "faithfulness.md", markdown(result))
    print((RESULTS / "faithfulness.md").read_text())


def _describe(score: str, r: dict) -> str:
    if score in CRITERIA:
        return {"l1": "L1 magnitude (torch-pruning, group-normalised)", "bn": "BN scale (torch-pruning)",
                "taylor": "Taylor (torch-pruning)"}[score]
    kind, scale = score.split("@")
    run = r["gate_runs"][score]
    return (f"IB information, {'cost-weighted KL (as compress)' if kind == 'ib_cost' else 'unweighted KL'}, "
            f"beta = {scale} x balance (gated acc {100 * run['gated_val_accuracy']:.1f} %)")


def markdown(r: dict) -> str:
    names = r["scores"]
    best_g = max(names, key=lambda s: r["spearman_global"][s])
    best_w = max(names, key=lambda s: r["spearman_within_group"][s])
    return "\n".join([
        "# Faithfulness: do channel scores rank channels by what removing them costs?", "",
        f"Pretrained CIFAR-10 ResNet-20, {r['channels']} channels sampled over every group; for each, the increase "
        f"in validation loss (cross-entropy on {r['val_images']} held-out JPEG training images, base loss "
        f"{r['base_val_loss']:.3f}, accuracy {100 * r['base_val_accuracy']:.1f} %) when that channel alone is "
        f"removed. IB gates trained {r['gate_steps']} steps (one epoch) on the frozen network; `gated acc` is the "
        f"frozen network's validation accuracy with those gates at their means. Measured on the CPU "
        f"({r['environment']['threads']} thread), {r['wall_s'] / 60:.0f} min.", "",
        "| score | Spearman, all channels | Spearman, within each group (mean) |", "| --- | --- | --- |",
        *(f"| {_describe(s, r)} | {r['spearman_global'][s]:+.3f} | {r['spearman_within_group'][s]:+.3f} |"
          for s in names), "",
        f"Highest over all channels: **{_describe(best_g, r)}**; highest within groups: "
        f"**{_describe(best_w, r)}**.", "",
        "![scores against loss increase](faithfulness.png)", "",
        "Reproduce: `python benchmarks/faithfulness.py`.", ""])


def scatter(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, names = r["rows"], r["scores"]
    groups = sorted({x["group"] for x in rows}, key=[x["group"] for x in rows].index)
    colours = {g: plt.cm.viridis(i / max(1, len(groups) - 1)) for i, g in enumerate(groups)}
    cols = 4
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.4 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, names):
        ax.scatter([x[s] for x in rows], [x["loss_increase"] for x in rows], s=8,
                   c=[colours[x["group"]] for x in rows])
        ax.set_yscale("symlog", linthresh=1e-3)
        if s not in CRITERIA:
            ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel(s + (" score" if s in CRITERIA else " (nats)"))
        ax.set_title(f"rho all {r['spearman_global'][s]:+.2f}, within {r['spearman_within_group'][s]:+.2f}",
                     fontsize=9)
    for row in axes:
        row[0].set_ylabel("val loss increase when removed")
    fig.suptitle("Channel scores against the cost of removing each channel (colour: group, input to output)")
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


if __name__ == "__main__":
    main()
