"""FLOPs per token of one SAE training step, by formula: torch-free, so the planner can count
every job (`Job.step_flops_per_token`) and planning still imports no torch.

What is counted: the matrix products of a training step (loss forward + backward) on the dense
reference kernels (`sparse_kernels = False`, the GPU path): the maths as the papers count it,
whatever the CPU's sparse kernels save. One product with one row per token and dimensions n x m
costs 2 n m FLOPs per token forward, and as much again for each of its inputs that needs a
gradient. With D_in = d_in, D_out = d_out (d_in for an SAE) and d = d_sae:

- each encoder (gated has two, gate and magnitude): forward and W_enc's gradient, plus the
  input's gradient in an SAE, whose input x - b_dec carries b_dec's: 3 products of D_in x d (an
  SAE), 2 (a transcoder, whose input needs no gradient).
- the decode: forward and both gradients, 3 products of d x D_out; the TopK family's AuxK
  decodes the dead latents (written without a host sync, it always runs; Matryoshka's fixed
  prefixes sum to one decode) for 3 more; gated's auxiliary reconstruction through the detached
  decoder, forward and the gate's gradient, 2 more (none with aux_loss false); ghost grads a
  decode of exp(pre) of the dead latents, 3 more; multi_k one decode per k' beyond the first,
  3 each.
- prefix_widths every (`sae.prefix`'s dense reference): the decode f W_dec runs forward only
  (the loss reads e0 W_dec^T instead, with both gradients): one product more than a decode;
  and f G with G = W_dec W_dec^T (3 products of d x d per token) and G itself, once per step (3
  products of d x D_out x d, spread over the batch): quadratic in d_sae, which is why compute
  matching refuses it.
- a transcoder's skip term x W_skip^T (D_in x D_out): forward and W_skip's gradient, 2 products,
  once per reconstruction (multi_k: one per k'), and gated's auxiliary reconstruction adds
  x W_skip.detach()'s forward.

`sae.cost` measures the same count with torch's FlopCounterMode on the meta device (compute
matching); tests check both, and this formula against a real step of every architecture and
option, SAE and transcoder.
"""

from __future__ import annotations

from typing import Protocol

ENCODERS = {"relu": 1, "gated": 2, "jumprelu": 1, "topk": 1, "batchtopk": 1, "matryoshka": 1}
DECODER_PRODUCTS = {"relu": 3, "gated": 5, "jumprelu": 3, "topk": 6, "batchtopk": 6,
                    "matryoshka": 6}
GATED_AUX_PRODUCTS = 2  # the auxiliary decode and the gate's gradient through it (aux_loss)
GHOST_GRADS_PRODUCTS = 3
DECODE_PRODUCTS = 3  # one more decode (multi_k's each extra k'): forward and both gradients
SKIP_PRODUCTS = 2  # x W_skip forward and W_skip's gradient (x needs none), d_in x d_out each
GRAM_PRODUCTS = 3  # every prefix: f G per token and G = W_dec W_dec^T per step, with gradients


class _SAEShape(Protocol):
    @property
    def architecture(self) -> str: ...
    @property
    def d_in(self) -> int | None: ...
    @property
    def d_out(self) -> int | None: ...
    @property
    def skip_connection(self) -> bool: ...


def step_flops_per_token(sae: _SAEShape, d_sae: int, batch_tokens: int) -> float:
    """FLOPs per token of one training step of this `sae` config (d_in set) at d_sae latents,
    with batch_tokens tokens a step (only every-prefix Matryoshka has a per-step product)."""
    if sae.d_in is None:
        raise ValueError("the step cost needs d_in")
    d_in = sae.d_in
    transcoder = sae.d_out is not None  # its input is not centred, so needs no gradient
    d_out = d_in if sae.d_out is None else sae.d_out
    encoder = ENCODERS[sae.architecture] * (2 if transcoder else 3)
    decoder = DECODER_PRODUCTS[sae.architecture]
    skip = SKIP_PRODUCTS
    if getattr(sae, "aux_loss", True) is False:  # gated without its auxiliary term
        decoder -= GATED_AUX_PRODUCTS
    elif sae.architecture == "gated":
        skip += 1  # the auxiliary reconstruction's x W_skip.detach(), forward only
    if getattr(sae, "ghost_grads", False):
        decoder += GHOST_GRADS_PRODUCTS
    reconstructions = len(getattr(sae, "multi_k", None) or [None])
    decoder += DECODE_PRODUCTS * (reconstructions - 1)
    skip += SKIP_PRODUCTS * (reconstructions - 1)
    flops = 0.0
    if getattr(sae, "prefix_widths", None) == "every":
        decoder += 1
        flops += 2.0 * GRAM_PRODUCTS * d_sae * d_sae * (1 + d_out / batch_tokens)
    flops += 2.0 * (encoder * d_in + decoder * d_out) * d_sae
    if sae.skip_connection:
        flops += 2.0 * skip * d_in * d_out
    return flops
