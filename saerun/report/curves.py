"""The training-curves report: loss, L0, FVU and dead fraction against training tokens.

Curves are what the trainer logged every `train.log_every_steps` steps on training batches.
FVU is estimated there from the batch MSE (normalised units) and the eval set's variance:
    FVU_t = mse_t / (norm_scale^2 * mse_eval / fvu_eval)
(the eval set's total variance, put on the training scale), so it ends near the held-out FVU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saerun.report.common import Table, by_site, ok, prepare, slug
from saerun.report.figures import Line, Panel, line_panels

PANELS = (
    ("loss", "training loss (normalised units)", None),
    ("l0", "L0 (active latents per token)", None),
    ("fvu", "FVU (batch estimate)", None),
    ("dead_pct", "dead latents (% of d_sae, dead window)", False),
)
MAX_SERIES_LINES = 12  # runs drawn per series and site (spread over the run ids)


def fvu_curve(row: dict[str, Any], curve: list[dict[str, Any]]) -> list[float]:
    """The batch-FVU estimate at every curve point (NaN when a number is missing)."""
    s, mse, fvu = row.get("norm_scale"), row.get("mse"), row.get("fvu")
    if not (ok(s) and ok(mse) and ok(fvu)) or fvu <= 0 or mse <= 0:
        return [math.nan] * len(curve)
    var = s * s * mse / fvu
    return [p["mse"] / var if ok(p.get("mse")) else math.nan for p in curve]


def _at(curve: list[dict[str, Any]], key: str, fraction: float) -> float:
    """The curve's value at the first point at or after `fraction` of its last token count."""
    pts = [p for p in curve if ok(p.get(key)) and ok(p.get("tokens"))]
    if not pts:
        return math.nan
    end = pts[-1]["tokens"]
    return next(p[key] for p in pts if p["tokens"] >= fraction * end)


def _knob_value(row: dict[str, Any]) -> float:
    for key in ("sae.k", "sparsity_coefficient"):
        if ok(row.get(key)):
            return float(row[key])
    return math.inf


def build_curves(rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
                 out_dir: Path | None) -> tuple[str, list[Table]]:
    rows = prepare(rows)
    md = [
        "# Training curves",
        "",
        f"{len(rows)} finished runs. Logged on training batches every `train.log_every_steps` "
        "steps. FVU is a batch estimate: mse_t / (norm_scale² · mse_eval / fvu_eval). Dead: "
        "no firing within the dead window. One thin line per run, one style per series.",
        "",
    ]
    table = Table("curves", [
        ("model", "model", ""), ("hook_name", "hook_name", ""), ("run_id", "run", ""),
        ("series", "series", ""), ("knob", "knob", ""), ("points", "points", ""),
        ("tokens", "tokens", ""), ("loss_25", "loss @25%", ".4g"),
        ("loss_50", "loss @50%", ".4g"), ("loss_100", "final loss", ".4g"),
        ("l0_100", "final L0", ".1f"), ("fvu_100", "final FVU (batch)", ".4f"),
        ("dead_100", "final dead %", ".1f"),
    ])
    for model, hook, site_rows in by_site(rows):
        md += [f"## {model} · `{hook}`", ""]
        names = sorted({r["series"] for r in site_rows})
        panels = [Panel(label.split(" (")[0], "training tokens", label, logy=logy,
                        tokens_x=True)
                  for _, label, logy in PANELS]
        site_table = []
        drawn: dict[str, int] = {}
        for r in sorted(site_rows, key=lambda r: (r["series"], _knob_value(r), r["run_id"])):
            curve = sorted(curves.get(r["run_id"], []), key=lambda p: p.get("step", 0))
            fvus = fvu_curve(r, curve)
            pts = [dict(p, fvu=f, dead_pct=100 * p["dead_fraction"]
                        if ok(p.get("dead_fraction")) else math.nan)
                   for p, f in zip(curve, fvus, strict=True)]
            tokens = [math.nan if p.get("tokens") is None else float(p["tokens"]) for p in pts]
            idx = names.index(r["series"])
            if curve and drawn.get(r["series"], 0) < MAX_SERIES_LINES:
                first = drawn.get(r["series"], 0) == 0
                drawn[r["series"]] = drawn.get(r["series"], 0) + 1
                for panel, (key, _, _) in zip(panels, PANELS, strict=True):
                    panel.lines.append(Line(r["series"] if first else "", tokens,
                                            [p.get(key, math.nan) for p in pts], idx,
                                            alpha=0.7, marker=False, width=1.1))
            site_table.append({
                "model": model, "hook_name": hook, "run_id": r["run_id"][:10],
                "series": r["series"], "knob": r["knob"], "points": len(pts),
                "tokens": pts[-1]["tokens"] if pts else "-",
                "loss_25": _at(pts, "loss", 0.25), "loss_50": _at(pts, "loss", 0.5),
                "loss_100": _at(pts, "loss", 1.0), "l0_100": _at(pts, "l0", 1.0),
                "fvu_100": _at(pts, "fvu", 1.0), "dead_100": _at(pts, "dead_pct", 1.0),
            })
        if out_dir is not None:
            rel = f"curves/{slug(model)}__{slug(hook)}.png"
            capped = any(n >= MAX_SERIES_LINES for n in drawn.values())
            note = f" (at most {MAX_SERIES_LINES} runs per series)" if capped else ""
            if line_panels(panels, f"{model} · {hook}: training curves{note}", out_dir / rel):
                md += [f"![training curves]({rel})", ""]
            else:
                md += ["- No training curve was recorded for these runs.", ""]
        md += [*Table("curves", table.columns[2:], site_table).markdown(), ""]
        table.rows += site_table
    return "\n".join(md), [table]
