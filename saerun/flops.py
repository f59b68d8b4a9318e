"""FLOPs per token of one SAE training step, by formula: torch-free, so the planner can count
every job (`Job.step_flops_per_token`) and planning still imports no torch.

Every matrix product of a training step (loss forward + backward, the dense reference kernels)
has d_in and d_sae as two of its dimensions and one row per token, so it costs 2 * d_in * d_sae
FLOPs per token forward, and as much again for each of its inputs that needs a gradient:

- relu, jumprelu: encode and decode, each forward + 2 backward: 6 products.
- gated: the gate and magnitude encodes and the decode (3 each), and the auxiliary
  reconstruction through the detached decoder (forward + the gate's gradient: 2): 11; 9
  with aux_loss false.
- topk, batchtopk, matryoshka: encode, decode and AuxK's decode of the dead latents (written
  without a host sync, it always decodes; Matryoshka's prefixes sum to one decode): 9.
- ghost grads add a decode of exp(pre) of the dead latents: 3 more.
- a transcoder's decoder products are d_sae x d_out; a skip adds 2 products of d_in x d_out.

`sae.cost` measures the same count with torch's FlopCounterMode on the meta device (what
compute matching uses); a test checks that both agree for every architecture and option.
"""

from __future__ import annotations

from typing import Protocol

PRODUCTS = {"relu": 6, "gated": 11, "jumprelu": 6, "topk": 9, "batchtopk": 9, "matryoshka": 9}
GHOST_GRADS_PRODUCTS = 3
# Of those, the ones over the decoder (d_sae x d_out: a transcoder's d_out may differ from d_in).
DECODER_PRODUCTS = {"relu": 3, "gated": 5, "jumprelu": 3, "topk": 6, "batchtopk": 6,
                    "matryoshka": 6}
GATED_AUX_PRODUCTS = 2  # the auxiliary decode and the gate's gradient through it (aux_loss)
SKIP_PRODUCTS = 2  # x W_skip forward and W_skip's gradient (x needs none), d_in x d_out each


class _SAEShape(Protocol):
    @property
    def architecture(self) -> str: ...
    @property
    def d_in(self) -> int | None: ...
    @property
    def d_out(self) -> int | None: ...
    @property
    def skip_connection(self) -> bool: ...


def step_flops_per_token(sae: _SAEShape, d_sae: int) -> float:
    """FLOPs per token of one training step of this `sae` config (d_in set) at d_sae latents."""
    if sae.d_in is None:
        raise ValueError("the step cost needs d_in")
    products = PRODUCTS[sae.architecture]
    no_aux = getattr(sae, "aux_loss", True) is False  # gated without its auxiliary term
    if no_aux:
        products -= GATED_AUX_PRODUCTS
    if getattr(sae, "ghost_grads", False):
        products += GHOST_GRADS_PRODUCTS
    if sae.d_out is None or sae.d_out == sae.d_in:  # an SAE: every product is d_in x d_sae
        flops = 2.0 * products * sae.d_in * d_sae
    else:
        decoder = DECODER_PRODUCTS[sae.architecture] - no_aux * GATED_AUX_PRODUCTS + (
            GHOST_GRADS_PRODUCTS if getattr(sae, "ghost_grads", False) else 0)
        flops = 2.0 * ((products - decoder) * sae.d_in + decoder * sae.d_out) * d_sae
    if sae.skip_connection:
        flops += 2.0 * SKIP_PRODUCTS * sae.d_in * (sae.d_out or sae.d_in)
    return flops
