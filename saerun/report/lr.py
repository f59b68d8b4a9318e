"""The LR-sensitivity report: each metric against the learning rate, per recipe.

An *LR sweep* is a set of runs identical in every resolved value but `train.lr` (seeds kept
apart). For each sweep and metric (final training loss, FVU, dead fraction, gap to the
frontier) the best LR is marked, and the optimum's flatness is the range of tested LRs, around
the best and contiguous with it, whose value is within 5% of the best.

Gap to the frontier: FVU / (the best FVU any run at the site reaches at or below this run's
L0) - 1; 0 on the L0-FVU frontier, 0.25 = 25% more unexplained variance than the frontier.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saerun.report.common import (
    Table,
    by_site,
    frontier_points,
    frontier_value,
    ok,
    prepare,
    recipe_key,
    slug,
)
from saerun.report.figures import Line, Panel, line_panels

FLAT_TOLERANCE = 0.05
# (key, label with units, what "best" means: the lowest value)
METRICS = (
    ("final_loss", "final training loss (objective, normalised units)"),
    ("fvu", "FVU (fraction of variance unexplained)"),
    ("dead_pct", "dead latents (% of d_sae, eval)"),
    ("frontier_gap", "gap to the L0-FVU frontier (FVU / frontier FVU - 1)"),
)


def flat_range(points: list[tuple[float, float]],
               tol: float = FLAT_TOLERANCE) -> tuple[float, float, float, bool, bool]:
    """(best lr, lowest lr, highest lr, open below, open above) for (lr, value) points, lower
    values better. The range grows from the best LR through neighbouring tested LRs while their
    value stays within `tol` of the best (value <= best + tol * |best|; a best of 0 admits only
    0). `open` says the range reaches the end of the sweep: the optimum may be flatter still."""
    pts = sorted((lr, v) for lr, v in points if ok(lr) and ok(v))
    if not pts:
        raise ValueError("no finite (lr, value) point")
    i_best = min(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0]))
    best = pts[i_best][1]
    limit = best + tol * abs(best)
    lo = hi = i_best
    while lo > 0 and pts[lo - 1][1] <= limit:
        lo -= 1
    while hi < len(pts) - 1 and pts[hi + 1][1] <= limit:
        hi += 1
    return pts[i_best][0], pts[lo][0], pts[hi][0], lo == 0, hi == len(pts) - 1


def final_loss(curve: list[dict[str, Any]]) -> float:
    """Mean training loss over the last quarter of logged points (one batch is noisy)."""
    losses = [p["loss"] for p in curve if ok(p.get("loss"))]
    if not losses:
        return math.nan
    tail = losses[-max(1, len(losses) // 4):]
    return sum(tail) / len(tail)


def lr_sweeps(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs grouped by everything but the LR; only groups with 2+ distinct LRs, sorted."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if ok(r.get("lr")):
            groups.setdefault(recipe_key(r, drop=("train.lr",)), []).append(r)
    out = [sorted(g, key=lambda r: (r["lr"], r["run_id"])) for g in groups.values()
           if len({r["lr"] for r in g}) > 1]
    return sorted(out, key=lambda g: (g[0]["series"], g[0]["knob"], g[0].get("seed") or 0,
                                      g[0]["run_id"]))


def _label(sweep: list[dict[str, Any]], sweeps: list[list[dict[str, Any]]]) -> str:
    """The series, plus the knob / width / seed when another sweep of the series differs in it."""
    first = sweep[0]
    same = [s[0] for s in sweeps if s[0]["series"] == first["series"]]
    label = first["series"]
    for key, show in (("knob", str), ("d_sae", lambda v: f"d={v}"),
                      ("seed", lambda v: f"seed {v}"), ("remedy", str)):
        if len({str(r.get(key)) for r in same}) > 1:
            label += f" {show(first.get(key))}"
    return label


def build_lr(rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
             out_dir: Path | None) -> tuple[str, list[Table]]:
    rows = prepare(rows)
    md = [
        "# Learning-rate sensitivity",
        "",
        f"{len(rows)} finished runs. An LR sweep is a set of runs identical in every resolved "
        "value but the learning rate. Per sweep and metric: the best tested LR (★ on the "
        f"plots) and the flat range, the tested LRs next to the best within "
        f"{FLAT_TOLERANCE:.0%} of its value (\"≥\" when the range reaches the end of the sweep, "
        "so the optimum may be flatter). Final loss: the mean of the last quarter of logged "
        "training losses (the objective, including the sparsity penalty, in normalised "
        "units). Gap to the frontier: FVU / (best FVU of any run at the site with L0 at most "
        "this run's) - 1.",
        "",
    ]
    points = Table("points", [("model", "model", ""), ("hook_name", "hook_name", ""),
                              ("sweep", "sweep", ""), ("run_id", "run_id", ""), ("lr", "lr", "g"),
                              ("l0", "L0", ".1f"), *[(k, k, ".4g") for k, _ in METRICS]])
    summary = Table("flatness", [
        ("model", "model", ""), ("hook_name", "hook_name", ""), ("sweep", "sweep", ""),
        ("metric", "metric", ""), ("n", "LRs", ""), ("best_lr", "best LR", "g"),
        ("best", "best value", ".4g"), ("lo", "flat from", "g"), ("hi", "flat to", "g"),
        ("decades", "flat width (decades)", ".2f"), ("range", "flat range", ""),
    ])
    any_sweep = False
    for model, hook, site_rows in by_site(rows):
        front = frontier_points([(r.get("l0"), r.get("fvu")) for r in site_rows])
        for r in site_rows:
            on_front = frontier_value(front, r["l0"]) if ok(r.get("l0")) else math.nan
            r["frontier_gap"] = (r["fvu"] / on_front - 1) if ok(r.get("fvu")) and ok(on_front) \
                and on_front > 0 else math.nan
            r["final_loss"] = final_loss(curves.get(r["run_id"], []))
            r["dead_pct"] = 100 * r["dead_fraction"] if ok(r.get("dead_fraction")) else math.nan
        sweeps = lr_sweeps(site_rows)
        md += [f"## {model} · `{hook}`", ""]
        if not sweeps:
            md += ["- No LR sweep here: no two runs differ only in the learning rate. Train one "
                   "recipe at several `train.lr` values (`sweep: {grid: {train.lr: [...]}}`).",
                   ""]
            continue
        any_sweep = True
        labels = [_label(s, sweeps) for s in sweeps]
        site_summary = []
        for sweep, label in zip(sweeps, labels, strict=True):
            for r in sweep:
                points.rows.append({"model": model, "hook_name": hook, "sweep": label, **{
                    k: r.get(k) for k in ("run_id", "lr", "l0", *[m for m, _ in METRICS])}})
            for key, _ in METRICS:
                pts = [(r["lr"], r[key]) for r in sweep if ok(r.get(key))]
                if pts:
                    b_lr, lo, hi, open_lo, open_hi = flat_range(pts)
                    b_val = min(v for lr, v in pts if lr == b_lr)
                    site_summary.append({
                        "model": model, "hook_name": hook, "sweep": label, "metric": key,
                        "n": len({p[0] for p in pts}), "best_lr": b_lr, "best": b_val, "lo": lo,
                        "hi": hi, "decades": math.log10(hi / lo),
                        "range": (f"{'≤' if open_lo else ''}{lo:g} – {hi:g}"
                                  f"{' (≥)' if open_hi else ''}"),
                    })
        summary.rows += site_summary
        if out_dir is not None:
            rel = f"lr/{slug(model)}__{slug(hook)}.png"
            if line_panels(_series_panels(sweeps), f"{model} · {hook}\nmetrics against the "
                           "learning rate, per series (★ best LR; lower is better everywhere)",
                           out_dir / rel):
                md += [f"![metrics against the learning rate]({rel})", ""]
        site_table = Table("flatness", summary.columns[2:], site_summary)
        md += [*site_table.markdown(), ""]
        md += [f"- {w}" for w in _words(site_summary)] + [""]
    if not any_sweep and len(by_site(rows)) > 1:
        md += ["No LR sweep in these runs: train one recipe at several `train.lr` values "
               "(`sweep: {grid: {train.lr: [...]}}`).", ""]
    return "\n".join(md), [summary, points]


# Panels of the LR figure: (metric, y label, relative to each sweep's best?)
PLOT_PANELS = (
    ("final_loss", "final loss / sweep's best", True),
    ("fvu", "FVU / sweep's best", True),
    ("dead_pct", "dead latents (% of d_sae)", False),
    ("frontier_gap", "FVU / frontier FVU at its L0 - 1", False),
)


def _median(values: list[float]) -> float:
    vals = sorted(values)
    n = len(vals)
    if n == 0:
        return math.nan
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def _series_panels(sweeps: list[list[dict[str, Any]]]) -> list[Panel]:
    """One line per series: at each tested LR, the median over the series' sweeps of the
    metric (loss and FVU divided by their sweep's best, so sweeps at other sparsities share one
    scale). A series with many knobs still reads as one curve; the table has every sweep."""
    names = sorted({s[0]["series"] for s in sweeps})
    lrs = sorted({r["lr"] for s in sweeps for r in s})
    panels = []
    for key, ylabel, relative in PLOT_PANELS:
        title = {"final_loss": "final training loss", "fvu": "FVU", "dead_pct": "dead latents",
                 "frontier_gap": "gap to the L0-FVU frontier"}[key]
        n_sweeps = {n: sum(1 for s in sweeps if s[0]["series"] == n) for n in names}
        panel = Panel(title, "learning rate", ylabel, logx=True, logy=False, xticks=lrs,
                      hline=1 + FLAT_TOLERANCE if relative else None)
        for i, name in enumerate(names):
            by_lr: dict[float, list[float]] = {}
            for sweep in (s for s in sweeps if s[0]["series"] == name):
                vals = [r[key] for r in sweep if ok(r.get(key))]
                best = min(vals) if vals else math.nan
                for r in sweep:
                    if ok(r.get(key)) and (not relative or best > 0):
                        by_lr.setdefault(r["lr"], []).append(r[key] / best if relative
                                                              else r[key])
            xs = sorted(by_lr)
            ys = [_median(by_lr[x]) for x in xs]
            best_pt = min(zip(ys, xs, strict=True)) if xs else None
            label = name + (f" (median of {n_sweeps[name]} sweeps)" if n_sweeps[name] > 1 else "")
            panel.lines.append(Line(label, xs, ys, i,
                                    best=(best_pt[1], best_pt[0]) if best_pt else None))
        panels.append(panel)
    return panels


def _words(summary: list[dict[str, Any]]) -> list[str]:
    """Per sweep, one sentence on FVU's flat range and where the loss optimum lies."""
    out = []
    for s in summary:
        if s["metric"] != "fvu":
            continue
        width = "only the best LR" if s["lo"] == s["hi"] else \
            f"{s['range']} ({s['decades']:.2f} decades)"
        out.append(f"{s['sweep']}: best FVU {s['best']:.4f} at lr {s['best_lr']:g}; within "
                   f"{FLAT_TOLERANCE:.0%}: {width}.")
    return out
