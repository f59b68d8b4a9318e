"""The research ideas of sections 10-13 (issue 20) on the real model, in docs/FINDINGS.md.

One setting per idea, from the runs of `specs/findings/real/real-ideas.yaml` (its baselines are
real-frontier.yaml's runs, the same run ids): each variant beside its baseline, then the k'
table of the progressive code and the top-n cut, read from the post-hoc records exactly as
section 11 reads the embedded model's (`ideas_progressive`). Reads registry rows only.
"""

from __future__ import annotations

from typing import Any, cast

from saerun.report.common import ok
from saerun.report.ideas_progressive import progressive_lines, topn_lines

SPEC = "real-ideas.yaml"
NUMBER = 14  # the section's number on the page
SAME_L0 = 0.05  # L0 within 5% of the baseline's: FVU alone decides


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def _is(row: dict[str, Any], arch: str, **want: Any) -> bool:
    return row.get("architecture") == arch and all(row.get(k) == v for k, v in want.items())


def _plain(row: dict[str, Any]) -> bool:
    """No idea's option switched on (the baseline of its architecture)."""
    return (row.get("sae.prefix_widths") != "every" and not row.get("sae.multi_k")
            and not row.get("sae.kde_half_life_tokens") and row.get("sae.b_mag", "free") == "free"
            and row.get("sae.aux_loss", True) is not False)


# (idea, its section, the variant's label, the variant's test, the baseline's label and test)
PAIRS = (
    ("every prefix", 10, "matryoshka k 32, every prefix (uniform)",
     lambda r: _is(r, "matryoshka", **{"sae.prefix_widths": "every"}),
     "matryoshka k 32, 4 prefixes", lambda r: _is(r, "matryoshka") and _plain(r)),
    ("progressive code", 11, "topk k 16, multi_k 16/64",
     lambda r: _is(r, "topk") and bool(r.get("sae.multi_k")),
     "topk k 16", lambda r: _is(r, "topk", **{"sae.k": 16}) and _plain(r)),
    ("estimator memory", 12, "jumprelu λ 1, 16,384-token memory",
     lambda r: _is(r, "jumprelu") and bool(r.get("sae.kde_half_life_tokens")),
     "jumprelu λ 1", lambda r: _is(r, "jumprelu", sparsity_coefficient=1.0) and _plain(r)),
    ("b_mag tied", 13, "gated λ 3, b_mag tied",
     lambda r: _is(r, "gated", **{"sae.b_mag": "tied"}),
     "gated λ 3", lambda r: _is(r, "gated") and _plain(r)),
    ("no auxiliary loss", 13, "gated λ 3, no aux loss",
     lambda r: _is(r, "gated") and r.get("sae.aux_loss") is False,
     "gated λ 3", lambda r: _is(r, "gated") and _plain(r)),
)


def verdict(variant: dict[str, Any], base: dict[str, Any]) -> str:
    """One run against one: better / worse when it wins or loses on both L0 and FVU (or on FVU
    at an L0 within SAME_L0), a trade-off otherwise."""
    values = (variant.get("l0"), variant.get("fvu"), base.get("l0"), base.get("fvu"))
    if not all(ok(v) for v in values):
        return "-"
    l0, fvu, l0_b, fvu_b = (float(cast(float, v)) for v in values)
    dl0, dfvu = l0 / l0_b - 1, fvu / fvu_b - 1
    moved = f"L0 {dl0:+.0%}, FVU {dfvu:+.0%}"
    if abs(dl0) <= SAME_L0 and abs(dfvu) < 0.01:
        return f"nil ({moved})"
    if (abs(dl0) <= SAME_L0 or dl0 < 0) and dfvu < 0:
        return f"**better** ({moved})"
    if (abs(dl0) <= SAME_L0 or dl0 > 0) and dfvu > 0:
        return f"**worse** ({moved})"
    return f"a trade-off ({moved}: read it on the frontier)"


def section(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the section (`rows`: the real-ideas spec's prepared rows, each with
    its post-hoc records under "posthoc")."""
    md = [f"## {NUMBER}. The research ideas on the real model (SmolLM2-135M)", "",
          "One setting per idea of sections 10-13, on the real model's runs (`specs/findings/"
          f"real/{SPEC}`: the site, data, token budget and width of section 9), each against "
          "its baseline from section 9's runs; one seed, so an effect of a few percent is "
          "within noise.", ""]
    if not rows:
        return md + [f"Not trained yet (`specs/findings/real/{SPEC}`: `saerun findings "
                     "--real`).", ""]
    md += ["| idea (section) | run | setting | L0 | FVU | CE rec. | dead % | against the "
           "baseline |", "|---|---|---|---:|---:|---:|---:|---|"]
    for idea, number, label, is_variant, base_label, is_base in PAIRS:
        variant = next((r for r in rows if is_variant(r)), None)
        base = next((r for r in rows if is_base(r)), None)
        for r, name in ((base, base_label), (variant, label)):
            if r is None:
                md.append(f"| {idea} ({number}) | - | {name} | not trained yet | | | | |")
                continue
            dead = r.get("dead_fraction")
            against = (verdict(r, base) if r is variant and base is not None else
                       "baseline" if r is base else "-")
            md.append(f"| {idea} ({number}) | `{str(r['run_id'])[:10]}` | {name} | "
                      f"{_f(r.get('l0'), 1)} | {_f(r.get('fvu'))} | "
                      f"{_f(r.get('ce_loss_recovered'))} | "
                      f"{_f(100 * dead if ok(dead) else None, 1)} | {against} |")
    md += ["", "\"Better\" or \"worse\" needs both L0 and FVU on one side (or FVU at an L0 "
           f"within {SAME_L0:.0%}); one run each, so only a large effect says anything.", ""]
    spec = f"real/{SPEC}"
    md += progressive_lines(rows, f"### {NUMBER}a. One TopK SAE read at every k (real model)",
                            spec)
    md += topn_lines(rows, f"### {NUMBER}b. The top n latents per token (real model)", spec)
    return md
