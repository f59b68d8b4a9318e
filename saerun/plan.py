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

from saerun import flops, memory, saelens
from saerun.errors import SaerunError, SpecError, shown
from saerun.models import layer_of
from saerun.spec import (
    ComputeMatch,
    RunConfig,
    SAEConfig,
    Spec,
    derive,
    spec_error_from_validation,
)
from saerun.spec.architectures import ImportedSAEConfig

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
    lm: memory.LMShape | None = None  # the language model's size, for the memory model


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
class Budget:
    """A device memory budget and where it was set (to locate an error about it)."""

    gb: float
    path: tuple[str, ...] | None  # the spec's key path; None: the command line or the device
    named: str  # "launcher.device_memory_gb", "--device-memory", "the visible GPU's memory"


@dataclass(frozen=True)
class DeviceJob:
    """Runs of one activation group trained together in one process on one device: the LM is
    loaded once and its forward (up to the job's deepest site) feeds every SAE of the job. A
    group split into several device jobs runs its LM once per job over the same deterministic
    stream, so the split changes no run id and no result."""

    index: int
    group_key: str
    runs: list[Job]
    memory_gb: float | None  # estimated peak on the device (`saerun.memory`); None: unknown
    memory: dict[str, float] = field(default_factory=dict)  # its parts, GB
    memory_detail: str = ""  # how the estimate was made

    @property
    def run_ids(self) -> list[str]:
        return [j.run_id for j in self.runs]


