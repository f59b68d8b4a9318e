"""The SAE section of the schema: one config class per architecture, the sparsity penalty,
compute matching, and the defaults measured for each (`schema` imports these; `sae/` builds
its SAE class table from `SAE_CONFIGS`). Add an architecture's config HERE only. A spec's
`sae` is a `SAESection`: one of these, or `ImportedSAEConfig`, an SAE trained elsewhere that
saerun only evaluates (`sae: {from_pretrained: FOLDER}`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from saerun.spec.base import Strict as _Strict

MAX_LATENTS = 2**26  # far beyond any SAE trained so far (16M latents); catches typos like 1e30

DecoderMode = Literal["norm_weighted", "unit_norm"]


class SparsityConfig(_Strict):
    penalty: Literal["l1", "sqrt_l1", "tanh"] = Field(
        "l1",
        description="'l1': lambda * sum_i f_i ||W_dec,i||; 'sqrt_l1': lambda * sum_i "
        "(sqrt(f_i ||W_dec,i|| + epsilon) - sqrt(epsilon)); 'tanh' (Anthropic, Jan 2025): "
        "lambda * sum_i tanh(tanh_scale * f_i ||W_dec,i||).",
    )
    coefficient: float | None = Field(
        None, ge=0, description="sparsity coefficient lambda; null: derived, the penalty's default "
        "(l1 3, sqrt_l1 0.2, tanh 0.3: L0 ~40-70 with under 40% dead latents at expansion 8 on "
        "the embedded model, activations normalised to E||x|| = sqrt(d_in)).",
    )
    epsilon: float = Field(
        1e-4, gt=0, description="sqrt_l1 only: keeps the penalty's gradient finite near 0."
    )
    tanh_scale: float = Field(
        4.0, gt=0, description="tanh only: c in tanh(c * f_i ||W_dec,i||); the penalty "
        "saturates once f_i ||W_dec,i|| is well above 1/c.",
    )


# Defaults measured on the embedded model (README, "Architectures"); activations normalised.
DEFAULT_COEFFICIENTS = {"l1": 3.0, "sqrt_l1": 0.2, "tanh": 0.3}
GATED_DEFAULT_COEFFICIENT = 3.0
JUMPRELU_DEFAULT_COEFFICIENT = 0.5  # for the default sparsity_mode, tanh
JUMPRELU_DEFAULT_INIT_THRESHOLD = 0.001
JUMPRELU_DEFAULT_BANDWIDTH = 0.001
JUMPRELU_DEFAULT_PRE_ACT = 0.1  # dead latents 72% -> 13% at equal L0 and FVU (embedded model)


class ComputeMatch(_Strict):
    """A reference SAE whose training step this SAE's width must cost the same as (the Gated SAE
    paper's compute-matched baselines); the planner resolves it into d_sae (`sae.cost`)."""

    architecture: str = Field(
        description="architecture tag of the reference SAE, with its default options "
        "(relu, gated, jumprelu, topk, batchtopk or matryoshka).",
    )
    d_sae: int | None = Field(
        None, gt=0, le=MAX_LATENTS,
        description="latents of the reference SAE; or give expansion_factor.",
    )
    expansion_factor: float | None = Field(
        None, gt=0, description="reference d_sae = round(expansion_factor * d_in); with neither "
        "given, the default expansion factor.",
    )

    @field_validator("architecture")
    @classmethod
    def _known(cls, value: str) -> str:
        allowed = sorted(SAE_CONFIG_BY_TAG)  # defined below; read at validation time
        if value not in allowed:
            raise ValueError(f"unknown architecture (allowed: {', '.join(allowed)})")
        return value

    @model_validator(mode="after")
    def _one_width(self) -> ComputeMatch:
        if self.d_sae is not None and self.expansion_factor is not None:
            raise ValueError("give the reference's d_sae or expansion_factor, not both")
        return self


