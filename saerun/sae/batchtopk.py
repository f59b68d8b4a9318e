"""BatchTopK SAE (Bussmann, Leask & Nanda 2024).

Training (`.train()` mode): f = the top k*B values of ReLU(pre) over the whole batch of B tokens,
zeros elsewhere. The L0 is k on average over the batch rather than exactly k per token, so easy
tokens use fewer latents and hard ones more. Loss, AuxK and the fixed-norm decoder: as `topk`.

Inference (`.eval()` mode): batch selection would make a token's latents depend on the other
tokens of its batch, so one global threshold theta replaces it: f = ReLU(pre) * 1[pre > theta]
(a JumpReLU with the same theta for every latent; SAELens's jumprelu formula exactly).

theta (our choice, stated): an exponential moving average, decay `threshold_ema`, of the
smallest activation kept in each training batch, updated in every training-mode `loss` call:
    theta <- m_t                                   at the first update,
    theta <- d * theta + (1 - d) * m_t             afterwards,
where m_t = min of the kept activations that are > 0 (a batch with none leaves theta alone).
This is dictionary_learning's estimator; the paper defines theta as the expectation of m_t
over batches, which an EMA estimates while tracking the drift of the encoder. m_t is an order
statistic of k * B values, so it is steady from batch to batch and a short memory costs little
noise, while a long one lags the drift: the default d = 0.9 (~10 steps; dictionary_learning's
0.999 is for runs of 10^5 steps). On the embedded model (195 steps, k = 16) d = 0.99 gave an
eval L0 of 11 (and 12% dead latents at eval), d = 0.9 an L0 of 16.0. theta lives in a
registered buffer `threshold` of shape [d_sae] (every entry equal), so state_dict, checkpoints
and the exported sae_weights.safetensors carry it, under the name and shape SAELens's jumprelu
loads. Until the first update it holds -1, the "unset" marker, and eval mode is plain ReLU.

Normalisation folding: theta is compared with pre, which `fold_scale` leaves unchanged, so
theta needs no rescaling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saerun.sae.base import LossOutput, StepInfo
from saerun.sae.sparse import Codes, flat_topk, offsets
from saerun.sae.topk import TopKSAE
from saerun.spec import BatchTopKSAEConfig, MatryoshkaSAEConfig

UNSET = -1.0  # any negative value: every real threshold is a positive activation


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"
    cfg: BatchTopKSAEConfig | MatryoshkaSAEConfig
    threshold: Tensor  # [d_sae] buffer, every entry theta (UNSET before the first update)

    def __init__(self, cfg: BatchTopKSAEConfig | MatryoshkaSAEConfig,
                 generator: torch.Generator) -> None:
        super().__init__(cfg, generator)
        self.register_buffer("threshold", torch.full((self.d_sae,), UNSET))

    def batch_topk(self, pre: Tensor) -> Tensor:
        """The k*B largest entries of ReLU(pre) over the batch [B, d_sae], zeros elsewhere."""
        acts = torch.relu(pre).flatten()
        n = min(self.cfg.k * pre.shape[0], acts.numel())
        values, indices = acts.topk(n, sorted=False)
        return torch.zeros_like(acts).scatter(0, indices, values).view_as(pre)

    def train_select(self, pre: Tensor) -> Tensor:
        return self.batch_topk(pre)  # the training objective selects by batch in any mode

    def train_indices(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = min(self.cfg.k * pre.shape[0], pre.numel())
        rows, cols = flat_topk(pre, n)  # the top n of pre: ReLU keeps the same non-zeros
        return rows, cols, offsets(rows, pre.shape[0])

    def select(self, pre: Tensor) -> Tensor:
        if self.training:
            return self.batch_topk(pre)
        return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)

    @torch.no_grad()
    def update_threshold(self, f: Tensor) -> None:
        """The EMA above, from one training batch's latents f (dense, or the values of sparse
        codes); written without a host sync."""
        smallest = torch.where(f > 0, f, float("inf")).min()
        decay = self.cfg.threshold_ema
        blended = decay * self.threshold + (1.0 - decay) * smallest
        new = torch.where(self.threshold < 0, smallest, blended)
        self.threshold.copy_(torch.where(torch.isfinite(smallest), new, self.threshold))

    def loss(self, x: Tensor, step: StepInfo, y: Tensor | None = None) -> LossOutput:
        out = super().loss(x, step, y)
        if self.training:  # a loss computed in eval mode (a probe) must not move theta
            self.update_threshold(out.f.vals if isinstance(out.f, Codes) else out.f)
        return out

    def export_tensors(self) -> dict[str, Tensor]:
        """SAELens's jumprelu tensors: W_enc, b_enc, W_dec, b_dec and threshold [d_sae]. The
        buffer already has that name and shape, so an exported file loads back as it is."""
        return {**super().export_tensors(), "threshold": self.threshold.detach().clone()}

    def saelens_transcoder(self) -> str:
        """Inference is SAELens's JumpReLU formula with the global threshold: exact."""
        return "jumprelu_skip_transcoder" if self.W_skip is not None else "jumprelu_transcoder"
