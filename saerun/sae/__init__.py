"""SAE architectures: one module each, one protocol (`sae.base.SAE`), picked by name."""

from __future__ import annotations

from typing import Any

import torch

from saerun.sae.base import SAE, LossOutput, StepInfo
from saerun.sae.batchtopk import BatchTopKSAE
from saerun.sae.gated import GatedSAE
from saerun.sae.jumprelu import JumpReLUSAE
from saerun.sae.matryoshka import MatryoshkaSAE
from saerun.sae.relu import ReluSAE
from saerun.sae.topk import TopKSAE

SAE_CLASSES: dict[str, type[SAE]] = {
    cls.architecture: cls
    for cls in (ReluSAE, GatedSAE, JumpReLUSAE, TopKSAE, BatchTopKSAE, MatryoshkaSAE)
}


def build_sae(cfg: Any, seed: int) -> SAE:
    """A freshly initialised SAE for a resolved `sae` config section (d_in, d_sae set)."""
    generator = torch.Generator().manual_seed(seed)
    return SAE_CLASSES[cfg.architecture](cfg, generator)


__all__ = ["SAE", "SAE_CLASSES", "LossOutput", "StepInfo", "build_sae"]
