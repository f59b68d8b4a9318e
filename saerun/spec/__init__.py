"""The spec: its schema, how it is read (YAML, `extends`), where its errors point, and its
reference. One module per concern:

- `schema`: the pydantic models (`Spec`, `RunConfig`, the sections, one SAE config per
  architecture), the single source of truth.
- `derive`: the rules for values derived from other values (default coefficients, decoder init
  norms, aux_k, Matryoshka prefixes), used by the planner and wherever an SAE config is built.
- `launcher`: where the jobs run (local, Slurm); never part of a run's id.
- `yaml_io`: the hardened YAML reader and its line map.
- `locate`: errors -> file:line:field.
- `compose`: `extends` composition, `load_spec`, `export_spec`.
- `reference`: the README's spec reference (`python -m saerun.spec.reference`).
"""

from __future__ import annotations

from saerun.spec.compose import MAX_EXTENDS, composed_text, export_spec, load_spec, merge_over
from saerun.spec.launcher import (
    LAUNCHERS,
    LauncherConfig,
    LocalLauncher,
    SlurmLauncher,
    launcher_with,
    slurm_minutes,
)
from saerun.spec.locate import line_of, locate, spec_error_from_validation, sweep_axes
from saerun.spec.schema import (
    DEFAULT_COEFFICIENTS,
    GATED_DEFAULT_COEFFICIENT,
    JUMPRELU_DEFAULT_BANDWIDTH,
    JUMPRELU_DEFAULT_COEFFICIENT,
    JUMPRELU_DEFAULT_INIT_THRESHOLD,
    JUMPRELU_DEFAULT_PRE_ACT,
    MAX_LATENTS,
    MAX_SEED,
    METRIC_NAMES,
    SAE_CONFIG_BY_TAG,
    SAE_CONFIGS,
    BatchTopKSAEConfig,
    ComputeMatch,
    DataConfig,
    EvalConfig,
    GatedSAEConfig,
    JumpReLUSAEConfig,
    MatryoshkaSAEConfig,
    ModelConfig,
    ReluSAEConfig,
    ResampleConfig,
    ResolvedSite,
    RunConfig,
    SAEConfig,
    SiteConfig,
    SparsityConfig,
    Spec,
    SweepConfig,
    TopKSAEConfig,
    TrainConfig,
    architecture_tag,
)
from saerun.spec.yaml_io import (
    MAX_INT_BITS,
    MAX_SPEC_BYTES,
    MAX_SPEC_DEPTH,
    MAX_SPEC_VALUES,
    Line,
    LineMap,
    parse_yaml,
)

__all__ = [
    "DEFAULT_COEFFICIENTS", "GATED_DEFAULT_COEFFICIENT", "JUMPRELU_DEFAULT_BANDWIDTH",
    "JUMPRELU_DEFAULT_COEFFICIENT", "JUMPRELU_DEFAULT_INIT_THRESHOLD", "JUMPRELU_DEFAULT_PRE_ACT",
    "LAUNCHERS", "MAX_EXTENDS", "MAX_INT_BITS", "MAX_LATENTS", "MAX_SEED", "MAX_SPEC_BYTES",
    "MAX_SPEC_DEPTH", "MAX_SPEC_VALUES", "METRIC_NAMES", "SAE_CONFIGS", "SAE_CONFIG_BY_TAG",
    "BatchTopKSAEConfig", "ComputeMatch", "DataConfig", "EvalConfig", "GatedSAEConfig",
    "JumpReLUSAEConfig", "LauncherConfig", "Line", "LineMap", "LocalLauncher",
    "MatryoshkaSAEConfig", "ModelConfig", "ReluSAEConfig", "ResampleConfig", "ResolvedSite",
    "RunConfig", "SAEConfig", "SiteConfig", "SlurmLauncher", "SparsityConfig", "Spec",
    "SweepConfig", "TopKSAEConfig", "TrainConfig", "architecture_tag", "composed_text",
    "export_spec", "launcher_with", "line_of", "load_spec", "locate", "merge_over", "parse_yaml",
    "slurm_minutes", "spec_error_from_validation", "sweep_axes",
]
