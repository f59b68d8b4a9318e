"""The protocol every SAE architecture implements, and the math they share (stated once).

Notation (DESIGN.md §4): x in R^d_in, pre = (x - b_dec) W_enc + b_enc, f = latents in R^d_sae,
x_hat = f W_dec + b_dec. Weights are stored SAELens-style: W_enc [d_in, d_sae],
W_dec [d_sae, d_in], so one row of W_dec is one latent's decoder direction.

A transcoder is the same module with a target y in R^d_out (another hook) instead of x:
W_dec [d_sae, d_out], b_dec [d_out], y_hat = f W_dec + b_dec (+ x W_skip with a skip
connection, zero at init; stored SAELens's way, [d_out, d_in], so x W_skip is x @ W_skip.T).
Its encoder reads x itself, pre = x W_enc + b_enc: b_dec lives in the target's space, so it is
not subtracted from the input (SAELens's transcoders: apply_b_dec_to_input false).
An SAE is a transcoder whose target is its input: `loss(x, step)` is `loss(x, step, x)`, and
an SAE (d_out null) keeps its b_dec centring.
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
    k: int | None = None  # a TopK SAE's k at this step under sae.k_schedule; None: its own k


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
    d_out: int  # cfg.d_out, or d_in for an SAE
    transcoder: bool  # cfg.d_out is set: the target is another hook, the input is not centred
    W_enc: nn.Parameter  # [d_in, d_sae]
    b_enc: nn.Parameter  # [d_sae]
    W_dec: nn.Parameter  # [d_sae, d_out]
    b_dec: nn.Parameter  # [d_out]
    W_skip: nn.Parameter | None  # [d_out, d_in] (SAELens's layout) with skip_connection, else None

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
        self.transcoder = cfg.d_out is not None
        self.d_out = d_out = d_in if cfg.d_out is None else cfg.d_out
        if cfg.skip_connection and not self.transcoder:
            raise ValueError("skip_connection needs a transcoder (d_out set)")
        # Decoder rows: random directions with a fixed norm; W_enc = W_dec^T (Anthropic, April
        # 2024 update) gives every latent a sensible starting direction and fewer dead latents.
        w_dec = torch.randn(d_sae, d_out, generator=generator)
        init_norm = resolved(cfg.decoder_init_norm, "decoder_init_norm")
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * init_norm
        if cfg.init_encoder_as_decoder_transpose:
            if d_out != d_in:  # the planner refuses it (a SpecError naming the field)
                raise ValueError("init_encoder_as_decoder_transpose needs d_in = d_out")
            w_enc = w_dec.t().clone()
        else:
            bound = 1.0 / d_in**0.5
            w_enc = (torch.rand(d_in, d_sae, generator=generator) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w_enc.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(w_dec.contiguous())
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        # Registered only with a skip, so an SAE's parameters (and its Adam state, its
        # checkpoints, its export) are exactly what they were.
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip_connection else None

    # -- the protocol ------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:  # [batch, d_in] -> [batch, d_sae]
        raise NotImplementedError

    def decode(self, f: Tensor) -> Tensor:  # [batch, d_sae] -> [batch, d_out]
        """The dictionary's part of the reconstruction (no skip: it needs the input)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of the target from the input: decode(encode(x)) + x W_skip."""
        out = self.decode(self.encode(x))
        if self.W_skip is not None:
            out = out + x @ self.W_skip.t()
        return out

    def loss(self, x: Tensor, step: StepInfo, y: Tensor | None = None) -> LossOutput:
        """Training loss on a batch of (normalised) inputs x [batch, d_in] against the target
        y [batch, d_out] (None: x itself, an SAE). Auxiliary terms that need training state
        (AuxK on dead latents, say) read it from `step`."""
        raise NotImplementedError

    # -- the transcoder's two differences, stated once ------------------------------------------
    def centre(self, x: Tensor) -> Tensor:
        """What the encoder multiplies: x - b_dec for an SAE, x for a transcoder."""
        return x if self.transcoder else x - self.b_dec

    @property
    def centre_bias(self) -> Tensor | None:
        """The `centre` argument of the sparse kernels (`sae.sparse`): b_dec, or None for a
        transcoder (no b_dec in its input)."""
        return None if self.transcoder else self.b_dec

    def out_bias(self, x: Tensor) -> Tensor:
        """What the reconstruction adds to f W_dec: b_dec, plus x W_skip with a skip."""
        if self.W_skip is None:
            return self.b_dec
        return self.b_dec + x @ self.W_skip.t()

    def frozen_out_bias(self, x: Tensor) -> Tensor:
        """`out_bias` with no gradient into the parameters (the gated SAE's auxiliary term)."""
        if self.W_skip is None:
            return self.b_dec.detach()
        return self.b_dec.detach() + x @ self.W_skip.detach().t()

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
        """Initialise b_dec from a sample of (normalised) training targets [n, d_out] (the
        input's own activations for an SAE)."""
        mode = self.cfg.b_dec_init
        if mode == "mean":
            self.b_dec.copy_(x.mean(0))
        elif mode == "geometric_median":
            self.b_dec.copy_(geometric_median(x))

    @torch.no_grad()
    def fold_scale(self, scale: float, scale_out: float | None = None) -> None:
        """Make an SAE trained on `scale * x` take and return raw x, leaving latents unchanged:
        pre = (s x - b) W_enc + b_enc = (x - b/s)(s W_enc) + b_enc, x_hat = f (W_dec/s) + b/s.
        A transcoder trained on s x against t y (t = scale_out): pre = x (s W_enc) + b_enc,
        y_hat = (f W_dec + b_dec + s x W_skip) / t = f (W_dec/t) + b_dec/t + x (W_skip s/t)."""
        t = scale if scale_out is None else scale_out
        if not self.transcoder and t != scale:
            raise ValueError("an SAE's input and target share one scale")
        self.W_enc.mul_(scale)
        self.W_dec.div_(t)
        self.b_dec.div_(t)
        if self.W_skip is not None:
            self.W_skip.mul_(scale / t)

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
        if self.transcoder:
            return {"architecture": self.saelens_transcoder(), "apply_b_dec_to_input": False,
                    "d_out": self.d_out}
        return {"architecture": self.saelens_architecture, "apply_b_dec_to_input": True}

    def saelens_transcoder(self) -> str:
        """SAELens's transcoder architecture for this one: `transcoder`/`skip_transcoder`
        (ReLU). Architectures with another encoder override it or refuse."""
        return "skip_transcoder" if self.W_skip is not None else "transcoder"

    def export_tensors(self) -> dict[str, Tensor]:
        """The tensors of sae_weights.safetensors, named as SAELens names them for this
        architecture. Default: the parameters as they are. An architecture that renames or
        derives tensors here must accept the exported names back in `load_state_dict`
        (with a load_state_dict pre-hook), so an exported file still loads into a fresh SAE."""
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
