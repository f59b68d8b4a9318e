"""The frontier report: per (model, site), L0 against FVU / CE loss recovered / delta LM loss.

Input is the registry's flat result rows (one dict per finished run); output is
`out_dir/frontier.md` plus PNGs under `out_dir/frontier/`. Computed afterwards from the
registry, never by the trainer. Deterministic: the same rows in any order give byte-identical
Markdown (everything sorted, fixed number formats, no dates), so a checked-in report only
changes in git when the results do.

Row keys read: run_id, model, hook_name, architecture, penalty, sparsity_coefficient, d_sae, lr,
l0, fvu, ce_loss_recovered, delta_lm_loss, dead_fraction, shrinkage (metrics may be missing or
NaN: shown as "-", never on a frontier).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError
from saerun.metrics import pareto_mask
from saerun.report.plots import frontier_plot

# (metric, file-name suffix, caption) of the plots written per site.
PLOTS = (
    ("fvu", "l0_fvu", "L0 vs FVU"),
    ("ce_loss_recovered", "l0_ce", "L0 vs CE loss recovered"),
    ("delta_lm_loss", "l0_delta_lm", "L0 vs delta LM loss"),
)
STAR = "★"


def series_of(row: dict[str, Any]) -> str:
    """A recipe's name in tables and legends: `architecture/penalty`, or the architecture alone."""
    penalty = row.get("penalty")
    return f"{row['architecture']}/{penalty}" if penalty else str(row["architecture"])


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _slug(text: str) -> str:
    """A file-name-safe version of a model name or hook name (paths and dots kept readable)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "_"


def _f(value: Any, fmt: str) -> str:
    """Fixed formatting; missing or NaN shows as "-"."""
    return format(value, fmt) if _ok(value) else "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")  # a "|" inside a cell would split the table


def _spans(points: list[tuple[float, str]]) -> list[str]:
    """Frontier runs sorted by L0 -> "series for L0 a-b (n runs)" per contiguous stretch."""
    spans: list[list[Any]] = []  # [series, lowest L0, highest L0, count]
    for l0, name in sorted(points):
        if spans and spans[-1][0] == name:
            spans[-1][2] = l0
            spans[-1][3] += 1
        else:
            spans.append([name, l0, l0, 1])
    return [f"**{s}** at L0 {lo:.1f}" if n == 1 else f"**{s}** at L0 {lo:.1f}-{hi:.1f} ({n} runs)"
            for s, lo, hi, n in spans]


def _frontier_words(rows: list[dict[str, Any]], front: list[bool], what: str) -> list[str]:
    """Who holds one frontier, from sparse to dense, and which series never reach it."""
    held = [(r["l0"], r["series"]) for r, on in zip(rows, front, strict=True) if on]
    if not held:
        return []
    missing = sorted({r["series"] for r in rows} - {s for _, s in held})
    words = f"The {what} frontier, from sparse to dense: " + "; ".join(_spans(held)) + "."
    if missing:
        words += " No run of " + ", ".join(f"**{s}**" for s in missing) + " is on it."
    return [words]


def _trend_words(rows: list[dict[str, Any]]) -> list[str]:
    """Per series: how L0 and FVU move as the sparsity coefficient grows (mean per coefficient,
    since a sweep may hold several learning rates or seeds at one coefficient)."""
    lines = []
    for name in sorted({r["series"] for r in rows}):
        by_coef: dict[float, list[tuple[float, float]]] = {}
        for r in rows:
            c = r.get("sparsity_coefficient")
            if r["series"] == name and _ok(c) and _ok(r.get("l0")) and _ok(r.get("fvu")):
                by_coef.setdefault(float(c), []).append((r["l0"], r["fvu"]))
        if len(by_coef) < 2:
            continue
        coefs = sorted(by_coef)
        l0s = [sum(p[0] for p in by_coef[c]) / len(by_coef[c]) for c in coefs]
        fvus = [sum(p[1] for p in by_coef[c]) / len(by_coef[c]) for c in coefs]
        steps = [b - a for a, b in zip(fvus, fvus[1:], strict=False)]
        if all(d > 0 for d in steps) or all(d < 0 for d in steps):
            how = "rises steadily" if steps[0] > 0 else "falls steadily"
        else:
            how = "moves non-monotonically"
        n_runs = sum(len(v) for v in by_coef.values())
        averaged = " (means over runs sharing a coefficient)" if n_runs > len(coefs) else ""
        lines.append(
            f"{name}: as the coefficient grows from {coefs[0]:g} to {coefs[-1]:g}, L0 goes "
            f"{l0s[0]:.1f} -> {l0s[-1]:.1f} and FVU {how}, "
            f"{fvus[0]:.4f} -> {fvus[-1]:.4f}{averaged}."
        )
    return lines


def _site_section(model: str, hook: str, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Plots, table and summary of one (model, hook_name); rows already sorted."""
    l0s = [r.get("l0") for r in rows]
    fvu_front = pareto_mask(l0s, [r.get("fvu") for r in rows])
    has_ce = any(_ok(r.get("ce_loss_recovered")) for r in rows)
    ce_front = pareto_mask(l0s, [r.get("ce_loss_recovered") for r in rows], higher_is_better=True)
    md = [f"## {_cell(model)} · `{_cell(hook)}`", ""]
    base = f"frontier/{_slug(model)}__{_slug(hook)}"
    for metric, suffix, caption in PLOTS:
        rel = f"{base}__{suffix}.png"
        if frontier_plot(rows, metric, f"{model} · {hook}: {caption}", out_dir / rel):
            md.append(f"![{caption}]({rel})")
    header = ("| run | series | d_sae | coefficient | lr | L0 | FVU | CE loss recovered "
              "| delta LM loss | dead % | shrinkage | L0-FVU frontier |")
    align = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
    if has_ce:
        header += " L0-CE frontier |"
        align += ":---:|"
    md += ["", header, align]
    for r, on_fvu, on_ce in zip(rows, fvu_front, ce_front, strict=True):
        dead = r.get("dead_fraction")
        cells = [
            f"`{_cell(str(r['run_id'])[:10])}`", _cell(r["series"]), _cell(r.get("d_sae", "-")),
            _f(r.get("sparsity_coefficient"), "g"), _f(r.get("lr"), "g"),
            _f(r.get("l0"), ".1f"), _f(r.get("fvu"), ".4f"),
            _f(r.get("ce_loss_recovered"), ".4f"), _f(r.get("delta_lm_loss"), ".4f"),
            _f(100 * dead if _ok(dead) else None, ".1f"), _f(r.get("shrinkage"), ".3f"),
            STAR if on_fvu else "",
        ]
        if has_ce:
            cells.append(STAR if on_ce else "")
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    words = _frontier_words(rows, fvu_front, "L0-vs-FVU")
    if has_ce:
        words += _frontier_words(rows, ce_front, "L0-vs-CE-loss-recovered")
    words += _trend_words(rows)
    md += [f"- {w}" for w in words] or ["- No run here has both L0 and FVU."]
    return [*md, ""]


