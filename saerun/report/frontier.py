"""The frontier report: per (model, site), L0 against FVU / CE loss recovered / delta LM loss.

Computed from the registry's rows afterwards, never by the trainer. Deterministic: the same
rows in any order give byte-identical Markdown (sorted rows, fixed number formats, no dates).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError
from saerun.metrics import pareto_mask
from saerun.report.plots import frontier_plot


def series_of(row: dict[str, Any]) -> str:
    """A recipe's name in tables and legends: architecture, plus the penalty where it has one."""
    penalty = row.get("penalty")
    return f"{row['architecture']}/{penalty}" if penalty else str(row["architecture"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _f(value: Any, fmt: str = ".4f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, fmt)


def _summary(rows: list[dict[str, Any]], on_front: list[bool]) -> list[str]:
    """Plain words: which recipes hold the L0-vs-FVU frontier where, and the sparsity trend."""
    lines = []
    front = sorted((r["l0"], r["series"]) for r, f in zip(rows, on_front, strict=True) if f)
    if front:
        spans: list[list[Any]] = []  # [series, lowest L0, highest L0, count]
        for l0, name in front:
            if spans and spans[-1][0] == name:
                spans[-1][2] = l0
                spans[-1][3] += 1
            else:
                spans.append([name, l0, l0, 1])
        words = [f"**{s}** for L0 {lo:.1f}-{hi:.1f} ({n} runs)" for s, lo, hi, n in spans]
        lines.append("On the L0-vs-FVU frontier, from sparse to dense: " + "; ".join(words) + ".")
    for name in sorted({r["series"] for r in rows}):
        pts = sorted(
            (r["sparsity_coefficient"], r["l0"], r["fvu"])
            for r in rows if r["series"] == name and r.get("sparsity_coefficient") is not None
        )
        if len(pts) >= 2:
            (c0, l0a, f0), (c1, l0b, f1) = pts[0], pts[-1]
            lines.append(
                f"{name}: raising the coefficient from {c0:g} to {c1:g} moves L0 "
                f"{l0a:.1f} -> {l0b:.1f} and FVU {f0:.3f} -> {f1:.3f}."
            )
    return lines


def write_frontier_report(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    if not rows:
        raise SaerunError("no finished runs match", hint="see `saerun ls`, or loosen the filters")
    out_dir = Path(out_dir)
    rows = [dict(r, series=series_of(r)) for r in rows]
    sites = sorted({(r["model"], r["hook_name"]) for r in rows})
    md = [
        "# Sparsity-reconstruction frontier",
        "",
        f"{len(rows)} finished runs. A run is starred when no other run at the same site has "
        "both lower-or-equal L0 and lower-or-equal FVU (the L0-vs-FVU Pareto frontier over "
        "all recipes). Metrics are on held-out tokens in the original activation space; "
        "definitions in DESIGN.md section 5.",
        "",
    ]
    for model, hook in sites:
        site_rows = sorted(
            (r for r in rows if (r["model"], r["hook_name"]) == (model, hook)),
            key=lambda r: (r["series"], r["l0"], r["run_id"]),
        )
        on_front = pareto_mask([r["l0"] for r in site_rows], [r["fvu"] for r in site_rows])
        md += [f"## {model} · `{hook}`", ""]
        base = f"frontier/{_slug(model)}__{_slug(hook)}"
        title = f"{model} · {hook}"
        plots = (("fvu", "L0 vs FVU"), ("ce_loss_recovered", "L0 vs CE loss recovered"),
                 ("delta_lm_loss", "L0 vs delta LM loss"))
        for metric, label in plots:
            rel = f"{base}__l0_{metric}.png"
            if frontier_plot(site_rows, metric, f"{title}: {label}", out_dir / rel):
                md.append(f"![{label}]({rel})")
        md += [
            "",
            "| run | recipe | d_sae | coefficient | lr | L0 | FVU | CE loss recovered | "
            "delta LM loss | dead % | shrinkage | frontier |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for r, star in zip(site_rows, on_front, strict=True):
            dead = r.get("dead_fraction")
            md.append(
                f"| `{r['run_id'][:10]}` | {r['series']} | {r['d_sae']} | "
                f"{_f(r.get('sparsity_coefficient'), 'g')} | {_f(r.get('lr'), 'g')} | "
                f"{_f(r['l0'], '.1f')} | {_f(r['fvu'])} | {_f(r.get('ce_loss_recovered'))} | "
                f"{_f(r.get('delta_lm_loss'))} | {_f(None if dead is None else 100 * dead, '.1f')} "
                f"| {_f(r.get('shrinkage'), '.3f')} | {'★' if star else ''} |"
            )
        md += ["", *_summary(site_rows, on_front), ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "frontier.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