class _SAECommon(_Strict):
    """Options every architecture shares (DESIGN.md §4), stated once."""

    d_in: int | None = Field(
        None, gt=0, description="input width; taken from the model when omitted (derived)."
    )
    d_out: int | None = Field(
        None, gt=0, description="output width of a transcoder (site.hook_name_out set): taken "
        "from the model's width at hook_name_out when omitted (derived); null for an SAE, whose "
        "target is its input (width d_in).",
    )
    skip_connection: bool = Field(
        False, description="add a learned linear skip x W_skip to the reconstruction (a skip "
        "transcoder; W_skip [d_in, d_out], initialised to zero). Transcoders only.",
    )
    d_sae: int | None = Field(
        None, gt=0, le=MAX_LATENTS,
        description="number of latents; or give expansion_factor instead.",
    )
    expansion_factor: float | None = Field(
        None, gt=0, description="d_sae = round(expansion_factor * d_in) when d_sae is omitted."
    )
    compute_matched_to: ComputeMatch | None = Field(
        None, description="instead of d_sae: the width whose training step costs the same FLOPs "
        "per token as this reference SAE's (derived; see `saerun plan`).",
    )
    decoder_mode: DecoderMode = Field(
        "norm_weighted",
        description="'norm_weighted': the decoder is free and every sparsity term weights latent "
        "i by ||W_dec,i|| (so shrinking f while growing W_dec cannot dodge it); 'unit_norm': "
        "every decoder row is held at norm 1 (gradient projected off the row before the step, "
        "row renormalised after it) and the terms are unweighted.",
    )
    decoder_init_norm: float | None = Field(
        None, gt=0, description="norm of every decoder row at initialisation; null: derived, "
        "0.1 with norm_weighted, 1 with unit_norm (which admits only 1).",
    )
    init_encoder_as_decoder_transpose: bool = Field(
        True, description="initialise W_enc to W_dec^T (Anthropic, April 2024 update). A "
        "transcoder admits it only when d_in = d_out (W_dec^T is then [d_in, d_sae]); set it "
        "false for one whose widths differ.",
    )
    b_dec_init: Literal["zeros", "mean", "geometric_median"] = Field(
        "geometric_median",
        description="initial decoder bias: zeros, the mean or the geometric median of the "
        "target's activations (a transcoder's OUT, an SAE's input).",
    )

    @property
    def widths(self) -> tuple[int, int]:
        """(d_in, d_sae) of a resolved config: every RunConfig has both (the planner derives
        them); a spec's section may not yet."""
        if self.d_in is None or self.d_sae is None:
            raise ValueError("d_in and d_sae are resolved by the planner (saerun.plan)")
        return self.d_in, self.d_sae

    @model_validator(mode="after")
    def _one_width(self) -> _SAECommon:
        norm = self.decoder_init_norm
        if self.decoder_mode == "unit_norm" and norm is not None and norm != 1.0:
            raise ValueError(
                f"decoder_mode 'unit_norm' holds every decoder row at norm 1, so "
                f"decoder_init_norm must be 1 (or omitted), got {self.decoder_init_norm}"
            )
        given = [self.d_sae, self.expansion_factor, self.compute_matched_to]
        if sum(v is not None for v in given) > 1:
            raise ValueError("give one of d_sae, expansion_factor, compute_matched_to")
        return self


class ReluSAEConfig(_SAECommon):
    architecture: Literal["relu"] = Field(description="ReLU SAE (Anthropic / SAELens baseline).")
    sparsity: SparsityConfig = Field(
        default_factory=SparsityConfig, description="sparsity penalty and its coefficient."
    )
    ghost_grads: bool = Field(
        False, description="ghost grads (Anthropic, Feb 2024): dead latents, through "
        "exp(pre-activation), are trained to reconstruct the residual x - x_hat, at the scale of "
        "the main reconstruction loss. Defined for the ReLU SAE only (TopK has AuxK, JumpReLU "
        "its pre-activation loss).",
    )


