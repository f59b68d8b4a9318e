"""Frontier plots: L0 against one metric, one series per architecture/penalty.

Each series' own Pareto frontier is a step line (the best value reachable at or below each L0);
runs it dominates are faded. Series differ in colour, marker AND line style, so the plot still
reads printed in greyscale. Output bytes are deterministic: fixed size and dpi, and no software
version or date in the PNG metadata, so regenerating an unchanged report leaves git clean.

matplotlib is imported inside the function: `import saerun.report` must stay cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saerun.metrics import pareto_mask

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
L0_LABEL = "L0 (active latents per token)"
# y-axis label (with units) and direction of each metric we plot against L0.
METRICS: dict[str, tuple[str, bool]] = {
    "fvu": ("FVU (fraction of variance unexplained)", False),
    "ce_loss_recovered": ("CE loss recovered (fraction; 1 = clean model)", True),
    "delta_lm_loss": ("delta LM loss (nats per token: CE with SAE - clean CE)", False),
}
FIGSIZE, DPI = (9.4, 4.6), 120
LEGEND_IN = 2.75  # inches right of the axes for the legend, so it never hides a point


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _wants_log(values: list[float]) -> bool:
    """Log scale only when every value is positive and they span more than ~1.5 decades."""
    return min(values) > 0 and max(values) / min(values) > 30


def frontier_plot(rows: list[dict[str, Any]], metric: str, title: str, path: Path) -> bool:
    """Write the L0-vs-`metric` PNG at `path`; False (and no file) when no run has both values.

    rows need `series`, `l0` and `metric`; rows missing either number (or NaN) are left out.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter

    ylabel, higher_is_better = METRICS[metric]
    rows = [r for r in rows if _ok(r.get("l0")) and r["l0"] > 0 and _ok(r.get(metric))]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for i, name in enumerate(sorted({r["series"] for r in rows})):
        pts = sorted((r["l0"], r[metric]) for r in rows if r["series"] == name)
        front = pareto_mask([p[0] for p in pts], [p[1] for p in pts], higher_is_better)
        on = [p for p, keep in zip(pts, front, strict=True) if keep]
        off = [p for p, keep in zip(pts, front, strict=True) if not keep]
        style = dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)], markersize=6)
        ax.step([p[0] for p in on], [p[1] for p in on], where="post",
                linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=1.6,
                label=f"{name} ({len(on)}/{len(pts)} runs on its frontier)", **style)
        if off:  # dominated runs: same marker, faded, no line
            ax.plot([p[0] for p in off], [p[1] for p in off], linestyle="none", alpha=0.35,
                    **style)
    # Log L0: sweeps span decades of sparsity. Tick labels as plain numbers ("20", not "2x10^1").
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plain)
    # Minor ticks get plain labels too, but LogFormatter drops them when the axis spans many
    # decades (labels would overlap).
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))
    if _wants_log([r[metric] for r in rows]):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
    ax.set_xlabel(L0_LABEL)
    ax.set_ylabel(ylabel)
    better = "higher" if higher_is_better else "lower"
    ax.set_title(f"{title}\n(left and {better} is better; faded = dominated in its series)",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    # The legend sits outside the axes, right of them: inside, with eight series, it hid
    # points whatever the corner (and loc="best" searches every data point: slow).
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    # Fixed margins (tight_layout measures every tick label): room for a 3-line title.
    lines = title.count("\n") + 2
    fig.subplots_adjust(left=0.9 / FIGSIZE[0], right=1 - LEGEND_IN / FIGSIZE[0],
                        top=1 - (0.15 + 0.19 * lines) / FIGSIZE[1], bottom=0.6 / FIGSIZE[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    # metadata None drops the "Software: matplotlib vX" text chunk: bytes depend on data only.
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return True
