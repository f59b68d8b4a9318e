"""The feature-death report: dead and dense fractions by architecture, width and dead-latent
remedy, log10 density histograms, dead fraction over training, and matched comparisons of the
remedies and of the W_enc = W_dec^T initialisation.

Inputs: result rows, per-run log10 densities on the eval tokens (`sparsity.safetensors`; None
when a run's folder is gone) and training curves. Deterministic like every report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saerun.report.common import Table, by_site, fmt, mean, ok, prepare, recipe_key, slug
from saerun.report.figures import Line, Panel, bars, histograms, line_panels

# Config keys that choose a dead-latent remedy; the init flag is compared the same way.
REMEDY_KEYS = ("train.resample", "train.resample.every_tokens", "train.resample.stop_fraction",
               "train.resample.encoder_scale", "train.resample.lr_rewarmup_steps",
               "sae.aux_coefficient", "sae.pre_act_coefficient", "sae.ghost_grads")
INIT_KEY = "sae.init_encoder_as_decoder_transpose"
DEAD_LOG10 = -6.0  # where dead latents (density 0, stored as 1e-10) are drawn
BINS = [DEAD_LOG10 - 0.25 + 0.25 * i for i in range(26)]  # -6.25 .. 0.0
MAX_HIST_RUNS = 6  # per panel, spread evenly over L0


def _pct(v: Any) -> float:
    return 100.0 * v if ok(v) else math.nan


def group_table(rows: list[dict[str, Any]]) -> Table:
    """Dead and dense fractions per (recipe, d_sae, remedy): means over the group's runs."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r.get("d_sae") or 0, r["remedy"]), []).append(r)
    table = Table("by_group", [
        ("recipe", "series", ""),
        ("d_sae", "d_sae", ""), ("remedy", "remedy", ""), ("n", "runs", ""),
        ("dead", "dead % (eval)", ".1f"), ("dead_min", "min", ".1f"), ("dead_max", "max", ".1f"),
        ("dead_train", "dead % (train window)", ".1f"), ("dense", "dense % (>1%)", ".1f"),
        ("dense10", "dense % (>10%)", ".1f"), ("l0", "mean L0", ".1f"),
    ])
    for (recipe, d_sae, remedy), group in sorted(groups.items()):
        dead = [_pct(r.get("dead_fraction")) for r in group]
        finite = [d for d in dead if math.isfinite(d)]
        table.rows.append({
            "model": group[0]["model"], "hook_name": group[0]["hook_name"], "recipe": recipe,
            "d_sae": d_sae, "remedy": remedy, "n": len(group), "dead": mean(dead),
            "dead_min": min(finite) if finite else math.nan,
            "dead_max": max(finite) if finite else math.nan,
            "dead_train": mean(_pct(r.get("dead_fraction_train")) for r in group),
            "dense": mean(_pct(r.get("dense_fraction")) for r in group),
            "dense10": mean(_pct(r.get("dense_fraction_10pct")) for r in group),
            "l0": mean(r.get("l0") for r in group),
        })
    return table


def matched_effect(rows: list[dict[str, Any]], keys: tuple[str, ...],
                   label_of: Callable[[dict[str, Any]], str],
                   name: str) -> Table:
    """Runs that differ only in `keys` (and the seed), grouped by what they vary: per (recipe,
    d_sae, label), mean dead % and L0 / FVU over runs whose matched set holds 2+ labels."""
    sets: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        sets.setdefault(recipe_key(r, drop=(*keys, "seed")), []).append(r)
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for members in sets.values():
        if len({label_of(r) for r in members}) < 2:
            continue
        for r in members:
            cells.setdefault((r["recipe"], r.get("d_sae") or 0, label_of(r)), []).append(r)
    table = Table(name, [
        ("recipe", "series", ""), ("d_sae", "d_sae", ""), ("label", "setting", ""),
        ("n", "runs", ""), ("dead", "dead % (eval)", ".1f"),
        ("dead_train", "dead % (train window)", ".1f"), ("l0", "mean L0", ".1f"),
        ("fvu", "mean FVU", ".4f"),
    ])
    for (recipe, d_sae, label), members in sorted(cells.items()):
        table.rows.append({
            "recipe": recipe, "d_sae": d_sae, "label": label, "n": len(members),
            "dead": mean(_pct(r.get("dead_fraction")) for r in members),
            "dead_train": mean(_pct(r.get("dead_fraction_train")) for r in members),
            "l0": mean(r.get("l0") for r in members), "fvu": mean(r.get("fvu") for r in members),
        })
    return table


def init_label(r: dict[str, Any]) -> str:
    return "W_enc = W_dec^T" if r.get(INIT_KEY, True) else "independent W_enc"