def write_frontier_report(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write `out_dir/frontier.md` and its PNGs under `out_dir/frontier/`; return the .md path.

    Raises SaerunError (and writes nothing) when `rows` is empty.
    """
    if not rows:
        raise SaerunError(
            "no finished runs match the filters",
            hint="`saerun ls` lists the registry's runs; loosen the KEY=VALUE filters",
        )
    out_dir = Path(out_dir)
    rows = [dict(r, series=series_of(r)) for r in rows]
    md = [
        "# Sparsity-reconstruction frontier",
        "",
        f"{len(rows)} finished runs. Metrics are on held-out tokens in the original activation "
        "space (definitions: DESIGN.md section 5). L0 is active latents per token; dead % is "
        "the share of latents that never fired on the eval tokens. "
        f"{STAR} in *L0-FVU frontier* marks runs that no other run at the same (model, site), "
        "of any series, beats on both L0 (lower or equal) and FVU (lower or equal, one of the "
        "two strictly); *L0-CE frontier* does the same with CE loss recovered (higher is "
        "better). The plots draw each series' own frontier.",
        "",
    ]
    for model, hook in sorted({(str(r["model"]), str(r["hook_name"])) for r in rows}):
        site_rows = sorted(
            (r for r in rows if (str(r["model"]), str(r["hook_name"])) == (model, hook)),
            key=lambda r: (r["series"], r["l0"] if _ok(r.get("l0")) else math.inf,
                           str(r["run_id"])),
        )
        md += _site_section(model, hook, site_rows, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "frontier.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
