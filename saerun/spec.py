"""The spec schema (the single source of truth) and the YAML loader that reports file:line:field.

A spec is what a researcher writes; a `RunConfig` is one fully resolved job of it (one SAE),
produced by `plan.py`. Both are frozen pydantic models with `extra="forbid"` and a description on
every field: `saerun schema` and the README's spec reference are generated from them.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from saerun.errors import SpecError, shown

MAX_SEED = 2**63 - 1  # torch.manual_seed's range (non-negative part)
MAX_LATENTS = 2**26  # far beyond any SAE trained so far (16M latents); catches typos like 1e30


DecoderMode = Literal["norm_weighted", "unit_norm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class ModelConfig(_Strict):
    name: str = Field(
        "saerun/tiny-stdlib",
        description="transformer-lens / Hugging Face model name, a local model directory, or the "
        "embedded default 'saerun/tiny-stdlib'.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the language model runs in (SAEs always train in float32)."
    )
    device: str = Field(
        "auto",
        description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
    )


class SiteConfig(_Strict):
    hook_name: str | list[str] = Field(
        "blocks.1.hook_resid_post",
        description="transformer-lens hook point(s) to train on, e.g. 'blocks.6.hook_resid_post'. "
        "A list trains one SAE per site, all fed by the same model forward pass.",
    )


class DataConfig(_Strict):
    dataset: str = Field(
        "saerun/stdlib",
        description="the embedded corpus 'saerun/stdlib', a local .txt/.jsonl/.parquet file, or a "
        "Hugging Face dataset name.",
    )
    text_column: str = Field("text", description="column holding the text (JSONL/parquet/hub).")
    split: str = Field("train", description="Hugging Face split to read.")
    context_size: int = Field(128, gt=1, description="tokens per sequence fed to the model.")
    train_tokens: int = Field(
        2_000_000, gt=0, description="activation vectors (tokens) each SAE trains on."
    )
    eval_tokens: int = Field(
        32_768, gt=0, description="held-out tokens every evaluation metric is computed over."
    )
    eval_fraction: float = Field(
        0.05, gt=0, lt=1, description="fraction of documents held out for evaluation."
    )
    shuffle_buffer_tokens: int = Field(
        65_536, gt=0, description="activations held in the shuffle buffer (bounds memory)."
    )
    shuffle_seed: int = Field(0, ge=0, le=MAX_SEED,
                              description="seed of the activation shuffle (data order).")
    exclude_special_tokens: bool = Field(
        True, description="drop BOS/EOS positions from training and evaluation activations."
    )
    normalize: Literal["none", "expected_norm"] = Field(
        "expected_norm",
        description="'expected_norm' scales activations so that E||x|| = sqrt(d_in) during "
        "training; the scale is folded into the saved weights.",
    )
    lm_batch_sequences: int = Field(
        32, gt=0, description="sequences per language-model forward pass."
    )


class SparsityConfig(_Strict):
    penalty: Literal["l1", "sqrt_l1", "tanh"] = Field(
        "l1",
        description="'l1': lambda * sum_i f_i ||W_dec,i||; 'sqrt_l1': lambda * sum_i "
        "(sqrt(f_i ||W_dec,i|| + epsilon) - sqrt(epsilon)); 'tanh' (Anthropic, Jan 2025): "
        "lambda * sum_i tanh(tanh_scale * f_i ||W_dec,i||).",
    )
    coefficient: float | None = Field(
        None, ge=0, description="sparsity coefficient lambda; null: the penalty's default "
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


    @model_validator(mode="before")
    @classmethod
    def _coefficient_follows_penalty(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("coefficient") is None:
            penalty = data.get("penalty", "l1")
            data = {**data, "coefficient": DEFAULT_COEFFICIENTS.get(penalty, 3.0)}
        return data


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
        allowed = sorted(_tag(c) for c in SAE_CONFIGS)  # defined below; read at validation time
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
        None, gt=0, description="norm of every decoder row at initialisation; null: 0.1 with "
        "norm_weighted, 1 with unit_norm (which admits only 1).",
    )
    init_encoder_as_decoder_transpose: bool = Field(
        True, description="initialise W_enc to W_dec^T (Anthropic, April 2024 update)."
    )
    b_dec_init: Literal["zeros", "mean", "geometric_median"] = Field(
        "geometric_median",
        description="initial decoder bias: zeros, the activation mean or their geometric median.",
    )

    @model_validator(mode="before")
    @classmethod
    def _init_norm_follows_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("decoder_init_norm") is None:
            mode = data.get("decoder_mode", cls.model_fields["decoder_mode"].default)
            data = {**data, "decoder_init_norm": 1.0 if mode == "unit_norm" else 0.1}
        return data

    @model_validator(mode="after")
    def _one_width(self) -> _SAECommon:
        if self.decoder_mode == "unit_norm" and self.decoder_init_norm != 1.0:
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
        "null: d_in // 2 (Gao et al. 2024); capped at d_sae.",
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


class TopKSAEConfig(_TopKCommon):
    architecture: Literal["topk"] = Field(
        description="TopK SAE (Gao et al. 2024): f = ReLU(TopK_k(pre)), exactly k latents per "
        "token, no sparsity penalty; AuxK revives dead latents."
    )


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
    prefix_widths: list[int] | None = Field(
        None, description="nested prefix widths m_1 < ... < m_n, the last equal to d_sae; "
        "null: d_sae/64, d_sae/16, d_sae/4, d_sae (widths < 1 dropped).",
    )
    prefix_weights: list[float] | None = Field(
        None, description="weight of each prefix's reconstruction loss (one per prefix width, "
        ">= 0); null: 1/n each.",
    )

    @model_validator(mode="after")
    def _nested(self) -> MatryoshkaSAEConfig:
        widths, weights = self.prefix_widths, self.prefix_weights
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
        default_factory=lambda: SparsityConfig(coefficient=GATED_DEFAULT_COEFFICIENT),
        description="L1 penalty on ReLU(pi_gate), decoder-norm weighted (only penalty 'l1' "
        f"applies; the gated default coefficient is {GATED_DEFAULT_COEFFICIENT}).",
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

    @model_validator(mode="after")
    def _target_given(self) -> JumpReLUSAEConfig:
        if self.sparsity_mode == "target_l0" and self.target_l0 is None:
            raise ValueError("sparsity_mode 'target_l0' needs target_l0")
        return self


# One entry per architecture; the `architecture` tag picks the member. Add new configs HERE only.
SAE_CONFIGS: tuple[type[_SAECommon], ...] = (
    ReluSAEConfig, GatedSAEConfig, JumpReLUSAEConfig,
    TopKSAEConfig, BatchTopKSAEConfig, MatryoshkaSAEConfig,
)
SAEConfig = Annotated[Union[SAE_CONFIGS], Field(discriminator="architecture")]  # noqa: UP007


class ResampleConfig(_Strict):
    """Neuron resampling (Anthropic, "Towards Monosemanticity", 2023)."""

    every_tokens: int = Field(
        gt=0, description="resample the latents that are dead (train.dead_window_tokens) every N "
        "training tokens.",
    )
    stop_fraction: float = Field(
        0.5, gt=0, le=1, description="no resampling after this fraction of training, so the "
        "last latents revived have time to settle.",
    )
    encoder_scale: float = Field(
        0.2, gt=0, description="a revived latent's encoder row is its input direction times "
        "this times the mean norm of the alive latents' encoder rows.",
    )
    lr_rewarmup_steps: int = Field(
        50, ge=0, description="after each resampling the LR warms up again linearly over N steps "
        "(the fresh Adam state of the revived latents would otherwise take full-size steps).",
    )


class TrainConfig(_Strict):
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (peak).")
    batch_tokens: int = Field(4096, gt=0, description="activation vectors per optimiser step.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam (beta1, beta2).")
    lr_warmup_steps: int = Field(0, ge=0, description="linear LR warm-up from 0, in steps.")
    lr_decay: Literal["none", "linear", "cosine"] = Field(
        "linear", description="LR decay to 0 over the last lr_decay_fraction of training."
    )
    lr_decay_fraction: float = Field(
        0.2, ge=0, le=1, description="fraction of training (at the end) the LR decays over."
    )
    sparsity_warmup_fraction: float = Field(
        0.05, ge=0, le=1, description="linear warm-up of the sparsity coefficient, as a fraction "
        "of training.",
    )
    grad_clip_norm: float | None = Field(
        1.0, gt=0, description="clip the gradient norm to this value; null disables clipping."
    )
    dead_window_tokens: int = Field(
        500_000, gt=0, description="a latent that fired on none of the last N tokens is dead."
    )
    resample: ResampleConfig | None = Field(
        None, description="neuron resampling: dead latents re-initialised from inputs sampled by "
        "squared reconstruction error, their Adam state reset; null: off.",
    )
    checkpoint_every_tokens: int = Field(
        1_000_000, gt=0, description="write a resumable checkpoint every N training tokens."
    )
    log_every_steps: int = Field(
        25, gt=0, description="record a training-curve point every N steps."
    )


METRIC_NAMES = (
    "l0", "mse", "fvu", "explained_variance", "cosine_similarity", "l2_ratio", "shrinkage",
    "ce_loss_recovered", "delta_lm_loss", "kl", "dead", "dense",
)  # fmt: skip


class EvalConfig(_Strict):
    metrics: list[Literal[METRIC_NAMES]] = Field(  # type: ignore[valid-type]
        list(METRIC_NAMES),
        description="metrics to compute on the held-out tokens. Reconstruction metrics are "
        "always computed (they are free); ce_loss_recovered, delta_lm_loss and kl need extra "
        "language-model passes.",
    )


SweepValues = list[Any]


class SweepConfig(_Strict):
    grid: dict[str, SweepValues] = Field(
        default_factory=dict,
        description="dotted field path -> values; every combination is a run "
        "(e.g. {train.lr: [1e-4, 3e-4]}).",
    )
    zip: dict[str, SweepValues] = Field(
        default_factory=dict,
        description="dotted field path -> values, all lists of one length, varied together.",
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None, description="repeat every run once per seed (overrides the top-level seed)."
    )

    @field_validator("grid", "zip")
    @classmethod
    def _non_empty(cls, value: dict[str, SweepValues]) -> dict[str, SweepValues]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"sweep axis '{key}' has no values")
        return value

    @model_validator(mode="after")
    def _zip_lengths(self) -> SweepConfig:
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError(f"every zip list must have the same length, got {sorted(lengths)}")
        overlap = set(self.grid) & set(self.zip)
        if overlap:
            raise ValueError(f"a path is in both grid and zip: {sorted(overlap)}")
        return self


# -- launchers: where the jobs run (never part of a run's id) ----------------------------------

_TIME_UNITS = {"s": 1 / 60, "m": 1, "h": 60, "d": 24 * 60}


def slurm_minutes(text: str) -> int:
    """A time limit in whole minutes (at least 1) from `90m`, `6h`, `1d12h`, `45` (minutes) or
    Slurm's own forms (`MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`)."""
    text = str(text).strip()
    units = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", text)
    if units:
        minutes = sum(float(n) * _TIME_UNITS[u] for n, u in re.findall(r"([\d.]+)([smhd])", text))
    elif re.fullmatch(r"\d+", text):
        minutes = int(text)
    else:
        found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not found or (found[1] is None and found[3] is None):
            raise ValueError(f"{text!r} is not a time limit (e.g. 90m, 6h, 2d, 1-12:00:00)")
        days, a, b, c = (int(x) if x else 0 for x in found.groups())
        if found[1] is not None:  # D-HH[:MM[:SS]]
            minutes = days * 1440 + a * 60 + b + c / 60
        elif found[4] is not None:  # HH:MM:SS
            minutes = a * 60 + b + c / 60
        else:  # MM:SS
            minutes = a + b / 60
    return max(1, math.ceil(minutes))


