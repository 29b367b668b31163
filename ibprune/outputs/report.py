"""report.json (machine-readable) and report.md (a table a person reads at a glance).

``build`` owns report.json's schema (its keys are documented in the README); ``markdown`` and ``summary``
render it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ibprune.files import write_figure, write_json, write_text

SCHEMA = 1


def build(*, target: dict[str, float], entries: dict[str, dict], counted: tuple[int, int], bench_batch: int,
          onnx: dict, pruned_channels: dict, accuracy: dict, ranking: dict, gates: dict, finetune: dict,
          robustness: dict | None, latency_budget: dict | None, int8: dict | None, resumed_from: str | None,
          notes: list[str],
          timings: dict[str, float], device: torch.device) -> dict:
    """The report of one run. ``entries``: the benchmark's ``original`` and ``compressed`` entries (MACs,
    params, file size, accuracy, latency); ``counted``: the original's MACs and params as the cost model counts
    them; ``ranking``: the ranker's name (``criterion``) and settings. Adds ``achieved`` (fractions of the
    original) and, for a latency budget the final benchmark misses, a note."""
    achieved = _achieved(entries, counted, bench_batch)
    (metric, fraction), = target.items()
    if metric == "latency" and achieved["latency"] > fraction:
        notes = [*notes, f"the final benchmark timed the compressed model at {achieved['latency']:.3f} of the "
                         f"original's latency, over the budget {fraction:.3f}: timing noise on a busy machine, or "
                         "no narrower network met it (see latency_budget)"]
    return {
        "schema": SCHEMA, "target": target, "original": entries["original"], "compressed": entries["compressed"],
        "achieved": achieved, "onnx": onnx, "pruned_channels": pruned_channels, "accuracy": accuracy,
        **ranking, "gates": gates, "finetune": finetune, "robustness": robustness, "latency_budget": latency_budget,
        "int8": int8, "resumed_from": resumed_from, "notes": notes, "timings_s": timings,
        "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine()},
    }


def _achieved(entries: dict, counted: tuple[int, int], batch: int) -> dict:
    """Fractions of the original kept: MACs, params, and onnxruntime p50 latency at ``batch`` (recorded)."""
    o, c = entries["original"], entries["compressed"]
    key = f"batch_{batch}"
    return {"macs": c["macs"] / counted[0], "params": c["params"] / counted[1],
            "latency": c["latency_ms"][key]["p50"] / o["latency_ms"][key]["p50"], "latency_batch": batch}


def write(folder: str | Path, rep: dict) -> None:
    """Write ``report.json``, ``report.md`` and, when the deployed files' accuracy was measured,
    ``deployed.png`` into ``folder`` atomically."""
    folder = Path(folder)
    write_json(folder / "report.json", rep)
    write_text(folder / "report.md", markdown(rep))
    if _plottable(rep):
        plot_deployed(rep, folder / "deployed.png")


def deployed_files(rep: dict) -> list[tuple[str, float | None, dict]]:
    """(name, accuracy in onnxruntime, benchmark entry) of each ONNX file of the run: the original and the
    compressed model in fp32 and, with ``quantize``, int8."""
    onnx, int8 = rep["onnx"], rep.get("int8")
    rows = [("original fp32", onnx.get("original_accuracy"), rep["original"]),
            ("compressed fp32", onnx.get("accuracy"), rep["compressed"])]
    if int8:
        rows.insert(1, ("original int8", int8["original"]["accuracy"], int8["original"]))
        rows.append(("compressed int8", int8["compressed"]["accuracy"], int8["compressed"]))
    return rows


def _plottable(rep: dict) -> bool:
    return all(acc is not None for _, acc, _ in deployed_files(rep))


def plot_deployed(rep: dict, path: str | Path) -> Path:
    """Accuracy in onnxruntime against latency p50, one panel per batch size, a point per deployed file."""
    from matplotlib.figure import Figure  # not pyplot: a report never switches the caller's backend

    files = deployed_files(rep)
    keys = [k for k in rep["original"]["latency_ms"] if k.startswith("batch_")]
    fig = Figure(figsize=(5 * len(keys), 4))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        for name, acc, entry in files:
            x, y = entry["latency_ms"][key]["p50"], 100 * acc
            ax.plot([x], [y], "s" if "int8" in name else "o", ms=8, label=name,
                    color="tab:red" if name.startswith("original") else "tab:blue",
                    fillstyle="full" if "int8" in name else "none", markeredgewidth=2)
        ax.margins(x=0.2, y=0.2)
        ax.legend(fontsize=8, loc="best")
        ax.set_xlabel(f"onnxruntime CPU latency p50, {key.replace('_', ' ')} (ms)")
        ax.set_ylabel("accuracy in onnxruntime (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("The deployed files")
    fig.tight_layout()
    return write_figure(path, fig)


def _rows(rep: dict) -> list[tuple[str, str, str, str]]:
    o, c = rep["original"], rep["compressed"]

    def ratio(a, b):
        return f"{a / b:.2f}x smaller" if b else ""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f} %"

    rows = [
        ("MACs", f"{o['macs'] / 1e6:.2f} M", f"{c['macs'] / 1e6:.2f} M", ratio(o["macs"], c["macs"])),
        ("params", f"{o['params'] / 1e6:.3f} M", f"{c['params'] / 1e6:.3f} M", ratio(o["params"], c["params"])),
        ("ONNX file", f"{o['onnx_bytes'] / 1024:.0f} KiB", f"{c['onnx_bytes'] / 1024:.0f} KiB",
         ratio(o["onnx_bytes"], c["onnx_bytes"])),
        ("accuracy", pct(o["accuracy"]), pct(c["accuracy"]),
         "" if o["accuracy"] is None or c["accuracy"] is None
         else f"{100 * (c['accuracy'] - o['accuracy']):+.2f} pt"),
    ]
    adapted = rep.get("accuracy", {}).get("adapted")
    if adapted is not None and c["accuracy"] is not None:  # compress(adapt_epochs=...): the model pruned
        rows.append(("accuracy, original adapted", pct(adapted), pct(c["accuracy"]),
                     f"{100 * (c['accuracy'] - adapted):+.2f} pt"))
    for key, lat in o["latency_ms"].items():
        if key.startswith("batch_"):
            cl = c["latency_ms"][key]
            rows.append((f"ORT latency {key.replace('_', ' ')} p50 / p90", f"{lat['p50']:.3f} / {lat['p90']:.3f} ms",
                         f"{cl['p50']:.3f} / {cl['p90']:.3f} ms", f"{lat['p50'] / cl['p50']:.2f}x faster"))
    return rows


def _latency(rep: dict) -> str:
    fraction = rep["achieved"].get("latency")
    if fraction is None:
        return ""
    return f", onnxruntime latency {fraction:.3f} (p50, batch {rep['achieved']['latency_batch']})"


def _nats(rep: dict, group: str) -> str:
    info = rep["gates"].get("information_nats")
    return "n/a" if info is None else f"{info[group]:.2f}"


def _picture(rep: dict) -> list[str]:
    info = rep.get("information")
    if not info:
        return []
    return ["## Where the network was cut", "",
            f"Each row is a channel group, its channels sorted from most to least informative ({info['unit']}); "
            f"red crosses are the removed channels. Per-channel values: [`{info['json']}`]({info['json']}).", "",
            f"![information per channel]({info['plot']})", ""]


def _robustness(rep: dict) -> list[str]:
    r = rep.get("robustness")
    if not r:
        return []
    keys = list(next(iter(r["models"].values())))
    return ["## Robustness to small perturbations", "",
            f"Accuracy on {r['examples']} validation examples under L-inf attacks of size {r['eps']} "
            f"({r['eps_unit']} units); PGD: {r['pgd_steps']} steps of eps/4 from a random start.", "",
            "| model | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys),
            *(f"| {name} | " + " | ".join(f"{100 * acc[k]:.2f} %" for k in keys) + " |"
              for name, acc in r["models"].items()), ""]


def _deployment(rep: dict) -> list[str]:
    """The ONNX files as deployed: accuracy run by onnxruntime and latency, fp32 and (``quantize``) int8."""
    onnx, int8 = rep["onnx"], rep.get("int8")
    if onnx.get("accuracy") is None and not int8:
        return []
    base = rep["original"]["latency_ms"]
    keys = [k for k in base if k.startswith("batch_")]
    lines = ["## The deployed files", "",
             "Accuracy of each ONNX file run by onnxruntime on the validation data; latency p50 / p90 (ms) and "
             "speed-up against the original fp32 file.", "",
             "| file | accuracy | size | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "| --- | --- | --- |" + " --- |" * len(keys)]
    for name, acc, entry in deployed_files(rep):
        lat = entry["latency_ms"]
        cells = [f"{lat[k]['p50']:.3f} / {lat[k]['p90']:.3f} ({base[k]['p50'] / lat[k]['p50']:.2f}x)" for k in keys]
        lines.append(f"| {name} | {_pct(acc)} | {entry['onnx_bytes'] / 1024:.0f} KiB | " + " | ".join(cells) + " |")
    if int8:
        lines += ["", f"int8: onnxruntime quantization, per-channel weights (static QDQ: calibrated on "
                      f"{int8['calibration']['images']} training inputs; dynamic: activations ranged at run time); "
                      + "; ".join(f"{key}: {int8[key]['recipe']}"
                                  + ("" if int8[key]["ok"] else " (**not verified**, see the notes)")
                                  for key in ("original", "compressed")) + "."]
    if _plottable(rep):
        lines += ["", "![accuracy against latency of the deployed files](deployed.png)"]
    return [*lines, ""]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _steps(rep: dict) -> list[str]:
    gates, tune = rep["gates"], rep.get("finetune", {})
    if "steps" not in tune or "steps_planned" not in gates:
        return []
    spare = gates["steps_planned"] - gates["steps"]
    moved = f" ({spare} the gate phase did not need)" if spare else ""
    return [f"Training steps: gate phase {gates['steps']} of {gates['steps_planned']} planned; "
            f"fine-tune {tune['steps']}{moved}.", ""]


def markdown(rep: dict) -> str:
    """The report as Markdown."""
    (metric, target), = rep["target"].items()
    acc = rep["accuracy"]
    lines = [
        "# ibprune report", "",
        f"Target: {metric} <= {target:.3f} of the original; achieved MACs {rep['achieved']['macs']:.3f}, "
        f"params {rep['achieved']['params']:.3f}{_latency(rep)}.", "",
        *(f"> Note: {n}" for n in rep.get("notes", [])),
        "| | original | compressed | change |", "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(rep)),
        "",
        f"Latency: onnxruntime CPU, {rep['original']['latency_ms']['threads']} thread(s); "
        f"ONNX opset {rep['onnx']['opset']}, max |ORT - PyTorch| = {rep['onnx']['max_abs_diff']:.2g}.", "",
        "## Accuracy along the pipeline", "",
        "| stage | accuracy |", "| --- | --- |",
        *(f"| {k} | {'n/a' if v is None else f'{100 * v:.2f} %'} |" for k, v in acc.items()),
        "",
        "`gated`: with the trained gates (eval, z = mu); `pruned`: channels removed, before fine-tuning.", "",
        "## Channels kept per group", "",
        "| group | kept / total | information (nats, sum) |", "| --- | --- | --- |",
        *(f"| `{name}` | {v['kept']} / {v['total']}{' heads' if v.get('unit') == 'head' else ''} | "
          f"{_nats(rep, name)} |"
          for name, v in rep["pruned_channels"].items()),
        "",
        *_deployment(rep),
        *_picture(rep),
        *_robustness(rep),
        "## Time per stage", "",
        "| stage | seconds |", "| --- | --- |",
        *(f"| {k} | {v:.1f} |" for k, v in rep["timings_s"].items()),
        "",
        *_steps(rep),
        f"Environment: torch {rep['environment']['torch']}, device {rep['environment']['device']}, "
        f"{rep['environment']['threads']} torch threads.", "",
    ]
    return "\n".join(lines)


def summary(rep: dict) -> str:
    """A short plain-text table for the terminal."""
    rows = [("", "original", "compressed", "")] + _rows(rep)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
