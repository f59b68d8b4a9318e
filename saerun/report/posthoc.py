"""Post-hoc analyses of trained SAEs, re-evaluated on held-out activations (DESIGN.md §5):

- **Global-threshold ablation**: zero every latent activation below t (keep f_i >= t), then
  L0 / FVU / CE loss recovered against t. t = 0 is the SAE as trained; the other values are
  quantiles of the SAE's own non-zero activations on the eval tokens, so every SAE is probed
  across its whole range whatever its scale.
- **Progressive code** (TopK family): evaluate at k' other than the trained k: per token the
  k' largest pre-activations, ReLU'd (batchtopk and matryoshka too, per token).
- **Opposing decoder directions**: latent pairs whose decoder rows have cosine < -0.9 and
  < -0.7 (weights only).

Each SAE is loaded from its run folder (config from the registry, `sae_weights.safetensors`,
normalisation already folded in) and every variant is evaluated by `evaluate.evaluate_group`,
so the metrics are exactly the registry's, on the first POSTHOC_TOKENS held-out tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saerun.report.common import Table, by_site, ok, prepare, slug
from saerun.report.figures import Line, Panel, line_panels

POSTHOC_TOKENS = 4096  # 32 sequences: enough for curves, cheap on a CPU
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)  # of the non-zero activations: thresholds t > 0
K_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # k' = factor * k, capped at d_sae
OPPOSING = (-0.9, -0.7)
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")


class _ReEncoded(nn.Module):
    """A trained SAE with another encode; its decoder (W_dec, decode) unchanged."""

    def __init__(self, sae: nn.Module) -> None:
        super().__init__()
        self.sae = sae

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec

    def decode(self, f: Tensor) -> Tensor:
        return self.sae.decode(f)


class Thresholded(_ReEncoded):
    """An SAE whose latents below t are zeroed: f' = f * 1[f >= t]; decode unchanged."""

    def __init__(self, sae: nn.Module, t: float) -> None:
        super().__init__(sae)
        self.t = float(t)

    def encode(self, x: Tensor) -> Tensor:
        f = self.sae.encode(x)
        return torch.where(f >= self.t, f, torch.zeros_like(f))


class TopKAt(_ReEncoded):
    """A TopK-family SAE evaluated at k' latents per token: ReLU of the k' largest
    pre-activations of each token, zeros elsewhere."""

    def __init__(self, sae: nn.Module, k: int) -> None:
        super().__init__(sae)
        self.k = int(k)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.sae.pre_acts(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def opposing_pairs(w_dec: Tensor, cutoffs: tuple[float, ...] = OPPOSING) -> dict[float, int]:
    """cutoff -> number of latent pairs (i < j) whose decoder rows have cosine < cutoff."""
    w = w_dec.double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = w @ w.t()
    upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
    return {c: int(((cos < c) & upper).sum()) for c in cutoffs}


def thresholds_for(f: Tensor, quantiles: tuple[float, ...] = QUANTILES) -> list[float]:
    """0, then the quantiles of the non-zero entries of f (distinct, increasing)."""
    nz = f[f > 0].double()
    if nz.numel() == 0:
        return [0.0]
    qs = torch.quantile(nz[:1_000_000], torch.tensor(quantiles, dtype=torch.float64))
    return sorted({0.0, *(float(q) for q in qs)})


def k_primes(k: int, d_sae: int, factors: tuple[float, ...] = K_FACTORS) -> list[int]:
    return sorted({min(d_sae, max(1, round(k * f))) for f in factors})


@torch.no_grad()
def reconstruction_sweep(variants: list[nn.Module], x: Tensor) -> list[dict[str, float]]:
    """L0 and FVU of each SAE variant on activations x [n, d_in] (no language model), by the
    registry's formulas (`metrics.MetricAccumulator`)."""
    from saerun.metrics import MetricAccumulator

    out = []
    for sae in variants:
        acc = MetricAccumulator()
        f = sae.encode(x)
        acc.update_reconstruction(x, sae.decode(f), f)
        m = acc.result()
        out.append({"l0": m["l0"], "fvu": m["fvu"]})
    return out


def load_sae(config: dict[str, Any], folder: Path) -> nn.Module:
    """A trained SAE from its resolved config and `sae_weights.safetensors`, in eval mode."""
    from saerun.artifacts import read_weights
    from saerun.sae import build_sae
    from saerun.spec import RunConfig

    cfg = RunConfig.model_validate(config)
    sae = build_sae(cfg.sae, cfg.seed)
    sae.load_state_dict(read_weights(folder))
    return sae.eval()


def _variants(row: dict[str, Any], sae: nn.Module, acts: Tensor) -> dict[str, tuple[str, Any]]:
    """variant id -> (kind, parameter) for one SAE: thresholds, then k' for the TopK family."""
    with torch.no_grad():
        f = sae.encode(acts)
    out: dict[str, tuple[str, Any]] = {}
    for t in thresholds_for(f):
        out[f"{row['run_id']}|t={t!r}"] = ("threshold", t)
    if row["architecture"] in TOPK_FAMILY and ok(row.get("sae.k")):
        for k in k_primes(int(row["sae.k"]), int(row["d_sae"])):
            out[f"{row['run_id']}|k={k}"] = ("k", k)
    return out


def run_posthoc(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]],
                folders: dict[str, Path], cache: Path | None = None) -> list[dict[str, Any]]:
    """Every analysis for every run whose weights are on disk: one record per (run, variant)
    plus one per run with the opposing-pair counts. Loads each model once.

    cache: a JSON file of earlier records (a finished run's weights never change, so its
    records are reused; the file is rewritten with the union)."""
    import json

    cached: list[dict[str, Any]] = []
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("tokens") == POSTHOC_TOKENS:
            cached = saved["records"]
    done = {x["run_id"] for x in cached}
    todo = [r for r in rows if r["run_id"] not in done]
    records = cached + _analyse(todo, configs, folders)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"tokens": POSTHOC_TOKENS, "records": records}),
                         encoding="utf-8")
    wanted = {r["run_id"] for r in rows}
    return [x for x in records if x["run_id"] in wanted]


