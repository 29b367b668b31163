"""The gate phase, traced: validation accuracy and the squeeze's progress along it, for several explore strengths.

On a pretrained CIFAR-10 ResNet (JPEG data from ``../shared``), with ``compress``'s gate phase (1 epoch planned,
half explore, then the squeeze until every planned channel is shut) at each explore ``beta`` given as a multiple
of the gradient-balance value (``calibrate_beta``'s ``scale``). Every ``--every`` steps the gated network is
evaluated as pruning would see it: gates at their means, BN statistics re-estimated on 20 training batches, on
the 5,000 held-out training images; the training state is restored afterwards (the re-estimation draws batches,
so the run after the first evaluation differs from an untraced one in which batches it sees, not in what it does).
Also recorded: how many channels of the budget's removal plan still pass information (``alpha >= 1``); during
the explore the plan is the one the current ranking would give.

This is what showed the explore at 0.3 of the balance shutting the budget's channels on its own (and the
network's accuracy with them) before the squeeze began; ``compress`` now explores at 0.1.

Reproduce (2 CPU cores, about 10 minutes):
    python benchmarks/gate_trace.py --model resnet20 --budget 0.5 --scales 0.3 0.1
Writes benchmarks/results/gate_trace.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

from ibprune.core.costs import CostModel
from ibprune.core.gates import GateSet
from ibprune.core.groups import find_groups
from ibprune.core.objective import GatePressure, calibrate_beta, train_gates
from ibprune.core.train import OPTIMIZERS, OptimizerConfig, evaluate, recalibrate_bn, steps_for
from ibprune.data.cifar import cifar10_loaders
from ibprune.files import write_figure, write_json, write_text

sys.path.insert(0, str(Path(__file__).parent))
from cifar10 import SHARED, pretrained  # noqa: E402  (the criteria benchmark's checkpoints)

RESULTS = Path(__file__).parent / "results"
CPU = torch.device("cpu")


def trace(model: str, budget: float, scale: float, seed: int, epochs: float, every: int, round_to: int) -> dict:
    torch.manual_seed(seed)
    train, val, _ = cifar10_loaders(SHARED / "data" / "cifar10-jpeg", 128, CPU, val_size=5000, seed=seed)
    net = pretrained(model)
    example = torch.randn(1, 3, 32, 32)
    _, groups = find_groups(net, example)
    cost_model = CostModel(net, example, groups, "macs")
    start = evaluate(net, val, CPU)
    gates = GateSet(groups).attach(net)
    gates.train()
    net.train()
    beta = calibrate_beta(net, gates, cost_model.channel_costs(), train, CPU, scale=scale)
    steps = steps_for(epochs, train)
    points = []

    def look(step: int, pressure: GatePressure) -> None:
        if (step + 1) % every and step + 1 != pressure.switch:
            return
        plan = pressure.removal or pressure.plan()
        still_open = pressure.open_to_remove(plan)
        saved = copy.deepcopy(net.state_dict())
        gates.eval()
        recalibrate_bn(net, train, CPU, max_batches=20)
        acc = evaluate(net, val, CPU)
        net.load_state_dict(saved)
        gates.train()
        net.train()
        points.append({"step": step + 1, "phase": "squeeze" if pressure.removal else "explore",
                       "beta": pressure.beta, "planned": sum(len(i) for i in plan.values()),
                       "planned_open": still_open, "val_accuracy": acc})
        print(f"scale {scale:g} step {step + 1}: {points[-1]}", flush=True)

    t0 = time.perf_counter()
    pressure = train_gates(net, gates, cost_model, train, CPU, budget, steps, beta=beta, round_to=round_to,
                           weights=OptimizerConfig(0.02, OPTIMIZERS["sgd"][1]), gate_lr=0.02, on_step=look,
                           verbose=False)
    return {"scale": scale, "beta_explore": beta, "steps_planned": steps, "steps_taken": pressure.steps_taken,
            "switch": pressure.switch, "original_val_accuracy": start, "final_val_accuracy": evaluate(net, val, CPU),
            "seconds": time.perf_counter() - t0, "points": points}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56"])
    p.add_argument("--budget", type=float, default=0.5, help="MACs fraction")
    p.add_argument("--scales", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=1.0, help="gate epochs planned")
    p.add_argument("--every", type=int, default=22, help="steps between evaluations")
    p.add_argument("--round-to", type=int, default=8)
    args = p.parse_args()
    if not (SHARED / "data" / "cifar10-jpeg").is_dir():
        sys.exit(f"no CIFAR-10 data at {SHARED / 'data' / 'cifar10-jpeg'}")
    runs = [trace(args.model, args.budget, s, args.seed, args.epochs, args.every, args.round_to)
            for s in args.scales]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}
    write_json(RESULTS / "gate_trace.json", {"settings": vars(args), "runs": runs, "environment": env})
    md = ["# The gate phase, traced", "",
          f"{args.model}, MACs budget {args.budget}, seed {args.seed}, {args.epochs:g} gate epoch(s) planned "
          f"(explore half, then the squeeze until the planned channels are shut); CPU, torch {env['torch']}, "
          f"{env['threads']} threads. Validation accuracy of the gated network (gates at their means, BN "
          "re-estimated) on the 5,000 held-out training images; `open`: channels of the removal plan still "
          "passing information (alpha >= 1). Reproduce: `python benchmarks/gate_trace.py "
          f"--model {args.model} --budget {args.budget} --scales {' '.join(f'{s:g}' for s in args.scales)}`.", ""]
    for r in runs:
        md += [f"## Explore beta = {r['scale']:g} x the gradient balance ({r['beta_explore']:.3g})", "",
               f"Original: {100 * r['original_val_accuracy']:.2f} %; after the phase ({r['steps_taken']} of "
               f"{r['steps_planned']} steps, BN re-estimated): {100 * r['final_val_accuracy']:.2f} %.", "",
               "| step | phase | beta | open / planned | val acc (%) |", "| --- | --- | --- | --- | --- |",
               *(f"| {q['step']} | {q['phase']} | {q['beta']:.3g} | {q['planned_open']} / {q['planned']} | "
                 f"{100 * q['val_accuracy']:.2f} |" for q in r["points"]), ""]
    write_text(RESULTS / "gate_trace.md", "\n".join(md))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in runs:
        line, = ax.plot([q["step"] for q in r["points"]], [100 * q["val_accuracy"] for q in r["points"]], "o-",
                        label=f"explore beta {r['scale']:g} x balance (ends at step {r['steps_taken']})")
        ax.axvline(r["switch"], color=line.get_color(), ls=":", alpha=0.6)
    ax.axhline(100 * runs[0]["original_val_accuracy"], color="grey", ls="--", label="original")
    ax.set_xlabel("gate-phase step (dotted: explore -> squeeze)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{args.model}, gate phase for {args.budget} of the MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(RESULTS / "gate_trace.png", fig)
    print("\n".join(md))


if __name__ == "__main__":
    main()
