"""Issue 20, item 1, in docs/FINDINGS.md: Matryoshka with every prefix (prefix_widths every,
block size 1) against the default four prefixes, from the runs of `ideas-matryoshka.yaml`."""

from __future__ import annotations

import statistics
from typing import Any

from saerun.report.common import ok

SPECS = ("ideas-matryoshka.yaml",)
DEFAULT = "matryoshka (4 prefixes)"
NUMBER = 10  # after the real-model section (9)


def variant(row: dict[str, Any]) -> str:
    """The run's prefixes in words: the default four, or every prefix with its weights."""
    if row.get("sae.prefix_widths") == "every":
        return f"matryoshka (every prefix, {row.get('sae.prefix_weights') or 'uniform'})"
    return DEFAULT


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def small_prefix_weight(row: dict[str, Any]) -> float:
    """The share of the loss's weight on prefixes of at most d_sae/16 latents (the default's
    first two widths), from the run's prefix scheme."""
    d = int(row.get("d_sae") or row.get("sae.d_sae") or 0)
    if d < 1:
        return float("nan")
    cut = max(1, d // 16)
    if row.get("sae.prefix_widths") != "every":
        widths = row.get("sae.prefix_widths")
        weights = row.get("sae.prefix_weights")
        if not isinstance(widths, list) or not isinstance(weights, list) or not sum(weights):
            return float("nan")
        return sum(w for m, w in zip(widths, weights, strict=True) if m <= cut) / sum(weights)
    if row.get("sae.prefix_weights") == "log_uniform":
        lo = max(1, d // 64)
        total = sum(1.0 / m for m in range(lo, d + 1))
        return sum(1.0 / m for m in range(lo, cut + 1)) / total
    return cut / d


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if ok(r.get(key))]
    return statistics.fmean(values) if values else None


def section(rows: list[dict[str, Any]], plans: dict[str, list[str]],
            curves: dict[str, list[dict[str, Any]]], compare_words: Any) -> list[str]:
    md = [f"## {NUMBER}. Matryoshka with every prefix (block size 1)", "",
          "Every width m = 1..d_sae is a nested dictionary (`sae.prefix_widths: every`), its "
          "reconstruction error weighted uniformly over the widths (or log-uniformly over "
          "d_sae/64..d_sae, the default four widths' range), against the default four prefixes "
          "d/64, d/16, d/4, d (Bussmann et al. 2025). Per token only k + 1 partial "
          "reconstructions differ, so the loss costs O(k^2 d_in) per token, not d_sae decodes "
          "(`saerun/sae/prefix.py`; step time in BENCHMARKS.md). 512 latents, seed 1.", ""]
    if not rows:
        return md + ["Not trained yet (`specs/findings/ideas-matryoshka.yaml`).", ""]
    named = [dict(r, series=variant(r)) for r in rows]
    md += ["| prefixes | k | run | L0 | FVU | CE rec. | dead % |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for r in sorted(named, key=lambda r: (r["series"], r.get("sae.k") or 0)):
        dead = r.get("dead_fraction")
        md.append(f"| {r['series']} | {r.get('sae.k')} | `{str(r['run_id'])[:10]}` | "
                  f"{_f(r.get('l0'), 1)} | {_f(r.get('fvu'))} | "
                  f"{_f(r.get('ce_loss_recovered'))} | {_f(100 * dead, 1) if ok(dead) else '-'} |")
    md.append("")
    every = "matryoshka (every prefix, uniform)"
    base = [r for r in named if r["series"] == DEFAULT]
    uni = [r for r in named if r["series"] == every]
    if not base or not uni:
        return md + ["Too few runs for a comparison yet.", ""]
    words, _ = compare_words(named, every, DEFAULT)
    by_k = {r.get("sae.k"): r for r in base}
    pairs = [(r, by_k[r.get("sae.k")]) for r in uni
             if r.get("sae.k") in by_k and ok(r.get("fvu")) and ok(by_k[r.get("sae.k")].get("fvu"))]
    diffs = [a["fvu"] - b["fvu"] for a, b in pairs]
    better = sum(1 for d in diffs if d < 0)
    dead_u, dead_b = _mean(uni, "dead_fraction"), _mean(base, "dead_fraction")
    if not diffs:
        verdict = "No k was trained with both prefix schemes."
    else:
        mean_rel = statistics.fmean(
            (a["fvu"] - b["fvu"]) / b["fvu"] for a, b in pairs if b["fvu"] > 0)
        if better == len(diffs):
            how = "lower (better) at every k"
        elif better == 0:
            how = "higher (worse) at every k"
        else:
            how = f"lower at {better} of {len(diffs)} k"
        size = "a nil effect" if abs(mean_rel) < 0.01 else f"{100 * mean_rel:+.1f}% on average"
        verdict = (f"At equal k, every prefix's FVU is {how} than the four prefixes' "
                   f"({size}).")
    if dead_u is not None and dead_b is not None:
        verdict += (f" Dead latents: {100 * dead_u:.1f}% against {100 * dead_b:.1f}% "
                    "(means over the k).")
    log = [r for r in named if "log_uniform" in r["series"]]
    if log and ok(log[0].get("fvu")):
        k = log[0].get("sae.k")
        ref = {r.get("sae.k"): r for r in uni}.get(k)
        four = by_k.get(k)
        if ref is not None and ok(ref.get("fvu")):
            verdict += (f" Log-uniform weights at k {k}: FVU {log[0]['fvu']:.4f} against "
                        f"uniform's {ref['fvu']:.4f}")
            if four is not None and ok(four.get("fvu")):
                verdict += f" and the four prefixes' {four['fvu']:.4f}"
            verdict += "."
    shares: dict[str, float] = {}
    for r in named:
        shares.setdefault(r["series"], small_prefix_weight(r))
    share_words = ", ".join(f"{name} {100 * w:.0f}%" for name, w in sorted(shares.items())
                            if w == w)
    md += [words, "", verdict, "",
           f"Weight of the loss on prefixes of at most d_sae/16 latents: {share_words}. Uniform "
           "weights press the first latents far less than the default's, so a lower FVU at full "
           "width is to be expected of them and says nothing for the nesting itself; what the "
           "first latents alone reconstruct is not among the stored metrics, so it is not "
           "compared here.", ""]
    return md
