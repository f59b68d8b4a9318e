"""The frontier report: per (model, site), L0 against FVU / CE loss recovered / delta LM loss,
and the same comparison at matched training compute.

Input is the registry's flat result rows (one dict per finished run); output is
`out_dir/frontier.md` plus PNGs under `out_dir/frontier/`. Computed afterwards from the
registry, never by the trainer. Deterministic: the same rows in any order give byte-identical
Markdown (everything sorted, fixed number formats, no dates), so a checked-in report only
changes in git when the results do.

Row keys read: run_id, model, hook_name, architecture, penalty, sparsity_coefficient, d_sae, lr,
l0, fvu, ce_loss_recovered, delta_lm_loss, dead_fraction, shrinkage, tokens_trained,
step_flops_per_token, sae.*
(metrics may be missing or NaN: shown as "-", never on a frontier).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saerun.pareto import pareto_mask
from saerun.report.common import STAR, Table, by_site, cell, ok, prepare, slug
from saerun.report.figures import frontier_plot

# (metric, file-name suffix, caption) of the plots written per site.
PLOTS = (
    ("fvu", "l0_fvu", "L0 vs FVU"),
    ("ce_loss_recovered", "l0_ce", "L0 vs CE loss recovered"),
    ("delta_lm_loss", "l0_delta_lm", "L0 vs delta LM loss"),
)
# Runs whose training FLOPs are within this ratio of a class's cheapest run are "at matched
# compute" (the Gated paper matched widths to a few percent; 10% leaves room for rounding).
COMPUTE_TOLERANCE = 1.10
MAX_COMPUTE_CLASSES = 2  # per site: the classes with the most series, then the most runs


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


def frontier_words(rows: list[dict[str, Any]], front: list[bool], what: str) -> list[str]:
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
            if r["series"] == name and ok(c) and ok(r.get("l0")) and ok(r.get("fvu")):
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


# -- compute ------------------------------------------------------------------------------------

def training_flops(row: dict[str, Any]) -> float:
    """Training FLOPs of a run: the FLOPs per token of one step, counted once by the planner and
    stored with the run (`step_flops_per_token`), times the tokens trained. NaN when the row has
    no count (a run registered before the registry stored it): never recounted here."""
    tokens = row.get("tokens_trained") or row.get("train_tokens")
    per_token = row.get("step_flops_per_token")
    return float(per_token) * float(tokens) if ok(per_token) and ok(tokens) else math.nan


def compute_classes(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs grouped by training FLOPs: sorted by FLOPs, a class holds every run within
    COMPUTE_TOLERANCE of its cheapest. Only classes with two or more series are kept, the
    MAX_COMPUTE_CLASSES with the most series (then runs), in FLOPs order."""
    costed = sorted((r for r in rows if ok(r.get("train_flops"))),
                    key=lambda r: (r["train_flops"], str(r["run_id"])))
    classes: list[list[dict[str, Any]]] = []
    for r in costed:
        if classes and r["train_flops"] <= classes[-1][0]["train_flops"] * COMPUTE_TOLERANCE:
            classes[-1].append(r)
        else:
            classes.append([r])
    mixed = [c for c in classes if len({r["series"] for r in c}) > 1]
    mixed.sort(key=lambda c: (-len({r["series"] for r in c}), -len(c), c[0]["train_flops"]))
    kept = mixed[:MAX_COMPUTE_CLASSES]
    return sorted(kept, key=lambda c: c[0]["train_flops"])


# -- the report -------------------------------------------------------------------------------

RUN_COLUMNS = [
    ("run", "run", ""), ("series", "series", ""), ("d_sae", "d_sae", ""),
    ("coefficient", "coefficient", "g"), ("lr", "lr", "g"), ("l0", "L0", ".1f"),
    ("fvu", "FVU", ".4f"), ("ce_loss_recovered", "CE loss recovered", ".4f"),
    ("delta_lm_loss", "delta LM loss", ".4f"), ("dead_pct", "dead %", ".1f"),
    ("shrinkage", "shrinkage", ".3f"),
]


