"""SAE architectures: one module each, one protocol (`sae.base.SAE`), picked by name.

One table links each architecture's config class (`spec.SAE_CONFIG_BY_TAG`, the schema's) to
its SAE class. The schema cannot import this package (it imports torch), so the table is built
here from the schema's tags, and importing the package fails when a tag has no SAE class or an
SAE class has no config: adding an architecture means one config in `spec/architectures.py` and one
module here, and forgetting either is an error at once, not at the first run.
"""

from __future__ import annotations

import torch

from saerun.sae.base import SAE, LossOutput, StepInfo
from saerun.sae.batchtopk import BatchTopKSAE
from saerun.sae.gated import GatedSAE
from saerun.sae.jumprelu import JumpReLUSAE
from saerun.sae.matryoshka import MatryoshkaSAE
from saerun.sae.relu import ReluSAE
from saerun.sae.topk import TopKSAE
from saerun.spec import SAE_CONFIG_BY_TAG, derive
from saerun.spec.architectures import ImportedSAEConfig, SAESection

_MODULES: tuple[type[SAE], ...] = (
    ReluSAE, GatedSAE, JumpReLUSAE, TopKSAE, BatchTopKSAE, MatryoshkaSAE,
)


def _table() -> dict[str, tuple[type, type[SAE]]]:
    """tag -> (config class, SAE class), one entry per tag of the schema."""
    by_tag: dict[str, type[SAE]] = {}
    for cls in _MODULES:
        if cls.architecture in by_tag:
            raise RuntimeError(f"two SAE classes for architecture {cls.architecture!r}")
        by_tag[cls.architecture] = cls
    missing = sorted(set(SAE_CONFIG_BY_TAG) - set(by_tag))
    extra = sorted(set(by_tag) - set(SAE_CONFIG_BY_TAG))
    if missing or extra:
        raise RuntimeError(f"SAE classes and spec configs disagree: no SAE class for {missing}, "
                           f"no config for {extra}")
    return {tag: (config, by_tag[tag]) for tag, config in SAE_CONFIG_BY_TAG.items()}


ARCHITECTURES = _table()
SAE_CLASSES: dict[str, type[SAE]] = {tag: sae for tag, (_, sae) in ARCHITECTURES.items()}


def build_sae(cfg: SAESection, seed: int) -> SAE:
    """A freshly initialised SAE for an `sae` config section with d_in and d_sae set; the
    values still left to a rule (`spec.derive`) are resolved first, as the planner does. An
    imported SAE is never built: it is read from its folder (`saelens.load_sae`)."""
    if isinstance(cfg, ImportedSAEConfig):
        raise TypeError(f"the SAE in {cfg.from_pretrained} is imported: nothing to initialise")
    cfg = derive.resolved_sae(cfg)
    generator = torch.Generator().manual_seed(seed)
    return SAE_CLASSES[cfg.architecture](cfg, generator)


__all__ = ["ARCHITECTURES", "SAE", "SAE_CLASSES", "LossOutput", "StepInfo", "build_sae"]
