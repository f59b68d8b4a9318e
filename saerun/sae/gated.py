"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs").

Two paths share one encoder matrix (the base's W_enc serves as W_gate; the base's b_enc is b_gate):
    pi_gate = (x - b_dec) W_gate + b_gate                  decides WHICH latents fire
    pi_mag  = (x - b_dec) (W_gate * exp(r_mag)) + b_mag    decides HOW MUCH they fire
    f = 1[pi_gate > 0] * ReLU(pi_mag)
Separating the two removes the L1 shrinkage of the ReLU SAE: the sparsity penalty acts on the
gate path only, never on the magnitudes that reconstruct x.

Loss = ||x - x_hat||^2 + lambda * sum_i ReLU(pi_gate)_i ||W_dec,i||
       + ||x - (ReLU(pi_gate) W_dec.detach() + b_dec.detach())||^2.
The Heaviside gate passes no gradient (by design), so the gate learns only through the two last
terms; the auxiliary reconstruction uses stop-gradient decoder copies so it trains the gate to be
a good reconstruction without pulling the decoder towards the (shrunk) gate activations.

Decoder: unit_norm by default, as in the paper (see GatedSAEConfig.decoder_mode for why a free
decoder fails here); with norm_weighted the penalty is weighted by ||W_dec,i||.

Two ablations (issue 20), off by default: `b_mag: tied` sets b_mag := exp(r_mag) * b_gate (no
b_mag parameter), so pi_mag = exp(r_mag) pi_gate and the magnitudes are a per-latent rescale of the
gate's (the paper's "natural reference point"); the magnitude path then passes the reconstruction
gradient to W_gate and b_gate as well. `aux_loss: false` drops the auxiliary term.

Normalisation folding needs nothing beyond the base: both paths are linear in (x - b_dec) through
W_gate, so scaling W_enc (= W_gate), W_dec and b_dec leaves pi_gate, pi_mag, r_mag, b_mag, b_gate
and hence f unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saerun.sae import sparse
from saerun.sae.base import SAE, LossOutput, StepInfo, l0_of, mse_per_token, resolved
from saerun.sae.sparse import Codes
from saerun.spec import GatedSAEConfig