class LocalLauncher(_Strict):
    """Train on this machine, in this process."""

    kind: Literal["local"] = Field("local", description="train on this machine (the default).")
    gpus: Literal["all"] | list[Annotated[int, Field(ge=0)]] = Field(
        "all", description="CUDA devices to spread activation groups over, one process per "
        "device (`all`: every visible one); with fewer than two, or a model.device other than "
        "auto/cuda, everything runs in this process.",
    )


# sbatch options saerun sets itself: letting a spec set them would break the job accounting.
_RESERVED_SBATCH = {"array", "hold", "output", "error", "signal", "open-mode", "job-name",
                    "wrap", "parsable"}


class SlurmLauncher(_Strict):
    """Submit to a Slurm cluster through submitit: one job per activation group (the SAEs that
    share one model pass), one job array per submission, capped at `max_parallel` at once."""

    kind: Literal["slurm"] = Field(description="submit the jobs to Slurm (submitit).")
    partition: str | None = Field(None, description="sbatch --partition; null: the default one.")
    gpus_per_job: int = Field(0, ge=0, description="GPUs per job (sbatch --gpus-per-node).")
    cpus_per_job: int = Field(1, ge=1, description="CPU cores per job (sbatch --cpus-per-task).")
    mem_gb: float | None = Field(
        None, gt=0, description="memory per job in GB (sbatch --mem); null: the cluster default."
    )
    time: str = Field(
        "1h", description="time limit per job: 90m, 6h, 2d, or Slurm's D-HH:MM:SS.",
    )
    max_parallel: int = Field(8, ge=1, description="jobs of one array running at once (%N).")
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="extra sbatch options without the dashes, e.g. {account: lab, qos: high}.",
    )
    folder: str | None = Field(
        None, description="submitit's job files and the logs; null: <registry dir>/slurm (it "
        "must be on storage the nodes share, like the registry's run folders).",
    )

    @field_validator("time")
    @classmethod
    def _time_parses(cls, value: str) -> str:
        slurm_minutes(value)
        return value

    @field_validator("sbatch")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(k for k in value if k.replace("_", "-").lstrip("-") in _RESERVED_SBATCH)
        if taken:
            raise ValueError(f"saerun sets {', '.join(taken)} itself; leave them out")
        return value


