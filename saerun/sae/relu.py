"""ReLU SAE (Anthropic "Towards Monosemanticity" + April 2024 update; SAELens "standard").

f = ReLU((x - b_dec) W_enc + b_enc). The decoder is free (not unit norm): the penalty is weighted
by each latent's decoder norm, so shrinking f while growing W_dec cannot cheat the penalty
(decoder_mode 'norm_weighted', the default; 'unit_norm' holds the rows at 1 instead).
Penalties: l1 = sum_i f_i ||W_dec,i||; sqrt_l1 = sum_i (sqrt(f_i ||W_dec,i|| + eps) - sqrt(eps))
(the "Sqrt()-ing L1" post: concave, so it pushes small activations to zero harder than large
ones; eps keeps the gradient finite at 0 and the subtraction makes the penalty 0 there);
tanh = sum_i tanh(c f_i ||W_dec,i||) (Anthropic, Jan 2025: saturates, so a latent pays about
lambda for firing at all and little for firing strongly: an L0-like penalty without shrinkage).

Training runs on the sparse kernels (`sae.sparse`) once few enough latents fire (below
`sparse.MAX_DENSITY` of the batch's entries, the usual case after the first steps), and on the
dense products otherwise; each penalty is 0 at f = 0, so the sparse form sums it over the
fired entries only. Ghost grads need every dead latent's pre-activation: dense.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saerun.sae import sparse
from saerun.sae.base import SAE, LossOutput, StepInfo, l0_of, mse_per_token, resolved
from saerun.sae.ghost import ghost_grads_loss
from saerun.sae.sparse import Codes
from saerun.spec import ReluSAEConfig


class ReluSAE(SAE):
    architecture = "relu"
    saelens_architecture = "standard"
    cfg: ReluSAEConfig

    @property
    def coefficient(self) -> float:
        """lambda, the sparsity coefficient (derived from the penalty when a spec omits it)."""
        return resolved(self.cfg.sparsity.coefficient, "sparsity.coefficient")

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.centre(x) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(x))

    def penalty(self, f: Tensor, w_dec: Tensor) -> Tensor:
        """The sparsity penalty per token, before lambda: [batch]. L1 (f >= 0, so |f| = f) is
        one matrix-vector product, f @ ||W_dec||, with no [batch, d_sae] product in between."""
        if self.cfg.sparsity.penalty == "l1":
            return f @ self.penalty_weights(w_dec)
        return self.penalty_terms(f * self.penalty_weights(w_dec)).sum(-1)

    def penalty_terms(self, weighted: Tensor) -> Tensor:
        """Each latent's penalty from f_i ||W_dec,i|| (0 at 0), elementwise."""
        sparsity = self.cfg.sparsity
        if sparsity.penalty == "l1":
            return weighted
        if sparsity.penalty == "tanh":
            return torch.tanh(sparsity.tanh_scale * weighted)
        eps = sparsity.epsilon
        return torch.sqrt(weighted + eps) - eps**0.5

    def loss(self, x: Tensor, step: StepInfo, y: Tensor | None = None) -> LossOutput:
        y = x if y is None else y
        if not self.use_sparse(x):
            return self.dense_loss(x, y, step, self.pre_acts(x))
        x_c = self.centre(x)
        with torch.no_grad():
            pre = x_c @ self.W_enc + self.b_enc
        if not self.cfg.ghost_grads and not sparse.probably_dense(pre, 0.0):
            active = pre > 0
            if sparse.pays(sparse.count(active), active):
                return self.sparse_loss(x, y, x_c, pre, step, sparse.where(active))
        return self.dense_loss(x, y, step, sparse.linear(x_c, self.W_enc, self.b_enc, pre,
                                                         self.centre_bias))

    def sparse_loss(self, x: Tensor, y: Tensor, x_c: Tensor, pre: Tensor, step: StepInfo,
                    entries: tuple[Tensor, Tensor, Tensor]) -> LossOutput:
        rows, cols, offsets = entries
        vals = torch.relu(sparse.gather_linear(x_c, self.W_enc, self.b_enc, pre, *entries,
                                                 self.centre_bias))
        codes = Codes(cols, vals, rows, offsets, self.d_sae)
        w_dec = self.train_decoder()
        x_hat = sparse.decode(codes, w_dec) + self.out_bias(x)
        mse = mse_per_token(y, x_hat).mean()
        weights = sparse.take(self.penalty_weights(w_dec), cols)
        sparsity = self.penalty_terms(vals * weights).sum() / x.shape[0]
        loss = mse + step.sparsity_scale * self.coefficient * sparsity
        detached = codes.with_vals(vals.detach())
        return LossOutput(loss, mse.detach(), sparsity.detach(), detached.l0(), detached)

    def dense_loss(self, x: Tensor, y: Tensor, step: StepInfo, pre: Tensor) -> LossOutput:
        """The loss on dense products, from pre-activations with their gradient."""
        f = torch.relu(pre)
        w_dec = self.train_decoder()
        x_hat = f @ w_dec + self.out_bias(x)
        mse = mse_per_token(y, x_hat).mean()
        sparsity = self.penalty(f, w_dec).mean()
        loss = mse + step.sparsity_scale * self.coefficient * sparsity
        if self.cfg.ghost_grads:
            loss = loss + ghost_grads_loss(pre, y, x_hat, w_dec, step.dead_mask)
        return LossOutput(loss, mse.detach(), sparsity.detach(), l0_of(f), f.detach())
