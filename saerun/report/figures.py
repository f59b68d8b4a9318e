"""Every figure of the reports: the frontier plots (`frontier_plot`) and the small multiples of
the death, LR, curves and post-hoc reports (`line_panels`, `bars`, `histograms`).

One style per series everywhere: a colour, a marker AND a line style (so a plot still reads in
greyscale), picked by the series' index in a sorted list of names. Output bytes are
deterministic (fixed size and dpi, no software version in the PNG metadata).

matplotlib is imported inside the functions: `import saerun.report` must stay cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saerun.pareto import pareto_mask

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
LINESTYLES = ("-", "--", ":", "-.")
HATCHES = ("", "//", "..", "xx", "\\\\", "++")
DPI = 110
# The frontier plot: L0 against one metric, the y-axis label (with units) and direction of each.
L0_LABEL = "L0 (active latents per token)"
METRICS: dict[str, tuple[str, bool]] = {
    "fvu": ("FVU (fraction of variance unexplained)", False),
    "ce_loss_recovered": ("CE loss recovered (fraction; 1 = clean model)", True),
    "delta_lm_loss": ("delta LM loss (nats per token: CE with SAE - clean CE)", False),
}
FRONTIER_FIGSIZE, FRONTIER_DPI = (9.4, 4.6), 120
LEGEND_IN = 2.75  # inches right of the frontier axes for the legend, so it never hides a point


def style(i: int) -> dict[str, Any]:
    """Colour, marker and line style of the i-th series (stable across every figure)."""
    return dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)],
                linestyle=LINESTYLES[i % len(LINESTYLES)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path, dpi: int = DPI) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    # metadata None drops the "Software: matplotlib vX" text chunk: bytes depend on data only.
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def _plain_ticks(axis: Axis, minor: bool = True) -> None:
    """Log-axis tick labels as plain numbers ("20", "0.001"), not "2x10^1". Minor ticks get
    plain labels too, but LogFormatter drops them when the axis spans many decades (labels
    would overlap)."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    if minor:
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.6)))


def wants_log(values: list[float]) -> bool:
    """Log scale only when every value is positive and they span more than ~1.5 decades."""
    vals = [v for v in values if math.isfinite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 30


@dataclass
class Line:
    label: str  # legend entry ("" for none: runs after the first of a series)
    xs: list[float]
    ys: list[float]
    style_index: int
    alpha: float = 1.0
    marker: bool = True
    width: float = 1.5
    best: tuple[float, float] | None = None  # drawn as a large star


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    logx: bool | None = None  # None: decide from the data
    logy: bool | None = None
    hline: float | None = None  # a dashed reference line (e.g. 1.0 = clean model)
    tokens_x: bool = False  # x is a token count: tick labels as 250k, 1.5M
    xticks: list[float] | None = None  # exactly these x ticks (e.g. the tested LRs)


def frontier_plot(rows: list[dict[str, Any]], metric: str, title: str, path: Path) -> bool:
    """Write the L0-vs-`metric` PNG at `path`; False (and no file) when no run has both values.

    rows need `series`, `l0` and `metric`; rows missing either number (or NaN) are left out.
    Each series' own Pareto frontier is a step line (the best value reachable at or below each
    L0); runs it dominates are faded.
    """
    ylabel, higher_is_better = METRICS[metric]
    rows = [r for r in rows if _number(r.get("l0")) and r["l0"] > 0 and _number(r.get(metric))]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FRONTIER_FIGSIZE, dpi=FRONTIER_DPI)
    for i, name in enumerate(sorted({r["series"] for r in rows})):
        pts = sorted((r["l0"], r[metric]) for r in rows if r["series"] == name)
        front = pareto_mask([p[0] for p in pts], [p[1] for p in pts], higher_is_better)
        on = [p for p, keep in zip(pts, front, strict=True) if keep]
        off = [p for p, keep in zip(pts, front, strict=True) if not keep]
        st = style(i)
        marks = dict(color=st["color"], marker=st["marker"], markersize=6)
        ax.step([p[0] for p in on], [p[1] for p in on], where="post", linestyle=st["linestyle"],
                linewidth=1.6, label=f"{name} ({len(on)}/{len(pts)} runs on its frontier)",
                **marks)
        if off:  # dominated runs: same marker, faded, no line
            ax.plot([p[0] for p in off], [p[1] for p in off], linestyle="none", alpha=0.35,
                    **marks)
    ax.set_xscale("log")  # sweeps span decades of sparsity
    _plain_ticks(ax.xaxis)
    if wants_log([r[metric] for r in rows]):
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis, minor=False)
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
    width, height = FRONTIER_FIGSIZE
    fig.subplots_adjust(left=0.9 / width, right=1 - LEGEND_IN / width,
                        top=1 - (0.15 + 0.19 * lines) / height, bottom=0.6 / height)
    _save(fig, path, FRONTIER_DPI)
    return True


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _token_ticks(axis: Axis) -> None:
    from matplotlib.ticker import FuncFormatter

    def short(v: float, _pos: int) -> str:
        if abs(v) >= 1e6:
            return f"{v / 1e6:g}M"
        return f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}"

    axis.set_major_formatter(FuncFormatter(short))