LAUNCHERS: dict[str, type[BaseModel]] = {"local": LocalLauncher, "slurm": SlurmLauncher}
LauncherConfig = Annotated[LocalLauncher | SlurmLauncher, Field(discriminator="kind")]


def launcher_with(base: LocalLauncher | SlurmLauncher,
                  options: dict[str, Any]) -> LocalLauncher | SlurmLauncher:
    """The spec's launcher section with the command line's options on top (`kind` switches the
    launcher: the other kind's settings are then its defaults). Options are named as fields;
    an error names the command-line flag."""
    from pydantic import TypeAdapter

    kind = options.get("kind") or base.kind
    data = base.model_dump() if kind == base.kind else {}
    data.update({k: v for k, v in options.items() if v is not None}, kind=kind)
    try:
        return TypeAdapter(LauncherConfig).validate_python(data)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else "launcher"
        flag = "--" + name.replace("_", "-")
        if first["type"] == "extra_forbidden":
            others = [k for k, cls in LAUNCHERS.items() if name in cls.model_fields]
            raise SpecError(f"{flag} is an option of the {' / '.join(others) or 'other'} "
                            f"launcher, not of {kind}",
                            hint=f"add --launcher {others[0]}" if others else None) from None
        raise SpecError(f"{flag}: {first['msg']}") from None

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class Spec(_Strict):
    """A saerun experiment: what to train, on what, and how to evaluate it."""

    name: str = Field(
        description="experiment name (letters, digits, '_', '-', '.').", pattern=_NAME,
        max_length=200,
    )
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="seed of SAE initialisation (and of everything random).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the language model.")
    site: SiteConfig = Field(default_factory=SiteConfig, description="where activations come from.")
    data: DataConfig = Field(default_factory=DataConfig, description="text, tokens, shuffling.")
    sae: SAEConfig = Field(description="the SAE architecture and its hyperparameters.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="what to vary.")
    launcher: LauncherConfig = Field(
        default_factory=LocalLauncher,
        description="where the jobs run (`saerun SPEC --launcher` overrides it); never part of "
        "a run's id.",
    )


class ResolvedSite(_Strict):
    hook_name: str = Field(description="the one hook point this SAE trains on.")


class RunConfig(_Strict):
    """One fully resolved job: exactly what determines one SAE (its id is a hash of this)."""

    seed: int = Field(ge=0, le=MAX_SEED, description="seed of SAE initialisation.")
    model: ModelConfig = Field(description="the language model.")
    site: ResolvedSite = Field(description="the hook point.")
    data: DataConfig = Field(description="text, tokens, shuffling.")
    sae: SAEConfig = Field(description="the SAE, with d_in and d_sae resolved.")
    train: TrainConfig = Field(description="optimisation.")
    eval: EvalConfig = Field(description="evaluation.")


# ---------------------------------------------------------------------------------------------
# YAML loading with line numbers
# ---------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 needs a dot: '1.0e-4')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

# Integers are unbounded in Python, but printing one with more than 4300 digits raises, and no
# spec number comes near this bound (floats end at 2^1024 too).
MAX_INT_BITS = 1024


def _checked_scalar(kind: str, construct: Any) -> Any:
    """Wrap one of SafeLoader's scalar constructors so that a malformed explicitly tagged scalar
    (`!!int abc`, `!!bool maybe`, `!!timestamp 2001-13-45`, `!!float`) is a YAML error at its
    line. SafeLoader lets ValueError, KeyError, IndexError or AttributeError escape from these;
    each wrapper converts one scalar, so nothing but that conversion is caught."""

    def construct_checked(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        try:
            value = construct(loader, node)
        except (ValueError, KeyError, IndexError, AttributeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown(node.value, 40)} as {kind}", node.start_mark
            ) from None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer of {len(node.value)} characters is too large", node.start_mark
            )
        return value

    return construct_checked


