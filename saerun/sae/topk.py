"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

pre = (x - b_dec) W_enc + b_enc, f = ReLU(TopK_k(pre)): every token keeps its k largest
pre-activations, so the L0 is k by construction (exactly k whenever those k are positive; ties
have measure zero) and there is no sparsity penalty, hence no shrinkage. Loss = ||x - x_hat||^2
(summed over dimensions, mean over the batch) + aux_coefficient * AuxK (`sae.auxk`), which
revives dead latents.

Decoder: unit norm by default (decoder_mode, stated once in `sae.base`), as in the paper: with
no penalty the scale of f is free, so fixing ||W_dec,i|| removes a useless degree of freedom and
makes activations comparable across latents. Evaluation and export use the stored W_dec with
the plain `decode` (rows at 1, or 1 / scale once the normalisation scale is folded in).

Training runs on sparse kernels (`sae.sparse`): one dense product chooses each token's latents,
and the decoder, AuxK and every gradient touch only the chosen ones. `sparse_kernels = False`
runs the plain dense reference (`dense_loss`), which tests compare it with and which the FLOP
count of `compute_matched_to` measures.

A progressive code (topk only; `sae.multi_k`, `sae.k_schedule`). multi_k: the reconstruction
term is the mean over k' in multi_k of ||y - y_hat_k'||^2, y_hat_k' decoded from each token's
k' largest latents (sparsify's Multi-TopK adds 4k's term at weight 1/8), so one SAE is
trained to be read at any of them; the sparse path takes each token's largest max(multi_k) once,
sorted, and decodes prefixes of it. k_schedule: the loss uses the step's k (`StepInfo.k`, a pure
function of the step, `train.k_at`). Either way the SAE encodes with k; AuxK and the dead-latent
clocks read the code at the step's k (k itself with multi_k).

Subclasses (batchtopk, matryoshka) replace `select` / `train_select` / `train_indices`, matryoshka
`reconstruction` / `sparse_reconstruction`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saerun.sae.auxk import auxk_loss, sparse_auxk_loss
from saerun.sae.base import SAE, LossOutput, StepInfo, l0_of, mse_per_token, resolved
from saerun.sae.sparse import Codes, decode, gather_linear, row_topk
from saerun.spec import BatchTopKSAEConfig, MatryoshkaSAEConfig, TopKSAEConfig