class _TopKCommon(_SAECommon):
    """Options of the TopK family (topk, batchtopk, matryoshka), stated once."""

    decoder_mode: DecoderMode = Field(
        "unit_norm", description="as for every SAE; the TopK family has no sparsity penalty, "
        "and the default unit norm (Gao et al. 2024) removes the free f <-> W_dec scale.",
    )
    k: int = Field(
        32, gt=0, description="latents kept per token (topk), or k * batch_tokens over the "
        "batch (batchtopk, matryoshka: k per token on average); at most d_sae.",
    )
    aux_k: int | None = Field(
        None, gt=0, description="AuxK: number of dead latents that reconstruct the residual; "
        "null: derived, d_in // 2 (Gao et al. 2024) capped at d_sae.",
    )
    aux_coefficient: float = Field(
        1 / 32, ge=0, description="weight of AuxK = min(n_dead / aux_k, 1) * mean ||e - e_hat||^2, "
        "e = x - x_hat (sparsify's normalisation in the main loss's units); 0 turns it off.",
    )

    @model_validator(mode="after")
    def _k_fits(self) -> _TopKCommon:
        if self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k ({self.k}) must be at most d_sae ({self.d_sae})")
        if self.d_sae is not None and self.aux_k is not None and self.aux_k > self.d_sae:
            raise ValueError(f"aux_k ({self.aux_k}) must be at most d_sae ({self.d_sae})")
        return self


class KSchedule(_Strict):
    """An annealed k (`sae.k_schedule`): training starts at `start` latents per token and
    reaches the SAE's k at step int(until_fraction * total_steps), where it stays."""

    start: int = Field(gt=0, description="k at step 0 (at most d_sae); usually above the k.")
    until_fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of the training steps over which k goes from "
        "start to the SAE's k.",
    )
    shape: Literal["linear", "exponential"] = Field(
        "linear", description="'linear': k = start + (k_end - start) * p; 'exponential': k = "
        "start * (k_end / start)^p; p = step / int(until_fraction * total_steps), rounded to "
        "the nearest integer.",
    )


class TopKSAEConfig(_TopKCommon):
    architecture: Literal["topk"] = Field(
        description="TopK SAE (Gao et al. 2024): f = ReLU(TopK_k(pre)), exactly k latents per "
        "token, no sparsity penalty; AuxK revives dead latents."
    )
    multi_k: list[int] | None = Field(
        None, description="a progressive code: the reconstruction term of the loss is the mean, "
        "over these k' (strictly increasing, k among them, each at most d_sae), of the MSE with "
        "each token's k' largest latents (sparsify's Multi-TopK adds 4k's at weight 1/8; "
        "[k, 4k] here weighs both 1/2); the SAE still encodes with k, and AuxK reads the "
        "residual at k. null: k alone.",
    )
    k_schedule: KSchedule | None = Field(
        None, description="anneal k during training from k_schedule.start down (or up) to k "
        "(a pure function of the step); null: k from the first step. Not with multi_k, nor "
        "with train.compile (each new k would recompile the loss).",
    )

    @model_validator(mode="after")
    def _progressive(self) -> TopKSAEConfig:
        ks = self.multi_k
        if ks is not None:
            if not ks or any(a >= b for a, b in zip(ks[:-1], ks[1:], strict=True)) or ks[0] < 1:
                raise ValueError(f"multi_k must be positive and strictly increasing, got {ks}")
            if self.k not in ks:
                raise ValueError(f"multi_k must contain k ({self.k}), got {ks}")
            if self.d_sae is not None and ks[-1] > self.d_sae:
                raise ValueError(f"multi_k ({ks[-1]}) must be at most d_sae ({self.d_sae})")
        if self.k_schedule is not None:
            if ks is not None:
                raise ValueError("give multi_k or k_schedule, not both")
            if self.d_sae is not None and self.k_schedule.start > self.d_sae:
                raise ValueError(f"k_schedule.start ({self.k_schedule.start}) must be at most "
                                 f"d_sae ({self.d_sae})")
        return self


class _BatchTopKCommon(_TopKCommon):
    threshold_ema: float = Field(
        0.9, ge=0, lt=1, description="decay of the EMA of the smallest activation kept per "
        "training batch: the global threshold theta used at inference.",
    )


class BatchTopKSAEConfig(_BatchTopKCommon):
    architecture: Literal["batchtopk"] = Field(
        description="BatchTopK SAE (Bussmann et al. 2024): trains on the top k * batch "
        "activations of the batch; infers as a JumpReLU with one global threshold."
    )