def line_panels(panels: list[Panel], title: str, path: Path, ncols: int = 2) -> bool:
    """Panels of lines sharing one legend (below the figure); False (no file) if all empty."""
    panels = [p for p in panels if any(_finite_pairs(ln) for ln in p.lines)]
    if not panels:
        return False
    plt = _pyplot()
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    n_labels = len({ln.label for p in panels for ln in p.lines if ln.label})
    top, bottom = 0.5 + 0.22 * (title.count("\n") + 1), 0.2 + 0.22 * math.ceil(n_labels / 4)
    width, height = 5.2 * ncols, 3.3 * nrows + top + bottom
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=DPI, squeeze=False)
    # Fixed margins in inches, not tight_layout: measuring every tick label of every panel
    # was most of the time of a 1,000-run report.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.25 / width, top=1 - top / height,
                        bottom=(bottom + 0.5) / height, wspace=0.3, hspace=0.45)
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        xs_all, ys_all = [], []
        for ln in panel.lines:
            pts = _finite_pairs(ln)
            if not pts:
                continue
            st = style(ln.style_index)
            h = ax.plot([p[0] for p in pts], [p[1] for p in pts], color=st["color"],
                        linestyle=st["linestyle"], marker=st["marker"] if ln.marker else None,
                        markersize=4.5, linewidth=ln.width, alpha=ln.alpha)[0]
            if ln.label and ln.label not in handles:
                handles[ln.label] = h
            if ln.best is not None:
                ax.plot([ln.best[0]], [ln.best[1]], marker="*", markersize=15,
                        color=st["color"], markeredgecolor="black", linestyle="none")
            xs_all += [p[0] for p in pts]
            ys_all += [p[1] for p in pts]
        logx = wants_log(xs_all) if panel.logx is None else panel.logx
        logy = wants_log(ys_all) if panel.logy is None else panel.logy
        if logx and min(xs_all) > 0:
            ax.set_xscale("log")
            _plain_ticks(ax.xaxis)
        if logy and min(ys_all) > 0:
            ax.set_yscale("log")
            _plain_ticks(ax.yaxis)
        if panel.xticks:
            from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

            ax.xaxis.set_major_locator(FixedLocator(panel.xticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(panel.xticks, [f"{v:g}" for v in panel.xticks])
        if panel.tokens_x and not logx:
            _token_ticks(ax.xaxis)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="0.3", linestyle=(0, (4, 3)), linewidth=0.9)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center",
                   bbox_to_anchor=(0.5, 0.1 / height), ncol=min(4, len(handles)), fontsize=8,
                   frameon=False)
    _save(fig, path)
    return True


def _finite_pairs(ln: Line) -> list[tuple[float, float]]:
    return [(x, y) for x, y in zip(ln.xs, ln.ys, strict=True)
            if isinstance(x, int | float) and isinstance(y, int | float)
            and math.isfinite(x) and math.isfinite(y)]


def bars(labels: list[str], values: dict[str, list[float]], xlabel: str, title: str,
         path: Path) -> bool:
    """Horizontal grouped bars: one group per label, one bar per `values` key (hatched so the
    bars differ in greyscale). NaN bars are left out."""
    if not labels:
        return False
    plt = _pyplot()
    n_keys = len(values)
    height = 0.8 / max(n_keys, 1)
    fig_w, fig_h = 9.0, 1.5 + 0.28 * n_keys * len(labels)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=DPI)
    left = 0.3 + 0.062 * max(len(x) for x in labels)  # inches for the longest label at 8 pt
    fig.subplots_adjust(left=left / fig_w, right=1 - 0.3 / fig_w, top=1 - 0.6 / fig_h,
                        bottom=0.55 / fig_h)
    for j, (key, vals) in enumerate(values.items()):
        ys = [i + (j - (n_keys - 1) / 2) * height for i in range(len(labels))]
        keep = [(y, v) for y, v in zip(ys, vals, strict=True) if math.isfinite(v)]
        ax.barh([y for y, _ in keep], [v for _, v in keep], height=height * 0.92,
                color=f"C{j}", hatch=HATCHES[j % len(HATCHES)], edgecolor="black",
                linewidth=0.5, label=key)
        for y, v in keep:
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()  # first label on top, as in the table
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.35)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.12)
    _save(fig, path)
    return True


def histograms(panels: list[tuple[str, list[tuple[str, list[float], int]]]], xlabel: str,
               title: str, path: Path, bins: list[float], ncols: int = 3) -> bool:
    """Small multiples of step histograms: panels = [(panel title, [(label, values, style
    index)])]. Counts are shown as a share of each run's latents (percent)."""
    panels = [p for p in panels if any(v for _, v, _ in p[1])]
    if not panels:
        return False
    plt = _pyplot()
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width, height = 4.6 * ncols, 3.4 * nrows + 0.8
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=DPI, squeeze=False)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, top=1 - 0.75 / height,
                        bottom=0.6 / height, wspace=0.3, hspace=0.45)
    for ax, (name, hists) in zip(axes.flat, panels, strict=False):
        for label, values, idx in hists:
            if not values:
                continue
            st = style(idx)
            weights = [100.0 / len(values)] * len(values)
            ax.hist(values, bins=bins, weights=weights, histtype="step", linewidth=1.4,
                    color=st["color"], linestyle=st["linestyle"], label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("latents (% of the run's)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        # Headroom for the legend above the bars (a fixed place: "best" is slow on big data).
        ax.set_ylim(0, ax.get_ylim()[1] * (1.25 + 0.1 * len(hists)))
        ax.legend(fontsize=7, loc="upper center")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return True
