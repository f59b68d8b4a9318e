"""Frontier plots: one series per recipe, its Pareto frontier as a step line, dominated runs
faded. Markers and line styles differ per series so the plot reads in greyscale too.
Deterministic bytes: fixed size and dpi, no date or version in the PNG metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saerun.metrics import pareto_mask

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", ":", "-."]
AXES = {
    "l0": "L0 (active latents per token, log scale)",
    "fvu": "FVU (fraction of variance unexplained)",
    "ce_loss_recovered": "CE loss recovered (1 = as good as the clean model)",
    "delta_lm_loss": "delta LM loss (nats per token, CE with SAE - clean CE)",
}
HIGHER_IS_BETTER = {"ce_loss_recovered": True, "fvu": False, "delta_lm_loss": False}


def frontier_plot(rows: list[dict[str, Any]], metric: str, title: str, path: Path) -> bool:
    """Write an L0-vs-metric plot; False (no file) when no run has the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get(metric) is not None and r.get("l0") is not None]
    if not rows:
        return False
    series = sorted({r["series"] for r in rows})
    better_high = HIGHER_IS_BETTER[metric]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, name in enumerate(series):
        pts = sorted((r["l0"], r[metric]) for r in rows if r["series"] == name)
        front = pareto_mask([p[0] for p in pts], [p[1] for p in pts], better_high)
        color = f"C{i % 10}"
        marker, style = MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)]
        on = [p for p, f in zip(pts, front, strict=True) if f]
        off = [p for p, f in zip(pts, front, strict=True) if not f]
        ax.step([p[0] for p in on], [p[1] for p in on], where="post", color=color,
                linestyle=style, marker=marker, label=f"{name} ({len(pts)} runs)")
        if off:
            ax.scatter([p[0] for p in off], [p[1] for p in off], color=color, marker=marker,
                       alpha=0.3)
    ax.set_xscale("log")
    ax.set_xlabel(AXES["l0"])
    ax.set_ylabel(AXES[metric])
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="frontier lines; faded = dominated", title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True
