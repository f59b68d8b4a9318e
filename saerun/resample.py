"""Neuron resampling (Anthropic 2023, "Towards Monosemanticity", appendix), for every architecture.

At a resampling point the latents dead at that moment (no firing in train.dead_window_tokens)
are re-initialised from the current training batch:
  1. each token t gets the weight ||x_t - x_hat_t||^2 (its squared reconstruction error);
  2. one token per dead latent is drawn with probability proportional to that weight (without
     replacement while there are enough tokens), so revived latents go where the SAE is worst;
  3. u = (x_t - b_dec) / ||x_t - b_dec||: the direction the encoder sees (it encodes x - b_dec);
     decoder row = u times the decoder norm (1 with a unit-norm decoder, else the mean norm of
     the alive rows), encoder row = u * encoder_scale * mean ||W_enc[:, alive]||, encoder bias
     0 (plus each architecture's own per-latent reset, `SAE.reinit_latents`);
  4. the Adam moments of those latents' entries are zeroed (every parameter in
     `SAE.LATENT_AXES`). Adam's step count is per tensor, so their bias correction is already
     ~1: the first update of a revived latent is ~sqrt(1 - beta2) / (1 - beta1) ~ 3x a normal
     one, which is why the trainer warms the LR up again afterwards (train.lr_at).
Randomness comes from a generator seeded by (seed, step): nothing to checkpoint, and a resumed
run draws the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saerun.sae import SAE
from saerun.sae.base import mse_per_token


@torch.no_grad()
def resample_dead_latents(
    sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor, dead: Tensor, encoder_scale: float,
    generator: torch.Generator,
) -> Tensor:
    """Revive the latents where `dead` [d_sae] is True from the batch x [B, d_in]; returns their
    indices (empty when none was dead)."""
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return idx
    weights = mse_per_token(x, sae(x)).double().cpu()
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    n = idx.numel()
    picks = torch.multinomial(weights, n, replacement=n > weights.numel(), generator=generator)
    centred = x[picks.to(x.device)] - sae.b_dec
    u = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)

    alive = ~dead
    if alive.any():
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean()
        dec_norm = sae.W_dec[alive].norm(dim=1).mean()
    else:
        enc_norm = dec_norm = x.new_tensor(1.0)
    if sae.cfg.decoder_mode == "unit_norm":
        dec_norm = x.new_tensor(1.0)
    sae.reinit_latents(idx, u * (encoder_scale * enc_norm), u * dec_norm)

    params = dict(sae.named_parameters())
    for name, axis in sae.LATENT_AXES.items():
        if name not in params:  # an optional one left out (a gated SAE's tied b_mag)
            continue
        state = optimizer.state.get(params[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(axis, idx, 0.0)
    return idx
