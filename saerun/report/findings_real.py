"""The real-model section of docs/FINDINGS.md: the papers' claims re-tested on SmolLM2-135M.

Runs of `specs/findings/real/` (`REAL_SPECS`), trained by `saerun findings --real` when the
real model is built. Each claim is read off the L0-FVU frontiers exactly as sections 1-3 read
the embedded model's (`report.common.compare`: 9 log-spaced L0 values over the shared range),
once on the real runs and once on the toy frontier runs, so the table says for each claim
whether the real model agrees with the toy model and with the paper. Computed from registry
rows only; missing runs are said to be missing.
"""

from __future__ import annotations

import math
from typing import Any

from saerun.report.common import Comparison, compare, interpolate, ok, series_front

REAL_DIR = "real"  # specs/findings/real/: file names real-*.yaml, unique beside the toy specs
REAL_SPECS = ("real-frontier.yaml", "real-lr.yaml", "real-ideas.yaml")
FRONTIER, LR, IDEAS = REAL_SPECS  # the ideas' runs have their own section (report/ideas_real.py)
L0_POINTS = (16, 32, 64, 128)

# (claim, paper, A, B): "A beats B" on the L0-FVU frontier; series names as report.common.
CLAIMS = (
    ("Gated beats ReLU-L1 (equal width)", "Rajamanoharan et al. 2024", "gated", "relu/l1"),
    ("TopK beats ReLU-L1", "Gao et al. 2024", "topk", "relu/l1"),
    ("BatchTopK beats TopK", "Bussmann et al. 2024", "batchtopk", "topk"),
    ("JumpReLU at least as good as TopK", "Rajamanoharan et al. 2024b", "jumprelu", "topk"),
    ("JumpReLU beats Gated", "Rajamanoharan et al. 2024b", "jumprelu", "gated"),
)


def _of(rows: list[dict[str, Any]], plans: dict[str, list[str]], spec: str
        ) -> list[dict[str, Any]]:
    ids = set(plans.get(spec, []))
    return [r for r in rows if r["run_id"] in ids]


def _widest(rows: list[dict[str, Any]], series: str) -> list[dict[str, Any]]:
    """The runs of a series at its widest d_sae (the toy frontier also holds compute-matched
    Gated SAEs under the same series name; the claims are at equal width)."""
    mine = [r for r in rows if r["series"] == series]
    if not mine:
        return []
    width = max(r.get("d_sae") or 0 for r in mine)
    return [r for r in mine if (r.get("d_sae") or 0) == width]


def _compare(rows: list[dict[str, Any]], a: str, b: str) -> Comparison:
    both = _widest(rows, a) + _widest(rows, b)
    return compare(series_front(both, a), series_front(both, b))


def _word(cmp: Comparison) -> str:
    if cmp.l0_range is None:
        return "no common L0"
    at = f"{cmp.a_better}/{len(cmp.grid)}"
    if len(cmp.grid) == 1:  # a series of one run is a point, not a frontier: no claim read
        return f"one L0 only ({at})"
    return {"A better everywhere": f"yes ({at})", "B better everywhere": f"no ({at})"}.get(
        cmp.verdict, f"mixed ({at})")


def _verdict(cmp: Comparison | None) -> str | None:
    """The comparison's verdict, or None where it cannot be read: no common L0, or one L0 only
    (a series of a single run is a point, not a frontier)."""
    return None if cmp is None or cmp.l0_range is None or len(cmp.grid) < 2 else cmp.verdict


def _agree(real: Comparison, other: str | None) -> str:
    """Whether the real model's verdict is `other` ('-' when either cannot be read)."""
    mine = _verdict(real)
    return "-" if mine is None or other is None else ("**yes**" if mine == other else "no")


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def _runs_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| run | series | setting | L0 | FVU | CE loss recovered | delta LM loss (nats) | "
           "dead % | excluded (train / eval) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["series"], r.get("l0") or 0.0)):
        knob = (f"k {r['sae.k']}" if ok(r.get("sae.k")) else
                f"coefficient {r.get('sparsity_coefficient')}")
        lr = r.get("train.lr")
        dead = r.get("dead_fraction")
        out.append(
            f"| `{str(r['run_id'])[:10]}` | {r['series']} | {knob}, lr {lr:g} | "
            f"{_f(r.get('l0'), 1)} | {_f(r.get('fvu'))} | {_f(r.get('ce_loss_recovered'))} | "
            f"{_f(r.get('delta_lm_loss'), 3)} | {_f(100 * dead if ok(dead) else None, 1)} | "
            f"{_f(r.get('excluded_outlier_positions_train'), 0)} / "
            f"{_f(r.get('excluded_outlier_positions'), 0)} |")
    return out


