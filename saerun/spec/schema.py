"""The spec schema (the single source of truth): every section of a spec and `RunConfig`, one
fully resolved job. The SAE configs of every architecture live in `architectures`.

A spec is what a researcher writes; a `RunConfig` is one fully resolved job of it (one SAE),
produced by `plan.py`. Both are frozen pydantic models with `extra="forbid"` and a description on
every field: `saerun schema` and the README's spec reference are generated from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from saerun.spec.architectures import (  # noqa: F401  (re-exported through saerun.spec)
    DEFAULT_COEFFICIENTS,
    GATED_DEFAULT_COEFFICIENT,
    JUMPRELU_DEFAULT_BANDWIDTH,
    JUMPRELU_DEFAULT_COEFFICIENT,
    JUMPRELU_DEFAULT_INIT_THRESHOLD,
    JUMPRELU_DEFAULT_PRE_ACT,
    MAX_LATENTS,
    SAE_CONFIG_BY_TAG,
    SAE_CONFIGS,
    BatchTopKSAEConfig,
    ComputeMatch,
    GatedSAEConfig,
    JumpReLUSAEConfig,
    MatryoshkaSAEConfig,
    ReluSAEConfig,
    SAEConfig,
    SAESection,
    SparsityConfig,
    TopKSAEConfig,
    _SAECommon,
    architecture_tag,
)
from saerun.spec.base import Strict as _Strict
from saerun.spec.launcher import LauncherConfig, LocalLauncher

MAX_SEED = 2**63 - 1  # torch.manual_seed's range (non-negative part)


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
    hook_name_out: str | None = Field(
        None, description="a transcoder's target: the dictionary reads hook_name (IN) and "
        "reconstructs this hook (OUT), e.g. blocks.1.hook_mlp_in -> blocks.1.hook_mlp_out "
        "(one MLP). null: an SAE, whose target is its input. Sweep it (null among the values) "
        "to mix SAEs and transcoders on one forward pass.",
    )


class DataConfig(_Strict):
    dataset: str = Field(
        "saerun/stdlib",
        description="the embedded corpus 'saerun/stdlib', a local .txt/.jsonl/.parquet file, or a "
        "Hugging Face dataset name.",
    )
    text_column: str = Field("text", description="column holding the text (JSONL/parquet/hub); "
                             "rows with an `input_ids` column are read as token ids instead "
                             "(a pretokenized dataset: never retokenized).")
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
        65_536, ge=0, description="activations held in the shuffle buffer (bounds memory); 0: "
        "no shuffling, the activations in the order the model produced them.",
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
    boundaries: Literal["row_bos+bos_eos", "row_bos+eos", "row_bos+bos", "row_bos", "bos_eos",
                        "eos", "bos", "none"] = Field(
        "row_bos+bos_eos",
        description="how documents are packed into rows, the same for every tokenizer (each "
        "document is encoded without special tokens, then this is inserted): 'row_bos+' = every "
        "row starts with BOS; then BOS before and EOS after each document ('bos_eos'), one of "
        "them ('bos', 'eos') or nothing ('row_bos', 'none'). The default is what runs before "
        "this field had on the embedded model. For a pretokenized dataset whose rows already "
        "hold their BOS, use 'none'.",
    )
    exclude_outlier_norm: float | None = Field(
        10.0, gt=1,
        description="drop positions whose activation norm exceeds this multiple of the median "
        "norm (measured on the norm-estimation sample: the first 32,768 counted training "
        "tokens) from training, the norm estimate, every metric and every splice, like special "
        "tokens ('massive activations', Sun et al. 2024); with several sites, a position over "
        "the limit at any of them; null keeps every position.",
    )


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
    keep_checkpoints: int = Field(
        2, ge=1, description="checkpoints kept per run (the newest N, each with its tensors' "
        "checksums; a resume passes over one that does not match for the one before); the "
        "final export is kept besides. Never changes a result.",
    )
    log_every_steps: int = Field(
        25, gt=0, description="record a training-curve point every N steps."
    )
    curve_flush_seconds: float = Field(
        60.0, gt=0, description="write the training-curve points recorded so far to the "
        "registry at least every N seconds of wall time (and at every checkpoint), so a long "
        "run's curves can be watched. Changes no result, so it is not part of the run id.",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="the SAE step's compute precision. bf16: the loss and its backward "
        "under torch.autocast(bfloat16), with fp32 master weights, fp32 Adam state, fp32 "
        "thresholds (JumpReLU, BatchTopK) and fp32 loss reductions; no gradient scaler.",
    )
    compile: bool = Field(
        False, description="compile the SAE's loss and backward with torch.compile "
        "(inductor; a compiled SAE takes the dense products). Off by default until measured "
        "faster (BENCHMARKS.md).",
    )
    tf32: bool = Field(
        True, description="allow TF32 matmuls and convolutions on CUDA (recorded in the run's "
        "environment); no effect on the CPU.",
    )
    device: str | None = Field(
        None, description="where the SAEs train (cpu, cuda, cuda:1, auto); null: the model's "
        "device. The language model's activations move there batch by batch.",
    )
    overlap: bool = Field(
        False, description="compute the next language-model batch in a background thread (a "
        "side CUDA stream on a GPU) while the SAEs step. Bit-identical either way, so it is "
        "not part of the run id.",
    )


# What eval.metrics switches: the metrics that cost extra language-model passes, named as the
# registry names them. Every other metric (l0, mse, fvu, ..., dead_fraction) is always computed.
LMMetric = Literal["ce_loss_recovered", "delta_lm_loss", "kl_score"]
METRIC_NAMES: tuple[LMMetric, ...] = ("ce_loss_recovered", "delta_lm_loss", "kl_score")
# The names saerun v1 accepted, in its order (its default was all twelve): exported specs of old
# runs hold them. `kl` is now `kl_score`; the others switched nothing.
V1_METRIC_NAMES = (
    "l0", "mse", "fvu", "explained_variance", "cosine_similarity", "l2_ratio", "shrinkage",
    "ce_loss_recovered", "delta_lm_loss", "kl", "dead", "dense",
)  # fmt: skip
V1_RENAMED = {"kl": "kl_score"}


class EvalConfig(_Strict):
    metrics: list[LMMetric] = Field(
        list(METRIC_NAMES),
        description="the language-model metrics to compute on the held-out tokens, each costing "
        "extra language-model passes: ce_loss_recovered, delta_lm_loss, kl_score ([] for none). "
        "Every reconstruction metric (l0, mse, fvu, ..., dead_fraction) is always computed. "
        "The names of saerun v1 still load: kl is kl_score; l0, mse, fvu, explained_variance, "
        "cosine_similarity, l2_ratio, shrinkage, dead and dense switch nothing and are dropped.",
    )

    @field_validator("metrics", mode="before")
    @classmethod
    def _v1_names(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out: list[Any] = []
        for name in value:
            if isinstance(name, str) and name in V1_METRIC_NAMES and name not in METRIC_NAMES:
                name = V1_RENAMED.get(name)
                if name is None:  # a v1 name that switched nothing
                    continue
            if name not in out:
                out.append(name)
        return out


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
    sae: SAESection = Field(description="the SAE architecture and its hyperparameters, or "
                            "`from_pretrained: FOLDER` to evaluate an SAE trained elsewhere.")
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
    hook_name_out: str | None = Field(
        None, description="a transcoder's target hook (OUT); null for an SAE.",
    )


class RunConfig(_Strict):
    """One fully resolved job: exactly what determines one SAE (its id is a hash of this)."""

    seed: int = Field(ge=0, le=MAX_SEED, description="seed of SAE initialisation.")
    model: ModelConfig = Field(description="the language model.")
    site: ResolvedSite = Field(description="the hook point.")
    data: DataConfig = Field(description="text, tokens, shuffling.")
    sae: SAESection = Field(description="the SAE, with d_in and d_sae resolved.")
    train: TrainConfig = Field(description="optimisation.")
    eval: EvalConfig = Field(description="evaluation.")
