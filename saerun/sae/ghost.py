"""Ghost grads (Anthropic circuits update, Feb 2024; SAELens's `use_ghost_grads`), stated once.

A dead latent gets no gradient from the reconstruction. Ghost grads give it one: the dead latents,
activated by exp(pre) instead of ReLU(pre) (positive and differentiable everywhere), are asked to
reconstruct what the live ones miss:
    e      = x - x_hat                                           (detached)
    g      = sum_{i dead} exp(pre_i) W_dec,i                      per token
    g     <- g * ||e|| / (2 ||g||)       (factor detached: g at half the residual's norm)
    ghost  = mean_batch[ r * ||g - e||^2 ],   r = ||x - x_hat||^2 / (||g - e||^2 + eps), detached
so the term has the size of the main reconstruction loss per token whatever the residual, and
only its gradient (towards e, through exp(pre) and W_dec of dead latents) matters. With no dead
latent g = 0 and the term is switched off (0) without a host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saerun.sae.base import mse_per_token

EPS = 1e-6


def ghost_grads_loss(pre: Tensor, x: Tensor, x_hat: Tensor, w_dec: Tensor, dead: Tensor) -> Tensor:
    """pre [B, d_sae], x and x_hat [B, d_in], w_dec [d_sae, d_in], dead [d_sae] bool -> scalar."""
    dead = dead.to(pre.device)
    residual = (x - x_hat).detach()
    g = torch.where(dead, pre, float("-inf")).exp() @ w_dec
    scale = residual.norm(dim=-1) / (2.0 * g.norm(dim=-1) + EPS)
    g = g * scale.detach()[:, None]
    ghost = mse_per_token(residual, g)
    main = mse_per_token(x, x_hat).detach()
    rescale = (main / (ghost + EPS)).detach()
    return dead.any().to(pre.dtype) * (rescale * ghost).mean()