def _lr_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each recipe of the LR spec at every rate tested (with the frontier spec's base rate)."""
    by: dict[str, dict[float, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["series"], {})[float(r["train.lr"])] = r
    out = ["| series | " + " | ".join(f"lr {lr:g}" for lr in
                                      sorted({lr for v in by.values() for lr in v})) + " |"]
    lrs = sorted({lr for v in by.values() for lr in v})
    out.append("|---|" + "---:|" * len(lrs))
    words = []
    for series, got in sorted(by.items()):
        cells = []
        for lr in lrs:
            at = got.get(lr)
            cells.append("-" if at is None else
                         f"FVU {_f(at.get('fvu'))} at L0 {_f(at.get('l0'), 1)}")
        out.append(f"| {series} | " + " | ".join(cells) + " |")
        scored = [(r["fvu"], lr) for lr, r in got.items() if ok(r.get("fvu"))]
        if len(scored) >= 2:
            best_fvu, best = min(scored)
            edge = " (the highest tested)" if best == max(got) else \
                " (the lowest tested)" if best == min(got) else ""
            worst = max(f for f, _ in scored)
            words.append(f"{series}: lowest FVU at lr {best:g}{edge}; the worst rate's FVU is "
                         f"{100 * (worst / best_fvu - 1):.0f}% higher. The L0 moves with the rate "
                         "too, so read FVU beside L0.")
    return out + [""] + [f"- {w}" for w in words]


def real_sections(rows: list[dict[str, Any]], toy_front: list[dict[str, Any]],
                  plans: dict[str, list[str]], number: int) -> list[str]:
    """Markdown lines of the real-model section (`rows`: the real specs' prepared rows;
    `toy_front`: the embedded model's frontier rows, for the toy column)."""
    md = [f"## {number}. The same claims on a real model (SmolLM2-135M)", ""]
    if not rows:
        return md + ["No real-model run in the registry: build the model (`bash scripts/setup.sh "
                     "--real-model`) and run `saerun findings --real` (its specs are "
                     "`specs/findings/real/`).", ""]
    front = _of(rows, plans, FRONTIER)
    rows = front + [r for r in _of(rows, plans, LR) if r not in front]
    tokens = sorted({int(r["train_tokens"]) for r in rows if ok(r.get("train_tokens"))})
    widths = sorted({int(r["d_sae"]) for r in rows if ok(r.get("d_sae"))})
    steps = sorted({int(r["train_tokens"] // r["train.batch_tokens"]) for r in rows
                    if ok(r.get("train_tokens")) and ok(r.get("train.batch_tokens"))})
    model = sorted({r["model"] for r in rows})
    hooks = sorted({r["hook_name"] for r in rows})
    limits = [r["outlier_norm_limit"] for r in rows if ok(r.get("outlier_norm_limit"))]
    md += [
        f"{len(rows)} runs of `specs/findings/real/` (`{FRONTIER}`, `{LR}`): "
        f"model {', '.join(model)} (SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF, so "
        f"numbers are on that quantised model), site {', '.join(f'`{h}`' for h in hooks)}, "
        f"{'/'.join(f'{t:,}' for t in tokens)} training tokens per SAE "
        f"({'/'.join(str(s) for s in steps)} optimiser steps), {'/'.join(map(str, widths))} "
        "latents, one seed, the embedded corpus (Python standard-library source and docs) as "
        "data.",
        "",
    ]
    if limits:
        md += [f"Outlier positions (`data.exclude_outlier_norm` 10: norm above "
               f"{min(limits):.0f}, ten times the median) are left out of training, the norm "
               "estimate, every metric and every splice; the last column counts them. Without "
               "that, a handful of massive-activation positions would hold most of the "
               "variance and the FVU would read several times lower than the SAE reconstructs "
               "ordinary tokens.", ""]
    table = ["| claim | paper | embedded model | real model | real agrees with toy | "
             "real agrees with paper |", "|---|---|---|---|---|---|"]
    for claim, paper, a, b in CLAIMS:
        real = _compare(front, a, b)
        toy = _compare(toy_front, a, b) if toy_front else None
        table.append(f"| {claim} | {paper} | {_word(toy) if toy else '-'} | {_word(real)} | "
                     f"{_agree(real, _verdict(toy))} | {_agree(real, 'A better everywhere')} |")
    md += ["Each claim as \"A beats B\" on the L0-FVU frontier (A better at how many of 9 "
           "log-spaced L0 values in the shared range; \"yes\" = everywhere; \"one L0 only\": "
           "a series of a single run is a point, so the claim is not read and agrees with "
           "nothing):", "", *table, ""]
    series = sorted({r["series"] for r in front})
    if series:
        md += ["FVU read off each real-model series' frontier (interpolated, never "
               "extrapolated):", "",
               "| series | runs | " + " | ".join(f"L0 {x}" for x in L0_POINTS) + " |",
               "|---|---:|" + "---:|" * len(L0_POINTS)]
        for s in series:
            vals = [interpolate(series_front(front, s), float(x)) for x in L0_POINTS]
            md.append(f"| {s} | {sum(1 for r in front if r['series'] == s)} | "
                      + " | ".join(_f(v) if ok(v) and not math.isnan(v) else "-" for v in vals)
                      + " |")
        md.append("")
    md += ["The runs:", "", *_runs_table(rows), ""]
    lr_rows = _of(rows, plans, LR)
    if lr_rows:
        base_ids = {r["run_id"] for r in lr_rows}
        keys = {(r["series"]) for r in lr_rows}
        base = [r for r in front if r["series"] in keys and r["run_id"] not in base_ids
                and _same_recipe(r, lr_rows)]
        md += ["**Learning rate** (section 5's question):", "", *_lr_lines(lr_rows + base), "",
               f"What the budget limits: {'/'.join(str(s) for s in steps)} optimiser steps per "
               "SAE is far from the papers' runs (hundreds of thousands of steps), and one seed "
               "cannot separate an LR effect of a few percent from seed noise; an LR optimum "
               "here says where short runs do best, not where converged ones would.", ""]
    else:
        md += [f"**Learning rate** (section 5's question): not trained yet (`specs/findings/"
               f"real/{LR}`).", ""]
    md += ["Not re-run on the real model (the 2-core budget): sqrt-L1 (section 2), Matryoshka "
           "against BatchTopK (3), the W_enc = W_dec^T init (4), transcoders and shuffling "
           "(6-8). The research ideas of sections 10-13 on the real model: section 14.", ""]
    return md


def _same_recipe(row: dict[str, Any], lr_rows: list[dict[str, Any]]) -> bool:
    """Whether a frontier run is the base-rate point of one of the LR spec's recipes."""
    keys = ("series", "sae.k", "sparsity_coefficient", "d_sae")
    return any(all(row.get(k) == r.get(k) for k in keys) for r in lr_rows)
