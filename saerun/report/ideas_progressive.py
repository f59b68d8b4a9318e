"""Issue 20, items 3 and 4, in docs/FINDINGS.md: a progressive code (one TopK SAE read at any k)
and top-n latents per token (an L0-50 SAE read at n latents against one trained at L0 n).

Both read the post-hoc records (`saerun.posthoc`, the k' sweep and the top-n cut) that each row
carries under "posthoc" (`report.findings` attaches them), so every FVU compared here is measured
on the same held-out tokens: the SAEs trained at k are read at k' = k, the ones trained at L0 n
at their own code (threshold t = 0).
"""

from __future__ import annotations

import math
from typing import Any

from saerun.report.common import frontier_points, interpolate, ok

SPECS = ("ideas-progressive.yaml",)
NUMBER = 11  # the section's number on the page
CLOSE = 0.05  # within 5% of the FVU of the SAE trained at that k counts as "close"


def _ids(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{str(r['run_id'])[:10]}`" for r in rows)


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def _pct(value: float) -> str:
    return f"{value:+.0%}" if ok(value) else "-"


def _record(row: dict[str, Any], kind: str, param: float) -> dict[str, Any]:
    """The row's post-hoc record of one variant ({} when it has none)."""
    for x in row.get("posthoc") or []:
        if x.get("kind") == kind and x.get("param") == param:
            return x
    return {}


def _at_k(row: dict[str, Any]) -> dict[int, float]:
    """k' -> FVU of the row's k' sweep."""
    return {int(x["param"]): x["fvu"] for x in row.get("posthoc") or []
            if x.get("kind") == "k" and ok(x.get("fvu"))}


def _label(row: dict[str, Any]) -> str:
    if row.get("sae.multi_k"):
        return "multi_k " + "/".join(str(k) for k in row["sae.multi_k"])
    start = row.get("sae.k_schedule.start")
    if start is not None:
        return (f"k {start}→{row['sae.k']} ({row.get('sae.k_schedule.shape')}, first "
                f"{row.get('sae.k_schedule.until_fraction'):.0%})")
    return f"plain k={row['sae.k']}"


def section(rows: list[dict[str, Any]], plans: dict[str, list[str]],
            curves: dict[str, list[dict[str, Any]]], compare_words: Any) -> list[str]:
    md = [f"## {NUMBER}. A progressive code, and the top n latents per token", "",
          "Issue 20: \"a progressive code would let you train one autoencoder and use it for any "
          "k you wanted at test time\", and \"an L0=50 SAE keeping only its top 10 features per "
          "token was better than an L0=10 SAE\". Every FVU here is a post-hoc re-evaluation on "
          "the same held-out tokens (`saerun report --posthoc`).", ""]
    return (md + progressive_lines(rows, f"### {NUMBER}a. One TopK SAE read at every k", SPECS[0])
            + topn_lines(rows, f"### {NUMBER}b. The top n latents per token of a denser SAE",
                         SPECS[0]))


def progressive_lines(rows: list[dict[str, Any]], heading: str, spec: str) -> list[str]:
    """The k' table of the TopK runs among `rows` (plain ones at several k, progressive ones
    with `sae.multi_k` or `sae.k_schedule`), under `heading`; `spec` names their spec."""
    topk = [r for r in rows if r.get("architecture") == "topk"]
    plain = {int(r["sae.k"]): r for r in topk
             if not r.get("sae.multi_k") and r.get("sae.k_schedule.start") is None}
    trained: dict[int, float] = {}
    for k, r in plain.items():
        fvu = _record(r, "k", k).get("fvu")
        if ok(fvu):
            trained[k] = float(fvu)
    special = sorted((r for r in topk if r.get("sae.multi_k")
                      or r.get("sae.k_schedule.start") is not None), key=_label)
    md = [heading, "",
          "TopK SAEs trained at one k each, against SAEs trained for several k at once "
          "(`sae.multi_k`: the loss is the mean reconstruction error at each listed k) or with "
          f"k annealed down to its final value (`sae.k_schedule`), all at {_widths(topk)} "
          "latents; each is "
          "read at k' latents per token (the k' largest pre-activations, ReLU'd). The plain SAE "
          "at the progressive SAEs' own k, read at other k', is the control.", ""]
    if not trained or not special:
        return md + [f"Not trained yet (`specs/findings/{spec}`).", ""]
    k0 = int(special[0]["sae.k"])
    control = plain.get(k0)
    cols = ([control] if control is not None else []) + special
    ks = sorted({k for r in cols for k in _at_k(r)} | set(trained))
    md += ["| k' | trained at k = k' | " + " | ".join(_label(r) for r in cols) + " |",
           "|---:|---:|" + "---:|" * len(cols)]
    for k in ks:
        cells = []
        for r in cols:
            v = _at_k(r).get(k)
            gap = v / trained[k] - 1 if ok(v) and k in trained else math.nan
            cells.append(f"{_f(v)} ({_pct(gap)})" if ok(gap) else _f(v))
        md.append(f"| {k} | {_f(trained.get(k))} | " + " | ".join(cells) + " |")
    md += ["", "FVU (in brackets: against the SAE trained at k = k'). Runs: trained at k "
           f"{_ids([plain[k] for k in sorted(plain)])}; "
           + "; ".join(f"{_label(r)} {_ids([r])}" for r in cols) + ".", ""]
    md += [f"- {w}" for w in _progressive_words(cols, trained, k0, control)] + [""]
    return md


def _widths(rows: list[dict[str, Any]]) -> str:
    return "/".join(str(w) for w in sorted({int(r["d_sae"]) for r in rows if ok(r.get("d_sae"))}))


def _gaps(row: dict[str, Any], trained: dict[int, float], k0: int) -> dict[int, float]:
    """k' (other than the SAE's own k) -> FVU gap against the SAE trained at k'."""
    return {k: v / trained[k] - 1 for k, v in _at_k(row).items() if k in trained and k != k0}


def _progressive_words(cols: list[dict[str, Any]], trained: dict[int, float], k0: int,
                       control: dict[str, Any] | None) -> list[str]:
    out = []
    base = _gaps(control, trained, k0) if control is not None else {}
    for r in cols:
        if r is control:
            continue
        gaps = _gaps(r, trained, k0)
        if not gaps:
            out.append(f"{_label(r)}: no k' shared with a trained SAE.")
            continue
        worst = max(gaps, key=lambda k: gaps[k])
        mean_gap = sum(gaps.values()) / len(gaps)
        close = sum(1 for g in gaps.values() if g <= CLOSE)
        own = _at_k(r).get(k0)
        own_gap = own / trained[k0] - 1 if ok(own) and k0 in trained else math.nan
        text = (f"{_label(r)}: within {CLOSE:.0%} of the FVU of the SAE trained at k' at "
                f"{close} of the {len(gaps)} other k', {_pct(mean_gap)} on average (worst "
                f"{_pct(gaps[worst])} at k'={worst}); at its own k={k0}, {_pct(own_gap)}.")
        shared = [k for k in gaps if k in base]
        if shared:
            better = [k for k in shared if gaps[k] < base[k]]
            ctl = sum(base[k] for k in shared) / len(shared)
            mine = sum(gaps[k] for k in shared) / len(shared)
            if not better:
                verdict = ("no better than the plain k=16 SAE read at those k' (the effect is "
                           "nil or negative)").replace("16", str(k0))
            elif len(better) == len(shared):
                verdict = f"better than the plain k={k0} SAE read there at every one of them"
            else:
                verdict = (f"better than the plain k={k0} SAE read there at "
                           f"{len(better)} of {len(shared)} k' (at k'="
                           f"{', '.join(str(k) for k in sorted(better))})")
            text += (f" The plain k={k0} SAE read at the same k' is {_pct(ctl)} on average, "
                     f"this one {_pct(mine)}: {verdict}.")
        out.append(text)
    return out


def topn_lines(rows: list[dict[str, Any]], heading: str, spec: str) -> list[str]:
    """The densest JumpReLU run among `rows` cut to its top n latents per token, against the
    JumpReLU and TopK runs among them, under `heading`; `spec` names their spec."""
    md = [heading, "",
          "The JumpReLU SAE of largest L0 cut to each token's n largest latents (post-hoc, "
          "`TopN`), against JumpReLU SAEs trained at lower L0 (their frontier, read at the cut "
          "SAE's L0 in log-log interpolation, never extrapolated) and against TopK trained at "
          "k = n.", ""]
    jump = [r for r in rows if r.get("architecture") == "jumprelu"
            and ok(_record(r, "threshold", 0.0).get("l0"))]
    cut = [x for r in jump for x in r.get("posthoc") or [] if x.get("kind") == "topn"]
    if not jump or not cut:
        return md + [f"Not trained yet (`specs/findings/{spec}`).", ""]
    source = max(jump, key=lambda r: _record(r, "threshold", 0.0)["l0"])
    own = [_record(r, "threshold", 0.0) for r in jump]
    front = frontier_points([(x.get("l0"), x.get("fvu")) for x in own])
    topk = {int(r["sae.k"]): _record(r, "k", r["sae.k"]).get("fvu") for r in rows
            if r.get("architecture") == "topk" and not r.get("sae.multi_k")
            and r.get("sae.k_schedule.start") is None}
    points = sorted((x for x in source.get("posthoc") or [] if x.get("kind") == "topn"),
                    key=lambda x: x["param"])
    src = _record(source, "threshold", 0.0)
    md += [f"Source: {_ids([source])} (λ={source.get('sparsity_coefficient'):g}, L0 "
           f"{src['l0']:.1f}, FVU {src['fvu']:.4f} as trained). Trained JumpReLU: "
           + ", ".join(f"L0 {x['l0']:.1f} FVU {x['fvu']:.4f} {_ids([r])}"
                       for r, x in sorted(zip(jump, own, strict=True),
                                          key=lambda p: p[1]["l0"])) + ".", "",
           "| n | L0 | FVU cut to n | JumpReLU trained at that L0 | TopK trained at k = n |",
           "|---:|---:|---:|---:|---:|"]
    wins = losses = 0
    vs_topk = 0
    for x in points:
        ref = interpolate(front, x["l0"]) if ok(x.get("l0")) else math.nan
        tk = topk.get(int(x["param"]))
        if ok(ref):
            wins += x["fvu"] < ref
            losses += x["fvu"] >= ref
        vs_topk += ok(tk) and x["fvu"] < tk
        md.append(f"| {x['param']} | {_f(x.get('l0'), 1)} | {_f(x.get('fvu'))} | {_f(ref)} | "
                  f"{_f(tk)} |")
    md.append("")
    compared = wins + losses
    if not compared:
        verdict = ("no cut L0 lies within the trained JumpReLU SAEs' L0 range: no comparison "
                   "(nothing is extrapolated)")
    elif wins == compared:
        verdict = (f"the cut SAE beats the JumpReLU trained at the same L0 at all {compared} n "
                   "compared: the claim holds here")
    elif wins == 0:
        verdict = (f"the cut SAE is worse than the JumpReLU trained at the same L0 at all "
                   f"{compared} n compared: the claim does not hold here (a negative result)")
    else:
        verdict = (f"the cut SAE beats the JumpReLU trained at the same L0 at {wins} of "
                   f"{compared} n compared: mixed")
    with_tk = sum(1 for x in points if ok(topk.get(int(x["param"]))))
    md += [f"- Verdict: {verdict}. Against TopK trained at k = n it is better at {vs_topk} of "
           f"{with_tk} n.", ""]
    return md