for _kind, _name in (("an integer", "int"), ("a number", "float"), ("a boolean", "bool"),
                     ("a date", "timestamp")):
    _Loader.add_constructor(
        f"tag:yaml.org,2002:{_name}",
        _checked_scalar(_kind, getattr(yaml.SafeLoader, f"construct_yaml_{_name}")),
    )


class Line(int):
    """A 1-based line number that also knows the file it is in.

    A spec that `extends` another is composed from several files, so a key path of its line map
    may point into a base spec. A Line is an int everywhere (comparison, formatting, arithmetic),
    so code that reports `line=lines.get(path, 1)` with `file=` the spec it was given keeps
    working unchanged; `locate` then moves such an error to the file the line is in.
    """

    file: str | None

    def __new__(cls, value: int, file: str | None = None) -> Line:
        self = super().__new__(cls, value)
        self.file = file
        return self


LineMap = dict[tuple, int]  # key path -> Line (an int); see `Line`

# Bounds on what a spec file may be. A real spec is a few hundred values in a few kB; the bounds
# are far above that, and far below what would make loading slow: YAML aliases share one node,
# so a few lines of nested aliases ("billion laughs") expand to 10^9 values in every consumer
# that walks the data (the line map, pydantic, the planner), and nesting deeper than Python's
# stack ends in a RecursionError. Both are refused while scanning the event stream, before
# anything is built.
MAX_SPEC_BYTES = 1_000_000
MAX_SPEC_DEPTH = 64  # nested mappings/lists; real specs use 5
MAX_SPEC_VALUES = 100_000  # scalars + collections after alias expansion


