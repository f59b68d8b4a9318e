"""The synthetic activations every step driver trains on, generated once per invocation.

Not isotropic noise: each vector is a sparse non-negative combination of a few of N_FEATURES
random unit "feature" directions (feature frequencies follow a power law, magnitudes are
exponential) plus a little Gaussian noise, then scaled so that E||x|| = sqrt(d_in), the
normalisation saerun's train_step expects. So the SAEs see structure they can learn, and the
TopK / dead-latent code paths behave as on real activations. Fixed seed: bit-identical on
every run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

N_FEATURES = 3000
ACTIVE_PER_TOKEN = 24  # features drawn per vector (with replacement: a few fewer distinct)
NOISE = 0.05


def make_batches(n_batches: int, batch: int, d_in: int, seed: int = 0) -> torch.Tensor:
    """[n_batches, batch, d_in] fp32, deterministic in (n_batches, batch, d_in, seed)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(N_FEATURES, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    # Power-law feature frequencies: a few common features, a long tail of rare ones.
    freq = 1.0 / torch.arange(1, N_FEATURES + 1, dtype=torch.float64) ** 0.8
    n = n_batches * batch
    idx = torch.multinomial(freq.float(), n * ACTIVE_PER_TOKEN, replacement=True, generator=g)
    mags = -torch.log(torch.rand(n * ACTIVE_PER_TOKEN, generator=g).clamp_min(1e-12))
    codes = torch.zeros(n, N_FEATURES)
    rows = torch.arange(n).repeat_interleave(ACTIVE_PER_TOKEN)
    codes.index_put_((rows, idx), mags, accumulate=True)
    x = codes @ directions + NOISE * torch.randn(n, d_in, generator=g)
    x *= math.sqrt(d_in) / x.norm(dim=1).mean()
    return x.reshape(n_batches, batch, d_in).contiguous()


def save_batches(path: Path, n_batches: int, batch: int, d_in: int, seed: int = 0) -> Path:
    """Write the batches once (torch.save; drivers load them with weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make_batches(n_batches, batch, d_in, seed), path)
    return path