class MatryoshkaSAEConfig(_BatchTopKCommon):
    architecture: Literal["matryoshka"] = Field(
        description="Matryoshka BatchTopK SAE (Bussmann et al. 2025): the loss sums the "
        "reconstruction error of nested prefixes of the dictionary; infers as batchtopk."
    )
    prefix_widths: list[int] | Literal["every"] | None = Field(
        None, description="nested prefix widths m_1 < ... < m_n, the last equal to d_sae; "
        "null: derived, d_sae/64, d_sae/16, d_sae/4, d_sae (widths < 1 dropped). `every`: "
        "every width 1, 2, ..., d_sae is a prefix (block size 1), weighted by the "
        "distribution prefix_weights names; the CPU's sparse step costs 1.4-1.8x the default "
        "four prefixes' at d_in 512, d_sae 4096, k 32 (more where k^2 is large against d_sae; "
        "`sae.prefix`, BENCHMARKS.md).",
    )
    prefix_weights: list[float] | Literal["uniform", "log_uniform"] | None = Field(
        None, description="weight of each prefix's reconstruction loss (one per prefix width, "
        ">= 0); null: derived, 1/n each. With prefix_widths `every`, a distribution over the "
        "widths m instead: `uniform` (1/d_sae each, the derived default) or `log_uniform` "
        "(proportional to 1/m for d_sae/64 <= m <= d_sae and 0 below: the default four "
        "widths' range, spread over every width).",
    )

    @model_validator(mode="after")
    def _nested(self) -> MatryoshkaSAEConfig:
        widths, weights = self.prefix_widths, self.prefix_weights
        if widths == "every" or isinstance(weights, str):
            if widths != "every" or isinstance(weights, list):
                raise ValueError("prefix_weights uniform or log_uniform goes with prefix_widths "
                                 "every, which takes no list of weights (one per width)")
            if self.compute_matched_to is not None:
                raise ValueError("compute_matched_to needs a step cost linear in d_sae, and with "
                                 "prefix_widths every the dense step's Gram matrix W_dec W_dec^T "
                                 "makes it quadratic: give d_sae or expansion_factor")
            return self
        if widths is not None:
            increasing = all(a < b for a, b in zip(widths[:-1], widths[1:], strict=True))
            if not widths or widths[0] < 1 or not increasing:
                raise ValueError(
                    f"prefix_widths must be positive and strictly increasing, got {widths}"
                )
            if self.d_sae is not None and widths[-1] != self.d_sae:
                raise ValueError(
                    f"the last prefix width must equal d_sae ({self.d_sae}), got {widths[-1]}"
                )
        if weights is not None:
            if widths is None or len(weights) != len(widths):
                raise ValueError("prefix_weights needs prefix_widths, one weight per width")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"prefix_weights must be >= 0 and not all 0, got {weights}")
        return self


class GatedSAEConfig(_SAECommon):
    architecture: Literal["gated"] = Field(
        description="Gated SAE (Rajamanoharan et al. 2024): a gate path picks the latents, a "
        "magnitude path (shared weights, rescaled by exp(r_mag)) sets their values."
    )
    decoder_mode: DecoderMode = Field(
        "unit_norm", description="as for every SAE; gated defaults to unit_norm as in the paper: "
        "the auxiliary term's decoder is detached, so with a free decoder the penalty alone "
        "shrinks ||W_dec||, W_gate grows to compensate and b_gate can no longer close gates "
        "(L0 near d_sae/2 at any lambda, seen on the embedded model).",
    )
    sparsity: SparsityConfig = Field(
        default_factory=SparsityConfig,
        description="L1 penalty on ReLU(pi_gate), decoder-norm weighted (only penalty 'l1' "
        f"applies; the gated default coefficient is {GATED_DEFAULT_COEFFICIENT}).",
    )

    b_mag: Literal["free", "tied"] = Field(
        "free", description="the magnitude path's bias: 'free', a parameter of its own (the "
        "paper); 'tied', b_mag = exp(r_mag) * b_gate, no parameter (the paper's reference "
        "point: then pi_mag = exp(r_mag) pi_gate, a per-latent rescale of the gate). Exported "
        "files hold the tied values as SAELens's b_mag.",
    )
    aux_loss: bool = Field(
        True, description="add the auxiliary reconstruction ||x - (ReLU(pi_gate) "
        "W_dec.detach() + b_dec.detach())||^2, the gate's only reconstruction signal with a "
        "free b_mag; false drops it (an ablation).",
    )

    @field_validator("sparsity")
    @classmethod
    def _l1_only(cls, value: SparsityConfig) -> SparsityConfig:
        if value.penalty != "l1":
            raise ValueError("the gated SAE supports only sparsity.penalty 'l1'")
        return value