class TopKSAE(SAE):
    architecture = "topk"
    saelens_architecture = "topk"
    cfg: TopKSAEConfig | BatchTopKSAEConfig | MatryoshkaSAEConfig  # the TopK family's

    def __init__(self, cfg: TopKSAEConfig | BatchTopKSAEConfig | MatryoshkaSAEConfig,
                 generator: torch.Generator) -> None:
        super().__init__(cfg, generator)
        # A TopK transcoder's export holds SAELens's threshold (zeros): ignored on load.
        self.register_load_state_dict_pre_hook(_drop_export_threshold)

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.centre(x) @ self.W_enc + self.b_enc

    def select(self, pre: Tensor) -> Tensor:
        """Latents from pre-activations: per token, ReLU of the k largest, zeros elsewhere."""
        return topk_relu(pre, self.cfg.k)

    def train_select(self, pre: Tensor) -> Tensor:
        """The selection the training loss uses (batchtopk selects by batch here)."""
        return self.select(pre)

    def encode(self, x: Tensor) -> Tensor:
        return self.select(self.pre_acts(x))

    def reconstruction(self, x: Tensor, y: Tensor, f: Tensor,
                       w_dec: Tensor) -> tuple[Tensor, Tensor]:
        """(the reconstruction term of the loss against target y, y_hat) for latents f of
        input x decoded with w_dec."""
        x_hat = f @ w_dec + self.out_bias(x)
        return mse_per_token(y, x_hat).mean(), x_hat

    def train_indices(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`train_select`'s choice as (rows, cols, offsets) in bag layout (`sae.sparse`)."""
        return row_topk(pre, self.cfg.k)

    def sparse_reconstruction(self, x: Tensor, y: Tensor, codes: Codes,
                              w_dec: Tensor) -> tuple[Tensor, Tensor]:
        """`reconstruction` from sparse codes."""
        x_hat = decode(codes, w_dec) + self.out_bias(x)
        return mse_per_token(y, x_hat).mean(), x_hat

    def train_ks(self, step: StepInfo) -> tuple[tuple[int, ...], int]:
        """(the k's whose reconstructions the loss averages, the k of the step's code): ((k,), k)
        but for a progressive code (multi_k, or the scheduled k of `step`)."""
        multi = getattr(self.cfg, "multi_k", None)
        if multi is not None:
            return tuple(multi), self.cfg.k
        k = self.cfg.k if step.k is None else step.k
        return (k,), k

    def loss(self, x: Tensor, step: StepInfo, y: Tensor | None = None) -> LossOutput:
        y = x if y is None else y
        ks, k = self.train_ks(step)
        if ks != (self.cfg.k,):  # a progressive code (topk only: the subclasses have neither)
            if not self.use_sparse(x):
                return self.dense_progressive_loss(x, y, step, ks, k)
            return self.sparse_progressive_loss(x, y, step, ks, k)
        if not self.use_sparse(x):
            return self.dense_loss(x, y, step)
        x_c = self.centre(x)
        with torch.no_grad():
            pre = x_c @ self.W_enc + self.b_enc
        rows, cols, offsets = self.train_indices(pre)
        vals = torch.relu(gather_linear(x_c, self.W_enc, self.b_enc, pre, rows, cols, offsets,
                                         self.centre_bias))
        codes = Codes(cols, vals, rows, offsets, self.d_sae)
        w_dec = self.train_decoder()
        recon, x_hat = self.sparse_reconstruction(x, y, codes, w_dec)
        aux = sparse_auxk_loss(self, x_c, pre, y - x_hat, w_dec, step.dead_mask,
                               resolved(self.cfg.aux_k, "aux_k"))
        loss = recon + self.cfg.aux_coefficient * aux
        with torch.no_grad():
            mse = mse_per_token(y, x_hat).mean()
        detached = codes.with_vals(vals.detach())
        return LossOutput(loss, mse, aux.detach(), detached.l0(), detached)

    def dense_loss(self, x: Tensor, y: Tensor, step: StepInfo) -> LossOutput:
        """The plain dense reference of `loss`."""
        pre = self.pre_acts(x)
        f = self.train_select(pre)
        w_dec = self.train_decoder()
        recon, x_hat = self.reconstruction(x, y, f, w_dec)
        aux = auxk_loss(pre, y - x_hat, w_dec, step.dead_mask, resolved(self.cfg.aux_k, "aux_k"))
        # No sparsity penalty, so no warm-up applies: `sparsity` reports the unweighted AuxK.
        loss = recon + self.cfg.aux_coefficient * aux
        with torch.no_grad():  # the full reconstruction (matryoshka's term is a weighted sum)
            mse = mse_per_token(y, x_hat).mean()
        l0 = l0_of(f)
        return LossOutput(loss, mse, aux.detach(), l0.detach(), f.detach())

    def dense_progressive_loss(self, x: Tensor, y: Tensor, step: StepInfo, ks: tuple[int, ...],
                               k: int) -> LossOutput:
        """The plain dense reference of a progressive code's loss (`train_ks`): one top-k'
        selection and reconstruction per k'."""
        pre = self.pre_acts(x)
        w_dec = self.train_decoder()
        terms, main = [], None
        for kk in ks:
            f = topk_relu(pre, kk)
            recon, x_hat = self.reconstruction(x, y, f, w_dec)
            terms.append(recon)
            if kk == k:
                main = f, x_hat
        if main is None:  # `train_ks` puts k among ks
            raise ValueError(f"k {k} is not among the trained k's {ks}")
        f, x_hat = main
        aux = auxk_loss(pre, y - x_hat, w_dec, step.dead_mask, resolved(self.cfg.aux_k, "aux_k"))
        loss = torch.stack(terms).mean() + self.cfg.aux_coefficient * aux
        with torch.no_grad():
            mse = mse_per_token(y, x_hat).mean()
        return LossOutput(loss, mse, aux.detach(), l0_of(f), f.detach())

    def sparse_progressive_loss(self, x: Tensor, y: Tensor, step: StepInfo,
                                ks: tuple[int, ...], k: int) -> LossOutput:
        """`dense_progressive_loss` on the sparse kernels: each token's max(ks) largest latents,
        sorted, gathered once; the code at k' is the first k' entries of every token."""
        x_c = self.centre(x)
        with torch.no_grad():
            pre = x_c @ self.W_enc + self.b_enc
        k_max, batch = max(ks), pre.shape[0]
        cols = pre.topk(k_max, dim=-1, sorted=True).indices.flatten()
        arange = torch.arange(batch, device=pre.device)
        rows, offsets = arange.repeat_interleave(k_max), arange * k_max
        vals = torch.relu(gather_linear(x_c, self.W_enc, self.b_enc, pre, rows, cols, offsets,
                                         self.centre_bias))
        full = Codes(cols, vals, rows, offsets, self.d_sae)
        rank = torch.arange(k_max, device=pre.device).repeat(batch)  # entry's place in its row
        w_dec = self.train_decoder()
        terms, main = [], None
        for kk in ks:
            codes = full if kk == k_max else full.select(rank < kk)
            recon, x_hat = self.sparse_reconstruction(x, y, codes, w_dec)
            terms.append(recon)
            if kk == k:
                main = codes, x_hat
        if main is None:
            raise ValueError(f"k {k} is not among the trained k's {ks}")
        codes, x_hat = main
        aux = sparse_auxk_loss(self, x_c, pre, y - x_hat, w_dec, step.dead_mask,
                               resolved(self.cfg.aux_k, "aux_k"))
        loss = torch.stack(terms).mean() + self.cfg.aux_coefficient * aux
        with torch.no_grad():
            mse = mse_per_token(y, x_hat).mean()
        detached = codes.with_vals(codes.vals.detach())
        return LossOutput(loss, mse, aux.detach(), detached.l0(), detached)

    def saelens_cfg(self) -> dict[str, Any]:
        # SAELens has no top-k transcoder (see `saelens_transcoder`); BatchTopK's inference
        # is a threshold, which SAELens's JumpReLU transcoder is exactly.
        if self.transcoder and self.saelens_architecture == "topk":
            return {**super().saelens_cfg(), "k": self.cfg.k,
                    "saerun_not_representable": "per-token top-k selection (k above): SAELens's "
                    "jumprelu_transcoder with threshold 0 is a ReLU transcoder, so it keeps every "
                    "positive pre-activation; apply top-k to its encode to match saerun"}
        return {**super().saelens_cfg(), "k": self.cfg.k}

    def saelens_transcoder(self) -> str:
        """SAELens 6.54 has no top-k transcoder: the closest is its JumpReLU transcoder at
        threshold 0 (same weights and pre-activations; top-k not applied), said in cfg.json."""
        return "jumprelu_skip_transcoder" if self.W_skip is not None else "jumprelu_transcoder"

    def export_tensors(self) -> dict[str, Tensor]:
        tensors = super().export_tensors()
        if self.transcoder and "threshold" not in tensors:
            tensors["threshold"] = torch.zeros(self.d_sae)
        return tensors


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """[B, d_sae] pre-activations -> per token, ReLU of the k largest, zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def _drop_export_threshold(module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                           *args: object) -> None:
    if "threshold" not in module._buffers:
        state_dict.pop(prefix + "threshold", None)