def _check_shape(text: str, file: str) -> None:
    """Refuse alias bombs, recursive aliases and deep nesting, in one pass over the events.

    yaml.parse is an iterative state machine (no recursion, nothing expanded), so this is linear
    in the text whatever the text is. Each anchored node's expanded size is recorded when it
    closes; an alias adds that size, so the running total is the size of the expanded document.
    """
    sizes: dict[str, int] = {}  # anchor -> expanded values under it (itself included)
    open_: list[list[Any]] = []  # enclosing collections: [anchor, expanded values so far]
    total = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in open_):
                raise SpecError(
                    f"alias *{event.anchor} refers to a mapping or list that contains it",
                    file=file, line=line, hint="a spec cannot be recursive",
                )
            size = sizes.get(event.anchor, 1)  # an undefined alias: compose reports it
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(open_) >= MAX_SPEC_DEPTH:
                raise SpecError(
                    f"the spec nests mappings/lists deeper than {MAX_SPEC_DEPTH} levels",
                    file=file, line=line,
                )
            open_.append([event.anchor, 1])
            total += 1
            continue
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = open_.pop()
            if anchor is not None:
                sizes[anchor] = size
            if open_:
                open_[-1][1] += size
            continue
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        else:
            continue
        if open_:
            open_[-1][1] += size
        total += size
        if total > MAX_SPEC_VALUES:
            raise SpecError(
                f"the spec expands to more than {MAX_SPEC_VALUES:,} values",
                file=file, line=line,
                hint="aliases (*name) repeat what they refer to; a spec needs far fewer values",
            )


def _line_map(
    node: yaml.Node, path: tuple = (), out: LineMap | None = None, file: str | None = None
) -> LineMap:
    """Map every key path of the document to its 1-based line (a `Line` in `file`); reject
    duplicate keys and keys that are mappings or lists (`? [a]`), which no spec field can be and
    which are unhashable.
    """
    out = {} if out is None else out
    out.setdefault(path, Line(node.start_mark.line + 1, file))
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
                raise SpecError(
                    f"a key must be a name, not a {kind}",
                    line=key_node.start_mark.line + 1, field=_dotted(path) or None,
                )
            key = key_node.value
            if key in seen:
                raise SpecError(
                    "duplicate key", line=key_node.start_mark.line + 1, field=_dotted(path + (key,))
                )
            seen.add(key)
            out[path + (key,)] = Line(key_node.start_mark.line + 1, file)
            _line_map(value_node, path + (key,), out, file)
            out[path + (key,)] = Line(key_node.start_mark.line + 1, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out, file)
    return out


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def parse_yaml(text: str, file: str) -> tuple[dict, LineMap]:
    """safe_load the text; return (data, line map). Any YAML problem is a SpecError."""
    try:
        _check_shape(text, file)
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            raise SpecError("the spec is empty", file=file, hint="see `saerun schema`")
        try:
            lines = _line_map(node, file=file)
        except SpecError as err:
            err.file = file
            raise
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (err.problem or str(err)).strip()
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.reader.ReaderError as err:  # a control character: YAML forbids them anywhere
        char = chr(err.character) if isinstance(err.character, int) else err.character
        raise SpecError(
            f"invalid YAML: character {char!r} is not allowed in YAML text",
            file=file, line=text.count("\n", 0, err.position) + 1,
            hint="write control characters as escapes in a double-quoted string, e.g. \"\\t\"",
        ) from None
    except yaml.YAMLError as err:  # pragma: no cover - non-marked YAML errors are rare
        raise SpecError(f"invalid YAML: {err}", file=file) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"the spec must be a mapping of sections, got {type(data).__name__}",
            file=file,
            line=1,
            hint="see `saerun schema`",
        )
    _check_finite(data, (), lines, file)
    return data, lines


