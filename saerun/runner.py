"""Run a spec: validate, plan, then hand the unfinished groups to a launcher (saerun/launch/:
this process, one process per local GPU, or Slurm jobs), which trains, evaluates and registers
them through saerun/execute.py.

Everything that can fail because of the user's input (spec, model name, hook, dataset) fails in
`prepare`, before the registry is touched. This module sits above the launchers: it picks one,
none of them imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saerun.errors import SaerunError, SpecError
from saerun.execute import Summary
from saerun.memory import LMShape
from saerun.models import FAMILIES
from saerun.plan import Budget, ModelDims, Plan, build_plan
from saerun.spec import LineMap, Spec, launcher_with, load_spec, locate

if TYPE_CHECKING:
    from saerun.progress import Progress


@dataclass
class Prepared:
    path: Path
    spec: Spec
    raw: dict
    lines: LineMap
    text: str
    plan: Plan


def model_dims(name: str, offline_table: bool = False) -> ModelDims:
    """Widths of every hook of a model, read from its config (never loads the weights)."""
    from saerun import models, realmodel

    # A real-model tier name plans from the table until it is built (then from its config).
    unbuilt = name in realmodel.REAL_MODELS and realmodel.build_info(name) is None
    info = models.known_dims(name) if offline_table or unbuilt else None
    source = "built-in table of well-known models"
    if info is None:
        info = models.model_info(name)
        source = f"config of {info.source}"
    widths = {hook: models.hook_width(info, hook) for hook in models.hook_names(info)}
    counted = "its safetensors header" if info.n_params is not None else source
    lm = LMShape(models.lm_params(info), info.n_layers, info.d_model, info.d_mlp,
                 info.n_heads or 1, info.d_vocab or 0, FAMILIES.get(info.family, (2,))[0],
                 counted)
    return ModelDims(n_layers=info.n_layers, hook_widths=widths, source=source, n_ctx=info.n_ctx,
                     lm=lm)


def device_budget(spec: Spec, flag: float | None, visible_gpu: bool) -> Budget | None:
    """The device memory budget: the command line's --device-memory over the spec's
    launcher.device_memory_gb; else, with `visible_gpu` (a run), the memory of the visible GPU
    (torch.cuda), none on a CPU. `saerun plan` passes False: planning imports no torch."""
    if flag is not None:
        if not flag > 0:
            raise SpecError(f"--device-memory must be a positive number of GB, got {flag:g}")
        return Budget(flag, None, "--device-memory")
    if spec.launcher.device_memory_gb is not None:
        return Budget(spec.launcher.device_memory_gb, ("launcher", "device_memory_gb"),
                      "launcher.device_memory_gb")
    if not visible_gpu or spec.model.device not in ("auto", "cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    except (RuntimeError, AssertionError):  # CUDA said available but has no device to read
        return None
    return Budget(total / 1e9, None, "the visible GPU's memory")


def prepare(path: str | Path, offline_dims: bool = True, device_memory_gb: float | None = None,
            gpu_budget: bool = False) -> Prepared:
    """Load, validate and plan a spec; check the data exists. Writes nothing, loads nothing.

    offline_dims (the default, what `saerun plan` gets): a well-known model's widths come from
    the built-in table (`models.KNOWN_MODELS`) and a hub dataset name is not looked up, so a
    paper recipe plans with no network; embedded and local files are still checked. `run_spec`
    passes False: before anything is written it needs the model's own config and a dataset it
    can read.

    The runs are packed into device jobs for the budget `device_budget` resolves from
    `device_memory_gb` (the --device-memory flag), the spec, and with `gpu_budget` the visible
    GPU.

    `text` is what the registry keeps: the file as read, or for a spec that `extends` others
    the composed spec as standalone YAML (see `spec.load_spec`). Errors name the file and line
    a value came from, a base spec's for a value the spec inherits (`spec.locate`).
    """
    from saerun import data as data_mod

    path = Path(path)
    spec, raw, lines, text = load_spec(path)
    try:
        budget = device_budget(spec, device_memory_gb, gpu_budget)
        plan = build_plan(spec, raw, lambda name: model_dims(name, offline_table=offline_dims),
                          budget)
    except SpecError as err:
        raise locate(err, lines, str(path), spec) from None
    for dataset in sorted({job.config.data.dataset for job in plan.jobs}):
        try:
            data_mod.resolve_dataset(dataset, need_hub=not offline_dims)
        except SaerunError as err:
            raise locate(SpecError(
                err.message, path=("data", "dataset"), field="data.dataset", hint=err.hint,
            ), lines, str(path), spec) from None
    return Prepared(path, spec, raw, lines, text, plan)


def run_spec(path: str | Path, registry_path: str | Path, progress: Progress | None = None,
             retry_failed: bool = False, launcher: dict[str, Any] | None = None,
             wait: bool = True) -> Summary:
    """Validate, plan, train what is not done yet, evaluate, register.

    launcher: the command line's options over the spec's launcher section (`spec.launcher_with`),
    e.g. {"kind": "slurm", "partition": "gpu"}. `slurm` hands the groups to launch/slurm.py,
    and `wait` says whether to stay until their jobs end; `local` runs them here, or spread
    over this machine's GPUs (launch/local.py).
    """
    # Lazy for start-up only: `saerun plan` imports this module for `prepare`, and the launchers
    # bring torch (through the artifact formats) and sqlite-utils.
    from saerun.launch import local, slurm
    from saerun.registry import Registry

    options = dict(launcher or {})
    flag = options.pop("device_memory_gb", None)
    prepared = prepare(path, offline_dims=False, device_memory_gb=flag, gpu_budget=True)
    plan = prepared.plan
    launcher_cfg = launcher_with(prepared.spec.launcher, options)
    run_ids = [j.run_id for j in plan.jobs]
    with Registry(registry_path) as reg:
        spec_hash = reg.add_spec(plan.spec.name, str(prepared.path), prepared.text)
        reg.ensure_runs(
            spec_hash,
            [
                {"run_id": j.run_id, "name": j.name, "group_key": j.group_key,
                 "config": j.config.model_dump(mode="json"),
                 "step_flops_per_token": j.step_flops_per_token}
                for j in plan.jobs
            ],
        )
        # Runs handed to cluster jobs that have ended since are registered (or failed) first.
        if reg.in_flight(run_ids):
            try:
                slurm.reconcile(reg, run_ids)
            except SaerunError:  # no Slurm here: a local run leaves runs out in jobs alone
                if launcher_cfg.kind == "slurm":
                    raise
        if launcher_cfg.kind == "slurm":
            return slurm.drive(reg, plan, launcher_cfg, retry_failed, progress, wait)
        record = launcher_cfg.model_dump(mode="json")
        devices = local.devices_to_spread(launcher_cfg, plan)
        if devices:
            return local.spread(reg, plan, devices, record, retry_failed)
        summary = Summary(jobs=plan.jobs)
        local.run_here(reg, [dj.runs for dj in plan.device_jobs], record, retry_failed, progress,
                       summary)
        summary.statuses = {r: (reg.get_run(r) or {}).get("status", "?") for r in run_ids}
    return summary
