"""The post-hoc report, from the records `saerun.posthoc.compute` stored in the registry (no
model, no weights, no torch here). DESIGN.md §5.

The analyses themselves (threshold ablation, TopK at other k, opposing decoder directions)
are described in `saerun/posthoc.py`, which computes and stores them.

Each record says how many held-out tokens it was evaluated on (`tokens`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saerun.report.common import Table, by_site, ok, prepare, slug
from saerun.report.figures import Line, Panel, line_panels


def build_posthoc(rows: list[dict[str, Any]], records: list[dict[str, Any]],
                  out_dir: Path | None) -> tuple[str, list[Table]]:
    """The post-hoc report from the stored records (`Registry.posthoc`): pure, no model."""
    rows = prepare(rows)
    known = {r["run_id"] for r in rows}
    records = [x for x in records if x["run_id"] in known]
    counts = sorted({int(x["tokens"]) for x in records if ok(x.get("tokens"))})
    on = "/".join(f"{n:,}" for n in counts)
    md = [
        "# Post-hoc analyses",
        "",
        f"{len({x['run_id'] for x in records})} of {len(rows)} runs analysed (the others have no "
        "weights on disk)" + (f", on the first {on} held-out tokens" if on else "")
        + ", with the registry's metric code. Threshold ablation: every latent activation below "
        "t is zeroed (t = 0 is the trained SAE; the other t are the 10/30/50/70/90% quantiles "
        "of the SAE's own non-zero activations). Progressive code: TopK-family SAEs "
        "re-evaluated with the k' largest pre-activations per token. Top-n: every SAE but topk "
        "(whose top-n is k' = n) cut to each token's n largest latents of its own encode, for "
        "n below its L0. Opposing directions: pairs "
        "of latents whose decoder rows have cosine below -0.9 / -0.7.",
        "",
    ]
    thr = Table("threshold", [("run_id", "run", ""), ("series", "series", ""),
                              ("knob", "knob", ""), ("param", "t", ".4g"), ("l0", "L0", ".2f"),
                              ("fvu", "FVU", ".4f"), ("ce_loss_recovered", "CE loss recovered",
                                                       ".4f")])
    prog = Table("progressive", [("run_id", "run", ""), ("series", "series", ""),
                                 ("trained_k", "trained k", ""), ("param", "k'", ""),
                                 ("l0", "L0", ".2f"), ("fvu", "FVU", ".4f"),
                                 ("ce_loss_recovered", "CE loss recovered", ".4f")])
    topn = Table("topn", [("run_id", "run", ""), ("series", "series", ""),
                          ("knob", "knob", ""), ("trained_l0", "L0 as trained", ".2f"),
                          ("param", "n", ""), ("l0", "L0", ".2f"), ("fvu", "FVU", ".4f"),
                          ("ce_loss_recovered", "CE loss recovered", ".4f")])
    opp = Table("opposing", [("run_id", "run", ""), ("series", "series", ""),
                             ("knob", "knob", ""), ("d_sae", "d_sae", ""),
                             ("pairs_below_0.9", "pairs cos < -0.9", ""),
                             ("pairs_below_0.7", "pairs cos < -0.7", "")])
    for model, hook, site_rows in by_site(rows):
        site_ids = {r["run_id"]: r for r in site_rows}
        recs = sorted((x for x in records if x["run_id"] in site_ids),
                      key=lambda x: (site_ids[x["run_id"]]["series"], x["run_id"], x["kind"],
                                     x["param"] if x["param"] is not None else -1))
        if not recs:
            continue
        md += [f"## {model} · `{hook}`", ""]
        names = sorted({r["series"] for r in site_rows})
        t_rows: list[dict[str, Any]] = []
        k_rows: list[dict[str, Any]] = []
        o_rows: list[dict[str, Any]] = []
        n_rows: list[dict[str, Any]] = []
        trained_l0 = {x["run_id"]: x.get("l0") for x in recs
                      if x["kind"] == "threshold" and x["param"] == 0}
        for x in recs:
            r = site_ids[x["run_id"]]
            base = {"run_id": x["run_id"][:10], "series": r["series"], "knob": r["knob"],
                    "d_sae": r.get("d_sae"), "trained_k": r.get("sae.k"),
                    "trained_l0": trained_l0.get(x["run_id"])}
            by_kind = {"threshold": t_rows, "k": k_rows, "opposing": o_rows, "topn": n_rows}
            if x["kind"] in by_kind:  # a kind this report does not know yet is left out
                by_kind[x["kind"]].append({**x, **base})
        if out_dir is not None:
            md += _plots(model, hook, site_ids, names, recs, out_dir)
        for title, table, part in (("Threshold ablation", thr, t_rows),
                                   ("Progressive code (TopK family)", prog, k_rows),
                                   ("Top-n latents per token", topn, n_rows),
                                   ("Opposing decoder directions", opp, o_rows)):
            if part:
                md += [f"### {title}", "", *Table(table.name, table.columns, part).markdown(),
                       ""]
                table.rows += [dict(p, model=model, hook_name=hook) for p in part]
        md += [f"- {w}" for w in _words(t_rows, k_rows, o_rows)]
        md += [f"- {w}" for w in topn_words(n_rows)]
        md += [f"- {w}" for w in _stale(t_rows, site_ids)] + [""]
    if not records:
        md += ["No run had weights on disk to analyse.", ""]
    for t in (thr, prog, topn, opp):
        t.columns = [("model", "model", ""), ("hook_name", "hook_name", ""), *t.columns]
    return "\n".join(md), [thr, prog, topn, opp]


def _plots(model: str, hook: str, site_ids: dict[str, dict[str, Any]], names: list[str],
           recs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    md = []
    base = f"posthoc/{slug(model)}__{slug(hook)}"
    panels = [Panel("L0 against t", "threshold t (activation units)",
                    "L0 (active latents per token)", logx=True),
              Panel("FVU against t", "threshold t (activation units)", "FVU", logx=True),
              Panel("CE loss recovered against t", "threshold t (activation units)",
                    "CE loss recovered (1 = clean model)", logx=True, hline=1.0),
              Panel("the trade-off t traces", "L0 (active latents per token)", "FVU",
                    logx=True)]
    kp = [Panel("FVU against k'", "k' (latents kept per token)", "FVU", logx=True),
          Panel("CE loss recovered against k'", "k' (latents kept per token)",
                "CE loss recovered (1 = clean model)", logx=True, hline=1.0)]
    seen: set[str] = set()
    for run_id in sorted({x["run_id"] for x in recs}, key=lambda i: (site_ids[i]["series"], i)):
        r = site_ids[run_id]
        idx = names.index(r["series"])
        label = r["series"] if r["series"] not in seen else ""
        seen.add(r["series"])
        t = sorted((x for x in recs if x["run_id"] == run_id and x["kind"] == "threshold"),
                   key=lambda x: x["param"])
        pos = [x for x in t if x["param"] > 0]  # t = 0 has no place on a log axis
        for panel, key in zip(panels[:3], ("l0", "fvu", "ce_loss_recovered"), strict=True):
            panel.lines.append(Line(label, [x["param"] for x in pos], [x[key] for x in pos],
                                    idx, alpha=0.8))
        panels[3].lines.append(Line(label, [x["l0"] for x in t], [x["fvu"] for x in t], idx,
                                    alpha=0.8, best=(t[0]["l0"], t[0]["fvu"]) if t else None))
        k = sorted((x for x in recs if x["run_id"] == run_id and x["kind"] == "k"),
                   key=lambda x: x["param"])
        if k:
            trained = [x for x in k if x["param"] == r.get("sae.k")]
            best = (trained[0]["param"], trained[0]["fvu"]) if trained else None
            kp[0].lines.append(Line(label, [x["param"] for x in k], [x["fvu"] for x in k], idx,
                                    best=best))
            kp[1].lines.append(Line(label, [x["param"] for x in k],
                                    [x["ce_loss_recovered"] for x in k], idx))
    rel = f"{base}__threshold.png"
    if line_panels(panels, f"{model} · {hook}: global-threshold ablation (★ = as trained, "
                   "t = 0)", out_dir / rel):
        md += [f"![threshold ablation]({rel})", ""]
    rel = f"{base}__progressive.png"
    if line_panels(kp, f"{model} · {hook}: TopK-family SAEs at k' ≠ k (★ = the trained k)",
                   out_dir / rel):
        md += [f"![progressive code]({rel})", ""]
    return md


def _stale(t_rows: list[dict[str, Any]], site_ids: dict[str, dict[str, Any]]) -> list[str]:
    """A warning per run whose re-evaluated FVU (t = 0, the SAE as trained) is far from the
    registry's: the model or the data changed since it was trained, so nothing here holds."""
    out = []
    for x in t_rows:
        r = next((r for i, r in site_ids.items() if i.startswith(x["run_id"])), None)
        if x["param"] == 0 and r and ok(r.get("fvu")) and ok(x.get("fvu")) and \
                abs(x["fvu"] - r["fvu"]) > 0.25 * r["fvu"] + 0.01:
            out.append(f"**Warning**: `{x['run_id']}` re-evaluates to FVU {x['fvu']:.4f}, the "
                       f"registry says {r['fvu']:.4f}: the model or the data changed since it "
                       "was trained, so its post-hoc numbers do not describe it.")
    return out