def _analyse(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]],
             folders: dict[str, Path]) -> list[dict[str, Any]]:
    from saerun.activations import LanguageModel, eval_token_batches
    from saerun.evaluate import evaluate_group
    from saerun.spec import RunConfig

    records: list[dict[str, Any]] = []
    runnable = [r for r in rows if (folders[r["run_id"]] / "sae_weights.safetensors").exists()]
    by_source: dict[tuple, list[dict[str, Any]]] = {}
    for r in runnable:
        cfg = RunConfig.model_validate(configs[r["run_id"]])
        key = (cfg.model.name, cfg.data.model_dump_json())
        by_source.setdefault(key, []).append(r)
    for (model_name, _), group in sorted(by_source.items()):
        cfg = RunConfig.model_validate(configs[group[0]["run_id"]])
        lm = LanguageModel.load(model_name, device="cpu")
        data = cfg.data.model_copy(update={"eval_tokens": min(POSTHOC_TOKENS,
                                                              cfg.data.eval_tokens)})
        batches = eval_token_batches(lm, data)
        hooks = sorted({r["hook_name"] for r in group})
        acts = {h: [] for h in hooks}
        for tokens in batches:
            keep = ~lm.special_mask(tokens)
            got = lm.capture(tokens, hooks)
            for h in hooks:
                acts[h].append(got[h][keep].float())
        flat = {h: torch.cat(v) for h, v in acts.items()}
        saes: dict[str, tuple[nn.Module, str]] = {}
        meta: dict[str, tuple[dict[str, Any], str, Any]] = {}
        for r in group:
            sae = load_sae(configs[r["run_id"]], folders[r["run_id"]])
            pairs = opposing_pairs(sae.W_dec.detach())
            records.append({"run_id": r["run_id"], "kind": "opposing", "param": None,
                            **{f"pairs_below_{-c:g}": n for c, n in pairs.items()}})
            for vid, (kind, param) in _variants(r, sae, flat[r["hook_name"]]).items():
                wrapped = Thresholded(sae, param) if kind == "threshold" else TopKAt(sae, param)
                saes[vid] = (wrapped, r["hook_name"])
                meta[vid] = (r, kind, param)
        results = evaluate_group(lm, batches, saes, {"ce_loss_recovered"},
                                 cfg.data.exclude_special_tokens)
        for vid in sorted(results):
            r, kind, param = meta[vid]
            m = results[vid].metrics
            records.append({"run_id": r["run_id"], "kind": kind, "param": param,
                            "l0": m.get("l0"), "fvu": m.get("fvu"),
                            "ce_loss_recovered": m.get("ce_loss_recovered")})
    return records


def build_posthoc(rows: list[dict[str, Any]], records: list[dict[str, Any]],
                  out_dir: Path | None) -> tuple[str, list[Table]]:
    """The post-hoc report from `run_posthoc`'s records (pure: no model, no weights)."""
    rows = prepare(rows)
    known = {r["run_id"] for r in rows}
    records = [x for x in records if x["run_id"] in known]
    md = [
        "# Post-hoc analyses",
        "",
        f"{len({x['run_id'] for x in records})} of {len(rows)} runs analysed (the others have no "
        f"weights on disk), on the first {POSTHOC_TOKENS:,} held-out tokens, with the registry's "
        "metric code. Threshold ablation: every latent activation below t is zeroed (t = 0 is "
        "the trained SAE; the other t are the 10/30/50/70/90% quantiles of the SAE's own "
        "non-zero activations). Progressive code: TopK-family SAEs re-evaluated with the k' "
        "largest pre-activations per token. Opposing directions: pairs of latents whose decoder "
        "rows have cosine below -0.9 / -0.7.",
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
        t_rows, k_rows, o_rows = [], [], []
        for x in recs:
            r = site_ids[x["run_id"]]
            base = {"run_id": x["run_id"][:10], "series": r["series"], "knob": r["knob"],
                    "d_sae": r.get("d_sae"), "trained_k": r.get("sae.k")}
            {"threshold": t_rows, "k": k_rows, "opposing": o_rows}[x["kind"]].append({**x,
                                                                                  **base})
        if out_dir is not None:
            md += _plots(model, hook, site_ids, names, recs, out_dir)
        for title, table, part in (("Threshold ablation", thr, t_rows),
                                   ("Progressive code (TopK family)", prog, k_rows),
                                   ("Opposing decoder directions", opp, o_rows)):
            if part:
                md += [f"### {title}", "", *Table(table.name, table.columns, part).markdown(),
                       ""]
                table.rows += [dict(p, model=model, hook_name=hook) for p in part]
        md += [f"- {w}" for w in _words(t_rows, k_rows, o_rows)]
        md += [f"- {w}" for w in _stale(t_rows, site_ids)] + [""]
    if not records:
        md += ["No run had weights on disk to analyse.", ""]
    for t in (thr, prog, opp):
        t.columns = [("model", "model", ""), ("hook_name", "hook_name", ""), *t.columns]
    return "\n".join(md), [thr, prog, opp]


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
