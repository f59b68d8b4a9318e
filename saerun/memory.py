"""Device memory of a job, by formula: torch-free, so the planner can size every job of a spec.

A device job is a set of runs of one activation group trained in one process: the language model
is loaded once, its forward feeds every SAE, and the SAEs step one after another. So a job's
peak is the language model's weights, every SAE's persistent state, and the largest of the
transients of one phase (only one thing computes at a time):

- per SAE, always held: weights, gradients and Adam's two moments at the master precision (four
  copies of every parameter, float32: 16 bytes each) and the dead-latent clocks (int64).
- training: the shuffle buffers (`data.shuffle_buffer_tokens` vectors per site, float32, held
  three times while a refill is merged: the parts, their concatenation, its permutation), then
  the largest of the language model's forward up to the job's deepest site and one SAE step's
  [batch_tokens, d_sae] temporaries at the compute precision (`STEP_TEMPORARIES`).
- evaluation (after training, the buffers freed): every SAE's folded copy (one more copy of its
  weights), the clean next-token probabilities (float32 [b, T, vocab]), then the largest of a
  full forward with its logits and one SAE's encode of an eval batch.

The counts are those of the dense kernels (what a GPU runs; the CPU's sparse kernels need less),
so on a CPU an estimate is an upper bound. tests/test_memory.py compares estimates with
measured peaks; the README states the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GB = 1e9  # decimal gigabytes, as GPU memory is sold (an "80 GB" H100 has 85.0e9 bytes)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "fp32": 4, "bf16": 2}
MASTER_COPIES = 4  # weights, gradients, Adam's exp_avg and exp_avg_sq
MERGE_COPIES = 3  # a shuffle buffer while it is refilled: the parts, merged, permuted

# [batch, d_sae] tensors alive at once at the peak of one dense training step (forward and
# backward), by architecture, read from each loss: relu: the codes f (saved for the decode's
# and the ReLU's backward), their gradient (two contributions summed) and the pre-activations'
# gradient. jumprelu: pre (saved by both straight-through functions), f, the step mask, and two
# gradients. gated: pi_gate, pi_mag, f, relu(pi_gate) and their gradients. topk family: pre, the
# top-k codes scattered dense, AuxK's masked pre-activations and their top-k codes, two
# gradients; Matryoshka's prefix decodes add one more.
STEP_TEMPORARIES = {"relu": 4, "jumprelu": 5, "gated": 6, "topk": 6, "batchtopk": 6,
                    "matryoshka": 7}
GHOST_GRADS_TEMPORARIES = 3  # exp(pre) of the dead latents, its decode input, their gradient
EVAL_TEMPORARIES = 2  # pre-activations and codes of one eval batch (no gradients)
# Parameters beyond W_enc, W_dec, b_enc, b_dec, in units of d_sae.
EXTRA_PARAMS = {"gated": 2, "jumprelu": 1}  # r_mag and b_mag; the log-threshold


@dataclass(frozen=True)
class LMShape:
    """What the memory model needs to know about a language model (`models.ModelInfo`)."""

    n_params: int
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    mlp_matrices: int = 2  # 3 for a gated MLP (Gemma, Llama)
    source: str = ""  # how the parameter count was found


@dataclass(frozen=True)
class SAEShape:
    """One run's sizes: what its memory depends on."""

    architecture: str
    d_in: int
    d_sae: int
    batch_tokens: int
    ghost_grads: bool = False
    precision: str = "fp32"  # the step's compute precision (`train.precision`)
    d_out: int | None = None  # a transcoder's target width (None: d_in, an SAE)
    skip: bool = False  # a skip connection's W_skip [d_out, d_in]
    tied_b_mag: bool = False  # gated with `sae.b_mag: tied`: b_mag is derived, not a parameter


@dataclass(frozen=True)
class StreamShape:
    """The job's shared part: its data section and the model's dtype."""

    dtype: str  # model.dtype
    context_size: int
    lm_batch_sequences: int
    shuffle_buffer_tokens: int
    batch_tokens: int


def sae_params(s: SAEShape) -> int:
    d_out = s.d_in if s.d_out is None else s.d_out
    return ((s.d_in + d_out) * s.d_sae + s.d_sae + d_out
            + (EXTRA_PARAMS.get(s.architecture, 0) - s.tied_b_mag) * s.d_sae
            + (s.d_in * d_out if s.skip else 0))


def sae_state_bytes(s: SAEShape) -> float:
    """Held for the whole job: master weights, gradients, Adam moments (float32), the clocks."""
    return MASTER_COPIES * 4 * sae_params(s) + 8 * s.d_sae


def checkpoint_disk_bytes(s: SAEShape, keep: int) -> float:
    """Disk one run's checkpoints take at most: `keep` checkpoints plus the one being written
    (the oldest goes once the new one is in place), each the weights and Adam's two moments
    (float32) and the clocks (int64), plus the final export (weights, density)."""
    one = 3 * 4 * sae_params(s) + 8 * s.d_sae
    return (keep + 1) * one + 4 * sae_params(s) + 4 * s.d_sae