class JumpReLUSAEConfig(_SAECommon):
    architecture: Literal["jumprelu"] = Field(
        description="JumpReLU SAE (Rajamanoharan et al. 2024b; Anthropic Jan 2025): f = pre * "
        "H(pre - theta) with a learned threshold per latent, trained by straight-through "
        "estimators."
    )
    sparsity_mode: Literal["l0", "tanh", "target_l0"] = Field(
        "tanh",
        description="'tanh' (Anthropic Jan 2025): lambda * sum_i tanh(tanh_scale * f_i "
        "||W_dec,i||); 'l0' (the paper): lambda * sum_i H(pre_i - theta_i); 'target_l0': "
        "lambda * (L0_batch / target_l0 - 1)^2. l0 and target_l0 act through theta alone, which "
        "Adam moves about lr per step in log space: they need long runs and a smaller lambda.",
    )
    coefficient: float = Field(JUMPRELU_DEFAULT_COEFFICIENT, ge=0,
                               description="sparsity coefficient lambda.")
    tanh_scale: float = Field(4.0, gt=0, description="tanh mode only: c in the tanh penalty.")
    target_l0: float | None = Field(
        None, gt=0, description="target_l0 mode only (required there): the L0 to steer towards."
    )
    init_threshold: float = Field(
        JUMPRELU_DEFAULT_INIT_THRESHOLD, gt=0,
        description="initial threshold theta of every latent (theta = exp(log_threshold)).",
    )
    bandwidth: float = Field(
        JUMPRELU_DEFAULT_BANDWIDTH, gt=0, description="width eps of the rectangle kernel of the "
        "straight-through estimators (the threshold learns from pre within eps/2 of it).",
    )
    pre_act_coefficient: float = Field(
        JUMPRELU_DEFAULT_PRE_ACT, ge=0, description="Anthropic Jan 2025 pre-activation loss "
        "coefficient: "
        "sum_{i dead} ReLU(theta_i - pre_i) ||W_dec,i||, which revives dead latents; 0 turns it "
        "off.",
    )

    kde_half_life_tokens: float | None = Field(
        None, ge=0, description="threshold estimator with memory (issue 20): the straight-"
        "through gradient w.r.t. theta becomes a kernel density estimate over the recent "
        "batches, each batch's weighted 0.5 ** (its age in tokens / this half life) "
        "(per-latent sum of the batches' theta gradients, weighted, over the sum of the "
        "weights); 0 is the single-batch estimator; null: off (the single-batch estimator, "
        "no state).",
    )
    kde_decay: float | None = Field(
        None, ge=0, lt=1, description="per-step weight of the memory's past: derived, 0.5 ** "
        "(train.batch_tokens / kde_half_life_tokens), 0 for a half life of 0; needs "
        "kde_half_life_tokens.",
    )

    @model_validator(mode="after")
    def _target_given(self) -> JumpReLUSAEConfig:
        if self.sparsity_mode == "target_l0" and self.target_l0 is None:
            raise ValueError("sparsity_mode 'target_l0' needs target_l0")
        if self.kde_decay is not None and self.kde_half_life_tokens is None:
            raise ValueError("kde_decay is derived from kde_half_life_tokens: set that instead")
        return self


