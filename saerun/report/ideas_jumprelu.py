"""Issue 20 item 2 in docs/FINDINGS.md: JumpReLU's threshold estimator with memory
(`sae.kde_half_life_tokens`), against the single-batch estimator at the same coefficients.
Computed from the runs of `ideas-jumprelu-memory.yaml` only; the gradient-variance measurement
on fixed activations is `bench/kde_variance.py`'s (its numbers: BENCHMARKS.md's notes)."""

from __future__ import annotations

import math
from typing import Any

from saerun.report.common import ok

SPECS = ("ideas-jumprelu-memory.yaml",)
NUMBER = 12  # the section's number on the page
HALF_LIFE = "sae.kde_half_life_tokens"
COEF = "sae.coefficient"
ON, OFF = "jumprelu + memory", "jumprelu"
# Paired runs whose L0 and FVU differ by less than this (relative) did not change.
NIL = 0.01


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def _rel(a: Any, b: Any) -> float | None:
    return a / b - 1 if ok(a) and ok(b) and b else None


def section(rows: list[dict[str, Any]], plans: dict[str, list[str]],
            curves: dict[str, list[dict[str, Any]]], compare_words: Any) -> list[str]:
    md = [f"## {NUMBER}. JumpReLU's threshold estimator with memory", "",
          "JumpReLU trains theta by straight-through estimators: kernel density estimates from "
          "the tokens of one batch within eps/2 of theta. With memory (`sae.kde_half_life_tokens`"
          "), theta's gradient is the same estimate over the recent batches, each weighted "
          "0.5 ** (its age in tokens / the half life) (saerun/sae/jumprelu.py). Here: a half "
          "life of 16,384 tokens (4 batches) against none, at three coefficients (tanh mode, "
          "512 latents). `bench/kde_variance.py` measures the gradient's variance on frozen "
          "parameters (numbers in BENCHMARKS.md's notes).", ""]
    ids = set(plans.get(SPECS[0], []))
    runs = [dict(r, series=ON if r.get(HALF_LIFE) is not None else OFF)
            for r in rows if r["run_id"] in ids]
    if not runs:
        return md + [f"Not trained yet (`specs/findings/{SPECS[0]}`).", ""]
    md += ["| λ | memory | L0 | FVU | CE rec. | dead % | run |",
           "|---:|---|---:|---:|---:|---:|---|"]
    for r in sorted(runs, key=lambda r: (r.get(COEF) or 0, r["series"] == ON)):
        half = r.get(HALF_LIFE)
        dead = r.get("dead_fraction")
        md.append(f"| {r.get(COEF):g} | {'off' if half is None else f'{half:,.0f} tokens'} | "
                  f"{_f(r.get('l0'), 1)} | {_f(r.get('fvu'))} | {_f(r.get('ce_loss_recovered'))} "
                  f"| {_f(100 * dead if ok(dead) else None, 1)} | `{str(r['run_id'])[:10]}` |")
    md += ["", *_verdict(runs, compare_words), ""]
    return md


def _verdict(runs: list[dict[str, Any]], compare_words: Any) -> list[str]:
    pairs: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
    for coef in sorted({float(r[COEF]) for r in runs if ok(r.get(COEF))}):
        with_memory = [r for r in runs if r.get(COEF) == coef and r["series"] == ON]
        without = [r for r in runs if r.get(COEF) == coef and r["series"] == OFF]
        if with_memory and without:
            pairs.append((coef, with_memory[0], without[0]))
    if not pairs:
        return ["No coefficient has both runs yet: no verdict."]
    changes = []
    nil = True
    for coef, on, off in pairs:
        d_l0, d_fvu = _rel(on.get("l0"), off.get("l0")), _rel(on.get("fvu"), off.get("fvu"))
        if d_l0 is None or d_fvu is None:
            continue
        nil = nil and abs(d_l0) < NIL and abs(d_fvu) < NIL
        changes.append(f"λ {coef:g}: L0 {100 * d_l0:+.1f}%, FVU {100 * d_fvu:+.1f}%")
    out = [f"Memory against none, pair by pair: {'; '.join(changes)}.", ""]
    if nil:  # a frontier comparison would only rank rounding differences
        return out + [f"**Nil**: at every coefficient the memory moved L0 and FVU by less than "
                      f"{100 * NIL:g}%. {_why(runs[0])}"]
    words, cmp = compare_words(runs, ON, OFF)
    out += [words, ""]
    if cmp.l0_range is not None and cmp.a_better == len(cmp.grid):
        out.append("**Better**: the frontier with memory is below the single-batch one across "
                   "the shared L0 range.")
    elif cmp.l0_range is not None and cmp.b_better == len(cmp.grid):
        out.append("**Worse**: the frontier with memory is above the single-batch one across "
                   "the shared L0 range.")
    else:
        out.append("**Mixed**: the runs changed, but neither frontier is below the other "
                   "everywhere.")
    return out


def _why(row: dict[str, Any]) -> str:
    """How far Adam can move theta in these runs: about lr per step in log space."""
    keys = ("train.lr", "data.train_tokens", "train.batch_tokens", "sae.init_threshold")
    if not all(ok(row.get(k)) for k in keys):
        return ""
    steps = int(row["data.train_tokens"]) // int(row["train.batch_tokens"])
    bound = float(row["sae.init_threshold"]) * math.exp(float(row["train.lr"]) * steps)
    return (f"Adam moves log theta by about lr per step whatever the gradient's noise, so in "
            f"{steps} steps at lr {row['train.lr']:g} theta can go from "
            f"{row['sae.init_threshold']:g} to at most about {bound:.2g}: these runs train their "
            "thresholds too little for a better estimate of theta's gradient to show (the "
            "variance it removes: BENCHMARKS.md).")