def _check_finite(value: Any, path: tuple, lines: LineMap, file: str) -> None:
    """Refuse .inf, .nan and overflowing literals (1e999) anywhere, sweep values included.

    No field means anything by them, yet pydantic's float admits them and `gt=0` lets inf
    through: lr: .inf would plan and train NaNs, and an inf reaching `round()` in the planner
    or the compute matcher's JSON round trip was a traceback. The data is bounded by
    `_check_shape` (depth and size), so this walk is too.
    """
    if isinstance(value, float) and not math.isfinite(value):
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        raise SpecError(
            f"{value} is not a finite number", file=file, line=lines.get(probe, 1),
            field=_dotted(path) or None, hint="every number in a spec is finite",
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, path + (key,), lines, file)
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            _check_finite(item, path + (i,), lines, file)


# ---------------------------------------------------------------------------------------------
# Validation errors -> file:line:field
# ---------------------------------------------------------------------------------------------

def _tag(cls: type[BaseModel]) -> str:
    return cls.model_fields["architecture"].annotation.__args__[0]  # Literal["relu"] -> "relu"


_SAE_CLASSES: dict[str, type[BaseModel]] = {_tag(cls): cls for cls in SAE_CONFIGS}
_ARCH_TAGS = set(_SAE_CLASSES)


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-tag element ('sae', 'relu', 'd_sae') -> ('sae', 'd_sae')."""
    out = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "sae" and part in _ARCH_TAGS:
            continue
        if isinstance(part, str) and part.startswith("function-after["):
            continue
        out.append(part)
    return tuple(out)


def _model_at(path: tuple, root: type[BaseModel], data: dict) -> type[BaseModel] | None:
    """The pydantic model class that owns the mapping at `path` (for key suggestions)."""
    model: Any = root
    node: Any = data
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        node = node.get(part, {}) if isinstance(node, dict) else {}
        annotation = field.annotation
        if part == "sae":
            arch = node.get("architecture") if isinstance(node, dict) else None
            model = _SAE_CLASSES.get(arch) if arch in _SAE_CLASSES else None
            continue
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def spec_error_from_validation(
    err: ValidationError,
    *,
    file: str,
    lines: LineMap,
    data: dict,
    root: type[BaseModel] = Spec,
    relocate: dict[tuple, tuple] | None = None,
    note: str = "",
) -> SpecError:
    """Turn the first pydantic error into one SpecError naming file, line and field.

    `relocate` maps a field path that came from somewhere else (a sweep value) to the path whose
    line should be reported.
    """
    error = err.errors()[0]
    loc = _clean_loc(tuple(error["loc"]))
    report_path = loc
    for src, dst in (relocate or {}).items():
        if loc[: len(src)] == src or src[: len(loc)] == loc:
            report_path = dst
            break
    line = None
    probe = report_path
    while probe:
        if probe in lines:
            line = lines[probe]
            break
        probe = probe[:-1]
    if line is None:
        line = lines.get((), 1)
    file, line = _file_of(line, lines, file), int(line)
    field = _dotted(loc)
    hint = None
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1], root, data)
        valid = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        message = f"unknown key '{loc[-1]}'"
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "union_tag_invalid":
        message = f"unknown architecture {error['ctx']['tag']!r}"
        hint = f"allowed: {', '.join(sorted(_ARCH_TAGS))}"
    elif kind == "union_tag_not_found":
        message = "missing 'architecture'"
        hint = f"allowed: {', '.join(sorted(_ARCH_TAGS))}"
    else:
        message = error["msg"].removeprefix("Value error, ")
        if "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {shown(error['input'])})"
    if note:
        message = f"{message} {note}"
    return SpecError(message, file=file, line=line, field=field, hint=hint)


# ---------------------------------------------------------------------------------------------
# Reading spec files, and composing a spec with the bases it extends
# ---------------------------------------------------------------------------------------------

MAX_EXTENDS = 16  # bases in one `extends` chain; real teams use one or two


def _read_text(path: Path, file: str, extended_at: dict | None = None) -> str:
    """The UTF-8 text of a spec file of at most MAX_SPEC_BYTES, or a SpecError.

    A file that cannot be read is an error naming `file`; for a base spec (`extended_at`: file,
    line and field of the `extends` that names it) it names that `extends` line instead, with the
    base's path in the message. A base must be a regular file: a FIFO or a device (an `extends`
    pointing at /dev/stdin or a named pipe) could block forever.
    """
    name = shown(file, 200)

    def unreadable(own: str, as_base: str) -> SpecError:
        if extended_at is None:
            return SpecError(own, file=file)
        return SpecError(as_base, **extended_at)

    try:
        if extended_at is not None:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise unreadable("", f"the base spec {name} is a directory")
            if not stat.S_ISREG(mode):
                raise unreadable("", f"the base spec {name} is not a regular file")
        with path.open("rb") as handle:  # at most one byte past the limit, whatever the file
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise unreadable("spec file not found", f"base spec {name} not found") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        reason = getattr(err, "strerror", None) or str(err)
        raise unreadable(f"cannot read the spec: {reason}",
                         f"cannot read the base spec {name}: {reason}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise unreadable(f"the spec file is larger than {MAX_SPEC_BYTES:,} bytes",
                         f"the base spec {name} is larger than {MAX_SPEC_BYTES:,} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"the spec is not UTF-8 text (byte {raw[err.start]:#04x} cannot be decoded)",
            file=file, line=raw.count(b"\n", 0, err.start) + 1, hint="save the file as UTF-8",
        ) from None


def _identity(path: Path) -> str:
    """What makes two paths the same file for cycle detection (symlinks and ./ resolved)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL: reading will refuse it
        return os.path.abspath(path)


