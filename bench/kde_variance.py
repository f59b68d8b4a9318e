"""How much JumpReLU's threshold estimator with memory (`sae.kde_half_life_tokens`) cuts the
noise of theta's gradient: a measurement on fixed activations, not a test.

    python -m bench.kde_variance [--steps 64] [--out bench/kde_variance.json]

A JumpReLU SAE (d_in 128, d_sae 512, the findings' defaults) first trains briefly on bench/data's
synthetic activations (sparse combinations of power-law-frequent feature directions, E||x|| =
sqrt(d_in)) so its thresholds sit where a training run puts them; then its parameters are frozen
and a stream of fresh 4,096-token batches goes through it. With frozen parameters the true
gradient is one fixed vector, so the spread of an estimate across steps is its noise alone:
per latent, the variance across steps of d loss / d theta from the single-batch estimator and
from the memory (the same SAE with the option on, its state warmed up first), at several half
lives. Written: per half life, the mean over latents of each variance, their ratio (memory /
single batch), the i.i.d. prediction (1 - d) / (1 + d), and how often a latent's single-batch
estimate is exactly 0 (no token of the batch within eps/2 of its threshold). What it does not
measure: the bias of an average over thresholds that moved (in training they do).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from bench.data import ACTIVE_PER_TOKEN, N_FEATURES, NOISE
from saerun.sae import StepInfo, build_sae
from saerun.spec.architectures import JumpReLUSAEConfig
from saerun.spec.derive import default_kde_decay

D_IN, D_SAE, BATCH = 128, 512, 4096
HALF_LIVES = (4096.0, 16384.0, 65536.0)  # 1, 4 and 16 batches


class Stream:
    """bench/data's synthetic activations, one batch at a time (fixed feature directions)."""

    def __init__(self, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)
        directions = torch.randn(N_FEATURES, D_IN, generator=self.g)
        self.directions = directions / directions.norm(dim=1, keepdim=True)
        self.freq = (1.0 / torch.arange(1, N_FEATURES + 1, dtype=torch.float64) ** 0.8).float()
        self.scale: float | None = None

    def batch(self) -> torch.Tensor:
        n = BATCH * ACTIVE_PER_TOKEN
        idx = torch.multinomial(self.freq, n, replacement=True, generator=self.g)
        mags = -torch.log(torch.rand(n, generator=self.g).clamp_min(1e-12))
        codes = torch.zeros(BATCH, N_FEATURES)
        codes.index_put_((torch.arange(BATCH).repeat_interleave(ACTIVE_PER_TOKEN), idx), mags,
                         accumulate=True)
        x = codes @ self.directions + NOISE * torch.randn(BATCH, D_IN, generator=self.g)
        if self.scale is None:
            self.scale = math.sqrt(D_IN) / float(x.norm(dim=1).mean())
        return x * self.scale


def sae_for(coefficient: float, half_life: float | None) -> torch.nn.Module:
    kw = {} if half_life is None else {
        "kde_half_life_tokens": half_life, "kde_decay": default_kde_decay(half_life, BATCH)[0]}
    cfg = JumpReLUSAEConfig(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE,
                            coefficient=coefficient, **kw)
    return build_sae(cfg, 0)


def theta_grad(sae: torch.nn.Module, x: torch.Tensor, info: StepInfo) -> torch.Tensor:
    sae.zero_grad(set_to_none=True)
    sae.loss(x, info).loss.backward()
    # d/dtheta = d/dlog theta / theta (theta is frozen here)
    return (sae.log_threshold.grad / sae.log_threshold.detach().exp()).clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64, help="measured batches")
    ap.add_argument("--train-steps", type=int, default=60, help="training before the freeze")
    ap.add_argument("--coefficient", type=float, default=0.4)
    ap.add_argument("--out", default="bench/kde_variance.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    stream = Stream()
    base = sae_for(args.coefficient, None)
    opt = torch.optim.Adam(base.parameters(), lr=1e-3)
    none_dead = StepInfo(1.0, torch.zeros(D_SAE, dtype=torch.bool))
    for i in range(args.train_steps):
        x = stream.batch()
        if i == 0:
            base.init_b_dec(x)
        opt.zero_grad()
        base.loss(x, none_dead).loss.backward()
        opt.step()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    saes = {None: base}
    for half_life in HALF_LIVES:
        sae = sae_for(args.coefficient, half_life)
        sae.load_state_dict(state, strict=False)  # the same parameters, the memory at 0
        saes[half_life] = sae
    warmup = 2 * round(max(HALF_LIVES) / BATCH)  # the memory's state past its start
    grads: dict[float | None, list[torch.Tensor]] = {k: [] for k in saes}
    for t in range(warmup + args.steps):
        x = stream.batch()
        for key, sae in saes.items():
            g = theta_grad(sae, x, none_dead)
            if t >= warmup:
                grads[key].append(g)
    single = torch.stack(grads[None])  # [steps, d_sae]
    var_single = single.var(0)
    live = var_single > 0  # latents whose estimate moves at all (others: never near theta)
    results = {
        "coefficient": args.coefficient, "steps": args.steps, "warmup_steps": warmup,
        "train_steps": args.train_steps, "batch_tokens": BATCH, "d_sae": D_SAE,
        "latents_measured": int(live.sum()),
        "single_batch_zero_fraction": float((single[:, live] == 0).float().mean()),
        "single_batch_mean_variance": float(var_single[live].mean()),
        "memory": [],
    }
    for half_life in HALF_LIVES:
        decay = default_kde_decay(half_life, BATCH)[0]
        var = torch.stack(grads[half_life]).var(0)
        results["memory"].append({
            "half_life_tokens": half_life, "decay": decay,
            "mean_variance": float(var[live].mean()),
            "variance_ratio": float(var[live].mean() / var_single[live].mean()),
            "median_latent_ratio": float((var[live] / var_single[live]).median()),
            "iid_prediction": (1 - decay) / (1 + decay),
        })
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
