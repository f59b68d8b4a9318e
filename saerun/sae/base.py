"""The protocol every SAE architecture implements, and the math they share (stated once).

Notation (DESIGN.md §4): x in R^d_in, pre = (x - b_dec) W_enc + b_enc, f = latents in R^d_sae,
x_hat = f W_dec + b_dec. Weights are stored SAELens-style: W_enc [d_in, d_sae],
W_dec [d_sae, d_in], so one row of W_dec is one latent's decoder direction.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from saerun.sae.sparse import Codes
from saerun.spec import SAEConfig, derive

T = TypeVar("T")


class LossOutput(NamedTuple):
    loss: Tensor  # scalar that is back-propagated
    mse: Tensor  # scalar: mean over the batch of ||x - x_hat||^2 (summed over dimensions)
    sparsity: Tensor  # scalar: the unweighted sparsity penalty
    l0: Tensor  # scalar: mean number of non-zero latents per token
    f: Tensor | Codes  # the latents, detached: dense [batch, d_sae], or sparse `Codes`

    def fired(self) -> Tensor:
        """[d_sae] bool: the latents that fired on some token of the batch."""
        if isinstance(self.f, Codes):
            return self.f.fired()
        return (self.f > 0).any(dim=0)


class StepInfo(NamedTuple):
    """What the training loop tells an SAE about the current step."""

    sparsity_scale: float | Tensor  # sparsity warm-up factor in [0, 1] (a 0-d tensor: compiled)
    dead_mask: Tensor  # [d_sae] bool: latents that fired on none of the last dead-window tokens


class SAE(nn.Module):
    """Base class: parameters, init, decode, normalisation folding. Subclasses add `encode` and
    `loss`; the training loop only ever calls the methods defined here."""

    architecture: ClassVar[str]
    saelens_architecture: ClassVar[str]  # the name SAELens uses in cfg.json
    # Parameter name -> the axis that indexes latents: what resampling re-initialises and whose
    # Adam state it resets. Architectures with per-latent parameters of their own add them.
    LATENT_AXES: ClassVar[dict[str, int]] = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
    # Architectures whose loss runs on `sae.sparse` kernels read this; False selects the plain
    # dense reference (the FLOP count of compute matching, and the tests' ground truth).
    sparse_kernels: bool = True
    # Each architecture narrows `cfg` to its own config class (or classes, for a family).
    cfg: SAEConfig
    d_in: int  # cfg.d_in and cfg.d_sae, resolved (never None once the SAE exists)
    d_sae: int
    W_enc: nn.Parameter  # [d_in, d_sae]
    b_enc: nn.Parameter  # [d_sae]
    W_dec: nn.Parameter  # [d_sae, d_in]
    b_dec: nn.Parameter  # [d_in]

    def __init__(self, cfg: SAEConfig, generator: torch.Generator) -> None:
        super().__init__()
        unresolved = derive.sae_derivations(cfg)
        if unresolved:  # every value is resolved once, before an SAE is built
            names = ", ".join(".".join(path[1:]) for path in unresolved)
            raise ValueError(f"the SAE config leaves {names} unresolved: build the SAE with "
                             "sae.build_sae, or from a planned RunConfig")
        self.cfg = cfg
        self.d_in = d_in = resolved(cfg.d_in, "d_in")
        self.d_sae = d_sae = resolved(cfg.d_sae, "d_sae")
        # Decoder rows: random directions with a fixed norm; W_enc = W_dec^T (Anthropic, April
        # 2024 update) gives every latent a sensible starting direction and fewer dead latents.
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        init_norm = resolved(cfg.decoder_init_norm, "decoder_init_norm")
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * init_norm
        if cfg.init_encoder_as_decoder_transpose:
            w_enc = w_dec.t().clone()
        else:
            bound = 1.0 / d_in**0.5
            w_enc = (torch.rand(d_in, d_sae, generator=generator) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w_enc.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(w_dec.contiguous())
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # -- the protocol ------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:  # [batch, d_in] -> [batch, d_sae]
        raise NotImplementedError

    def decode(self, f: Tensor) -> Tensor:  # [batch, d_sae] -> [batch, d_in]
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: Tensor, step: StepInfo) -> LossOutput:
        """Training loss on a batch of (normalised) activations [batch, d_in]. Auxiliary terms
        that need training state (AuxK on dead latents, say) read it from `step`."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after every optimiser step: a unit-norm decoder's rows are put back at norm 1,
        undoing the small drift of Adam's update (its gradient was already projected)."""
        if self.cfg.decoder_mode == "unit_norm":
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, enc_rows: Tensor, dec_rows: Tensor) -> None:
        """Give latents `idx` new encoder directions enc_rows [n, d_in] and decoder rows
        dec_rows [n, d_in], encoder bias 0 (resampling). Subclasses reset their own per-latent
        parameters (and call this)."""
        self.W_enc[:, idx] = enc_rows.t()
        self.b_enc[idx] = 0.0
        self.W_dec[idx] = dec_rows

    def use_sparse(self, x: Tensor) -> bool:
        """Whether this step may run on the sparse kernels: on the CPU, where they are tested
        and measured. On a GPU the dense products (cuBLAS) run until the kernels have been
        measured there."""
        return self.sparse_kernels and x.device.type == "cpu"

    # -- shared ------------------------------------------------------------------------------
    @torch.no_grad()
    def init_b_dec(self, x: Tensor) -> None:
        """Initialise b_dec from a sample of (normalised) training activations [n, d_in]."""
        mode = self.cfg.b_dec_init
        if mode == "mean":
            self.b_dec.copy_(x.mean(0))
        elif mode == "geometric_median":
            self.b_dec.copy_(geometric_median(x))

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` take and return raw x, leaving latents unchanged:
        pre = (s x - b) W_enc + b_enc = (x - b/s)(s W_enc) + b_enc, x_hat = f (W_dec/s) + b/s."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # -- decoder mode (stated once for every architecture) --------------------------------------
    def train_decoder(self) -> Tensor:
        """W_dec as a training loss must use it. norm_weighted: W_dec itself. unit_norm:
        W_dec / ||W_dec||_row, whose value equals W_dec (rows are at norm 1 whenever a loss
        runs, thanks to `after_step`) and whose gradient w.r.t. W_dec is (I - w w^T) g for the
        unit row w: the gradient with its component along the row removed (SAELens's
        remove_gradient_parallel_to_decoder_directions), which clipping and Adam then see."""
        if self.cfg.decoder_mode == "unit_norm":
            return self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return self.W_dec

    def penalty_weights(self, w_dec: Tensor) -> Tensor:  # [d_sae]
        """Per-latent weight of every sparsity term, given `train_decoder()`: ||W_dec,i|| for a
        free decoder (so shrinking f_i while growing W_dec,i cannot dodge the penalty), 1 for a
        unit-norm one (its rows' norms are 1, with no gradient)."""
        if self.cfg.decoder_mode == "unit_norm":
            return w_dec.new_ones(w_dec.shape[0])
        return w_dec.norm(dim=1)

    def saelens_cfg(self) -> dict[str, Any]:
        """Fields of cfg.json that SAELens reads for this architecture."""
        return {"architecture": self.saelens_architecture, "apply_b_dec_to_input": True}

    def export_tensors(self) -> dict[str, Tensor]:
        """The tensors of sae_weights.safetensors, named as SAELens names them for this
        architecture. Default: the parameters as they are. An architecture that renames or
        derives tensors here must accept the exported names back in `load_state_dict` (with a
        load_state_dict pre-hook), so an exported file still loads into a fresh SAE."""
        return {name: p.detach() for name, p in self.named_parameters()}


def resolved(value: T | None, name: str) -> T:
    """A config value that a rule derives (`spec.derive`), read from a resolved config: the
    schema types it `X | None` ("derive it"), but `SAE.__init__` refuses a config that leaves
    any such value unresolved, so None here means the SAE was built around that check."""
    if value is None:
        raise ValueError(f"the SAE config leaves {name} unresolved: build the SAE with "
                         "sae.build_sae, or from a planned RunConfig")
    return value


def l0_of(f: Tensor) -> Tensor:
    """Mean number of latents > 0 per token of dense codes f [batch, d_sae], detached: a
    float32 sum of the mask (count_nonzero and bool -> int64 sums are ~5x slower on the CPU)."""
    return f.detach().gt(0).sum(dtype=torch.float32) / f.shape[0]


def mse_per_token(x: Tensor, x_hat: Tensor) -> Tensor:
    """||x - x_hat||^2 summed over dimensions: [batch]."""
    return (x_hat - x).pow(2).sum(dim=-1)


@torch.no_grad()
def geometric_median(points: Tensor, iters: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to `points`.
    Robust to the outlier activations that pull the mean (Anthropic 2023 b_dec init)."""
    points = points.double()
    guess = points.mean(0)
    for _ in range(iters):
        weights = 1.0 / (points - guess).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - guess).norm() < eps * (1 + guess.norm()):
            guess = new
            break
        guess = new
    return guess.float()
