"""Spec -> Plan: sweep expansion, derived values with provenance, run ids and grouping. Pure.

Every job is the spec's raw mapping with the sweep values written in, the derived values filled
in (d_in from the model, d_sae from an expansion factor or a compute match, then the rules of
`spec.derive`: coefficients, decoder init norms, aux_k, Matryoshka prefixes), validated again
as a `RunConfig`. A run id is a hash of that resolved config (its v1 identity view), so it
depends only on what determines the result.

Errors name the key path they are about (`SpecError.path`), never a file or a line: the caller
holds the spec's line map and locates them once (`spec.locate.locate`, in `runner.prepare`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from saerun import flops
from saerun.errors import SaerunError, SpecError, shown
from saerun.spec import (
    ComputeMatch,
    RunConfig,
    SAEConfig,
    Spec,
    derive,
    spec_error_from_validation,
)

# Bump when the meaning of a resolved config changes (new numerics), so old ids never collide.
RUN_ID_VERSION = "saerun-run-v1"
DEFAULT_EXPANSION_FACTOR = 8
# More runs than any one spec means; the bound is checked before the product is built, so a few
# long sweep lists (100^5 = 10^10 combinations) fail at once instead of filling the memory.
MAX_RUNS = 10_000


@dataclass(frozen=True)
class ModelDims:
    """What the planner needs to know about a model without loading it."""

    n_layers: int
    hook_widths: dict[str, int]  # hook name -> activation width there (d_in of an SAE)
    source: str  # where the numbers came from, shown by `saerun plan`
    n_ctx: int | None = None  # longest context the model was built for


@dataclass(frozen=True)
class Job:
    run_id: str
    name: str  # human label: spec name + the sweep values that make this job
    config: RunConfig
    group_key: str  # jobs sharing it share one activation stream (one LM pass per batch)
    provenance: dict[str, str] = field(compare=False)  # dotted path -> spec|default|sweep|derived
    # FLOPs per token of one training step (`sae.cost`), counted by the planner; None for a job
    # rebuilt from a registry row without it.
    step_flops_per_token: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Plan:
    spec: Spec
    jobs: list[Job]

    @property
    def groups(self) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {}
        for job in self.jobs:
            out.setdefault(job.group_key, []).append(job)
        return out


def stable_hash(obj: Any, n: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def run_id_of(config: RunConfig) -> str:
    """Hash of what determines the result. A local data file enters by its content, not its
    path, so a colleague with the same file elsewhere gets the same id (and an edited file a
    new one); names (embedded corpus, hub datasets, models) enter as they are.

    What is hashed is the config's v1 identity view (`spec.derive.v1_identity`: aux_k and the
    Matryoshka prefixes null where their rule gives them, eval.metrics in v1's names), so the
    ids saerun v1 gave stay valid (tests/test_run_ids.py)."""
    resolved = derive.v1_identity(config.model_dump(mode="json"))
    resolved["data"]["dataset"] = data_identity(config.data.dataset)
    return stable_hash([RUN_ID_VERSION, resolved], n=16)


def data_identity(dataset: str) -> str:
    from saerun.data import EMBEDDED_DATASETS, file_sha256

    if dataset in EMBEDDED_DATASETS:
        return dataset
    path = Path(dataset)
    try:
        if path.is_file():
            return "file-sha256:" + file_sha256(path)
    except OSError:
        pass
    return dataset


def group_key_of(config: RunConfig) -> str:
    """Jobs with the same model, data and batch size can step in lockstep on one stream."""
    c = config.model_dump(mode="json")
    return stable_hash([c["model"], c["data"], c["train"]["batch_tokens"]], n=12)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    node = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _flatten(obj: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[tuple, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, prefix + (key,)))
        return out
    return {prefix: obj}


def _sweep_points(spec: Spec) -> list[dict[tuple[str, ...], Any]]:
    """Every combination of the grid, times the zip rows, times the site list and seeds."""
    axes: list[list[dict[tuple[str, ...], Any]]] = []
    sites = spec.site.hook_name
    if isinstance(sites, list):
        axes.append([{("site", "hook_name"): s} for s in sites])
    for key, values in spec.sweep.grid.items():
        axes.append([{tuple(key.split(".")): v} for v in values])
    if spec.sweep.zip:
        keys = list(spec.sweep.zip)
        n = len(spec.sweep.zip[keys[0]])
        axes.append([{tuple(k.split(".")): spec.sweep.zip[k][i] for k in keys} for i in range(n)])
    if spec.sweep.seeds is not None:
        axes.append([{("seed",): s} for s in spec.sweep.seeds])
    n_runs = math.prod(len(axis) for axis in axes)
    if n_runs > MAX_RUNS:
        raise SpecError(
            f"the spec expands to {n_runs:,} runs (sites x sweep values x seeds), more than "
            f"{MAX_RUNS:,}", path=("sweep",), hint="split the sweep into several specs",
        )
    points = []
    for combo in itertools.product(*axes):
        point: dict[tuple[str, ...], Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def _label(spec: Spec, point: dict[tuple[str, ...], Any]) -> str:
    if not point:
        return spec.name
    def show(value: Any) -> str:  # a swept sub-section (e.g. a whole `sae`) reads as k=v pairs
        if isinstance(value, dict):
            return ",".join(f"{'.'.join(map(str, k))}={v}" for k, v in _flatten(value).items())
        return str(value)

    parts = []
    for key, value in point.items():
        name = ".".join(key).removeprefix("sae.").removeprefix("train.")
        parts.append(show(value) if name == "sae" else f"{name}={show(value)}")
    return f"{spec.name}[{','.join(parts)}]"


def build_plan(spec: Spec, raw: dict, model_dims: Callable[[str], ModelDims]) -> Plan:
    """Expand the sweep and resolve every job. A SpecError raised here carries the key path it
    is about (`err.path`), not a file or line: `spec.locate.locate` gives it those."""
    base = {k: v for k, v in raw.items() if k not in ("sweep", "name")}
    dims_cache: dict[str, ModelDims] = {}
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for point in _sweep_points(spec):
        tree = copy.deepcopy(base)
        for key, value in point.items():
            _set(tree, key, value)
        note = "(from the sweep)" if point else ""

        # Validate once as a partial spec to learn the model name and architecture.
        try:
            partial = Spec.model_validate({**tree, "name": spec.name})
        except ValidationError as err:
            raise spec_error_from_validation(err, data=tree, note=note) from None
        derived = _derive(partial, tree, dims_cache, model_dims)
        # From here on every default is explicit: the resolved config is the whole truth.
        tree = partial.model_dump(mode="json", exclude={"name", "sweep", "launcher"})
        config = _validated(tree, derived, note)
        # The widths are known: the rules of `spec.derive` fill in what is left.
        derived.update(derive.sae_derivations(config.sae))
        config = _validated(tree, derived, note)

        provenance = _provenance(config, raw, point, derived)
        run_id = run_id_of(config)
        label = _label(spec, point)
        if run_id in seen:
            raise SpecError(
                f"the sweep produces the same run twice: {seen[run_id]} and {label}",
                path=("sweep",), field="sweep", hint="remove the repeated value",
            )
        seen[run_id] = label
        jobs.append(Job(run_id, label, config, group_key_of(config), provenance,
                        _step_flops(config)))
    return Plan(spec=spec, jobs=jobs)


def _validated(tree: dict, derived: derive.Derived, note: str) -> RunConfig:
    try:
        return RunConfig.model_validate(
            derive.with_values(tree, {path: value for path, (value, _) in derived.items()})
        )
    except ValidationError as err:
        raise spec_error_from_validation(err, data=tree, root=RunConfig, note=note) from None


def _step_flops(config: RunConfig) -> float:
    """FLOPs per token of one training step at the resolved width (`saerun.flops`: the count
    `sae.cost` measures, by formula, so planning imports no torch)."""
    if config.sae.d_sae is None:  # resolved by `_derive`; a None here is a planner bug
        raise ValueError("the step cost needs d_sae")
    return flops.step_flops_per_token(config.sae, config.sae.d_sae)


def _derive(
    partial: Spec,
    tree: dict,
    cache: dict[str, ModelDims],
    model_dims: Callable[[str], ModelDims],
) -> derive.Derived:
    """Values computed from the model: d_in from its width at the hook, d_sae from the
    expansion factor or a compute match."""
    name = partial.model.name
    if name not in cache:
        try:
            cache[name] = model_dims(name)
        except SaerunError as err:
            raise SpecError(err.message, path=("model", "name"), field="model.name",
                            hint=err.hint) from None
    dims = cache[name]
    hook = tree.get("site", {}).get("hook_name", partial.site.hook_name)
    if not isinstance(hook, str):  # a swept value that is itself a list of sites
        raise SpecError(
            f"each value swept over site.hook_name must be one hook name, got {shown(hook)}",
            path=("site", "hook_name"), field="site.hook_name",
            hint="list the sites in site.hook_name itself to train one SAE per site",
        )
    if hook not in dims.hook_widths:
        raise SpecError(
            f"unknown hook name {hook!r} for model {name!r} ({dims.n_layers} layers)",
            path=("site", "hook_name"), field="site.hook_name",
            hint="e.g. blocks.0.hook_resid_post ... "
            f"blocks.{dims.n_layers - 1}.hook_resid_post, blocks.N.hook_mlp_out, "
            "blocks.N.hook_attn_out",
        )
    if dims.n_ctx is not None and partial.data.context_size > dims.n_ctx:
        raise SpecError(
            f"context_size {partial.data.context_size} is longer than model {name!r} supports",
            path=("data", "context_size"), field="data.context_size", hint=f"at most {dims.n_ctx}",
        )
    sae = partial.sae
    out: derive.Derived = {}
    d_in = sae.d_in
    width = dims.hook_widths[hook]
    if d_in is not None and d_in != width:
        raise SpecError(
            f"d_in {d_in} does not match the model's width {width} at {hook!r}",
            path=("sae", "d_in"), field="sae.d_in", hint="omit d_in to take it from the model",
        )
    if d_in is None:
        d_in = width
        out[("sae", "d_in")] = (d_in, f"width of {hook} ({dims.source})")
    if sae.compute_matched_to is not None:
        out[("sae", "d_sae")] = _compute_matched(sae, sae.compute_matched_to, d_in)
        out[("sae", "compute_matched_to")] = (None, "resolved into d_sae")
    elif sae.d_sae is None:
        factor = sae.expansion_factor or DEFAULT_EXPANSION_FACTOR
        how = "expansion_factor" if sae.expansion_factor else "default expansion factor"
        d_sae = _width(factor, d_in, ("sae", "expansion_factor"))
        out[("sae", "d_sae")] = (d_sae, f"{how} {factor:g} x d_in {d_in}")
        out[("sae", "expansion_factor")] = (None, "resolved into d_sae")
    return out


def _width(factor: float, d_in: int, path: tuple[str, ...]) -> int:
    """round(factor * d_in), at least 1. The schema admits any float > 0, inf included; a width
    that is not finite names its field here instead of escaping round() as an OverflowError."""
    width = factor * d_in
    if not math.isfinite(width):
        raise SpecError(
            f"expansion_factor {factor:g} x d_in {d_in} is not a finite width",
            path=path, field=".".join(path), hint="give d_sae, or a factor such as 8",
        )
    return max(1, round(width))


def _compute_matched(sae: SAEConfig, match: ComputeMatch, d_in: int) -> tuple[int, str]:
    """(d_sae, how) for `compute_matched_to`: the width whose training step costs as many FLOPs
    per token as the reference architecture's (with its defaults) at the reference width."""
    from saerun.sae import cost  # imports torch: only specs that ask for matching pay for it

    ref_d_sae = match.d_sae or _width(
        match.expansion_factor or DEFAULT_EXPANSION_FACTOR, d_in,
        ("sae", "compute_matched_to", "expansion_factor"),
    )
    path, field_name = ("sae", "compute_matched_to"), "sae.compute_matched_to"
    try:
        ref = cost.reference_config(match.architecture, d_in, ref_d_sae)
    except ValidationError as err:
        raise SpecError(
            f"the reference {match.architecture} SAE at d_sae {ref_d_sae} is invalid: "
            f"{err.errors()[0]['msg'].removeprefix('Value error, ')}", path=path, field=field_name,
        ) from None
    cfg = sae.model_copy(update={"d_in": d_in})
    try:
        d_sae = cost.compute_matched_d_sae(cfg, ref, ref_d_sae)
        mine = cost.step_flops_per_token(cfg, d_sae)
        theirs = cost.step_flops_per_token(ref, ref_d_sae)
    except OverflowError:  # FLOPs are floats: a reference d_sae beyond ~1e300 has no count
        raise SpecError(
            f"the reference d_sae ({len(str(ref_d_sae))} digits) is too large to count its FLOPs",
            path=path, field=field_name,
        ) from None
    return d_sae, (
        f"compute-matched to {match.architecture} at d_sae {ref_d_sae}: "
        f"{mine:,.0f} vs {theirs:,.0f} FLOPs/token per step"
    )


def _provenance(
    config: RunConfig, raw: dict, point: dict, derived: dict
) -> dict[str, str]:
    flat = _flatten(config.model_dump(mode="json"))
    out = {}
    for path, _ in sorted(flat.items(), key=lambda kv: kv[0]):
        if path in derived:
            source = f"derived: {derived[path][1]}"
        elif any(path[: len(k)] == k for k in point):
            source = "sweep"
        elif _get(raw, path)[0]:
            source = "spec"
        else:
            source = "default"
        out[".".join(map(str, path))] = source
    return out


def resolved_items(config: BaseModel) -> dict[str, Any]:
    """Flat dotted view of a resolved config (for `saerun plan` and the registry)."""
    return {".".join(map(str, k)): v for k, v in _flatten(config.model_dump(mode="json")).items()}