class ImportedSAEConfig(_Strict):
    """An SAE trained elsewhere, read from a folder in SAELens's layout (cfg.json +
    sae_weights.safetensors) and only evaluated: `sae: {from_pretrained: FOLDER}`. Every value
    but the folder (and a scaling factor the folder lacks) is read from it by the planner."""

    architecture: Literal["imported"] = Field(
        "imported", description="'imported' (implied by from_pretrained): an SAE that saerun "
        "evaluates on the spec's held-out tokens and registers, with no training.",
    )
    from_pretrained: str = Field(
        description="folder in SAELens 6.x's layout: cfg.json and sae_weights.safetensors, "
        "architecture standard, gated, jumprelu, topk or a transcoder kind (transcoder, "
        "skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder: set "
        "site.hook_name_out) (relative: to the spec file's folder). "
        "A cfg.json option saerun cannot honour is an error naming it.",
    )
    norm_scaling_factor: float | None = Field(
        None, gt=0, description="for normalize_activations 'expected_average_only_in' only: "
        "the factor the SAE's inputs were multiplied by; null: derived, from the folder's "
        "activation_scaler.json (an error when it has none).",
    )
    d_in: int | None = Field(None, gt=0, description="input width; derived, from cfg.json.")
    d_sae: int | None = Field(
        None, gt=0, le=MAX_LATENTS, description="number of latents; derived, from cfg.json."
    )
    d_out: int | None = Field(
        None, gt=0, description="a transcoder kind's output width (its target is "
        "site.hook_name_out); derived, from cfg.json; null for an SAE.",
    )
    saelens_architecture: str | None = Field(
        None, description="cfg.json's architecture; derived.",
    )
    k: int | None = Field(None, gt=0, description="topk only: cfg.json's k; derived.")
    content_sha256: str | None = Field(
        None, description="SHA-256 of the weights file and of every cfg.json value that "
        "changes the SAE's output; derived. The run id hashes it instead of the folder's path.",
    )

    @property
    def widths(self) -> tuple[int, int]:
        if self.d_in is None or self.d_sae is None:
            raise ValueError("d_in and d_sae are resolved by the planner (saerun.plan)")
        return self.d_in, self.d_sae


IMPORTED_TAG = "imported"


def _sae_tag(value: Any) -> str:
    """Which `SAESection` a section is: 'imported' when it says so or names a folder
    (`from_pretrained`) and no architecture; else 'trained' (whose own union then reads the
    architecture, and names a missing or unknown one)."""
    tag = value.get("architecture") if isinstance(value, dict) else getattr(
        value, "architecture", None)
    if tag == IMPORTED_TAG or (tag is None and isinstance(value, dict)
                               and "from_pretrained" in value):
        return IMPORTED_TAG
    return "trained"


# One entry per architecture; the `architecture` tag picks the member. Add new configs HERE only.
SAE_CONFIGS: tuple[type[_SAECommon], ...] = (
    ReluSAEConfig, GatedSAEConfig, JumpReLUSAEConfig,
    TopKSAEConfig, BatchTopKSAEConfig, MatryoshkaSAEConfig,
)
# Spelled out (not Union[SAE_CONFIGS]) so that a type checker sees the members.
SAEConfig = Annotated[
    ReluSAEConfig | GatedSAEConfig | JumpReLUSAEConfig | TopKSAEConfig | BatchTopKSAEConfig
    | MatryoshkaSAEConfig,
    Field(discriminator="architecture"),
]
# What a spec's `sae` section is: an SAE to train (`SAEConfig`), or one trained elsewhere to
# evaluate. The imported SAE is not a trainable architecture: it is in neither SAE_CONFIGS nor
# SAE_CONFIG_BY_TAG, which `sae/` builds its SAE classes from.
SAESection = Annotated[
    Annotated[SAEConfig, Tag("trained")] | Annotated[ImportedSAEConfig, Tag(IMPORTED_TAG)],
    Discriminator(_sae_tag),
]


def architecture_tag(cls: type[BaseModel]) -> str:
    """The `architecture` tag of an SAE config class: Literal["relu"] -> "relu"."""
    return cls.model_fields["architecture"].annotation.__args__[0]  # type: ignore[union-attr]


# tag -> config class: what the `sae/` package builds its SAE class table from.
SAE_CONFIG_BY_TAG: dict[str, type[_SAECommon]] = {architecture_tag(c): c for c in SAE_CONFIGS}