class GatedSAE(SAE):
    architecture = "gated"
    saelens_architecture = "gated"
    cfg: GatedSAEConfig

    def __init__(self, cfg: GatedSAEConfig, generator: torch.Generator) -> None:
        super().__init__(cfg, generator)
        # r_mag = 0 and b_mag = 0 start the magnitude path equal to the gate path (b_gate = 0).
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae))
        tied = cfg.b_mag == "tied"
        # Tied: no parameter (so no Adam state, checkpoint entry or resampling of it): mag_bias.
        self.b_mag = None if tied else nn.Parameter(torch.zeros(self.d_sae))
        # Exported files use SAELens's name b_gate for our b_enc; accept it back on load.
        self.register_load_state_dict_pre_hook(_b_gate_to_b_enc)

    LATENT_AXES = {**SAE.LATENT_AXES, "r_mag": 0, "b_mag": 0}  # resampling skips an absent one
    b_mag: nn.Parameter | None  # None with b_mag tied

    def mag_bias(self) -> Tensor:
        """The magnitude path's bias: the parameter b_mag, or exp(r_mag) * b_gate when tied."""
        if self.b_mag is None:
            return self.r_mag.exp() * self.b_enc
        return self.b_mag

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, enc_rows: Tensor, dec_rows: Tensor) -> None:
        super().reinit_latents(idx, enc_rows, dec_rows)
        self.r_mag[idx] = 0.0  # the magnitude path starts equal to the gate path again
        if self.b_mag is not None:
            self.b_mag[idx] = 0.0

    def pre_acts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, pi_mag), each [batch, d_sae]."""
        centred = self.centre(x)
        pi_gate = centred @ self.W_enc + self.b_enc
        pi_mag = centred @ (self.W_enc * self.r_mag.exp()) + self.mag_bias()
        return pi_gate, pi_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self.pre_acts(x)
        # A comparison has no gradient: the gate is a true Heaviside step in the backward pass.
        return torch.where(pi_gate > 0, torch.relu(pi_mag), 0.0)

    def loss(self, x: Tensor, step: StepInfo, y: Tensor | None = None) -> LossOutput:
        """On the sparse kernels when few gates are open (`sae.sparse`): every term is zero, with
        zero gradient, where the gate is shut. Either way pi_mag is computed from pi_gate,
        pi_mag = exp(r_mag) (pi_gate - b_gate) + b_mag, which spares its product."""
        y = x if y is None else y
        if not self.use_sparse(x):
            return self.dense_loss(x, y, step, *self.pre_acts(x))
        x_c = self.centre(x)
        with torch.no_grad():
            pre = x_c @ self.W_enc + self.b_enc
        active = None if sparse.probably_dense(pre, 0.0) else pre > 0
        if active is not None and sparse.pays(sparse.count(active), active):
            rows, cols, offsets = sparse.where(active)
            pi_gate = sparse.gather_linear(x_c, self.W_enc, self.b_enc, pre, rows, cols,
                                           offsets, self.centre_bias)
            take = sparse.take
            pi_mag = (take(self.r_mag.exp(), cols) * (pi_gate - take(self.b_enc, cols))
                      + take(self.mag_bias(), cols))
            f = Codes(cols, torch.relu(pi_mag), rows, offsets, self.d_sae)
            gate = f.with_vals(torch.relu(pi_gate))
            w_dec = self.train_decoder()
            x_hat = sparse.decode(f, w_dec) + self.out_bias(x)
            weights = take(self.penalty_weights(w_dec), cols)
            sparsity = (gate.vals * weights).sum() / x.shape[0]
            x_hat_frozen = (sparse.decode(gate, w_dec.detach()) + self.frozen_out_bias(x)
                            if self.cfg.aux_loss else None)
            return self._combine(y, step, x_hat, sparsity, x_hat_frozen,
                                 f.with_vals(f.vals.detach()))
        pi_gate = sparse.linear(x_c, self.W_enc, self.b_enc, pre, self.centre_bias)
        pi_mag = self.r_mag.exp() * (pi_gate - self.b_enc) + self.mag_bias()
        return self.dense_loss(x, y, step, pi_gate, pi_mag)

    def _combine(self, y: Tensor, step: StepInfo, x_hat: Tensor, sparsity: Tensor,
                 x_hat_frozen: Tensor | None, f: Tensor | Codes) -> LossOutput:
        mse = mse_per_token(y, x_hat).mean()
        coefficient = resolved(self.cfg.sparsity.coefficient, "sparsity.coefficient")
        loss = mse + step.sparsity_scale * coefficient * sparsity
        if x_hat_frozen is not None:
            loss = loss + mse_per_token(y, x_hat_frozen).mean()
        l0 = f.l0() if isinstance(f, Codes) else l0_of(f)
        return LossOutput(loss, mse.detach(), sparsity.detach(), l0.detach(), f)

    def dense_loss(self, x: Tensor, y: Tensor, step: StepInfo, pi_gate: Tensor,
                   pi_mag: Tensor) -> LossOutput:
        f = torch.where(pi_gate > 0, torch.relu(pi_mag), 0.0)
        w_dec = self.train_decoder()
        x_hat = f @ w_dec + self.out_bias(x)
        gate = torch.relu(pi_gate)
        sparsity = (gate @ self.penalty_weights(w_dec)).mean()  # L1 of gate >= 0: one GEMV
        x_hat_frozen = (gate @ w_dec.detach() + self.frozen_out_bias(x)
                        if self.cfg.aux_loss else None)
        return self._combine(y, step, x_hat, sparsity, x_hat_frozen, f.detach())

    def saelens_cfg(self) -> dict[str, Any]:
        if self.transcoder:  # SAELens 6.54 has no gated transcoder: said, not hidden
            return {"architecture": "gated", "apply_b_dec_to_input": False, "d_out": self.d_out,
                    "saerun_not_representable": "a gated transcoder (SAELens has no class for "
                    "it): its encoder reads x without b_dec, its decoder writes d_out"}
        return super().saelens_cfg()

    def export_tensors(self) -> dict[str, Tensor]:
        """SAELens's GatedSAE names: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec (no b_enc)."""
        tensors = super().export_tensors()
        tensors["b_gate"] = tensors.pop("b_enc")
        if self.b_mag is None:  # tied: SAELens's GatedSAE has a b_mag tensor: its values
            tensors["b_mag"] = self.mag_bias().detach()
        return tensors


def _b_gate_to_b_enc(module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                     *args: object) -> None:
    key = prefix + "b_gate"
    if key in state_dict:
        state_dict[prefix + "b_enc"] = state_dict.pop(key)
    key = prefix + "b_mag"
    if getattr(module, "b_mag", None) is None and key in state_dict:
        state_dict.pop(key)  # tied: an exported file's b_mag is exp(r_mag) * b_gate, derived
