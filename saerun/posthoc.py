"""Post-hoc analyses of trained SAEs, re-evaluated on held-out activations (DESIGN.md §5), and
STORED in the registry (its `posthoc` table), so `saerun report --posthoc` only reads them:

- **Global-threshold ablation**: zero every latent activation below t (keep f_i >= t), then
  L0 / FVU / CE loss recovered against t. t = 0 is the SAE as trained; the other values are
  quantiles of the SAE's own non-zero activations on the eval tokens, so every SAE is probed
  across its whole range whatever its scale.
- **Progressive code** (TopK family): evaluate at k' other than the trained k: per token the
  k' largest pre-activations, ReLU'd (batchtopk and matryoshka too, per token).
- **Top-n per token** (any architecture but topk, whose top-n is its k' = n): keep each
  token's n largest latents of the SAE's own encode, zero the rest, decode; n from TOPN, below
  the SAE's L0 on the eval tokens (an L0-50 SAE read at 10 latents against an SAE trained at
  L0 10).
- **Opposing decoder directions**: latent pairs whose decoder rows have cosine < -0.9 and
  < -0.7 (weights only).

Each SAE is loaded from its run folder (config from the registry, `sae_weights.safetensors`,
normalisation already folded in) and every variant is evaluated by `evaluate.evaluate_group`,
so the metrics are exactly the registry's, on the first POSTHOC_TOKENS held-out tokens.

`compute(registry, run_ids)` analyses only the runs whose records are missing or stale (made on
other eval tokens, or before the run last finished): a finished run's weights never change, so
a rerun of the report costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saerun.activations import LanguageModel, eval_token_batches, outlier_limits, outlier_mask
from saerun.artifacts import read_weights
from saerun.evaluate import Encoder, evaluate_group
from saerun.metrics import MetricAccumulator
from saerun.registry import Registry
from saerun.sae import SAE, build_sae
from saerun.sae.topk import TopKSAE
from saerun.spec import RunConfig

POSTHOC_TOKENS = 4096  # 32 sequences: enough for curves, cheap on a CPU
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)  # of the non-zero activations: thresholds t > 0
K_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # k' = factor * k, capped at d_sae
TOPN = (4, 8, 16, 32)  # latents kept per token, each below the SAE's own L0
OPPOSING = (-0.9, -0.7)
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
Record = dict[str, Any]  # one analysis of one run: kind, param and its numbers (JSON-able)


class _ReEncoded(nn.Module):
    """A trained SAE with another encode; its decoder (W_dec, decode) unchanged."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec

    def decode(self, f: Tensor) -> Tensor:
        return self.sae.decode(f)


class Thresholded(_ReEncoded):
    """An SAE whose latents below t are zeroed: f' = f * 1[f >= t]; decode unchanged."""

    def __init__(self, sae: SAE, t: float) -> None:
        super().__init__(sae)
        self.t = float(t)

    def encode(self, x: Tensor) -> Tensor:
        f = self.sae.encode(x)
        return torch.where(f >= self.t, f, torch.zeros_like(f))


