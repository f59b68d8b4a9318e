"""JumpReLU SAE (Rajamanoharan et al. 2024b, "Jumping Ahead"; Anthropic circuits update, Jan 2025).

pre = (x - b_dec) W_enc + b_enc, theta = exp(log_threshold) > 0 per latent,
f = pre * H(pre - theta).
A latent either is off or fires with at least theta, so small noisy activations cost nothing in
reconstruction yet are removed, and the sparsity term can be the L0 itself. H has zero gradient
almost everywhere, so theta is trained with straight-through estimators: the step is replaced,
in the backward pass only, by a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps:
    d/dtheta [pre * H(pre - theta)] := -(theta / eps) K((pre - theta) / eps)
    d/dtheta H(pre - theta)         := -(1 / eps) K((pre - theta) / eps)
and d/dpre is the exact H(pre - theta) for the output and 0 for the step (the paper's L0 mode:
the encoder learns sparsity only through theta and the reconstruction).

Sparsity modes: l0 = sum_i H(pre_i - theta_i); tanh = sum_i tanh(c f_i ||W_dec,i||);
target_l0 = (L0_batch / target - 1)^2. The decoder is free by default (decoder_mode
norm_weighted): the L0 is invariant to the f <-> W_dec rescaling, so it needs no weighting, and the
tanh and pre-activation terms carry ||W_dec,i|| (as in Anthropic's update; 1 with unit_norm).

Memory (`kde_half_life_tokens`, issue 20; off by default). Both straight-through gradients are
kernel density estimates from one batch: with few tokens near theta they are noisy. With memory,
theta's straight-through gradient at step t is the same estimate over the recent batches, batch
s weighted d^(t-s) (d = kde_decay = 0.5 ** (batch_tokens / half life)):
    g~_t = N_t / D_t,  N_t = d N_{t-1} + g_t,  D_t = d D_{t-1} + 1,  N_0 = D_0 = 0,
g_t this batch's straight-through gradient w.r.t. theta (both kernel terms, with their
coefficients; each batch has the same number of tokens, so this is the pooled KDE with every
token weighted by its batch's weight). D_t normalises: no start-up bias, and d = 0 gives g_t
exactly. What is averaged is the gradient w.r.t. theta, not its log: each batch's estimate
at its own theta (which moves by about lr per step in log space). The pre-activation loss, an
exact gradient, is not averaged. N [d_sae] and D [] are buffers, registered only with the
option on (so a checkpoint without it is as before), updated in the backward (once per step,
by one autograd node that receives the sum of every kernel term's gradient); a resampled
latent's N restarts at 0. They are checkpointed with the state dict: a resume is bit-identical.
Both paths (dense and `sae.sparse`) route theta through the one memory node before the kernels;
the memory changes theta's gradient only, never pre's, so the sparse path's condition
(`sae.sparse`) still holds: an entry it leaves out has no kernel term in this batch, and past
batches' terms live in N.

Normalisation folding needs nothing beyond the base: folding leaves pre unchanged, so theta is too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saerun.sae import sparse
from saerun.sae.base import SAE, LossOutput, StepInfo, l0_of, mse_per_token, resolved
from saerun.sae.sparse import Codes
from saerun.spec import JumpReLUSAEConfig


def _near_sum(pre: Tensor, theta: Tensor, eps: float, grad: Tensor) -> Tensor:
    """sum over the batch of grad * K((pre - theta) / eps), per latent: the part of both
    straight-through gradients w.r.t. theta that the kernel selects (pre within eps/2 of
    theta; one temporary, reused)."""
    near = (pre - theta).abs_() < eps / 2
    return _sum_to_theta(torch.where(near, grad, 0.0), theta)


def _sum_to_theta(grad: Tensor, theta: Tensor) -> Tensor:
    """Reduce a [..., d_sae] gradient to theta's [d_sae] (theta is broadcast over the batch),
    summed in fp32 under bf16 autocast: theta's updates are below bf16's resolution."""
    return grad.reshape(-1, theta.shape[-1]).to(theta.dtype).sum(0)


class JumpReLUFn(torch.autograd.Function):
    """pre * H(pre - theta) with d/dpre = H(pre - theta), d/dtheta = -(theta/eps) K(.)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return torch.where(pre > theta, pre, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = torch.where(pre > theta, grad, 0.0)
        return grad_pre, -(theta / eps) * _near_sum(pre, theta, eps, grad), None


class StepFn(torch.autograd.Function):
    """H(pre - theta) with d/dpre = 0, d/dtheta = -(1/eps) K(.)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        # In theta's dtype (fp32): an L0 summed over d_sae latents in bf16 would round.
        return (pre > theta).to(theta.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, theta = ctx.saved_tensors
        # d/dpre is 0: None, so autograd neither allocates nor adds a [batch, d_sae] zero.
        return None, -(1.0 / ctx.eps) * _near_sum(pre, theta, ctx.eps, grad), None


class KDEMemory(torch.autograd.Function):
    """theta in the forward; in the backward, the batch's gradient g becomes N / D after
    N <- d N + g, D <- d D + 1 (in place on the SAE's buffers: see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, theta: Tensor, num: Tensor, den: Tensor, decay: float) -> Tensor:
        ctx.state = num, den
        ctx.decay = decay
        return theta.view_as(theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        num, den = ctx.state
        with torch.no_grad():
            num.mul_(ctx.decay).add_(grad)
            den.mul_(ctx.decay).add_(1.0)
        return num / den, None, None, None


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    saelens_architecture = "jumprelu"

    cfg: JumpReLUSAEConfig
    kde_num: Tensor  # [d_sae] and [] buffers, registered only with kde_half_life_tokens
    kde_den: Tensor

    def __init__(self, cfg: JumpReLUSAEConfig, generator: torch.Generator) -> None:
        super().__init__(cfg, generator)
        # theta is trained in log space: it stays positive, and steps are relative to its size.
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), math.log(cfg.init_threshold)))
        # Exported files hold SAELens's `threshold` = exp(log_threshold); accept it back on load.
        self.register_load_state_dict_pre_hook(_threshold_to_log)
        self.kde_decay: float | None = None
        if cfg.kde_half_life_tokens is not None:  # the estimator's memory: buffers, checkpointed
            self.kde_decay = resolved(cfg.kde_decay, "kde_decay")
            self.register_buffer("kde_num", torch.zeros(self.d_sae))
            self.register_buffer("kde_den", torch.zeros(()))

    LATENT_AXES = {**SAE.LATENT_AXES, "log_threshold": 0}

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, enc_rows: Tensor, dec_rows: Tensor) -> None:
        super().reinit_latents(idx, enc_rows, dec_rows)
        self.log_threshold[idx] = math.log(self.cfg.init_threshold)
        if self.kde_decay is not None:
            self.kde_num[idx] = 0.0

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def estimator_theta(self, theta: Tensor) -> Tensor:
        """theta as the straight-through estimators read it: through the memory when it is on
        (both kernel terms must read this one tensor, so the memory sees their summed gradient)."""
        if self.kde_decay is None:
            return theta
        return KDEMemory.apply(theta, self.kde_num, self.kde_den, self.kde_decay)

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.centre(x) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return JumpReLUFn.apply(self.pre_acts(x), self.threshold, self.cfg.bandwidth)

    def penalty(self, pre: Tensor, f: Tensor, theta: Tensor, weights: Tensor) -> Tensor:
        """The unweighted sparsity penalty (scalar, averaged over the batch)."""
        cfg = self.cfg
        if cfg.sparsity_mode == "tanh":
            return torch.tanh(cfg.tanh_scale * f * weights).sum(-1).mean()
        l0 = StepFn.apply(pre, theta, cfg.bandwidth).sum(-1).mean()
        if cfg.sparsity_mode == "l0":
            return l0
        return (l0 / cfg.target_l0 - 1.0) ** 2  # target_l0: only the batch mean is steered

    def loss(self, x: Tensor, step: StepInfo, y: Tensor | None = None) -> LossOutput:
        """On the sparse kernels (`sae.sparse`) when few entries matter: those with pre within
        eps/2 below theta or above (the only ones with a value or a straight-through gradient),
        plus, for the pre-activation loss, the dead latents' entries below theta."""
        y = x if y is None else y
        if not self.use_sparse(x):
            return self.dense_loss(x, y, step, self.pre_acts(x))
        x_c = self.centre(x)
        with torch.no_grad():
            pre = x_c @ self.W_enc + self.b_enc
            theta = self.threshold
            lowest = theta - self.cfg.bandwidth / 2
            masks = None
            if not sparse.probably_dense(pre, lowest):
                near = pre > lowest
                below = (pre < theta) & step.dead_mask.to(pre.device)
                if self.cfg.pre_act_coefficient <= 0:
                    below.zero_()
                if sparse.pays(sparse.count(near) + sparse.count(below), near):
                    masks = near, below
        if masks is not None:
            return self.sparse_loss(x, y, x_c, pre, step, *masks)
        return self.dense_loss(x, y, step, sparse.linear(x_c, self.W_enc, self.b_enc, pre,
                                                         self.centre_bias))

    def sparse_loss(self, x: Tensor, y: Tensor, x_c: Tensor, pre: Tensor, step: StepInfo,
                    near: Tensor, below: Tensor) -> LossOutput:
        cfg = self.cfg
        rows, cols, offsets = sparse.where(near)
        pre_e = sparse.gather_linear(x_c, self.W_enc, self.b_enc, pre, rows, cols, offsets,
                                     self.centre_bias)
        theta = self.threshold
        theta_e = sparse.take(self.estimator_theta(theta), cols)
        f = Codes(cols, JumpReLUFn.apply(pre_e, theta_e, cfg.bandwidth), rows, offsets,
                  self.d_sae)
        w_dec = self.train_decoder()
        weights = self.penalty_weights(w_dec)
        mse = mse_per_token(y, sparse.decode(f, w_dec) + self.out_bias(x)).mean()
        batch = x.shape[0]
        if cfg.sparsity_mode == "tanh":
            weights_e = sparse.take(weights, cols)
            sparsity = torch.tanh(cfg.tanh_scale * f.vals * weights_e).sum() / batch
        else:
            l0 = StepFn.apply(pre_e, theta_e, cfg.bandwidth).sum() / batch
            sparsity = l0 if cfg.sparsity_mode == "l0" else (l0 / cfg.target_l0 - 1.0) ** 2
        loss = mse + step.sparsity_scale * cfg.coefficient * sparsity
        if cfg.pre_act_coefficient > 0:
            b_rows, b_cols, b_offsets = sparse.where(below)
            pre_b = sparse.gather_linear(x_c, self.W_enc, self.b_enc, pre, b_rows, b_cols,
                                         b_offsets, self.centre_bias)
            pre_act = (torch.relu(sparse.take(theta, b_cols) - pre_b)
                       * sparse.take(weights, b_cols)).sum() / batch
            loss = loss + cfg.pre_act_coefficient * pre_act
        detached = f.with_vals(f.vals.detach())
        return LossOutput(loss, mse.detach(), sparsity.detach(), detached.l0(), detached)

    def dense_loss(self, x: Tensor, y: Tensor, step: StepInfo, pre: Tensor) -> LossOutput:
        """The loss on dense products, from pre-activations with their gradient."""
        cfg = self.cfg
        theta = self.threshold
        theta_st = self.estimator_theta(theta)
        f = JumpReLUFn.apply(pre, theta_st, cfg.bandwidth)
        w_dec = self.train_decoder()
        weights = self.penalty_weights(w_dec)
        mse = mse_per_token(y, f @ w_dec + self.out_bias(x)).mean()
        sparsity = self.penalty(pre, f, theta_st, weights)
        loss = mse + step.sparsity_scale * cfg.coefficient * sparsity
        if cfg.pre_act_coefficient > 0:
            # Anthropic Jan 2025: pull the pre-activations of dead latents (which get no
            # reconstruction gradient) up towards their thresholds, so they fire again. Applied
            # to dead latents only: on live ones it would fight the sparsity penalty.
            dead = step.dead_mask.to(pre.device, pre.dtype)
            pre_act = (torch.relu(theta - pre) * (weights * dead)).sum(-1).mean()
            loss = loss + cfg.pre_act_coefficient * pre_act
        return LossOutput(loss, mse.detach(), sparsity.detach(), l0_of(f), f.detach())

    def export_tensors(self) -> dict[str, Tensor]:
        """SAELens's JumpReLUSAE names: W_enc, b_enc, W_dec, b_dec, threshold."""
        tensors = super().export_tensors()
        tensors["threshold"] = tensors.pop("log_threshold").exp()
        return tensors

    def saelens_transcoder(self) -> str:
        """SAELens's JumpReLU transcoders: relu(pre) * (pre > theta), saerun's with theta > 0."""
        return "jumprelu_skip_transcoder" if self.W_skip is not None else "jumprelu_transcoder"


def _threshold_to_log(module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                      *args: object) -> None:
    key = prefix + "threshold"
    if key in state_dict:
        state_dict[prefix + "log_threshold"] = state_dict.pop(key).log()
    # The estimator's memory is training state, in checkpoints only: an exported file (weights
    # for inference) loads with the memory empty, as at the start of training.
    for name in ("kde_num", "kde_den"):
        buffer = getattr(module, name, None)
        if isinstance(buffer, Tensor) and prefix + name not in state_dict:
            state_dict[prefix + name] = torch.zeros_like(buffer)
