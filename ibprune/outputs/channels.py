"""The per-layer information picture: how much each channel of each group carries, and which ones were kept.

``profile()`` gives, per gated group, every channel's information (nats, ``0.5 * log(1 + mu^2 / sigma^2)``)
sorted from most to least informative, which were kept and removed, and the totals; ``plot()`` draws it as one
heat strip per group (channels sorted, removed ones crossed out). A run ranked by another criterion reports
that criterion's scores instead, with its unit named.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ibprune.files import write_figure


def profile(information: dict[str, torch.Tensor], removed: dict[str, list[int]], unit: str = "nats") -> dict:
    """Per group: channels sorted by information (descending) with a kept flag, and the group's totals."""
    groups = {}
    for name, values in information.items():
        values = values.detach().float().cpu()
        gone = set(removed.get(name, []))
        order = torch.argsort(values, descending=True, stable=True).tolist()
        kept = [i for i in range(len(values)) if i not in gone]
        groups[name] = {
            "channels": len(values), "kept": len(kept),
            "total": float(values.sum()), "kept_total": float(values[kept].sum()) if kept else 0.0,
            "per_channel": [{"channel": i, "value": float(values[i]), "kept": i not in gone} for i in order],
        }
    return {"unit": unit, "groups": groups}


def plot(prof: dict, path: str | Path, title: str = "Information per channel") -> Path:
    """One heat strip per group (rows in network order), channels sorted left to right; x marks removed ones."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure  # not pyplot: a report never switches the caller's backend

    groups = prof["groups"]
    names = list(groups)
    width = max((g["channels"] for g in groups.values()), default=1)
    grid = np.full((len(names), width), np.nan)
    for r, name in enumerate(names):
        vals = [c["value"] for c in groups[name]["per_channel"]]
        grid[r, :len(vals)] = vals
    fig_h = 1.2 + 0.32 * max(1, len(names))
    fig = Figure(figsize=(min(14.0, 4.0 + 0.06 * width), fig_h))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest")
    for r, name in enumerate(names):
        xs = [i for i, c in enumerate(groups[name]["per_channel"]) if not c["kept"]]
        if xs:
            ax.scatter(xs, [r] * len(xs), marker="x", s=10 if width > 64 else 18, c="red", linewidths=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n}  ({groups[n]['kept']}/{groups[n]['channels']}, {groups[n]['total']:.1f})"
                        for n in names], fontsize=7)
    ax.set_xlabel("channels, most to least informative (red x: removed)")
    ax.set_title(f"{title}; label: group (kept/total, sum in {prof['unit']})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label=prof["unit"])
    fig.tight_layout()
    return write_figure(path, fig)