def _compose(
    path: Path, file: str, data: dict, lines: LineMap, chain: tuple[tuple[str, str], ...] = ()
) -> tuple[dict, LineMap, list[str]]:
    """Apply the `extends` chain of a parsed spec: (composed data, composed line map, the files
    it was composed from, this one first).

    `extends: PATH` (top level, a string) names a base spec: a relative PATH is relative to the
    folder of the file that contains it (`~` is not expanded), an absolute one is taken as it is.
    The base is read and parsed like any spec (the same size, shape and YAML guards), may itself
    extend another (at most MAX_EXTENDS deep), and a cycle is an error naming the chain. The
    base need not be a valid spec on its own: only the composed spec is validated. How the
    child is merged over its base: see `merge_over`.
    """
    chain = chain + ((_identity(path), file),)
    if "extends" not in data:
        return data, lines, [file]
    target = data["extends"]
    extended_at = dict(file=file, line=int(lines.get(("extends",), 1)), field="extends")
    if not isinstance(target, str) or not target:
        raise SpecError(
            f"extends must be the path of a spec file, got {shown(target)}", **extended_at,
            hint="e.g. extends: base.yaml (relative to the folder of this file)",
        )
    base_path = path.parent / target
    base_file = str(base_path)
    if _identity(base_path) in (identity for identity, _ in chain):
        cycle = " extends ".join([f for _, f in chain] + [base_file])
        raise SpecError(f"extends makes a cycle: {cycle}", **extended_at)
    if len(chain) > MAX_EXTENDS:
        raise SpecError(
            f"extends chains more than {MAX_EXTENDS} base specs, from {chain[0][1]}",
            **extended_at,
        )
    base_text = _read_text(base_path, base_file, extended_at)
    base_data, base_lines = parse_yaml(base_text, base_file)
    base_data, base_lines, files = _compose(base_path, base_file, base_data, base_lines, chain)
    own = {key: value for key, value in data.items() if key != "extends"}
    own_lines = {p: line for p, line in lines.items() if p[:1] != ("extends",)}
    merged, merged_lines = merge_over(base_data, base_lines, own, own_lines)
    return merged, merged_lines, [file, *files]


def merge_over(base: dict, base_lines: LineMap, child: dict, child_lines: LineMap
               ) -> tuple[dict, LineMap]:
    """The child spec's mapping deep-merged over its base's, and the line map to match.

    - Mappings merge key by key, recursively; a key only in the base is inherited.
    - Any other child value (a scalar, a list, `null`) replaces the base's whole: a list is
      never appended to, and `null` is a value like any other: `grad_clip_norm: null` turns
      clipping off, `d_sae: null` unsets a base's width so that `expansion_factor` can be given.
      The composed spec means what the same keys written into one file would mean.
    - `sae`: when the child's `sae.architecture` differs from the base's, the child's `sae`
      replaces the base's whole (the options of one architecture mean nothing to another:
      relu's `sparsity` would otherwise leak into a topk section). A child `sae` without an
      `architecture`, or with the base's, merges key by key. `launcher` likewise, by `kind`.
    - `sweep`: inherited when the child has none; a child `sweep` replaces the base's whole
      (it states what the child varies; `sweep: {}` drops the base's).
    - `name` and `seed` are ordinary keys: inherited unless the child sets them.

    Each key path keeps the line (and file) of the value that won, so an error in an inherited
    field names the base's file and line, in an overridden one the child's.
    """
    replaced: set[tuple] = set()
    merged = _merge(base, child, (), replaced)
    lines: LineMap = {
        p: line for p, line in base_lines.items()
        if not any(p[:i] in replaced for i in range(len(p) + 1))
    }
    lines.update(child_lines)
    return merged, lines


# Sections whose tag picks their options: a child with another tag replaces the section whole.
_TAGGED = {("sae",): "architecture", ("launcher",): "kind"}


