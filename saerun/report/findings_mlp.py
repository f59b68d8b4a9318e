"""The MLP questions of docs/FINDINGS.md (sections 6-8): transcoders against SAEs at one MLP,
W_enc = W_dec^T for transcoders, and what not shuffling costs. Computed from the runs of their
own findings specs only (`MLP_SPECS`), which train at `blocks.1`'s MLP, not at the site of the
other questions, so no series of one mixes into the other's frontiers."""

from __future__ import annotations

import statistics
from typing import Any

from saerun.report.common import ok

MLP_SPECS = ("transcoders.yaml", "transcoder-init.yaml", "shuffle.yaml")
INIT = "sae.init_encoder_as_decoder_transpose"
BUFFER = "data.shuffle_buffer_tokens"
DEFAULT_BUFFER = 65_536


def _of(plans: dict[str, list[str]], rows: list[dict[str, Any]], spec: str
        ) -> list[dict[str, Any]]:
    ids = set(plans.get(spec, []))
    return [r for r in rows if r["run_id"] in ids]


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if ok(value) else "-"


def _ids(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{str(r['run_id'])[:10]}`" for r in rows)


def mlp_sections(rows: list[dict[str, Any]], plans: dict[str, list[str]],
                 curves: dict[str, list[dict[str, Any]]],
                 compare_words: Any) -> list[str]:
    """Markdown lines of sections 6-8 (each says so when its runs are missing)."""
    ids = sorted({i for spec in MLP_SPECS for i in plans.get(spec, [])})
    done = sum(1 for r in rows if r["run_id"] in set(ids))
    md: list[str] = [f"Sections 6-8 come from {done} further runs of {len(MLP_SPECS)} specs "
                     f"({', '.join(f'`{s}`' for s in MLP_SPECS)}) at `blocks.1`'s MLP, kept out "
                     "of the sections above.", ""]
    md += _transcoder_vs_sae(_of(plans, rows, "transcoders.yaml"), compare_words)
    md += _transcoder_init(_of(plans, rows, "transcoder-init.yaml"))
    md += _shuffling(_of(plans, rows, "shuffle.yaml"), curves)
    return md


def _transcoder_vs_sae(rows: list[dict[str, Any]], compare_words: Any) -> list[str]:
    md = ["## 6. A transcoder against an SAE at the same MLP", "",
          "Both reconstruct `blocks.1.hook_mlp_out`: the SAE reads mlp_out itself, the transcoder "
          "the MLP's input `blocks.1.hook_mlp_in` (TopK at four k, 512 latents). FVU is of "
          "mlp_out's reconstruction; CE loss recovered splices each output in at mlp_out.", ""]
    sae = sorted((r for r in rows if r["series"] == "topk"), key=lambda r: r["sae.k"])
    tc = sorted((r for r in rows if r["series"] == "topk transcoder"), key=lambda r: r["sae.k"])
    if not sae or not tc:
        return md + ["Not trained yet (`specs/findings/transcoders.yaml`).", ""]
    md += ["| k | SAE L0 | SAE FVU | SAE CE rec. | transcoder L0 | transcoder FVU | "
           "transcoder CE rec. |", "|---:|---:|---:|---:|---:|---:|---:|"]
    by_k = {r["sae.k"]: r for r in tc}
    for s in sae:
        t = by_k.get(s["sae.k"], {})
        md.append(f"| {s['sae.k']} | {_f(s.get('l0'), 1)} | {_f(s.get('fvu'))} | "
                  f"{_f(s.get('ce_loss_recovered'))} | {_f(t.get('l0'), 1)} | "
                  f"{_f(t.get('fvu'))} | {_f(t.get('ce_loss_recovered'))} |")
    words, _ = compare_words(rows, "topk transcoder", "topk")
    worse = sum(1 for s in sae if ok(s.get("fvu")) and ok(by_k.get(s["sae.k"], {}).get("fvu"))
                and by_k[s["sae.k"]]["fvu"] > s["fvu"])
    md += ["", words, "",
           f"At equal k the transcoder's FVU is higher at {worse} of {len(sae)} k: predicting "
           "the MLP's output from its input is a harder problem than reconstructing the output "
           "from itself, which is the price of a dictionary that describes the MLP's computation "
           f"instead of its result. Runs: SAE {_ids(sae)}; transcoder {_ids(tc)}.", ""]
    return md


def _transcoder_init(rows: list[dict[str, Any]]) -> list[str]:
    md = ["## 7. Does W_enc = W_dec^T at init help transcoders?", "",
          "Claimed for SAEs (Anthropic, April 2024 update) and, by the same argument, for "
          "transcoders. Here d_in = d_out = 128 (mlp_in -> mlp_out), so the transpose is "
          "defined; ReLU-L1 and TopK transcoders, init on and off, two seeds each. Means over "
          "the seeds:", ""]
    if not rows:
        return md + ["Not trained yet (`specs/findings/transcoder-init.yaml`).", ""]
    md += ["| transcoder | W_enc = W_dec^T | runs | dead % | L0 | FVU | CE rec. |",
           "|---|---|---:|---:|---:|---:|---:|"]
    verdicts = []
    for series in sorted({r["series"] for r in rows}):
        means = {}
        for init in (True, False):
            group = [r for r in rows if r["series"] == series and bool(r.get(INIT)) == init]
            if not group:
                continue
            m = {k: statistics.fmean(float(r[k]) for r in group if ok(r.get(k)))
                 for k in ("dead_fraction", "l0", "fvu", "ce_loss_recovered")
                 if any(ok(r.get(k)) for r in group)}
            means[init] = m
            md.append(f"| {series} | {'on' if init else 'off'} | {len(group)} | "
                      f"{_f(100 * m['dead_fraction'], 1) if 'dead_fraction' in m else '-'} | "
                      f"{_f(m.get('l0'), 1)} | {_f(m.get('fvu'))} | "
                      f"{_f(m.get('ce_loss_recovered'))} |")
        if True in means and False in means and "fvu" in means[True]:
            on, off = means[True], means[False]
            dead = on.get("dead_fraction", 0) - off.get("dead_fraction", 0)
            verdicts.append(
                f"{series}: the transpose init changes dead latents by {100 * dead:+.1f} "
                f"points and FVU by {on['fvu'] - off['fvu']:+.4f} (L0 {on.get('l0', 0):.1f} "
                f"against {off.get('l0', 0):.1f})")
    md += ["", "; ".join(verdicts) + "." if verdicts else "", "",
           f"Runs: {_ids(sorted(rows, key=lambda r: str(r['run_id'])))}.", ""]
    return md


def _smoothed(points: list[dict[str, Any]], window: int = 3) -> list[tuple[float, float]]:
    """(tokens, mean training MSE of the last `window` logged points): one batch's MSE is noisy,
    and without shuffling it swings with the text of the batch."""
    pts = [(float(p["tokens"]), float(p["mse"])) for p in points
           if ok(p.get("tokens")) and ok(p.get("mse"))]
    return [(t, statistics.fmean(m for _, m in pts[max(0, i - window + 1):i + 1]))
            for i, (t, _) in enumerate(pts)]


def _shuffling(rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    md = ["## 8. What does not shuffling cost?", "",
          "The claim: without shuffling, training converges to the same result eventually but "
          "less efficiently. A TopK SAE at mlp_out and a TopK transcoder mlp_in -> mlp_out, "
          "with `data.shuffle_buffer_tokens` at 0 (no shuffling: each batch is consecutive "
          f"text), 16k, the default {DEFAULT_BUFFER // 1024}k and 256k. *Tokens to match*: the "
          "first point where a run's smoothed training MSE (mean of 3 logged points) reaches "
          "the default-buffer run's final smoothed MSE.", ""]
    if not rows:
        return md + ["Not trained yet (`specs/findings/shuffle.yaml`).", ""]
    md += ["| dictionary | buffer tokens | FVU (held out) | CE rec. | final train MSE | "
           "tokens to match | run |", "|---|---:|---:|---:|---:|---:|---|"]
    notes = []
    for series in sorted({r["series"] for r in rows}):
        group = sorted((r for r in rows if r["series"] == series), key=lambda r: r[BUFFER])
        ref = next((r for r in group if r[BUFFER] == DEFAULT_BUFFER), None)
        ref_curve = _smoothed(curves.get(str(ref["run_id"]), [])) if ref else []
        target = ref_curve[-1][1] if ref_curve else None
        for r in group:
            curve = _smoothed(curves.get(str(r["run_id"]), []))
            final = curve[-1][1] if curve else None
            match = None
            if target is not None:
                match = next((t for t, m in curve if m <= target), None)
            matched = "-" if target is None else (f"{match:,.0f}" if match is not None
                                                  else "not within the run")
            md.append(f"| {series} | {r[BUFFER]:,} | {_f(r.get('fvu'))} | "
                      f"{_f(r.get('ce_loss_recovered'))} | {_f(final)} | {matched} | "
                      f"`{str(r['run_id'])[:10]}` |")
        none = next((r for r in group if r[BUFFER] == 0), None)
        if ref is not None and none is not None and ok(ref.get("fvu")) and ok(none.get("fvu")):
            notes.append(f"{series}: unshuffled FVU {none['fvu']:.4f} against "
                         f"{ref['fvu']:.4f} with the default buffer "
                         f"({100 * (none['fvu'] / ref['fvu'] - 1):+.0f}%)")
    md += ["", "; ".join(notes) + "." if notes else "",
           "", "Held-out FVU is the fair comparison (the training MSE of an unshuffled run is "
           "measured on consecutive text, so it swings with the batch); within this run's "
           f"{max(int(r['train_tokens']) for r in rows):,} tokens the table says whether the "
           "unshuffled runs caught up, not whether they would eventually.", ""]
    return md
