"""Issue 20 item 5 in docs/FINDINGS.md: what the gated SAE's b_mag and its auxiliary loss buy
(`sae.b_mag: tied`, `sae.aux_loss: false`), each against the paper's gated SAE at the same
coefficients. Computed from the runs of `ideas-gated-bmag.yaml` only."""

from __future__ import annotations

from typing import Any

from saerun.report.common import ok

SPECS = ("ideas-gated-bmag.yaml",)
NUMBER = 13  # the section's number on the page
COEF = "sae.sparsity.coefficient"
NARROW = 1.25  # a shared L0 range narrower than this ratio is a caveat
BASE, TIED, NO_AUX = "gated", "gated, b_mag tied", "gated, no aux loss"


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def variant(row: dict[str, Any]) -> str:
    if row.get("sae.b_mag") == "tied":
        return TIED if row.get("sae.aux_loss", True) else f"{TIED}, no aux loss"
    return BASE if row.get("sae.aux_loss", True) else NO_AUX


def section(rows: list[dict[str, Any]], plans: dict[str, list[str]],
            curves: dict[str, list[dict[str, Any]]], compare_words: Any) -> list[str]:
    md = [f"## {NUMBER}. What do the gated SAE's b_mag and auxiliary loss buy?", "",
          "The paper's reference point: tie b_mag = exp(r_mag) * b_gate (`sae.b_mag: tied`), so "
          "pi_mag = exp(r_mag) pi_gate and a latent's magnitude is a rescaled gate "
          "pre-activation, as in a ReLU SAE with a per-latent rescale; and the gated SAE without "
          "its auxiliary reconstruction (`sae.aux_loss: false`, b_mag free), where the gate "
          "learns only from the sparsity penalty and the shared W_gate. Three coefficients each, "
          "512 latents, unit-norm decoder.", ""]
    ids = set(plans.get(SPECS[0], []))
    runs = [dict(r, series=variant(r)) for r in rows if r["run_id"] in ids]
    if not runs:
        return md + [f"Not trained yet (`specs/findings/{SPECS[0]}`).", ""]
    order = {BASE: 0, TIED: 1, NO_AUX: 2}
    md += ["| λ | variant | L0 | FVU | CE rec. | dead % | run |",
           "|---:|---|---:|---:|---:|---:|---|"]
    for r in sorted(runs, key=lambda r: (r.get(COEF) or 0, order.get(r["series"], 3))):
        dead = r.get("dead_fraction")
        md.append(f"| {r.get(COEF):g} | {r['series']} | {_f(r.get('l0'), 1)} | "
                  f"{_f(r.get('fvu'))} | {_f(r.get('ce_loss_recovered'))} | "
                  f"{_f(100 * dead if ok(dead) else None, 1)} | `{str(r['run_id'])[:10]}` |")
    md.append("")
    for other, what in ((TIED, "b_mag"), (NO_AUX, "the auxiliary loss")):
        if not any(r["series"] == other for r in runs) or not any(
                r["series"] == BASE for r in runs):
            md += [f"No {other} or no {BASE} runs yet: no verdict on {what}.", ""]
            continue
        words, cmp = compare_words(runs, BASE, other)
        md += [f"**What {what} buys** ({BASE} against {other}). {words}", "",
               _verdict(cmp, what, other) + _narrow(cmp), ""]
    return md


def _narrow(cmp: Any) -> str:
    """A caveat when the frontiers share only a sliver of L0 (interpolated between few runs)."""
    if cmp.l0_range is None or cmp.l0_range[1] >= NARROW * cmp.l0_range[0]:
        return ""
    lo, hi = cmp.l0_range
    return (f" Weak evidence: the two share only L0 {lo:.1f}-{hi:.1f}, where the frontiers are "
            "interpolated between few runs.")


def _verdict(cmp: Any, what: str, other: str) -> str:
    if cmp.l0_range is None:
        return (f"**Cannot tell**: {BASE} and {other} were not trained at overlapping L0, so "
                "their frontiers cannot be compared.")
    n = len(cmp.grid)
    if cmp.a_better == n:
        return f"**It buys quality**: with {what}, the frontier is lower at every shared L0."
    if cmp.b_better == n:
        return (f"**Negative**: without {what} ({other}) the frontier is lower at every "
                f"shared L0: here {what} buys nothing, it costs FVU.")
    if cmp.a_better == cmp.b_better == 0:
        return f"**Nil**: the frontiers coincide where both were trained; {what} buys nothing."
    return (f"**Mixed**: the frontiers cross ({BASE} lower at {cmp.a_better}, {other} at "
            f"{cmp.b_better} of {n} L0 values): no clear gain from {what}.")
