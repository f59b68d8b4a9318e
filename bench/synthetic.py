"""A synthetic registry for the report tests and the report-speed benchmark (test support: the
package never imports it).

`synthetic_registry(path, n_runs)` writes `n_runs` finished runs through the registry's own
write API (spec, runs, curves, metrics) with fully resolved, schema-valid configs: six
architectures, sparsity knobs, widths, learning rates, seeds and remedies over a few sites, and
metrics shaped like real ones (FVU falling as a power of L0, CE loss recovered rising with it,
dead fractions by architecture), plus each run's `sparsity.safetensors` (log10 densities).
Deterministic for a given seed. No model and no training: a thousand runs take seconds.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

# (architecture, sae section without width, quality: lower FVU at equal L0)
RECIPES: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("relu", {"sparsity": {"penalty": "l1"}}, 1.25),
    ("relu", {"sparsity": {"penalty": "sqrt_l1"}}, 1.05),
    ("gated", {}, 1.0),
    ("jumprelu", {}, 0.9),
    ("topk", {}, 0.95),
    ("batchtopk", {}, 0.92),
    ("matryoshka", {}, 1.02),
)
SITES = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "blocks.3.hook_resid_post")
LRS = (3e-4, 1e-3, 3e-3)
WIDTHS = (512, 1024)


def _config(arch: str, sae: dict[str, Any], knob: float, width: int, lr: float, seed: int,
            site: str, resample: bool) -> dict[str, Any]:
    from saerun.spec import RunConfig

    sae = {"architecture": arch, "d_in": 128, "d_sae": width, **sae}
    if arch in ("topk", "batchtopk", "matryoshka"):
        sae["k"] = int(knob)
    elif arch == "jumprelu":
        sae["coefficient"] = knob
    else:
        sae["sparsity"] = {**sae.get("sparsity", {}), "coefficient": knob}
    cfg = {
        "seed": seed, "model": {"name": "saerun/tiny-stdlib"}, "site": {"hook_name": site},
        "data": {"dataset": "saerun/stdlib", "train_tokens": 500_000, "eval_tokens": 32_768},
        "sae": sae,
        "train": {"lr": lr, "resample": {"every_tokens": 100_000} if resample else None},
        "eval": {},
    }
    return RunConfig.model_validate(cfg).model_dump(mode="json")


def synthetic_runs(n_runs: int, seed: int = 0) -> list[dict[str, Any]]:
    """n_runs distinct runs: config, metrics, curve and densities each (no registry)."""
    rng = random.Random(seed)
    runs = []
    # Enumerated, not sampled: any prefix holds whole LR sweeps and knob sweeps. ReLU runs of
    # seed 1 resample dead latents (a matched remedy comparison against seed 0).
    grid = itertools.product(range(3), WIDTHS, SITES, range(len(RECIPES)), range(6), LRS)
    for run_seed, width, site, r_i, knob_i, lr in itertools.islice(grid, n_runs):
        arch, sae, quality = RECIPES[r_i]
        topk = arch in ("topk", "batchtopk", "matryoshka")
        knob = (8, 16, 24, 32, 48, 64)[knob_i] if topk else 0.1 * 2 ** knob_i
        resample = arch == "relu" and run_seed == 1
        config = _config(arch, sae, knob, width, lr, run_seed, site, resample)
        l0 = float(knob) * rng.uniform(0.97, 1.03) if topk else 120.0 / (1 + 4 * knob)
        lr_penalty = 1 + 0.6 * abs(math.log10(lr / 1e-3)) ** 2
        fvu = min(0.95, quality * 0.9 * l0 ** -0.55 * lr_penalty * rng.uniform(0.95, 1.05))
        dead = min(0.9, max(0.0, rng.gauss(0.25 if arch == "relu" and "sqrt" in repr(sae)
                                           else 0.05, 0.04) * (0.5 if resample else 1)))
        metrics = {
            "l0": l0, "fvu": fvu, "mse": fvu * 40.0, "explained_variance": 1 - fvu,
            "ce_loss_recovered": 1 - 0.35 * fvu, "delta_lm_loss": 0.9 * fvu,
            "kl_score": 1 - 0.3 * fvu, "shrinkage": 0.8 if arch == "relu" else 1.0,
            "dead_fraction": dead, "dead_fraction_train": dead * 0.8,
            "dense_fraction": rng.uniform(0.0, 0.2), "dense_fraction_10pct": rng.uniform(0, 0.02),
            "norm_scale": 2.0, "cosine_similarity": 1 - fvu / 2, "l2_ratio": 0.95,
        }
        steps = 25
        curve = []
        for s in range(1, steps + 1):
            frac = s / steps
            curve.append({
                "step": 5 * s, "tokens": 20480 * s,
                "loss": 160.0 * fvu * (1 + 2 * math.exp(-6 * frac)) * rng.uniform(0.98, 1.02),
                "mse": 160.0 * fvu * (1 + 2 * math.exp(-6 * frac)),
                "l0": l0 * (1 + 3 * math.exp(-5 * frac)), "dead_fraction": dead * frac,
                "lr": lr,
            })
        n_dead = int(round(dead * width))
        dens = [-10.0] * n_dead + [rng.gauss(-2.0, 0.8) for _ in range(width - n_dead)]
        runs.append({"config": config, "metrics": metrics, "curve": curve,
                     "density": [min(0.0, d) for d in dens]})
    return runs


def synthetic_registry(path: Path, n_runs: int, seed: int = 0,
                       densities: bool = True) -> list[str]:
    """Write n_runs finished synthetic runs into a registry at `path`; returns their ids."""
    import torch

    from saerun import artifacts
    from saerun.plan import group_key_of, run_id_of
    from saerun.registry import Registry
    from saerun.sae.cost import step_flops_per_token
    from saerun.spec import RunConfig

    runs = synthetic_runs(n_runs, seed)
    with Registry(path) as reg:
        spec_hash = reg.add_spec("synthetic", "synthetic.yaml", f"# synthetic {n_runs} {seed}\n")
        jobs = []
        for i, run in enumerate(runs):
            cfg = RunConfig.model_validate(run["config"])
            run["run_id"] = run_id_of(cfg)
            jobs.append({"run_id": run["run_id"], "name": f"synthetic[{i}]",
                         "group_key": group_key_of(cfg), "config": run["config"],
                         "step_flops_per_token": step_flops_per_token(cfg.sae, cfg.sae.d_sae)})
        reg.ensure_runs(spec_hash, jobs)
        reg.claim([r["run_id"] for r in runs])
        for run in runs:
            reg.add_curve(run["run_id"], run["curve"])
            reg.mark_done(run["run_id"], run["metrics"], 10.0, 2.0, 499_712)
            if densities:
                artifacts.write_tensors(reg.artifacts_dir(run["run_id"]) / "sparsity.safetensors",
                                        {"sparsity": torch.tensor(run["density"])})
    return [r["run_id"] for r in runs]
