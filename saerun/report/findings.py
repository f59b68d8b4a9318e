"""docs/FINDINGS.md and its reports, from the findings runs in the registry (reads only).

    saerun findings [--specs specs/findings] [--out docs]
                    [--registry docs/findings/registry/saerun.db]

The command trains the specs first (`saerun.campaign`) and stores the post-hoc analyses of the
frontier runs (`saerun.posthoc`); this module then:
1. Writes the reports under `docs/findings/`: frontier, curves and post-hoc analyses on the
   frontier spec's runs (one learning rate, one seed: a clean comparison), death and LR
   sensitivity on every run.
2. Writes `docs/FINDINGS.md`: each research question answered from the numbers, with the runs
   behind each claim and where the data disagree with the papers. Every sentence is computed
   from the registry, so the page is regenerated, never edited; it is dated by its newest run,
   so the same registry gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saerun.errors import SaerunError
from saerun.registry import Registry
from saerun.report import ideas_real
from saerun.report.build import read_densities, write_reports
from saerun.report.common import (
    Comparison,
    compare,
    interpolate,
    ok,
    prepare,
    series_front,
)
from saerun.report.death import INIT_KEY, init_label, matched_effect
from saerun.report.findings_ideas import IDEA_SPECS, ideas_sections
from saerun.report.findings_mlp import MLP_SPECS, mlp_sections
from saerun.report.findings_real import REAL_SPECS, real_sections
from saerun.report.frontier import training_flops
from saerun.report.lr import build_lr
from saerun.report.rows import results

FRONTIER_SPEC = "frontier.yaml"
# Idea specs whose runs get the post-hoc analyses too (their sections read them: each of their
# rows carries its records under "posthoc").
POSTHOC_IDEA_SPECS = ("ideas-progressive.yaml",)
L0_GRID = (8, 16, 32, 64, 128)  # where the TopK-family / JumpReLU frontiers are read off


def _rows(reg: Registry, plans: dict[str, list[str]]) -> tuple[list[dict[str, Any]],
                                                               list[dict[str, Any]]]:
    """(every finished findings run, the frontier spec's: all of them when it has none)."""
    real = {i for spec in REAL_SPECS for i in plans.get(spec, [])}  # their own section's
    wanted = {i for ids in plans.values() for i in ids} - real
    rows = [r for r in results(reg) if r["run_id"] in wanted]
    frontier_ids = set(plans.get(FRONTIER_SPEC, []))
    return rows, [r for r in rows if r["run_id"] in frontier_ids] or rows


def posthoc_run_ids(registry_path: Path, plans: dict[str, list[str]]) -> list[str]:
    """The runs whose post-hoc analyses the findings reports show: the frontier runs, then
    those of `POSTHOC_IDEA_SPECS` not among them."""
    with Registry(registry_path, must_exist=True) as reg:
        rows, front = _rows(reg, plans)
    ids = [r["run_id"] for r in front]
    wanted = {i for spec in POSTHOC_IDEA_SPECS for i in plans.get(spec, [])}
    ids += [r["run_id"] for r in rows if r["run_id"] in wanted - set(ids)]
    return ids + [i for i in plans.get(ideas_real.SPEC, []) if i not in ids]  # if trained


def write_findings(registry_path: Path, plans: dict[str, list[str]], failed: dict[str, str],
                   out: Path) -> Path:
    """Write the findings reports and `out/FINDINGS.md` from the registry; returns the page.
    plans: spec file name -> its run ids; failed: run id -> why (named on the page)."""
    real_ids = {i for spec in REAL_SPECS for i in plans.get(spec, [])}
    with Registry(registry_path, must_exist=True) as reg:
        rows, front_rows = _rows(reg, plans)
        real_rows = [r for r in results(reg) if r["run_id"] in real_ids]
        if not rows:
            raise SaerunError(f"no finished findings run in {registry_path}",
                              hint="run `saerun findings` without --no-train first")
        ids = [r["run_id"] for r in rows]
        curves = reg.curves(ids)
        densities = read_densities({i: reg.artifacts_dir(i) for i in ids})
        records = reg.posthoc([r["run_id"] for r in front_rows])
        idea_records = reg.posthoc([i for spec in (*POSTHOC_IDEA_SPECS, ideas_real.SPEC)
                                    for i in plans.get(spec, [])])
    report_dir = Path(out) / "findings"
    everything = {"rows": rows, "curves": curves, "densities": densities}
    write_reports(registry_path, ("death", "lr"), {}, report_dir, inputs=everything)
    front_inputs = {"rows": front_rows, "curves": curves, "posthoc_records": records}
    write_reports(registry_path, ("frontier", "curves", "posthoc"), {}, report_dir,
                  inputs=front_inputs)
    page = Path(out) / "FINDINGS.md"
    # The MLP questions train at another site: their runs stay out of the other sections.
    mlp_ids = {i for spec in MLP_SPECS for i in plans.get(spec, [])}
    idea_ids = {i for spec in IDEA_SPECS for i in plans.get(spec, [])}
    # A run that another findings spec plans too (an idea's baseline) stays in the sections above.
    shared = {i for spec, ids in plans.items() if spec not in (*MLP_SPECS, *IDEA_SPECS)
              for i in ids}
    main_rows = [r for r in rows if r["run_id"] not in (mlp_ids | idea_ids) - shared] or rows
    mlp_rows = [r for r in rows if r["run_id"] in mlp_ids]
    text = findings_page(prepare(main_rows), prepare(front_rows), plans, curves, failed)
    text += "\n" + "\n".join(mlp_sections(prepare(mlp_rows) if mlp_rows else [], plans, curves,
                                           _cmp_words))
    text += "\n" + "\n".join(real_sections(prepare(real_rows) if real_rows else [],
                                            prepare(front_rows), plans, 9))
    idea_rows = prepare([r for r in rows if r["run_id"] in idea_ids]) if idea_ids else []
    for r in idea_rows:
        r["posthoc"] = [x for x in idea_records if x["run_id"] == r["run_id"]]
    text += "\n".join(ideas_sections(idea_rows, plans, curves, _cmp_words))
    real_idea_ids = set(plans.get(ideas_real.SPEC, []))
    real_ideas = prepare([r for r in real_rows if r["run_id"] in real_idea_ids]) \
        if real_idea_ids & {r["run_id"] for r in real_rows} else []
    for r in real_ideas:
        r["posthoc"] = [x for x in idea_records if x["run_id"] == r["run_id"]]
    text += "\n" + "\n".join(ideas_real.section(real_ideas))
    page.write_text(text, encoding="utf-8")
    return page


# -- the answers --------------------------------------------------------------------------------


def _n(rows: list[dict[str, Any]], series: str) -> int:
    return sum(1 for r in rows if r["series"] == series)


def _dominated(rows: list[dict[str, Any]], loser: str, winner: str) -> int:
    """Runs of `loser` that some run of `winner` beats on L0 and FVU (one strictly)."""
    wins = [(w["l0"], w["fvu"]) for w in rows if w["series"] == winner and ok(w.get("l0"))
            and ok(w.get("fvu"))]
    count = 0
    for r in rows:
        if r["series"] != loser or not (ok(r.get("l0")) and ok(r.get("fvu"))):
            continue
        if any(a <= r["l0"] and b <= r["fvu"] and (a < r["l0"] or b < r["fvu"]) for a, b in wins):
            count += 1
    return count


def _cmp_words(rows: list[dict[str, Any]], a: str, b: str) -> tuple[str, Comparison]:
    """One paragraph: A against B on the L0-FVU and L0-CE frontiers."""
    fvu = compare(series_front(rows, a), series_front(rows, b))
    ce = compare(series_front(rows, a, "ce_loss_recovered", True),
                 series_front(rows, b, "ce_loss_recovered", True), higher_is_better=True)
    runs = f"{_n(rows, a)} {a} runs against {_n(rows, b)} {b} runs"
    if fvu.l0_range is None:
        return f"Their L0 ranges do not overlap ({runs}): no comparison.", fvu
    lo, hi = fvu.l0_range
    mid = len(fvu.grid) // 2
    words = (
        f"Over L0 {lo:.1f}-{hi:.1f}, where both were trained ({runs}), {a}'s L0-FVU frontier "
        f"is lower at {fvu.a_better} of {len(fvu.grid)} log-spaced L0 values and {b}'s at "
        f"{fvu.b_better}; at L0 {fvu.grid[mid]:.1f}, FVU {fvu.a[mid]:.4f} against "
        f"{fvu.b[mid]:.4f} ({_rel(fvu.a[mid], fvu.b[mid])}). "
    )
    if ce.l0_range is not None:
        at = len(ce.grid) // 2  # its own grid: the CE frontiers' shared range can be narrower
        words += (f"On CE loss recovered {a} is higher at {ce.a_better} of {len(ce.grid)} "
                  f"points ({ce.a[at]:.4f} against {ce.b[at]:.4f} at L0 {ce.grid[at]:.1f}). ")
    words += (f"{_dominated(rows, b, a)} of the {_n(rows, b)} {b} runs are Pareto-dominated by a "
              f"{a} run, {_dominated(rows, a, b)} of the {_n(rows, a)} {a} runs by a {b} run.")
    return words, fvu


def _rel(a: float, b: float) -> str:
    if not (ok(a) and ok(b)) or b == 0:
        return "-"
    return f"{100 * (a / b - 1):+.0f}%"


def _verdict(cmp: Comparison, a: str, b: str) -> str:
    if cmp.verdict == "A better everywhere":
        return f"**Yes**: {a}'s frontier is below {b}'s across the whole shared L0 range."
    if cmp.verdict == "B better everywhere":
        return f"**No**: {b}'s frontier is below {a}'s across the whole shared L0 range."
    if cmp.verdict == "no overlap":
        return "**Cannot tell**: the two were not trained at overlapping L0."
    return (f"**Not everywhere**: the frontiers cross ({a} lower at {cmp.a_better}, {b} at "
            f"{cmp.b_better} of {len(cmp.grid)} L0 values).")


def _series(rows: list[dict[str, Any]], recipe: str) -> list[str]:
    """The series of a recipe, widest d_sae first."""
    found = {(-(r.get("d_sae") or 0), r["series"]) for r in rows if r["recipe"] == recipe}
    return [name for _, name in sorted(found)]


def _widest(rows: list[dict[str, Any]], recipe: str) -> tuple[str | None, str | None]:
    """(series at the widest d_sae, series at the narrowest) of a recipe in the frontier runs."""
    found = {}
    for r in rows:
        if r["recipe"] == recipe:
            found[r.get("d_sae") or 0] = r["series"]
    if not found:
        return None, None
    return found[max(found)], found[min(found)] if len(found) > 1 else None


def _at_grid(rows: list[dict[str, Any]], metric: str, higher: bool) -> list[str]:
    """A Markdown table: each series' frontier value at the L0_GRID points."""
    names = sorted({r["series"] for r in rows})
    head = ["| series | runs | " + " | ".join(f"L0 {x}" for x in L0_GRID) + " |",
            "|---|---:|" + "---:|" * len(L0_GRID)]
    best = {}
    vals = {}
    for name in names:
        front = series_front(rows, name, metric, higher)
        vals[name] = [interpolate(front, float(x)) for x in L0_GRID]
    for j in range(len(L0_GRID)):
        col = [(vals[n][j], n) for n in names if ok(vals[n][j])]
        if col:
            best[j] = (max if higher else min)(col)[1]
    lines = []
    for name in names:
        cells = []
        for j, v in enumerate(vals[name]):
            text = f"{v:.4f}" if ok(v) else "-"
            cells.append(f"**{text}**" if best.get(j) == name else text)
        lines.append(f"| {name} | {_n(rows, name)} | " + " | ".join(cells) + " |")
    return head + lines


def _ranking_words(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    out = []
    for x in L0_GRID:
        vals = sorted((v, n) for v, n in ((interpolate(series_front(rows, n), float(x)), n)
                                          for n in names) if ok(v))
        if len(vals) >= 2:
            out.append(f"At L0 {x}: " + " < ".join(f"{n} ({v:.4f})" for v, n in vals) + ".")
    return out


def _claims_table(rows: list[dict[str, Any]],
                  claims: list[tuple[str, str, Comparison | None, str]]) -> list[str]:
    """The papers' claims against these runs, one line each (details in the sections)."""
    out = ["## The papers' claims at a glance", "",
           "Each claim as \"A beats B\" on the L0-FVU frontier, read at 9 log-spaced L0 values "
           "where both were trained (interpolated, never extrapolated).", "",
           "| claim (paper) | A | B | runs (A + B) | A better at | verdict here |",
           "|---|---|---|---:|---:|---|"]
    for claim, a, cmp, b in claims:
        if cmp is None or cmp.l0_range is None:
            verdict, at = "not comparable (no common L0)", "-"
        else:
            at = f"{cmp.a_better}/{len(cmp.grid)}"
            verdict = {"A better everywhere": "**agrees**", "B better everywhere":
                       "**disagrees**"}.get(cmp.verdict, "mixed")
        out.append(f"| {claim} | {a} | {b} | {_n(rows, a)} + {_n(rows, b)} | {at} | {verdict} |")
    return [*out, ""]


def findings_page(rows: list[dict[str, Any]], front_rows: list[dict[str, Any]],
                  plans: dict[str, list[str]], curves: dict[str, list[dict[str, Any]]],
                  failed: dict[str, str]) -> str:
    dates = sorted(str(r.get("finished_at") or "")[:10] for r in rows)
    model = sorted({r["model"] for r in rows})
    hooks = sorted({r["hook_name"] for r in rows})
    tokens = sorted({r["train_tokens"] for r in rows if r.get("train_tokens")})
    md = [
        "# Findings on the embedded model",
        "",
        f"Data as of {dates[-1]}. Generated by `saerun findings` from {len(rows)} runs of "
        f"{sum(1 for s in plans if s not in REAL_SPECS)} specs in `specs/findings/`; do not "
        "edit by hand (rerun the command). "
        f"Model {', '.join(model)}, site {', '.join(f'`{h}`' for h in hooks)}, "
        f"{'/'.join(f'{t:,}' for t in tokens)} training tokens per SAE, metrics on held-out "
        "tokens (DESIGN.md section 5). Small SAEs trained briefly on a 4-layer model: the "
        "comparisons below are about this setting, and say how many runs stand behind each.",
        "",
        "Reports: [frontier](findings/frontier.md) · [feature death](findings/death.md) · "
        "[LR sensitivity](findings/lr.md) · [training curves](findings/curves.md) · "
        "[post-hoc analyses](findings/posthoc.md).",
        "",
    ]
    if failed:
        md += [f"**{len(failed)} runs failed** and are left out: "
               + "; ".join(f"`{k[:10]}` {v}" for k, v in sorted(failed.items())), ""]
    fr = front_rows
    l1 = "relu/l1"
    claims: list[tuple[str, str, Comparison | None, str]] = []  # claim, A, comparison, B
    gated_wide, gated_matched = _widest(fr, "gated")
    md += ["## 1. Does Gated Pareto-dominate ReLU-L1?", ""]
    md += ["The Gated SAE paper (Rajamanoharan et al. 2024) reports a Pareto improvement over "
           "ReLU-L1, at equal width and at matched compute.", ""]
    if gated_wide and any(r["series"] == l1 for r in fr):
        words, cmp = _cmp_words(fr, gated_wide, l1)
        verdict = _verdict(cmp, "Gated", "ReLU-L1")
        claims.append(("Gated beats ReLU-L1 at equal width", gated_wide, cmp, l1))
        md += [f"**At equal width** ({gated_wide} against {l1}): {verdict}", "", words, ""]
        if gated_matched:
            words, cmp = _cmp_words(fr, gated_matched, l1)
            claims.append(("Gated beats ReLU-L1 at matched compute", gated_matched, cmp, l1))
            fl_g = [training_flops(r) for r in fr if r["series"] == gated_matched]
            fl_r = [training_flops(r) for r in fr if r["series"] == l1]
            cost = (f", {min(fl_g) / 1e12:.3g} against {min(fl_r) / 1e12:.3g} TFLOP of "
                    "training per run") if fl_g and fl_r and ok(fl_g[0]) and ok(fl_r[0]) else ""
            md += [f"**At matched compute** ({gated_matched} against {l1}{cost}): "
                   f"{_verdict(cmp, 'Gated', 'ReLU-L1')}", "", words, ""]
    else:
        md += ["No Gated or no ReLU-L1 runs in the frontier spec.", ""]

    md += ["## 2. Does sqrt-L1 improve on the L1 frontier?", ""]
    if any(r["series"] == "relu/sqrt_l1" for r in fr):
        words, cmp = _cmp_words(fr, "relu/sqrt_l1", l1)
        claims.append(("sqrt-L1 improves on the L1 frontier", "relu/sqrt_l1", cmp, l1))
        md += ["The \"Sqrt()-ing L1\" post argues that a concave penalty shrinks less and moves "
               "the L0-MSE frontier down.", "",
               f"{_verdict(cmp, 'sqrt-L1', 'L1')}", "", words]
        dead = {s: [r["dead_fraction"] for r in fr if r["series"] == s
                    and ok(r.get("dead_fraction"))] for s in ("relu/sqrt_l1", l1)}
        if all(dead.values()):
            md += ["", f"Its cost: dead latents, {100 * min(dead['relu/sqrt_l1']):.0f}-"
                   f"{100 * max(dead['relu/sqrt_l1']):.0f}% across the sqrt-L1 runs against "
                   f"{100 * min(dead[l1]):.0f}-{100 * max(dead[l1]):.0f}% for L1."]
        md.append("")

    md += ["## 3. TopK, BatchTopK, JumpReLU and Matryoshka", ""]
    family = [s for s in sorted({r["series"] for r in fr})
              if s.split(" ")[0] in ("topk", "batchtopk", "jumprelu", "matryoshka")]
    md += ["Gao et al. 2024 find TopK beats ReLU-L1 at equal L0; Bussmann et al. 2024 find "
           "BatchTopK slightly better than TopK; Rajamanoharan et al. 2024b find JumpReLU at "
           "least as good as TopK and Gated; Bussmann et al. 2025 accept slightly worse "
           "reconstruction from Matryoshka in exchange for its nested dictionaries.", "",
           "FVU read off each series' frontier (log-log interpolation between its runs, "
           "never extrapolated; bold = best at that L0):", "",
           *_at_grid(fr, "fvu", False), "",
           "CE loss recovered, the same way (higher is better):", "",
           *_at_grid(fr, "ce_loss_recovered", True), ""]
    md += [f"- {w}" for w in _ranking_words(fr, family + [s for s in (l1, gated_wide) if s])]
    for a, b, claim in (("batchtopk", "topk", "BatchTopK beats TopK (slightly)"),
                        ("jumprelu", "topk", "JumpReLU is at least as good as TopK"),
                        ("batchtopk", "matryoshka", "Matryoshka reconstructs slightly worse "
                                                    "than BatchTopK"),
                        ("topk", l1, "TopK beats ReLU-L1")):
        sa = next((s for s in _series(fr, a)), None)
        sb = next((s for s in _series(fr, b)), None)
        if sa and sb:
            words, cmp = _cmp_words(fr, sa, sb)
            claims.append((claim, sa, cmp, sb))
            md.append(f"- {sa} against {sb}: {_verdict(cmp, sa, sb)} {words}")
    md.append("")

    if claims:
        at = md.index("## 1. Does Gated Pareto-dominate ReLU-L1?")
        md[at:at] = _claims_table(fr, claims)
    md += ["## 4. Does initialising W_enc to W_dec^T reduce dead latents?", ""]
    init = matched_effect(rows, (INIT_KEY,), init_label, "init")
    if init.rows:
        md += ["Anthropic's April 2024 update and Gao et al. 2024 initialise the encoder as the "
               "decoder's transpose, reporting fewer dead latents. Runs identical but for the "
               "init (and the seed):", "", *init.markdown(), ""]
        for recipe in sorted({r["recipe"] for r in init.rows}):
            cells = {c["label"]: c for c in init.rows if c["recipe"] == recipe}
            on, off = cells.get("W_enc = W_dec^T"), cells.get("independent W_enc")
            if on and off:
                diff = on["dead"] - off["dead"]
                what = ("fewer" if diff < 0 else "more") if abs(diff) >= 0.5 else "about as many"
                md.append(f"- {recipe}: {what} dead latents with W_enc = W_dec^T "
                          f"({on['dead']:.1f}% against {off['dead']:.1f}%, {on['n']} + "
                          f"{off['n']} runs); FVU {on['fvu']:.4f} against {off['fvu']:.4f} at L0 "
                          f"{on['l0']:.1f} against {off['l0']:.1f}.")
        worst = max(c["dead"] for c in init.rows)
        if worst < 1.0:
            n = sum(c["n"] for c in init.rows)
            md.append(f"- No group of these {n} runs has even 1% dead latents (at most "
                      f"{worst:.1f}%): in this setting there is too little death for the init "
                      "to remove, so the data neither support nor contradict the claim. What "
                      "the init does change here is where the run lands (L0 and FVU above).")
        md.append("")
    else:
        md += ["No runs differ only in the init.", ""]

    md += ["## 5. How sensitive to the learning rate is each architecture?", ""]
    _, tables = build_lr(rows, curves, None)
    flat = [s for s in tables[0].rows if s["metric"] == "fvu"]
    tested: dict[str, list[float]] = {}
    for p in tables[1].rows:
        tested.setdefault(p["sweep"], []).append(p["lr"])
    if flat:
        all_lrs = sorted({lr for v in tested.values() for lr in v})
        md += [f"Each sweep: one recipe at {len(all_lrs)} learning rates "
               f"({', '.join(f'{lr:g}' for lr in all_lrs)}); the flat range holds the tested "
               "LRs next to the best whose FVU is within 5% of it (see [the LR "
               "report](findings/lr.md) for loss, dead fraction and the gap to the frontier).",
               "", "| sweep | runs | best LR (FVU) | best FVU | within 5% | width (decades) | "
               "best LR (final loss) |", "|---|---:|---:|---:|---|---:|---:|"]
        loss = {s["sweep"]: s for s in tables[0].rows if s["metric"] == "final_loss"}
        for s in sorted(flat, key=lambda s: (-s["decades"], s["sweep"])):
            lb = loss.get(s["sweep"])
            md.append(f"| {s['sweep']} | {len(tested[s['sweep']])} | {s['best_lr']:g} | "
                      f"{s['best']:.4f} | {s['range']} | {s['decades']:.2f} | "
                      f"{format(lb['best_lr'], 'g') if lb else '-'} |")
        widest = max(flat, key=lambda s: (s["decades"], s["sweep"]))
        narrow = min(flat, key=lambda s: (s["decades"], s["sweep"]))
        at_top = sum(1 for s in flat if s["best_lr"] == max(tested[s["sweep"]]))
        at_bottom = sum(1 for s in flat if s["best_lr"] == min(tested[s["sweep"]]))
        if widest["decades"] == narrow["decades"]:
            words = f"Every sweep's optimum is as flat as {widest['decades']:.2f} decades. "
        else:
            words = (f"Flattest optimum: {widest['sweep']} ({widest['range']}, "
                     f"{widest['decades']:.2f} decades); sharpest: {narrow['sweep']} "
                     f"({narrow['range']}). ")
        words += (f"{at_top} of {len(flat)} sweeps have their best FVU at the "
                 f"highest LR tested and {at_bottom} at the lowest")
        if at_top + at_bottom:
            words += ": for those the optimum may lie outside the tested range"
        md += ["", f"- {words}."]
        if at_top == len(flat):
            steps = sorted({int(r["train_tokens"] // r["train.batch_tokens"]) for r in rows
                            if ok(r.get("train_tokens")) and ok(r.get("train.batch_tokens"))})
            md.append(f"- Every architecture prefers the largest LR tested: with "
                      f"{'/'.join(str(x) for x in steps)} optimiser steps per run, larger steps "
                      "win. The papers' smaller learning rates go with runs thousands of times "
                      "longer, so this says more about the short budget than about the "
                      "architectures.")
        md.append("")
    else:
        md += ["No LR sweep among these runs.", ""]
    return "\n".join(md)