def _site_section(model: str, hook: str, rows: list[dict[str, Any]], out_dir: Path | None,
                  table_rows: list[dict[str, Any]]) -> list[str]:
    """Plots, table and summary of one (model, hook_name); rows already sorted. Appends the
    table's rows to `table_rows`."""
    l0s = [r.get("l0") for r in rows]
    fvu_front = pareto_mask(l0s, [r.get("fvu") for r in rows])
    has_ce = any(ok(r.get("ce_loss_recovered")) for r in rows)
    ce_front = pareto_mask(l0s, [r.get("ce_loss_recovered") for r in rows], higher_is_better=True)
    md = [f"## {cell(model)} · `{cell(hook)}`", ""]
    base = f"frontier/{slug(model)}__{slug(hook)}"
    for metric, suffix, caption in PLOTS:
        rel = f"{base}__{suffix}.png"
        if out_dir is not None and frontier_plot(rows, metric, f"{model} · {hook}: {caption}",
                                                 out_dir / rel):
            md.append(f"![{caption}]({rel})")
    columns = RUN_COLUMNS + [("on_fvu", "L0-FVU frontier", "")]
    if has_ce:
        columns.append(("on_ce", "L0-CE frontier", ""))
    table = Table("runs", columns)
    for r, on_fvu, on_ce in zip(rows, fvu_front, ce_front, strict=True):
        dead = r.get("dead_fraction")
        table.rows.append({
            "run": f"`{str(r['run_id'])[:10]}`", "run_id": r["run_id"], "model": model,
            "hook_name": hook, "series": r["series"], "d_sae": r.get("d_sae", "-"),
            "coefficient": r.get("sparsity_coefficient"), "lr": r.get("lr"), "l0": r.get("l0"),
            "fvu": r.get("fvu"), "ce_loss_recovered": r.get("ce_loss_recovered"),
            "delta_lm_loss": r.get("delta_lm_loss"),
            "dead_pct": 100 * dead if ok(dead) else None, "shrinkage": r.get("shrinkage"),
            "on_fvu": STAR if on_fvu else "", "on_ce": STAR if on_ce else "",
            "train_flops": r.get("train_flops"),
        })
    md += ["", *table.markdown(), ""]
    words = frontier_words(rows, fvu_front, "L0-vs-FVU")
    if has_ce:
        words += frontier_words(rows, ce_front, "L0-vs-CE-loss-recovered")
    words += _trend_words(rows)
    md += [f"- {w}" for w in words] or ["- No run here has both L0 and FVU."]
    md += ["", *_compute_section(model, hook, rows, out_dir, base)]
    table_rows.extend(table.rows)
    return [*md, ""]


def _compute_section(model: str, hook: str, rows: list[dict[str, Any]], out_dir: Path | None,
                     base: str) -> list[str]:
    """The matched-compute view: per series its training cost, then the L0-FVU frontier within
    each class of runs trained with the same FLOPs."""
    md = ["### At matched training compute", ""]
    costs: dict[str, set[float]] = {}
    for r in rows:
        if ok(r.get("train_flops")):
            costs.setdefault(r["series"], set()).add(r["train_flops"])
    uncounted = sum(1 for r in rows if not ok(r.get("step_flops_per_token")))
    if uncounted and costs:
        md += [f"- {uncounted} of these {len(rows)} runs have no step FLOPs in the registry "
               "(registered by an older saerun): they are left out of the compute classes.", ""]
    if not costs:
        why = " (no step FLOPs in the registry: registered by an older saerun)" if uncounted \
            else ""
        return [*md, f"- The training cost of these runs is unknown{why}.", ""]
    md.append("Training FLOPs = FLOPs per token of one step (matrix products of the loss and "
              "its backward, `saerun.sae.cost`) × tokens trained.")
    md += ["", "| series | training TFLOP (min-max) |", "|---|---:|"]
    for name in sorted(costs):
        lo, hi = min(costs[name]) / 1e12, max(costs[name]) / 1e12
        md.append(f"| {cell(name)} | {lo:.3g}" + (f"-{hi:.3g}" if hi > lo else "") + " |")
    md.append("")
    classes = compute_classes(rows)
    if not classes:
        return [*md, "- No two series were trained at the same compute (within 10%).", ""]
    for i, group in enumerate(classes):
        lo = group[0]["train_flops"] / 1e12
        names = sorted({r["series"] for r in group})
        title = f"{len(group)} runs at {lo:.3g} TFLOP (+{COMPUTE_TOLERANCE - 1:.0%})"
        rel = f"{base}__compute{i + 1}_l0_fvu.png"
        if out_dir is not None and frontier_plot(
                group, "fvu", f"{model} · {hook}: L0 vs FVU at matched compute\n{title}",
                out_dir / rel):
            md.append(f"![L0 vs FVU, {title}]({rel})")
            md.append("")
        front = pareto_mask([r.get("l0") for r in group], [r.get("fvu") for r in group])
        words = frontier_words(group, front, f"matched-compute ({title}) L0-vs-FVU")
        md.append(f"- Series in this class: {', '.join(names)}.")
        md += [f"- {w}" for w in words]
        md.append("")
    return md


def build_frontier(rows: list[dict[str, Any]], out_dir: Path | None) -> tuple[str, list[Table]]:
    """The Markdown text and tables of the frontier report (plots written when out_dir)."""
    rows = prepare(rows)
    for r in rows:
        r["train_flops"] = training_flops(r)
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
    table_rows: list[dict[str, Any]] = []
    for model, hook, site_rows in by_site(rows):
        md += _site_section(model, hook, site_rows, out_dir, table_rows)
    columns = [("run_id", "run_id", ""), ("model", "model", ""), ("hook_name", "hook_name", "")]
    columns += RUN_COLUMNS[1:] + [("on_fvu", "on_fvu_frontier", ""),
                                  ("on_ce", "on_ce_frontier", ""),
                                  ("train_flops", "train_flops", "g")]
    return "\n".join(md), [Table("runs", columns, table_rows)]
