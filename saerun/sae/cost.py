"""The cost of one SAE training step, and the width at which it matches a reference SAE's.

Compute matching (the Gated SAE paper compared a gated SAE of 2^17 latents with ReLU SAEs of
3 * 2^16, a gated step costing more per latent): give an SAE the width whose training step costs
as many FLOPs per token as a reference architecture's at a given width.

What is counted: the FLOPs that `torch.utils.flop_counter.FlopCounterMode` counts, i.e. the
matrix products, of `sae.loss(x, step)` and `loss.backward()` on a freshly built SAE, with the
dense reference kernels (`sparse_kernels = False`): the FLOPs of the maths as the papers count
them, whatever sparsity the training kernels exploit. Everything
else of a step (activations, norms, top-k, scatter, the optimiser update) is elementwise or a
reduction, O(d_sae) or O(d_in) per token against the O(d_in d_sae) products, and not counted.
Every product of every architecture has d_sae as one of its dimensions and d_in as another, so

    cost(d_sae) = a + b * d_sae   FLOPs per token

holds exactly (a = 0 today; it is fitted anyway), but for Matryoshka with prefix_widths every,
whose dense Gram products W_dec W_dec^T are quadratic in d_sae: the schema refuses compute
matching it, and its probes here count the default nesting (`saerun.flops` counts the Gram
products for the planner). It is measured at the real d_in on two small
widths (64 and 128 latents; k capped at the width for the TopK family) with a batch of 16
tokens, which fixes a and b exactly, since every product is per token. The matched width solves
cost(d) = cost_ref(d_ref): d = round((cost_ref(d_ref) - a) / b), at least 1.

Auxiliary dead-latent losses are INCLUDED: the reference AuxK (`sae.auxk`) is written without a
host sync, so its top-k, decode and backward run whatever the dead mask holds, and a factor
min(n_dead / aux_k, 1) = 0 merely zeroes the term while no latent is dead. The step is measured
with an all-False dead mask (a fresh SAE has no dead latent), and the count does not depend on
the mask (a test checks it). The gated SAE's auxiliary
reconstruction is part of its loss and counted likewise. Only shapes decide the count, so it is
deterministic; it runs on the CPU, offline, in milliseconds.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from pydantic import TypeAdapter
from torch.utils.flop_counter import FlopCounterMode

from saerun.sae.base import StepInfo
from saerun.spec import (
    BatchTopKSAEConfig,
    MatryoshkaSAEConfig,
    SAEConfig,
    TopKSAEConfig,
    derive,
)

PROBE_WIDTHS = (64, 128)  # two widths fix a and b of a + b * d_sae
PROBE_TOKENS = 16


def reference_config(architecture: str, d_in: int, d_sae: int) -> SAEConfig:
    """The `sae` config of the reference: `architecture` with its defaults (the derived ones
    resolved by `spec.derive`, as the planner resolves them), at d_in x d_sae. Raises pydantic's
    ValidationError when the defaults do not fit (topk's k > d_sae, say)."""
    data = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae}
    return derive.resolved_sae(TypeAdapter(SAEConfig).validate_python(data))


def _probe_config(cfg: SAEConfig, width: int) -> SAEConfig:
    """cfg at `width` latents, with every width-bound option made to fit it; values a rule
    derives are left to `build_sae` to derive at that width."""
    update: dict[str, int | None] = {"d_sae": width, "expansion_factor": None}
    if hasattr(cfg, "compute_matched_to"):
        update["compute_matched_to"] = None
    if isinstance(cfg, TopKSAEConfig | BatchTopKSAEConfig | MatryoshkaSAEConfig):
        update["k"] = min(cfg.k, width)
        if cfg.aux_k is not None:
            # aux_k as its rule gives it at the probe's width when the rule gave it (it depends
            # on d_sae), as given, capped at the width, otherwise.
            derived = (cfg.d_in is not None and cfg.d_sae is not None
                       and cfg.aux_k == derive.default_aux_k(cfg.d_in, cfg.d_sae)[0])
            update["aux_k"] = None if derived else min(cfg.aux_k, width)
    if hasattr(cfg, "prefix_widths"):
        # The prefixes' products sum to one decode of d_sae latents, so the defaults count the
        # same as any nesting the spec gives (which names widths of the full d_sae).
        update["prefix_widths"] = None
        update["prefix_weights"] = None
    return cfg.model_copy(update=update)


def _step_flops(cfg: SAEConfig) -> int:
    """FLOPs counted in one training step (loss forward + backward) of a fresh SAE for cfg."""
    from saerun.sae import build_sae

    # On the meta device every op yields shapes without computing: only shapes count FLOPs.
    sae = build_sae(cfg, seed=0).to("meta")
    sae.sparse_kernels = False  # the dense reference: the FLOPs of the products it names
    x = torch.empty(PROBE_TOKENS, sae.d_in, device="meta")
    # A transcoder's target is another hook's activation, d_out wide.
    y = None if cfg.d_out is None else torch.empty(PROBE_TOKENS, cfg.d_out, device="meta")
    dead = torch.zeros(sae.d_sae, dtype=torch.bool, device="meta")
    step = StepInfo(sparsity_scale=1.0, dead_mask=dead)
    with FlopCounterMode(display=False) as counter:
        sae.loss(x, step, y).loss.backward()
    return counter.get_total_flops()


@lru_cache(maxsize=256)
def _fit_json(cfg_json: str) -> tuple[float, float]:
    cfg = TypeAdapter(SAEConfig).validate_json(cfg_json)
    (w0, w1), (c0, c1) = PROBE_WIDTHS, [_step_flops(_probe_config(cfg, w)) for w in PROBE_WIDTHS]
    b = (c1 - c0) / (w1 - w0)
    return (c0 - b * w0) / PROBE_TOKENS, b / PROBE_TOKENS


def cost_line(sae_cfg: SAEConfig) -> tuple[float, float]:
    """(a, b) of cost(d_sae) = a + b * d_sae FLOPs per token for this config (d_in set)."""
    if sae_cfg.d_in is None:
        raise ValueError("the step cost needs d_in")
    # Cached on everything but the width, which the probes replace.
    probe = _probe_config(sae_cfg, PROBE_WIDTHS[0])
    return _fit_json(probe.model_dump_json())


def step_flops_per_token(sae_cfg: SAEConfig, d_sae: int) -> float:
    """FLOPs per token of one training step (loss forward + backward) at d_sae latents."""
    a, b = cost_line(sae_cfg)
    return a + b * d_sae


def compute_matched_d_sae(cfg: SAEConfig, reference_cfg: SAEConfig,
                          reference_d_sae: int) -> int:
    """The d_sae at which cfg's training step costs what reference_cfg's costs at
    reference_d_sae (FLOPs per token), rounded to the nearest width, at least 1."""
    a, b = cost_line(cfg)
    target = step_flops_per_token(reference_cfg, reference_d_sae)
    return max(1, round((target - a) / b))
