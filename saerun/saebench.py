"""A registered run's results as SAEBench 0.6.0's core-eval file (`saerun export --format
saebench`): `<release>_<sae_id>_eval_results.json`, what SAEBench's `evals/core/main.py` writes.

Every value comes from the registry and the run's folder; nothing is re-evaluated. Each field is
mapped to saerun's metric of the same definition where one exists (`METRIC_MAP`), the per-latent
details are computed from the exported weights and the eval densities, and what saerun does not
measure is NaN, written as -1 as SAEBench writes its NaNs. The README's SAEBench section lists
where a definition differs.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError
from saerun.registry import Registry

NAN = float("nan")
PRECISION = 10  # SAEBench rounds the per-latent values to 10 digits (DEFAULT_FLOAT_PRECISION)

# SAEBench category -> {its field: saerun metric name (None: saerun does not measure it)}.
METRIC_MAP: dict[str, dict[str, str | None]] = {
    "model_behavior_preservation": {
        "kl_div_score": "kl_score", "kl_div_with_ablation": "kl_zero",
        "kl_div_with_sae": "kl_sae"},
    "model_performance_preservation": {
        "ce_loss_score": "ce_loss_recovered", "ce_loss_with_ablation": "ce_zero",
        "ce_loss_with_sae": "ce_sae", "ce_loss_without_sae": "ce_orig"},
    "reconstruction_quality": {
        "explained_variance": "explained_variance", "explained_variance_legacy": None,
        "mse": "mse", "cossim": "cosine_similarity"},
    "shrinkage": {
        "l2_norm_in": None, "l2_norm_out": None, "l2_ratio": "l2_ratio",
        "relative_reconstruction_bias": "shrinkage"},
    "sparsity": {"l0": "l0", "l1": None},
}


def nan_to_minus_one(obj: Any) -> Any:
    """SAEBench's `replace_nans_with_negative_one`: every NaN in a nested structure -> -1."""
    if isinstance(obj, dict):
        return {k: nan_to_minus_one(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_minus_one(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return -1
    return obj


def _metric(metrics: dict[str, float | None], name: str | None) -> float:
    value = None if name is None else metrics.get(name)
    return NAN if value is None else float(value)


def latent_details(weights: dict[str, Any], density: Any) -> tuple[list[dict[str, Any]],
                                                                    dict[str, float]]:
    """Per latent (SAEBench's CoreFeatureMetric) and the misc metrics, from the exported
    tensors (SAELens names: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc or gated b_mag)
    and the eval density [d_sae] (fraction of eval tokens on which each latent fired)."""
    import torch

    w_enc = weights["W_enc"].double()
    w_dec = weights["W_dec"].double()
    d_sae = w_dec.shape[0]
    bias = weights.get("b_enc", weights.get("b_mag"))
    bias = torch.zeros(d_sae, dtype=torch.float64) if bias is None else bias.double()
    enc_units = w_enc.T / w_enc.T.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [d_sae, d_in]
    dec_units = w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    enc_dec = (enc_units * dec_units).sum(-1)
    density = density.double()
    details = [
        {"index": i, "feature_density": float(density[i]),
         "consistent_activation_heuristic": NAN,  # needs per-prompt counts: not stored
         "encoder_bias": float(bias[i]), "encoder_norm": float(w_enc[:, i].norm()),
         "encoder_decoder_cosine_sim": float(enc_dec[i]),
         "max_decoder_cosine_sim": v_dec, "max_encoder_cosine_sim": v_enc}
        for i, (v_dec, v_enc) in enumerate(zip(_max_cosine(dec_units), _max_cosine(enc_units),
                                               strict=True))
    ]
    for row in details:
        for key, value in row.items():
            if isinstance(value, float) and not math.isnan(value):
                row[key] = round(value, PRECISION)
    total = float(density.sum())
    misc = {
        "freq_over_1_percent": float((density > 0.01).double().mean()),
        "freq_over_10_percent": float((density > 0.1).double().mean()),
        "normalized_freq_over_1_percent":
            float(density[density > 0.01].sum()) / total if total > 0 else 0.0,
        "normalized_freq_over_10_percent":
            float(density[density > 0.1].sum()) / total if total > 0 else 0.0,
        "average_max_encoder_cosine_sim": sum(r["max_encoder_cosine_sim"] for r in details)
        / max(d_sae, 1),
        "average_max_decoder_cosine_sim": sum(r["max_decoder_cosine_sim"] for r in details)
        / max(d_sae, 1),
        "frac_alive": float((density > 0).double().mean()),
    }
    return details, misc


def _max_cosine(units: Any, chunk: int = 1024) -> list[float]:
    """For each unit row, the largest cosine with any other row (chunked: d_sae^2 can be big)."""
    import torch

    out = []
    for start in range(0, units.shape[0], chunk):
        sims = units[start:start + chunk] @ units.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -math.inf  # not with itself
        out += sims.max(dim=-1).values.tolist()
    return out


def core_eval(run: dict[str, Any], cfg: dict[str, Any], weights: dict[str, Any], density: Any,
              release: str, sae_id: str) -> dict[str, Any]:
    """The file's content for one done run (`Registry.get_run`), its cfg.json, its exported
    tensors and its eval density; NaN kept (see `nan_to_minus_one`)."""
    config, metrics = run["config"], run["metrics"] or {}
    data = config["data"]
    lm_metrics = set(config.get("eval", {}).get("metrics") or [])
    categories: dict[str, dict[str, Any]] = {
        category: {field: _metric(metrics, name) for field, name in fields.items()}
        for category, fields in METRIC_MAP.items()
    }
    eval_tokens = int(data["eval_tokens"])
    categories["token_stats"] = {"total_tokens_eval_reconstruction": eval_tokens,
                                 "total_tokens_eval_sparsity_variance": eval_tokens}
    details, misc = latent_details(weights, density)
    categories["misc_metrics"] = misc
    sequences = int(data.get("lm_batch_sequences") or 1)
    batches = max(1, math.ceil(eval_tokens / (int(data["context_size"]) * sequences)))
    has_lm = "kl_sae" in metrics or bool(lm_metrics & {"kl", "ce_loss_recovered"})
    eval_config = {
        "model_name": config["model"]["name"], "llm_dtype": config["model"].get("dtype",
                                                                                "float32"),
        "batch_size_prompts": sequences, "n_eval_reconstruction_batches": batches,
        "n_eval_sparsity_variance_batches": batches, "dataset": str(data.get("dataset")),
        "context_size": int(data["context_size"]), "compute_kl": has_lm,
        "compute_ce_loss": has_lm, "compute_l2_norms": True, "compute_sparsity_metrics": True,
        "compute_variance_metrics": True, "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": bool(data.get("exclude_special_tokens",
                                                                    True)),
        "verbose": False,
    }
    finished = run.get("finished_at") or run.get("created_at")
    millis = int(datetime.fromisoformat(str(finished).replace("Z", "+00:00")).timestamp()
                 * 1000)
    return {
        "eval_type_id": "core",
        "eval_config": eval_config,
        # Stable: the same run exported twice is the same file.
        "eval_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"saerun:{run['run_id']}:{finished}")),
        "datetime_epoch_millis": millis,
        "eval_result_metrics": categories,
        "eval_result_details": details,
        "eval_result_unstructured": {
            "producer": "saerun", "saerun_run_id": run["run_id"],
            "counted_tokens": _metric(metrics, "n_tokens"), "fvu": _metric(metrics, "fvu"),
            "delta_lm_loss": _metric(metrics, "delta_lm_loss"),
            "dead_fraction_train": _metric(metrics, "dead_fraction_train")},
        "sae_bench_commit_hash": "unknown",  # SAEBench did not run: saerun wrote this file
        "sae_lens_id": sae_id,
        "sae_lens_release_id": release,
        "sae_lens_version": (cfg.get("metadata") or {}).get("sae_lens_version"),
        "sae_cfg_dict": cfg,
    }


def file_name(release: str, sae_id: str) -> str:
    """SAEBench's `get_results_filepath` name: slashes become underscores."""
    return f"{release}_{sae_id}_eval_results.json".replace("/", "_")


def write_saebench(registry: Path, run_id: str, out_dir: Path, release: str | None = None,
                   sae_id: str | None = None) -> Path:
    """Write one done run's core-eval file into `out_dir`; returns its path."""
    import torch
    from safetensors.torch import load_file

    from saerun.artifacts import read_weights, write_text

    with Registry(registry, must_exist=True) as reg:
        run = reg.get_run(run_id)
        if run is None:
            raise SaerunError(f"no run with id {run_id!r}", hint="see `saerun ls`")
        folder = reg.artifacts_dir(run["run_id"])
    if run["status"] != "done":
        raise SaerunError(f"run {run['run_id'][:10]} is {run['status']}, not done",
                          hint="only a finished run has results to export")
    try:
        cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
        weights = read_weights(folder)
    except OSError as err:
        raise SaerunError(f"run {run['run_id'][:10]}'s SAE files are missing ({err})",
                          hint=f"its folder is {folder}") from None
    sparsity = folder / "sparsity.safetensors"
    if sparsity.exists():  # log10 density, clamped at 1e-10 for latents that never fired
        log_density = load_file(str(sparsity))["sparsity"].double()
        density = torch.where(log_density <= -10, torch.zeros_like(log_density),
                              10 ** log_density)
    else:
        density = torch.full((weights["W_dec"].shape[0],), NAN, dtype=torch.float64)
    release = release or run.get("spec_name") or "saerun"
    sae_id = sae_id or f"{run['config']['site']['hook_name']}__{run['run_id'][:10]}"
    result = nan_to_minus_one(core_eval(run, cfg, weights, density, release, sae_id))
    path = Path(out_dir) / file_name(release, sae_id)
    write_text(path, json.dumps(result, indent=2) + "\n")
    return path