def _words(t_rows: list[dict[str, Any]], k_rows: list[dict[str, Any]],
           o_rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for run in sorted({x["run_id"] for x in t_rows}):
        pts = sorted((x for x in t_rows if x["run_id"] == run), key=lambda x: x["param"])
        if len(pts) > 1 and ok(pts[0].get("l0")) and ok(pts[-1].get("l0")):
            a, b = pts[0], pts[-1]
            out.append(f"{a['series']} {a['knob']} (`{run}`): thresholding at t = "
                       f"{b['param']:.3g} takes L0 {a['l0']:.1f} -> {b['l0']:.1f} and FVU "
                       f"{a['fvu']:.4f} -> {b['fvu']:.4f}.")
    for run in sorted({x["run_id"] for x in k_rows}):
        pts = sorted((x for x in k_rows if x["run_id"] == run), key=lambda x: x["param"])
        trained = [x for x in pts if x["param"] == x["trained_k"]]
        if trained and len(pts) > 1:
            best = min(pts, key=lambda x: (x["fvu"] if ok(x["fvu"]) else math.inf, x["param"]))
            listed = ", ".join(f"{x['fvu']:.4f} at k'={x['param']}" for x in pts)
            out.append(f"{pts[0]['series']} k={trained[0]['param']} (`{run}`): FVU {listed}; "
                       f"lowest at k'={best['param']}.")
    n9 = sum(x.get("pairs_below_0.9") or 0 for x in o_rows)
    n7 = sum(x.get("pairs_below_0.7") or 0 for x in o_rows)
    if o_rows:
        out.append(f"Opposing decoder directions over {len(o_rows)} runs: {n9} pairs with "
                   f"cosine < -0.9 and {n7} with cosine < -0.7 in total.")
    return out


def topn_words(n_rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per run cut to top-n: its FVU at each n, against the SAE as trained."""
    out = []
    for run in sorted({x["run_id"] for x in n_rows}):
        pts = sorted((x for x in n_rows if x["run_id"] == run), key=lambda x: x["param"])
        a = pts[0]
        listed = ", ".join(f"{x['fvu']:.4f} at n={x['param']}" for x in pts if ok(x.get("fvu")))
        trained = f" (L0 {a['trained_l0']:.1f} as trained)" if ok(a.get("trained_l0")) else ""
        out.append(f"{a['series']} {a['knob']} (`{run}`){trained}: top-n per token gives FVU "
                   f"{listed or 'none measured'}.")
    return out
