"""Which torchvision classifiers ibprune compresses correctly, and a clear reason for every one it refuses.

For each model in ``torchvision.models.list_models(module=torchvision.models)`` (random weights): the input
checks, channel groups, the pruning preflight, a prune to 0.6 of the MACs with the gates' means set at random
(no training: this measures correctness, not accuracy), the function check, ONNX export and onnxruntime parity.
Each model runs in its own subprocess with a time limit and writes its own JSON cell, so a crash or a hang
costs one model and the run resumes where it stopped.

Reproduce (2 CPU cores, no GPU):  python benchmarks/coverage.py run; python benchmarks/coverage.py aggregate
Writes benchmarks/results/coverage.json and coverage.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CELLS = RESULTS / "coverage" / "cells"
#: models that need a particular input size or constructor argument to build or run at all
INPUT_SIZE = {"inception_v3": 299}
LARGE_INPUT = ("vit_", "swin_", "maxvit_")
#: what a cell was measured with; ``run`` redoes a cell measured with another check
CHECK = "float64 function check, float32 margins (9402e54)"
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}


def probe(name: str, target: float = 0.6) -> dict:
    """Everything ``compress`` does to a model except training, with timings and the outcome."""
    import torch
    import torchvision

    import ibprune
    from ibprune.pipeline.check import check_model
    from ibprune.pipeline.inputs import check_inputs

    torch.manual_seed(0)
    size = 224 if name.startswith(LARGE_INPUT) else INPUT_SIZE.get(name, 64)
    out: dict = {"model": name, "input": size, "check": CHECK}
    t0 = time.perf_counter()
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **KWARGS.get(name, {})).eval()
    x = torch.randn(1, 3, size, size)
    out["params_before"] = sum(p.numel() for p in model.parameters())
    try:
        check_inputs(model, [(torch.randn(2, 3, size, size), torch.tensor([0, 1]))], x)
        r = check_model(model, x, target, round_to=8, margin=True)
        out.update(status="ok", groups=r["groups"], macs_before=r["macs_before"], macs_after=r["macs_after"],
                   params_after=r["params_after"], macs_fraction=r["macs_fraction"],
                   function_max_diff=r["function_max_diff"], check_ratio=r["check_ratio"],
                   check_margin=r["check_margin"], check_margin_group=r["check_margin_group"],
                   onnx_max_diff=r["onnx_max_diff"])
        if r["heads_before"]:
            out.update(heads_before=r["heads_before"], heads_after=r["heads_after"])
    except ibprune.IbpruneError as err:
        out.update(status="unsupported", reason=f"{type(err).__name__}: {err}")
    except Exception as err:  # anything else is a bug to fix, reported as such
        out.update(status="crash", reason=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                   traceback=traceback.format_exc()[-2000:])
    out["seconds"] = time.perf_counter() - t0
    return out


def cmd_run(args) -> None:
    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    for name in names:
        cell = CELLS / f"{name}.json"
        if cell.exists() and json.loads(cell.read_text()).get("check") == CHECK:
            continue
        print(f"[run ] {name}", flush=True)
        try:
            proc = subprocess.run([sys.executable, __file__, "one", name], capture_output=True, text=True,
                                  timeout=args.timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            result = json.loads(lines[-1]) if lines else {
                "model": name, "status": "crash", "check": CHECK,
                "reason": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        except subprocess.TimeoutExpired:
            result = {"model": name, "status": "timeout", "reason": f"over {args.timeout} s on this machine",
                      "check": CHECK}
        from ibprune.files import write_json

        write_json(cell, result)
        print(f"[{result['status']}] {name} {result.get('reason', '')[:150]}", flush=True)


def cmd_aggregate(args) -> None:
    from ibprune.files import write_json, write_text

    cells = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*.json"))]
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    write_json(RESULTS / "coverage.json", {"models": cells, "counts": counts})
    md = ["# Coverage: torchvision classifiers", "",
          "Per model: random weights made lively as `check_model` does (all-zero weight tensors, such as ViT's "
          "classifier, get small random values, constant scales below 1e-3 such as ConvNeXt's layer scale become "
          "1, BN statistics re-estimated on random inputs, so that the checks are not vacuous), num_classes=10, "
          "attention rewritten into head-removable modules, the gates' means drawn at random, pruned to 0.6 of "
          "the MACs (round_to=8; attention heads leave whole) without training, function check against the "
          "gated model, ONNX export and onnxruntime parity. *Check* is the function check's worst difference "
          "over its tolerance (1e-4 of each compared tensor's scale; passes below 1); *margin* is how many "
          "tolerances a wrong prune (one group's removed channels moved to their neighbours) moves it, in the "
          "group where that is smallest (`ibprune.core.verify.sensitivity`): above 1 the check sees every group. "
          "Measured on 2 CPU cores (shared with other runs: the seconds are indicative) with "
          "`python benchmarks/coverage.py run` then `aggregate`.", "",
          "Status counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" (of {len(cells)}).", "",
          "| model | input | status | params before → after | MACs before → after (fraction) | attention heads "
          "| check | margin (group) | ONNX max diff | seconds | reason |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cells:
        if c["status"] == "ok":
            sizes = f"{c['params_before'] / 1e6:.2f} M → {c['params_after'] / 1e6:.2f} M"
            macs = f"{c['macs_before'] / 1e6:.0f} M → {c['macs_after'] / 1e6:.0f} M ({c['macs_fraction']:.3f})"
            diff = f"{c['onnx_max_diff']:.1e}"
            check = f"{c['check_ratio']:.3f}"
            margin = f"{c['check_margin']:.3g} ({c['check_margin_group']})"
        else:
            sizes = f"{c['params_before'] / 1e6:.2f} M" if "params_before" in c else "—"
            macs = diff = check = margin = "—"
        reason = c.get("reason", "").replace("|", "\\|")[:240]
        heads = f"{c['heads_before']} → {c['heads_after']}" if "heads_after" in c else "—"
        md.append(f"| {c['model']} | {c.get('input', '—')} | {c['status']} | {sizes} | {macs} | {heads} | {check} "
                  f"| {margin} | {diff} | {c.get('seconds', 0):.0f} | {reason} |")
    write_text(RESULTS / "coverage.md", "\n".join(md) + "\n")
    print("\n".join(md[:6]))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "one":
        print(json.dumps(probe(sys.argv[2])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--models", nargs="*", help="a subset (default: every torchvision classifier)")
    r.add_argument("--timeout", type=int, default=300, help="seconds per model")
    sub.add_parser("aggregate")
    args = p.parse_args()
    cmd_run(args) if args.command == "run" else cmd_aggregate(args)


if __name__ == "__main__":
    main()