class TopKAt(_ReEncoded):
    """A TopK-family SAE evaluated at k' latents per token: ReLU of the k' largest
    pre-activations of each token, zeros elsewhere."""

    sae: TopKSAE

    def __init__(self, sae: TopKSAE, k: int) -> None:
        super().__init__(sae)
        self.k = int(k)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.sae.pre_acts(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


class TopN(_ReEncoded):
    """An SAE whose latents are cut to each token's n largest: f' = f on the n largest entries
    of every row of f = sae.encode(x), zeros elsewhere (a row with fewer than n non-zeros is
    unchanged); decode unchanged."""

    def __init__(self, sae: SAE, n: int) -> None:
        super().__init__(sae)
        self.n = int(n)

    def encode(self, x: Tensor) -> Tensor:
        f = self.sae.encode(x)
        values, indices = f.topk(min(self.n, f.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(f).scatter(-1, indices, values)


def top_ns(l0: float, grid: tuple[int, ...] = TOPN) -> list[int]:
    """The n of `grid` below an SAE's L0 (n >= L0 would keep about every latent it fires)."""
    return [n for n in grid if n < l0]


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
def reconstruction_sweep(variants: Sequence[Encoder], x: Tensor) -> list[dict[str, float]]:
    """L0 and FVU of each SAE variant on activations x [n, d_in] (no language model), by the
    registry's formulas (`metrics.MetricAccumulator`)."""
    out = []
    for sae in variants:
        acc = MetricAccumulator()
        f = sae.encode(x)
        acc.update_reconstruction(x, sae.decode(f), f)
        m = acc.result()
        out.append({"l0": m["l0"], "fvu": m["fvu"]})
    return out


def load_sae(cfg: RunConfig, folder: Path) -> SAE:
    """A trained SAE from its resolved config and `sae_weights.safetensors`, in eval mode."""
    sae = build_sae(cfg.sae, cfg.seed)
    sae.load_state_dict(read_weights(folder))
    return sae.eval()


def _variants(cfg: RunConfig, sae: SAE, acts: Tensor) -> dict[str, tuple[str, float]]:
    """variant id -> (kind, parameter) for one SAE: thresholds, k' for the TopK family, top-n
    below the SAE's L0 (not for topk: there top-n is k' = n)."""
    with torch.no_grad():
        f = sae.encode(acts)
    out: dict[str, tuple[str, float]] = {}
    for t in thresholds_for(f):
        out[f"t={t!r}"] = ("threshold", t)
    k = getattr(cfg.sae, "k", None)
    if cfg.sae.architecture in TOPK_FAMILY and k is not None:
        for kp in k_primes(int(k), sae.d_sae):
            out[f"k={kp}"] = ("k", kp)
    if cfg.sae.architecture != "topk" and f.numel():
        for n in top_ns(float(f.gt(0).sum(dtype=torch.float32)) / f.shape[0]):
            out[f"n={n}"] = ("topn", n)
    return out


def _variant(sae: SAE, kind: str, param: float) -> Encoder:
    """The SAE variant of one `_variants` entry: thresholded, cut to top-n, or re-encoded at
    k' latents."""
    if kind == "threshold":
        return Thresholded(sae, param)
    if kind == "topn":
        return TopN(sae, int(param))
    if not isinstance(sae, TopKSAE):  # `_variants` gives k' only to the TopK family
        raise TypeError(f"a k' variant needs a TopK-family SAE, not {sae.architecture!r}")
    return TopKAt(sae, int(param))


def pending(reg: Registry, run_ids: list[str], tokens: int = POSTHOC_TOKENS) -> list[str]:
    """The done runs among `run_ids` whose records are missing or stale: computed on other
    eval tokens, or before the run last finished (it was reset and trained again)."""
    made: dict[str, set[tuple[int, str | None]]] = {}
    for x in reg.posthoc(run_ids):
        made.setdefault(x["run_id"], set()).add((x["tokens"], x["run_finished_at"]))
    wanted = set(run_ids)
    return [r["run_id"] for r in reg.finished_runs() if r["run_id"] in wanted
            and made.get(r["run_id"]) != {(tokens, r["finished_at"])}]


def compute(registry_path: Path, run_ids: list[str], tokens: int = POSTHOC_TOKENS) -> list[str]:
    """Analyse the pending runs among `run_ids` that have weights on disk and store their
    records in the registry; returns the ids analysed. Loads each language model once."""
    with Registry(registry_path, must_exist=True) as reg:
        todo = set(pending(reg, run_ids, tokens))
        runs = [r for r in reg.finished_runs() if r["run_id"] in todo]
        folders = {r["run_id"]: reg.artifacts_dir(r["run_id"]) for r in runs}
        runnable = [r for r in runs if (folders[r["run_id"]] / "sae_weights.safetensors").exists()
                    and r["config"]["sae"]["architecture"] != "imported"]  # no saerun SAE class
        configs = {r["run_id"]: RunConfig.model_validate(r["config"]) for r in runnable}
        records = analyse(configs, folders, tokens)
        for r in runnable:
            reg.set_posthoc(r["run_id"], tokens, r["finished_at"], records.get(r["run_id"], {}))
    return sorted(configs)


def analyse(configs: dict[str, RunConfig], folders: dict[str, Path],
            tokens: int = POSTHOC_TOKENS) -> dict[str, dict[str, Record]]:
    """run_id -> {variant: record} for every run: one record per threshold / k' / top-n
    variant plus one with the opposing-pair counts. Runs sharing a model and data share one
    forward pass."""
    out: dict[str, dict[str, Record]] = {}
    by_source: dict[tuple[str, str], list[str]] = {}
    for run_id, cfg in configs.items():
        by_source.setdefault((cfg.model.name, cfg.data.model_dump_json()), []).append(run_id)
    for (model_name, _), group in sorted(by_source.items()):
        cfg = configs[group[0]]
        lm = LanguageModel.load(model_name, device="cpu")
        data = cfg.data.model_copy(update={"eval_tokens": min(tokens, cfg.data.eval_tokens)})
        batches = eval_token_batches(lm, data)
        hooks = sorted({configs[i].site.hook_name for i in group})
        # The positions the run's own metrics count: outliers out, by the training's limit.
        limits = outlier_limits(lm, cfg.data, hooks)
        acts: dict[str, list[Tensor]] = {h: [] for h in hooks}
        for batch in batches:
            keep = ~lm.special_mask(batch)
            got = lm.capture(batch, hooks)
            kept = {h: got[h][keep].float() for h in hooks}
            if limits is not None:
                inside = ~outlier_mask(kept, limits)
                kept = {h: a[inside] for h, a in kept.items()}
            for h in hooks:
                acts[h].append(kept[h])
        flat = {h: torch.cat(v) for h, v in acts.items()}
        saes: dict[str, tuple[Encoder, str]] = {}
        meta: dict[str, tuple[str, str, str, float]] = {}  # id -> run, variant, kind, param
        for run_id in group:
            run_cfg = configs[run_id]
            hook = run_cfg.site.hook_name
            sae = load_sae(run_cfg, folders[run_id])
            pairs = opposing_pairs(sae.W_dec.detach())
            out[run_id] = {"opposing": {"kind": "opposing", "param": None,
                                        **{f"pairs_below_{-c:g}": n for c, n in pairs.items()}}}
            for variant, (kind, param) in _variants(run_cfg, sae, flat[hook]).items():
                saes[f"{run_id}|{variant}"] = (_variant(sae, kind, param), hook)
                meta[f"{run_id}|{variant}"] = (run_id, variant, kind, param)
        results = evaluate_group(lm, batches, saes, {"ce_loss_recovered"},
                                 cfg.data.exclude_special_tokens, limits)
        for vid in sorted(results):
            run_id, variant, kind, param = meta[vid]
            m = results[vid].metrics
            out[run_id][variant] = {"kind": kind, "param": param, "l0": m.get("l0"),
                                    "fvu": m.get("fvu"),
                                    "ce_loss_recovered": m.get("ce_loss_recovered")}
    return out