def stream_snapshot_bytes(stream: StreamShape, widths: list[int], keep: int) -> float:
    """Disk a job's stream snapshots take at most (saerun/stream.py: once per job, beside its
    checkpoints, the same retention): the rows not handed out yet, at most the shuffle buffer
    plus one language-model batch (with no shuffling, a batch plus one LM batch), of every hook,
    in the model's dtype."""
    buffer = (max(stream.shuffle_buffer_tokens, 2 * stream.batch_tokens)
              if stream.shuffle_buffer_tokens else stream.batch_tokens)
    rows = buffer + stream.lm_batch_sequences * stream.context_size
    return (max(1, keep) + 1) * rows * sum(widths) * DTYPE_BYTES.get(stream.dtype, 4)


def job_snapshot_bytes(configs: list[Any]) -> float:
    """`stream_snapshot_bytes` of one device job, from its runs' resolved RunConfigs."""
    if not configs:
        return 0.0
    first = configs[0]
    widths: dict[str, int] = {}
    for cfg in configs:  # every hook the job's stream carries, at its width
        widths[cfg.site.hook_name] = cfg.sae.d_in or 0
        if cfg.site.hook_name_out is not None:
            widths[cfg.site.hook_name_out] = getattr(cfg.sae, "d_out", None) or cfg.sae.d_in or 0
    stream = StreamShape(first.model.dtype, first.data.context_size,
                         first.data.lm_batch_sequences, first.data.shuffle_buffer_tokens,
                         first.train.batch_tokens)
    return stream_snapshot_bytes(stream, list(widths.values()), first.train.keep_checkpoints)


def step_bytes(s: SAEShape) -> float:
    """The transient peak of one training step: [batch, d_sae] temporaries at the compute
    precision, plus the batch, its normalised copy, x_hat and their gradients ([batch, d_in])."""
    n = STEP_TEMPORARIES[s.architecture] + (GHOST_GRADS_TEMPORARIES if s.ghost_grads else 0)
    compute = DTYPE_BYTES.get(s.precision, 4)
    return s.batch_tokens * (n * s.d_sae * compute + 4 * s.d_in * 4)


def eval_sae_bytes(s: SAEShape, stream: StreamShape) -> float:
    """One SAE's encode and decode of an eval batch (float32, no gradients)."""
    n = stream.lm_batch_sequences * stream.context_size
    return n * (EVAL_TEMPORARIES * s.d_sae + 3 * s.d_in) * 4


def lm_forward_bytes(lm: LMShape, stream: StreamShape, layers: int, widths: int,
                     logits: bool) -> float:
    """A no-grad forward of one LM batch through `layers` blocks (its blocks' transients are
    freed one after the other, so one block's count): the residual and its normed copy, q/k/v
    and the attention output, the attention scores and their softmax (eager attention), the
    MLP's hidden activations; the captured sites (`widths` wide in all, kept at the model's
    dtype and copied to float32 twice: upcast, then masked); the logits when it runs to the end.
    """
    b, t = stream.lm_batch_sequences, stream.context_size
    size = DTYPE_BYTES.get(stream.dtype, 4)
    block = b * t * (2 * lm.d_model + 4 * lm.d_model + lm.mlp_matrices * lm.d_mlp) \
        + 2 * b * lm.n_heads * t * t
    captured = b * t * widths * (size + 2 * 4)
    head = b * t * lm.d_vocab if logits else 0
    return (block + head) * size + captured if layers else captured


def lm_eval_bytes(lm: LMShape, stream: StreamShape, widths: int) -> tuple[float, float]:
    """(held, transient) of evaluation's language-model side: the clean next-token
    probabilities (float32, held over the SAEs of a batch); a full forward with its logits, and
    a patched forward's logits beside them."""
    b, t = stream.lm_batch_sequences, stream.context_size
    held = b * t * lm.d_vocab * 4
    size = DTYPE_BYTES.get(stream.dtype, 4)
    transient = lm_forward_bytes(lm, stream, lm.n_layers, widths, True) + b * t * lm.d_vocab * size
    return held, transient


def job_memory(lm: LMShape, stream: StreamShape, saes: list[SAEShape], sites: dict[str, int],
               deepest_layer: int | None) -> dict[str, float]:
    """The job's estimated peak (bytes) with its parts. `sites`: each hook the job captures ->
    its width; `deepest_layer`: the block the training forward stops after (None: embeddings
    only). Keys: lm_weights, sae_state, shuffle_buffers, train_transient, eval_extra, total."""
    size = DTYPE_BYTES.get(stream.dtype, 4)
    widths = sum(sites.values())
    capacity = max(stream.shuffle_buffer_tokens, 2 * stream.batch_tokens)
    buffers = MERGE_COPIES * capacity * widths * 4
    layers = 0 if deepest_layer is None else deepest_layer + 1
    forward = lm_forward_bytes(lm, stream, layers, widths, logits=layers >= lm.n_layers)
    train = max([forward] + [step_bytes(s) for s in saes])
    held, eval_transient = lm_eval_bytes(lm, stream, widths)
    folded = sum(4.0 * sae_params(s) for s in saes)
    eval_extra = folded + held + max([eval_transient] + [eval_sae_bytes(s, stream) for s in saes])
    parts = {
        "lm_weights": float(lm.n_params * size),
        "sae_state": float(sum(sae_state_bytes(s) for s in saes)),
        "shuffle_buffers": float(buffers),
        "train_transient": float(train),
        "eval_extra": float(eval_extra),
    }
    parts["total"] = parts["lm_weights"] + parts["sae_state"] + max(
        parts["shuffle_buffers"] + parts["train_transient"], parts["eval_extra"])
    return parts
