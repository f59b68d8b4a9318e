"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025).

Encoder, selection, threshold, AuxK and decoder constraint: exactly `batchtopk`. The loss makes
every prefix of the dictionary a dictionary of its own: with nested widths m_1 < ... < m_n =
d_sae and weights w_j,
    recon = sum_j w_j * mean_batch ||y - (f[:, :m_j] W_dec[:m_j] + b_dec)||^2 (y = x for an SAE),
so the first latents must reconstruct x on their own and learn general features, while later
ones add detail; this counters feature absorption and splitting. AuxK reconstructs the residual
of the full dictionary (j = n). Prefix reconstructions are built incrementally, one group of
latents at a time, so the loss costs about one decode.

prefix_widths `every` (issue 20): every width 1..d_sae is a prefix, weighted by a distribution
over the widths (prefix_weights `uniform` or `log_uniform`); the loss and its gradient cost
O(k^2 d_in) per token on the sparse kernels (`sae.prefix`, which states the maths), the dense
reference a B x d_sae x d_sae product.

Defaults (derived by the planner, `spec.derive`): widths d_sae/64, d_sae/16, d_sae/4, d_sae
(rounded down, widths < 1 and repeats dropped); weights 1/n each, so the term is on the scale of
one reconstruction loss and aux_coefficient keeps its meaning. Inference never looks at the
prefixes: the SAE exports as batchtopk does (SAELens
jumprelu with the global threshold).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saerun.sae.base import mse_per_token, resolved
from saerun.sae.batchtopk import BatchTopKSAE
from saerun.sae.prefix import dense_every_prefix_loss, every_prefix_loss, prefix_cdf
from saerun.sae.sparse import Codes, decode
from saerun.spec import MatryoshkaSAEConfig


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    cfg: MatryoshkaSAEConfig
    prefix_cdf: Tensor  # [d_sae + 1] with prefix_widths every (`sae.prefix`)

    def __init__(self, cfg: MatryoshkaSAEConfig, generator: torch.Generator) -> None:
        super().__init__(cfg, generator)
        # Resolved by the planner (`spec.derive`); the base class refuses a config without.
        widths = resolved(cfg.prefix_widths, "prefix_widths")
        weights = resolved(cfg.prefix_weights, "prefix_weights")
        self.every_prefix = widths == "every"  # the schema pairs it with a named distribution
        self.prefix_widths: list[int] = list(widths) if isinstance(widths, list) else []
        self.prefix_weights: list[float] = list(weights) if isinstance(weights, list) else []
        if self.every_prefix:
            # Not persistent: the state dict (checkpoints, export) is batchtopk's, as before.
            self.register_buffer("prefix_cdf", prefix_cdf(self.d_sae, str(weights)),
                                 persistent=False)

    def reconstruction(self, x: Tensor, y: Tensor, f: Tensor,
                       w_dec: Tensor) -> tuple[Tensor, Tensor]:
        if self.every_prefix:
            bias = self.out_bias(x)  # once: with a skip, x W_skip is a product
            return dense_every_prefix_loss(y - bias, f, w_dec, self.prefix_cdf), f @ w_dec + bias
        x_hat = self.out_bias(x).expand_as(y)
        recon = x.new_zeros(())
        start = 0
        for width, weight in zip(self.prefix_widths, self.prefix_weights, strict=True):
            x_hat = x_hat + f[:, start:width] @ w_dec[start:width]
            recon = recon + weight * mse_per_token(y, x_hat).mean()
            start = width
        return recon, x_hat  # x_hat: the full dictionary's reconstruction

    def sparse_reconstruction(self, x: Tensor, y: Tensor, codes: Codes,
                              w_dec: Tensor) -> tuple[Tensor, Tensor]:
        """`reconstruction` from sparse codes: each prefix group decodes its own entries (with
        every prefix, `sae.prefix`'s kernel)."""
        if self.every_prefix:
            bias = self.out_bias(x)
            recon, decoded = every_prefix_loss(y - bias, codes, w_dec, self.prefix_cdf)
            return recon, decoded + bias.detach()
        x_hat = self.out_bias(x).expand_as(y)
        recon = x.new_zeros(())
        start = 0
        for width, weight in zip(self.prefix_widths, self.prefix_weights, strict=True):
            part = codes.select((codes.cols >= start) & (codes.cols < width))
            x_hat = x_hat + decode(part, w_dec)
            recon = recon + weight * mse_per_token(y, x_hat).mean()
            start = width
        return recon, x_hat
