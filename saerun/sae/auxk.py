"""AuxK (Gao et al. 2024, appendix B.1), stated once for the TopK family (topk, batchtopk,
matryoshka): the top `aux_k` dead latents are asked to reconstruct the main model's residual, so
a dead latent gets a gradient towards a direction the live latents miss, and comes back.

    e     = x - x_hat                                (detached: AuxK must not move x_hat)
    e_hat = ReLU(TopK_{aux_k}(pre restricted to dead latents)) W_dec       (no b_dec, as Gao)
    AuxK  = min(n_dead / aux_k, 1) * mean_batch ||e - e_hat||^2

aux_k <= d_sae; the planner derives it when a spec leaves it out (d_in // 2, `spec.derive`).

The normalisation, exactly: sparsify (EleutherAI) computes scale * sum||e - e_hat||^2 / TV with
TV = sum||x - mean(x)||^2, and its main loss is sum||x - x_hat||^2 / TV (the FVU). TV is common
to both terms, so with saerun's main loss (sum||x - x_hat||^2 / B, `mse_per_token`) the same
relative weight (and so the same meaning of aux_coefficient = 1/32) is the residual MSE above in
the same units. The factor min(n_dead / aux_k, 1) (sparsify) shrinks the term while only a few
latents are dead; with no dead latent it is 0, and so is the loss (exactly, not NaN).

Two forms, equal in value and gradient. `auxk_loss` (the dense reference) is written without a
host sync: top-aux_k over every latent is always taken and the slots that landed on live latents
(value -inf) are zeroed, so it costs a full top-k and decode even with no dead latent.
`sparse_auxk_loss` (training) reads the number of dead latents (one host sync), costs nothing
while none is dead, and otherwise takes the top-min(aux_k, n_dead) among the dead latents' columns
only and decodes them with the sparse kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saerun.sae.base import SAE, mse_per_token
from saerun.sae.sparse import Codes, decode, gather_linear, row_topk


def auxk_loss(
    pre: Tensor, residual: Tensor, w_dec: Tensor, dead_mask: Tensor, aux_k: int
) -> Tensor:
    """pre [B, d_sae] pre-activations, residual [B, d_in] = x - x_hat (detached here),
    w_dec [d_sae, d_in], dead_mask [d_sae] bool -> scalar AuxK (see the module docstring)."""
    dead = dead_mask.to(pre.device)
    masked = torch.where(dead, torch.relu(pre), float("-inf"))
    values, indices = masked.topk(aux_k, dim=-1, sorted=False)
    # -inf (a live latent, when fewer than aux_k are dead) -> 0; clamp_min's gradient there is 0.
    values = values.clamp_min(0.0)
    f_aux = torch.zeros_like(pre).scatter(-1, indices, values)
    e_hat = f_aux @ w_dec
    scale = (dead.sum().float() / aux_k).clamp(max=1.0)
    return scale * mse_per_token(residual.detach(), e_hat).mean()


def sparse_auxk_loss(sae: SAE, x_c: Tensor, pre: Tensor, residual: Tensor, w_dec: Tensor,
                     dead_mask: Tensor, aux_k: int) -> Tensor:
    """`auxk_loss` on sparse codes. x_c = sae.centre(x), pre its dense pre-activations (no grad)."""
    dead = dead_mask.to(pre.device).nonzero().squeeze(1)
    n_dead = dead.numel()
    if n_dead == 0:
        return pre.new_zeros(())
    rows, local, offsets = row_topk(pre[:, dead], min(aux_k, n_dead))
    cols = dead[local]
    vals = torch.relu(gather_linear(x_c, sae.W_enc, sae.b_enc, pre, rows, cols, offsets,
                                    sae.centre_bias))
    e_hat = decode(Codes(cols, vals, rows, offsets, pre.shape[1]), w_dec)
    scale = min(n_dead / aux_k, 1.0)
    return scale * mse_per_token(residual.detach(), e_hat).mean()
