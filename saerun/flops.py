"""FLOPs per token of one SAE training step, by formula: torch-free, so the planner can count
every job (`Job.step_flops_per_token`) and planning still imports no torch.

Every matrix product of a training step (loss forward + backward, the dense reference kernels)
has d_in and d_sae as two of its dimensions and one row per token, so it costs 2 * d_in * d_sae
FLOPs per token forward, and as much again for each of its inputs that needs a gradient:

- relu, jumprelu: encode and decode, each forward + 2 backward: 6 products.
- gated: the gate and magnitude encodes and the decode (3 each), and the auxiliary
  reconstruction through the detached decoder (forward + the gate's gradient: 2): 11.
- topk, batchtopk, matryoshka: encode, decode and AuxK's decode of the dead latents (written
  without a host sync, it always decodes; Matryoshka's prefixes sum to one decode): 9.
- ghost grads add a decode of exp(pre) of the dead latents: 3 more.

`sae.cost` measures the same count with torch's FlopCounterMode on the meta device (what
compute matching uses); a test checks that both agree for every architecture and option.
"""

from __future__ import annotations

from typing import Protocol

PRODUCTS = {"relu": 6, "gated": 11, "jumprelu": 6, "topk": 9, "batchtopk": 9, "matryoshka": 9}
GHOST_GRADS_PRODUCTS = 3


class _SAEShape(Protocol):
    @property
    def architecture(self) -> str: ...
    @property
    def d_in(self) -> int | None: ...


def step_flops_per_token(sae: _SAEShape, d_sae: int) -> float:
    """FLOPs per token of one training step of this `sae` config (d_in set) at d_sae latents."""
    if sae.d_in is None:
        raise ValueError("the step cost needs d_in")
    products = PRODUCTS[sae.architecture]
    if getattr(sae, "ghost_grads", False):
        products += GHOST_GRADS_PRODUCTS
    return 2.0 * products * sae.d_in * d_sae