def _spread(runs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n runs spread evenly over the L0 order (all of them when there are n or fewer)."""
    runs = sorted(runs, key=lambda r: (r["l0"] if ok(r.get("l0")) else math.inf, r["run_id"]))
    if len(runs) <= n:
        return runs
    return [runs[round(i * (len(runs) - 1) / (n - 1))] for i in range(n)]


def _plots(model: str, hook: str, rows: list[dict[str, Any]], groups: Table,
           densities: dict[str, list[float] | None], curves: dict[str, list[dict[str, Any]]],
           out_dir: Path) -> list[str]:
    base = f"death/{slug(model)}__{slug(hook)}"
    md = []
    labels = [f"{g['recipe']} · {g['d_sae']} · {g['remedy']} ({g['n']})" for g in groups.rows]
    rel = f"{base}__dead_dense.png"
    if bars(labels, {"dead % (eval tokens)": [g["dead"] for g in groups.rows],
                     "dense % (density > 1%)": [g["dense"] for g in groups.rows]},
            "share of latents (%)",
            f"{model} · {hook}: dead and dense latents\n(series · d_sae · remedy (runs); means)",
            out_dir / rel):
        md += [f"![dead and dense latents]({rel})", ""]
    recipes = sorted({r["recipe"] for r in rows})
    panels = []
    for name in recipes:
        runs = [r for r in rows if r["recipe"] == name and densities.get(r["run_id"])]
        hists = []
        for i, r in enumerate(_spread(runs, MAX_HIST_RUNS)):
            values = [max(v, DEAD_LOG10) for v in densities[r["run_id"]] or []]
            hists.append((f"{r['knob']}, d={r.get('d_sae')}, L0 {fmt(r.get('l0'), '.0f')}, "
                          f"{r['remedy']}", values, i))
        panels.append((name, hists))
    rel = f"{base}__density_hist.png"
    if histograms(panels, f"log10 latent density on eval tokens (dead at {DEAD_LOG10:g})",
                  f"{model} · {hook}: latent density histograms (up to {MAX_HIST_RUNS} runs "
                  "per series, spread over L0)", out_dir / rel, BINS):
        md += [f"![log10 density histograms]({rel})", ""]
    # One style per (remedy, width) present, so no two legend entries share a colour.
    combos = sorted({(r["remedy"], r.get("d_sae") or 0) for r in rows})
    line_panels_ = []
    for name in recipes:
        lines = []
        for r in sorted((r for r in rows if r["recipe"] == name), key=lambda r: r["run_id"]):
            pts = [p for p in curves.get(r["run_id"], []) if ok(p.get("dead_fraction"))]
            idx = combos.index((r["remedy"], r.get("d_sae") or 0))
            lines.append(Line(f"{r['remedy']}, d_sae {r.get('d_sae')}",
                              [p["tokens"] for p in pts],
                              [100 * p["dead_fraction"] for p in pts], idx, alpha=0.75,
                              marker=False, width=1.2))
        line_panels_.append(Panel(name, "training tokens", "dead latents (% of d_sae)",
                                  lines, logx=False, logy=False, tokens_x=True))
    rel = f"{base}__dead_over_training.png"
    if line_panels(line_panels_, f"{model} · {hook}: dead fraction over training (no firing in "
                   "the dead window; one line per run)", out_dir / rel, ncols=3):
        md += [f"![dead fraction over training]({rel})", ""]
    return md


def _effect_words(table: Table, what: str) -> list[str]:
    """One line per (series, width) of a matched comparison: mean dead % per setting."""
    out = []
    keys = sorted({(r["recipe"], r["d_sae"]) for r in table.rows})
    for recipe, d_sae in keys:
        cells = [r for r in table.rows if (r["recipe"], r["d_sae"]) == (recipe, d_sae)]
        parts = ", ".join(f"{c['label']}: {c['dead']:.1f}% dead ({c['n']} runs)" for c in cells)
        out.append(f"{what}, {recipe} at {d_sae} latents: {parts}.")
    return out


def build_death(rows: list[dict[str, Any]], densities: dict[str, list[float] | None],
                curves: dict[str, list[dict[str, Any]]],
                out_dir: Path | None) -> tuple[str, list[Table]]:
    rows = prepare(rows)
    md = [
        "# Feature death",
        "",
        f"{len(rows)} finished runs. *Dead* (eval): the latent fired on none of the held-out "
        "tokens; *dead (train window)*: on none of the last `train.dead_window_tokens` training "
        "tokens at the end of training; *dense*: fired on more than 1% (10%) of the eval "
        "tokens. Remedy: resampling (`train.resample`), AuxK (TopK family, "
        "`aux_coefficient` > 0), the JumpReLU pre-activation loss, ghost grads, or none. "
        "Group values are means over the group's runs (which may differ in sparsity).",
        "",
    ]
    all_tables = [group_table([]), matched_effect([], REMEDY_KEYS, lambda r: r["remedy"],
                                                  "remedy_effect"),
                  matched_effect([], (INIT_KEY,), init_label, "init_effect")]
    for model, hook, site_rows in by_site(rows):
        md += [f"## {model} · `{hook}`", ""]
        groups = group_table(site_rows)
        remedy = matched_effect(site_rows, REMEDY_KEYS, lambda r: r["remedy"], "remedy_effect")
        init = matched_effect(site_rows, (INIT_KEY,), init_label, "init_effect")
        if out_dir is not None:
            md += _plots(model, hook, site_rows, groups, densities, curves, out_dir)
        md += ["### By series, width and remedy", "", *groups.markdown(), ""]
        if remedy.rows:
            md += ["### Remedies, matched (runs identical but for the remedy and the seed)", "",
                   *remedy.markdown(), ""]
            md += [f"- {w}" for w in _effect_words(remedy, "Remedy")] + [""]
        if init.rows:
            md += ["### W_enc initialisation, matched (identical but for the init and the seed)",
                   "", *init.markdown(), ""]
            md += [f"- {w}" for w in _effect_words(init, "Init")] + [""]
        for t, new in zip(all_tables, (groups, remedy, init), strict=True):
            t.rows += [dict(r, model=model, hook_name=hook) for r in new.rows]
    for t in all_tables:
        t.columns = [("model", "model", ""), ("hook_name", "hook_name", ""), *t.columns]
    return "\n".join(md), all_tables