@dataclass(frozen=True)
class Plan:
    spec: Spec
    jobs: list[Job]
    # One per activation group when no budget was given (today's behaviour); else each group
    # split so that each job's estimate fits the budget (`pack`).
    device_jobs: list[DeviceJob] = field(default_factory=list)
    budget: Budget | None = None

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
    ids saerun v1 gave stay valid (tests/test_run_ids.py). An imported SAE: `imported_run_id`."""
    if isinstance(config.sae, ImportedSAEConfig):
        return imported_run_id(config)
    resolved = derive.v1_identity(config.model_dump(mode="json"))
    resolved["data"]["dataset"] = data_identity(config.data.dataset)
    return stable_hash([RUN_ID_VERSION, resolved], n=16)


def imported_run_id(config: RunConfig) -> str:
    """An imported SAE's id: its content (weights and output-changing cfg.json values, as
    `content_sha256`) and the evaluation config (model, site, data, eval), so the same SAE found
    in another folder is the same run; the seed and train section change nothing of it."""
    c = config.model_dump(mode="json")
    sae = {k: v for k, v in c["sae"].items() if k != "from_pretrained"}
    data = {**c["data"], "dataset": data_identity(config.data.dataset)}
    view = {"model": c["model"], "site": c["site"], "data": data, "eval": c["eval"], "sae": sae}
    return stable_hash([RUN_ID_VERSION, "imported", view], n=16)


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
    """Jobs with the same model, data and batch size can step in lockstep on one stream.
    Imported SAEs (evaluation only) group apart from the runs that train."""
    c = config.model_dump(mode="json")
    if isinstance(config.sae, ImportedSAEConfig):
        return stable_hash([c["model"], c["data"], "imported"], n=12)
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


def build_plan(spec: Spec, raw: dict, model_dims: Callable[[str], ModelDims],
               budget: Budget | None = None) -> Plan:
    """Expand the sweep, resolve every job and pack them into device jobs (`pack`). A SpecError
    raised here carries the key path it is about (`err.path`), not a file or line:
    `spec.locate.locate` gives it those."""
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
        if not isinstance(config.sae, ImportedSAEConfig):
            # The widths are known: the rules of `spec.derive` fill in what is left.
            derived.update(derive.sae_derivations(config.sae, config.train.batch_tokens))
            config = _validated(tree, derived, note)

        if config.train.compile and getattr(config.sae, "k_schedule", None) is not None:
            raise SpecError("sae.k_schedule changes k, a tensor shape, during training: "
                            "torch.compile would recompile the loss at every new k",
                            path=("sae", "k_schedule"), field="sae.k_schedule",
                            hint="set train.compile false, or drop the schedule" + (
                                f" {note}" if note else ""))
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
    return Plan(spec=spec, jobs=jobs, device_jobs=pack(jobs, dims_cache, budget), budget=budget)


def _validated(tree: dict, derived: derive.Derived, note: str) -> RunConfig:
    try:
        return RunConfig.model_validate(
            derive.with_values(tree, {path: value for path, (value, _) in derived.items()})
        )
    except ValidationError as err:
        raise spec_error_from_validation(err, data=tree, root=RunConfig, note=note) from None


def _step_flops(config: RunConfig) -> float | None:
    """FLOPs per token of one training step at the resolved width (`saerun.flops`: the count
    `sae.cost` measures, by formula, so planning imports no torch); None: not trained here."""
    if isinstance(config.sae, ImportedSAEConfig):
        return None
    if config.sae.d_sae is None:  # resolved by `_derive`; a None here is a planner bug
        raise ValueError("the step cost needs d_sae")
    return flops.step_flops_per_token(config.sae, config.sae.d_sae, config.train.batch_tokens)


def _derive(
    partial: Spec,
    tree: dict,
    cache: dict[str, ModelDims],
    model_dims: Callable[[str], ModelDims],
) -> derive.Derived:
    """Values computed from the model: d_in from its width at the hook (d_out at a
    transcoder's target hook), d_sae from the expansion factor or a compute match."""
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
        rotary = hook == "hook_pos_embed"  # registered by the bridge, never called on the model
        raise SpecError(
            f"model {name!r} has no learned position embedding, so hook_pos_embed never "
            "carries an activation" if rotary else
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
    width = dims.hook_widths[hook]
    if isinstance(sae, ImportedSAEConfig):
        hook_out = tree.get("site", {}).get("hook_name_out", partial.site.hook_name_out)
        if hook_out is not None and (not isinstance(hook_out, str) or
                                     hook_out not in dims.hook_widths):
            raise SpecError(f"unknown hook name {shown(hook_out)} for model {name!r} "
                            f"({dims.n_layers} layers)", path=("site", "hook_name_out"),
                            field="site.hook_name_out", hint="e.g. blocks.1.hook_mlp_out")
        return saelens.planned_values(sae, hook, width, hook_out,
                                      None if hook_out is None else dims.hook_widths[hook_out])
    out: derive.Derived = {}
    d_in = sae.d_in
    if d_in is not None and d_in != width:
        raise SpecError(
            f"d_in {d_in} does not match the model's width {width} at {hook!r}",
            path=("sae", "d_in"), field="sae.d_in", hint="omit d_in to take it from the model",
        )
    if d_in is None:
        d_in = width
        out[("sae", "d_in")] = (d_in, f"width of {hook} ({dims.source})")
    out.update(_transcoder(partial, tree, dims, name, d_in))
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


def _transcoder(partial: Spec, tree: dict, dims: ModelDims, name: str,
                d_in: int) -> derive.Derived:
    """d_out from the width at site.hook_name_out (a transcoder), and the options that need
    one: a skip connection, W_enc = W_dec^T (only at d_in = d_out), no resampling."""
    sae = partial.sae
    if isinstance(sae, ImportedSAEConfig):  # planned by saelens.planned_values instead
        return {}
    hook_out = tree.get("site", {}).get("hook_name_out", partial.site.hook_name_out)
    if hook_out is None:
        if sae.d_out is not None:
            raise SpecError("sae.d_out is a transcoder's output width, but site.hook_name_out "
                            "is not set", path=("sae", "d_out"), field="sae.d_out",
                            hint="set site.hook_name_out (the target hook), or omit d_out")
        if sae.skip_connection:
            raise SpecError("sae.skip_connection needs a transcoder (site.hook_name_out)",
                            path=("sae", "skip_connection"), field="sae.skip_connection",
                            hint="set site.hook_name_out, or skip_connection: false")
        return {}
    path = ("site", "hook_name_out")
    if not isinstance(hook_out, str) or hook_out not in dims.hook_widths:
        raise SpecError(f"unknown hook name {shown(hook_out)} for model {name!r} "
                        f"({dims.n_layers} layers)", path=path, field="site.hook_name_out",
                        hint="e.g. blocks.1.hook_mlp_out")
    width = dims.hook_widths[hook_out]
    out: derive.Derived = {}
    d_out = sae.d_out
    if d_out is not None and d_out != width:
        raise SpecError(f"d_out {d_out} does not match the model's width {width} at "
                        f"{hook_out!r}", path=("sae", "d_out"), field="sae.d_out",
                        hint="omit d_out to take it from the model")
    if d_out is None:
        d_out = width
        out[("sae", "d_out")] = (d_out, f"width of {hook_out} ({dims.source})")
    if sae.init_encoder_as_decoder_transpose and d_out != d_in:
        raise SpecError(
            f"init_encoder_as_decoder_transpose needs d_in = d_out; this transcoder maps "
            f"{d_in} -> {d_out}", path=("sae", "init_encoder_as_decoder_transpose"),
            field="sae.init_encoder_as_decoder_transpose",
            hint="set sae.init_encoder_as_decoder_transpose: false")
    if partial.train.resample is not None:
        raise SpecError("neuron resampling is not defined for transcoders (it re-initialises "
                        "decoder rows from input directions)", path=("train", "resample"),
                        field="train.resample", hint="remove train.resample")
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


# -- device jobs -------------------------------------------------------------------------------

# SAELens architecture -> the saerun one whose memory an imported SAE's is estimated by.
IMPORTED_AS = {"standard": "relu", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk"}


def _sae_shape(config: RunConfig) -> memory.SAEShape:
    if config.sae.d_in is None or config.sae.d_sae is None:  # resolved by `_derive`
        raise ValueError("the memory model needs d_in and d_sae")
    architecture: str = config.sae.architecture
    if isinstance(config.sae, ImportedSAEConfig):  # evaluated only: bounded by training one
        architecture = IMPORTED_AS.get(config.sae.saelens_architecture or "", "relu")
    return memory.SAEShape(
        architecture, config.sae.d_in, config.sae.d_sae, config.train.batch_tokens,
        bool(getattr(config.sae, "ghost_grads", False)),
        str(getattr(config.train, "precision", "fp32")), getattr(config.sae, "d_out", None),
        bool(getattr(config.sae, "skip_connection", False)),
        getattr(config.sae, "b_mag", "free") == "tied",
    )


def checkpoint_disk_gb(runs: list[Job]) -> float:
    """GB of disk one device job's checkpoints and stream snapshots take at most (`saerun plan`)."""
    return (sum(memory.checkpoint_disk_bytes(_sae_shape(j.config), j.config.train.keep_checkpoints)
                for j in runs) + memory.job_snapshot_bytes([j.config for j in runs])) / 1e9


def job_memory(runs: list[Job], dims: ModelDims) -> tuple[dict[str, float], str] | None:
    """(estimated peak of these runs as one device job, in GB by part; how) or None when the
    model's size is unknown."""
    if dims.lm is None:
        return None
    first = runs[0].config
    stream = memory.StreamShape(first.model.dtype, first.data.context_size,
                                first.data.lm_batch_sequences, first.data.shuffle_buffer_tokens,
                                first.train.batch_tokens)
    sites = {h: dims.hook_widths[h] for j in runs
             for h in (j.config.site.hook_name, j.config.site.hook_name_out) if h is not None}
    layers = [layer_of(h) for h in sites]
    deepest = max((x for x in layers if x is not None), default=None)
    parts = memory.job_memory(dims.lm, stream, [_sae_shape(j.config) for j in runs], sites,
                              deepest)
    how = (f"formula (saerun.memory: dense kernels, {first.model.dtype} LM of "
           f"{dims.lm.n_params:,} parameters from {dims.lm.source})")
    return {k: v / memory.GB for k, v in parts.items()}, how


def _site_order(job: Job) -> tuple[int, str]:
    site = job.config.site
    layers = [layer_of(h) for h in (site.hook_name, site.hook_name_out) if h is not None]
    layer = max((x for x in layers if x is not None), default=None)
    return (-1 if layer is None else layer, job.config.site.hook_name)


def pack(jobs: list[Job], dims: dict[str, ModelDims], budget: Budget | None) -> list[DeviceJob]:
    """Device jobs of the plan. No budget: one per activation group, its runs in plan order.
    With one: each group's runs sorted by site depth (deepest last) and cut into consecutive
    jobs, each as full as the budget allows, so a job's sites are contiguous in depth and its
    LM forward stops at its deepest site. A run that does not fit alone is a SpecError naming
    the run, its estimate and the budget."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group_key, []).append(job)
    out: list[DeviceJob] = []

    def add(key: str, runs: list[Job], estimate: tuple[dict[str, float], str] | None) -> None:
        parts, how = estimate if estimate is not None else ({}, "")
        out.append(DeviceJob(len(out), key, runs, parts.get("total"), parts, how))

    for key, runs in groups.items():
        model = dims[runs[0].config.model.name]
        if budget is None:
            add(key, runs, job_memory(runs, model))
            continue
        current: list[Job] = []
        fitted: tuple[dict[str, float], str] | None = None
        for job in sorted(runs, key=_site_order):
            trial = _estimate(current + [job], model, budget)
            if current and trial[0]["total"] > budget.gb:
                add(key, current, fitted)
                current, trial = [], _estimate([job], model, budget)
            if trial[0]["total"] > budget.gb:
                raise SpecError(
                    f"run {job.name} ({job.run_id[:10]}) needs about {trial[0]['total']:.1f} GB "
                    f"on its device alone, more than {budget.named} {budget.gb:g} GB",
                    path=budget.path, field=".".join(budget.path) if budget.path else None,
                    hint="a device with more memory, or a smaller sae.d_sae, train.batch_tokens "
                    "or data.lm_batch_sequences")
            current, fitted = current + [job], trial
        if current:
            add(key, current, fitted)
    return out


def _estimate(runs: list[Job], dims: ModelDims, budget: Budget) -> tuple[dict[str, float], str]:
    found = job_memory(runs, dims)
    if found is None:
        raise SpecError(
            f"the size of model {runs[0].config.model.name!r} is unknown, so no job can be "
            f"sized for {budget.named} {budget.gb:g} GB", path=budget.path,
            field=".".join(budget.path) if budget.path else None, hint="remove the budget")
    return found