def _merge(base: Any, child: Any, path: tuple, replaced: set[tuple]) -> Any:
    tag = _TAGGED.get(path)
    whole = path == ("sweep",) or (
        tag is not None and isinstance(base, dict) and isinstance(child, dict)
        and tag in base and tag in child and child[tag] != base[tag]
    )
    if isinstance(base, dict) and isinstance(child, dict) and not whole:
        out = dict(base)
        for key, value in child.items():
            out[key] = _merge(base[key], value, path + (key,), replaced) if key in base else value
        return out
    replaced.add(path)
    return child


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what `_Loader` would read back as a float ('1e-4', a name '1e5')."""


_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def composed_text(data: dict, files: list[str]) -> str:
    """A composed spec as one standalone YAML document (what the registry keeps of a spec that
    extends others): a header naming the files, then every key of the merged mapping, `name`
    first. Loading it gives the same data, hence the same plan and run ids."""
    names = [f if f.isprintable() else ascii(f) for f in files]
    header = (
        f"# Composed by saerun from {' extends '.join(names)}:\n"
        "# the spec with its bases merged in, standalone (it extends nothing).\n"
    )
    ordered = {k: data[k] for k in ("name",) if k in data} | data
    return header + yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _file_of(line: int, lines: LineMap, file: str) -> str:
    """The file a line of `lines` is in: the caller's `file` (its name for the spec it loaded)
    unless the line came from a base spec, whose path the line carries."""
    origin = getattr(line, "file", None)
    if origin is None or origin == getattr(lines.get(()), "file", None):
        return file
    return origin


def locate(err: SpecError, lines: LineMap) -> SpecError:
    """Move an error that was raised with the spec's file and a line read from `lines` (as the
    planner does) to the file that line is in: a base spec's, for a value the base defines."""
    if isinstance(err.line, Line):
        err.file, err.line = _file_of(err.line, lines, err.file), int(err.line)
    return err


def load_spec(path: str | Path) -> tuple[Spec, dict, LineMap, str]:
    """Read and validate a spec file: (spec, raw data, line map, YAML text).

    A spec with `extends` is composed with its bases first (`_compose`, `merge_over`): the data
    and line map are the composed ones (each line knows its file), and the text is the composed
    spec as standalone YAML (`composed_text`), which is what the registry keeps. A spec without
    `extends` is returned as it was read, its text byte for byte.
    """
    path = Path(path)
    file = str(path)
    text = _read_text(path, file)
    data, lines = parse_yaml(text, file)
    files = [file]
    if "extends" in data:
        data, lines, files = _compose(path, file, data, lines)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise spec_error_from_validation(err, file=file, lines=lines, data=data) from None
    if len(files) > 1:
        text = composed_text(data, files)
    return spec, data, lines, text


def reference_markdown() -> str:
    """The spec reference in README.md, generated from the schema (a test keeps it in sync)."""
    sections: list[tuple[str, type[BaseModel]]] = [("(top level)", Spec)]
    sections += [(name, f.annotation) for name, f in Spec.model_fields.items()
                 if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
    sections += [(f"sae (architecture: {tag})", cls) for tag, cls in _SAE_CLASSES.items()]
    sections.append(("sae.sparsity", SparsityConfig))
    sections += [(f"launcher (kind: {tag})", cls) for tag, cls in LAUNCHERS.items()]
    out = []
    for title, model in sections:
        out += [f"**{title}**", "", "| field | default | meaning |", "|---|---|---|"]
        for name, f in model.model_fields.items():
            if title == "(top level)" and name not in ("name", "seed"):
                continue
            if f.is_required():
                default = "required"
            elif f.default_factory is dict:
                default = "`{}`"
            elif f.default_factory is not None:
                default = "see section" if name != "metrics" else "all"
            else:
                default = f"`{f.default!r}`" if f.default is not None else "`null`"
            out.append(f"| `{name}` | {default} | {f.description} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # noqa: T201 - regenerate the README's spec reference in place
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    start, end = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    readme.write_text(f"{head}{start}\n{reference_markdown()}\n{end}{tail}")


SPEC_SECTIONS = ("seed", "model", "site", "data", "sae", "train", "eval")


def export_spec(run: dict[str, Any]) -> str:
    """A standalone spec (YAML) that plans to exactly this run."""
    from saerun import __version__

    stem = (run.get("spec_name") or "run").strip() or "run"
    spec = {"name": f"{stem}-{run['run_id'][:10]}"}
    spec.update({key: run["config"][key] for key in SPEC_SECTIONS})
    header = (
        f"# Exported by saerun {__version__} from run {run['run_id']} ({run['name']}).\n"
        f"# Every value is resolved, so `saerun THIS_FILE` trains exactly that run (same run id)\n"
        f"# on any machine; data fingerprint {run.get('data_fingerprint') or 'unknown'}.\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
