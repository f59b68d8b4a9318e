"""Run a spec: validate, plan, train every unfinished job group, evaluate, register (here, or
through a launcher of saerun/launch/: one process per local GPU, or Slurm jobs).

Everything that can fail because of the user's input (spec, model name, hook, dataset) fails in
`prepare`, before the registry is touched. A group is the set of jobs that share one activation
stream; its language model is loaded once and each batch of its forward pass feeds every SAE.
"""

from __future__ import annotations

import copy
import errno
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError, SpecError
from saerun.plan import Job, ModelDims, Plan, build_plan
from saerun.spec import LineMap, Spec, launcher_with, load_spec, locate

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass
class Prepared:
    path: Path
    spec: Spec
    raw: dict
    lines: LineMap
    text: str
    plan: Plan


@dataclass
class Summary:
    jobs: list[Job]
    trained: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    elsewhere: dict[str, str] = field(default_factory=dict)  # run id -> the live process on it
    submitted: dict[str, str] = field(default_factory=dict)  # run id -> its cluster job's id


class Heartbeat:
    """Renews this process's lease on its claimed runs from a daemon thread (with its own
    registry connection), so long model loads, steps or evaluations never look like death,
    while a killed process stops renewing and its runs are taken over once the lease lapses."""

    def __init__(self, registry_path: Path, run_ids: list[str]) -> None:
        import threading

        from saerun.registry import LEASE_SECONDS

        self.path, self.run_ids, self.every = registry_path, run_ids, LEASE_SECONDS / 4
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="saerun-heartbeat", daemon=True)

    def _loop(self) -> None:
        from saerun.registry import Registry

        with Registry(self.path) as reg:
            while not self.stop.wait(self.every):
                try:
                    reg.renew(self.run_ids)
                except SaerunError:  # locked for a while: the next beat tries again
                    pass

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def model_dims(name: str, offline_table: bool = False) -> ModelDims:
    """Widths of every hook of a model, read from its config (never loads the weights)."""
    from saerun import models

    info = models.known_dims(name) if offline_table else None
    source = "built-in table of well-known models"
    if info is None:
        info = models.model_info(name)
        source = f"config of {info.source}"
    widths = {hook: models.hook_width(info, hook) for hook in models.hook_names(info)}
    return ModelDims(n_layers=info.n_layers, hook_widths=widths, source=source, n_ctx=info.n_ctx)


def prepare(path: str | Path, offline_dims: bool = True) -> Prepared:
    """Load, validate and plan a spec; check the data exists. Writes nothing, loads nothing.

    offline_dims (the default, what `saerun plan` gets): a well-known model's widths come from
    the built-in table (`models.KNOWN_MODELS`) and a hub dataset name is not looked up, so a
    paper recipe plans with no network; embedded and local files are still checked. `run_spec`
    passes False: before anything is written it needs the model's own config and a dataset it
    can read.

    `text` is what the registry keeps: the file as read, or for a spec that `extends` others
    the composed spec as standalone YAML (see `spec.load_spec`). Errors name the file and line
    a value came from, a base spec's for a value the spec inherits (`spec.locate`).
    """
    from saerun import data as data_mod

    path = Path(path)
    spec, raw, lines, text = load_spec(path)
    try:
        plan = build_plan(spec, raw, lambda name: model_dims(name, offline_table=offline_dims))
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


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def environment(device: str, numerics_mode: str) -> dict[str, Any]:
    """What a reader needs to trust or reproduce a number: versions, device, git commit."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("saerun", "torch", "transformer-lens", "transformers", "pydantic"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "numerics_mode": numerics_mode,
        "git_commit": commit,
    }


def run_spec(path: str | Path, registry_path: str | Path, progress: Any = None,
             retry_failed: bool = False, launcher: dict[str, Any] | None = None,
             wait: bool = True) -> Summary:
    """Validate, plan, train what is not done yet, evaluate, register.

    launcher: the command line's options over the spec's launcher section (`spec.launcher_with`),
    e.g. {"kind": "slurm", "partition": "gpu"}. `slurm` hands the groups to launch/slurm.py,
    and `wait` says whether to stay until their jobs end.
    """
    from saerun.launch import local, slurm
    from saerun.registry import OWNER, Registry

    prepared = prepare(path, offline_dims=False)
    plan = prepared.plan
    launcher_cfg = launcher_with(prepared.spec.launcher, launcher or {})
    with Registry(registry_path) as reg:
        spec_hash = reg.add_spec(plan.spec.name, str(prepared.path), prepared.text)
        statuses = reg.ensure_runs(
            spec_hash,
            [
                {"run_id": j.run_id, "name": j.name, "group_key": j.group_key,
                 "config": j.config.model_dump(mode="json")}
                for j in plan.jobs
            ],
        )
        # Runs handed to cluster jobs that have ended since are registered (or failed) first.
        try:
            slurm.reconcile(reg, [j.run_id for j in plan.jobs])
        except SaerunError:  # no Slurm here: a local run leaves runs out in jobs alone
            if launcher_cfg.kind == "slurm":
                raise
        if launcher_cfg.kind == "slurm":
            return slurm.drive(reg, plan, launcher_cfg, retry_failed, progress, wait)
        devices = local.devices_to_spread(launcher_cfg, plan)
        if devices:
            return local.spread(reg, prepared.path, plan, devices, retry_failed)
        summary = Summary(jobs=plan.jobs)
        for jobs in plan.groups.values():
            wanted = [j.run_id for j in jobs if statuses[j.run_id] in ("planned", "running")
                      or (retry_failed and statuses[j.run_id] == "failed")]
            if not wanted:
                continue
            # One transaction: two processes on one spec never both get a run.
            claimed, held = reg.claim(wanted, OWNER, retry_failed)
            summary.elsewhere.update(held)
            todo = [j for j in jobs if j.run_id in claimed]
            if not todo:
                continue
            reg.record_launch(claimed, launcher_cfg.model_dump(mode="json"))
            try:
                with Heartbeat(reg.path, claimed):
                    failures = run_group(reg, todo, progress)
                summary.failed.update(failures)
                summary.trained += [j.run_id for j in todo if j.run_id not in failures]
            except SaerunError:
                raise
            except Exception as err:  # a crash in one group must not lose the others
                reason = failure_reason(err)
                for job in todo:
                    reg.mark_failed(job.run_id, reason, OWNER)
                    summary.failed[job.run_id] = reason
        summary.statuses = {j.run_id: (reg.get_run(j.run_id) or {}).get("status", "?")
                            for j in plan.jobs}
    return summary


def failure_reason(err: Exception) -> str:
    """What a run that crashed is marked failed with."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return (f"disk full while writing ({err}); free space and run again with "
                "--retry-failed: training resumes from the last checkpoint")
    return f"{type(err).__name__}: {err}"


def run_group(reg: Any, jobs: list[Job], progress: Any) -> dict[str, str]:
    """Train, evaluate and register one group of claimed jobs; returns {run_id: reason} of the
    runs that failed numerically (marked failed; the others were finished).

    `reg` is the Registry, or inside a cluster job `launch.results.RunFolders`, which takes the
    same calls and writes them as files in the run folders for the driver to ingest."""
    import torch

    from saerun import artifacts, data
    from saerun.activations import (
        ActivationStream,
        LanguageModel,
        estimate_norm_scale,
        eval_token_batches,
    )
    from saerun.evaluate import evaluate_group
    from saerun.registry import OWNER
    from saerun.reproduce import export_spec
    from saerun.train import Trainer, train_group

    first = jobs[0].config
    device = pick_device(first.model.device)
    dtype = getattr(torch, first.model.dtype)
    lm = LanguageModel.load(first.model.name, device=device, dtype=dtype)
    env = environment(device, lm.numerics_mode)
    fingerprint = data.fingerprint(first.data)
    hooks = sorted({j.config.site.hook_name for j in jobs})

    trainers: list[Trainer] = []
    for job in jobs:
        folder = reg.artifacts_dir(job.run_id)
        tr = Trainer.create(job.run_id, job.config, device)
        saved = artifacts.load_checkpoint(folder)
        if saved is not None:
            tr.load_state(*saved)
        trainers.append(tr)
        reg.mark_running(job.run_id, env, fingerprint, OWNER)
        # The standalone spec of this one run (what `saerun export-spec` prints).
        artifacts.write_text(folder / "run.yaml", export_spec(reg.get_run(job.run_id)))

    if first.data.normalize == "expected_norm":
        scales = estimate_norm_scale(lm, first.data, hooks)
    else:
        scales = dict.fromkeys(hooks, 1.0)

    def checkpoint(tr: Trainer) -> None:
        tensors, meta = tr.state()
        meta["norm_scale"] = scales[tr.hook_name]
        artifacts.save_checkpoint(reg.artifacts_dir(tr.run_id), tensors, meta)
        reg.add_curve(tr.run_id, tr.curve)
        tr.curve = []

    failures: dict[str, str] = {}

    def failed(tr: Trainer) -> None:
        saved = artifacts.load_checkpoint(reg.artifacts_dir(tr.run_id))
        kept = f"last good checkpoint: step {saved[1]['step']}" if saved else "no checkpoint yet"
        failures[tr.run_id] = f"{tr.failure} ({kept})"
        reg.mark_failed(tr.run_id, failures[tr.run_id], OWNER)

    start = min(tr.step for tr in trainers)
    total = max(tr.total_steps for tr in trainers)
    t0 = time.perf_counter()
    if any(not tr.done for tr in trainers):
        stream = ActivationStream(lm, first.data, hooks, first.train.batch_tokens, device)
        if start:
            stream.skip(start)
        task = progress.start_group(jobs, total, start) if progress else None
        on_batch = (lambda i: progress.advance(task, i, trainers)) if progress else (lambda i: None)
        train_group(trainers, stream, start, scales, checkpoint, on_batch, failed)
        if progress:
            progress.finish(task)
    train_seconds = time.perf_counter() - t0

    trainers = [tr for tr in trainers if tr.failure is None]
    if not trainers:
        return failures
    t1 = time.perf_counter()
    folded = {}
    for tr in trainers:
        sae = copy.deepcopy(tr.sae).eval()
        sae.fold_scale(scales[tr.hook_name])
        folded[tr.run_id] = (sae, tr.hook_name)
    eval_batches = eval_token_batches(lm, first.data)
    metric_names = set(first.eval.metrics)
    results = evaluate_group(lm, eval_batches, folded, metric_names,
                             first.data.exclude_special_tokens)
    eval_seconds = time.perf_counter() - t1

    for tr in trainers:
        res = results[tr.run_id]
        metrics = dict(res.metrics)
        metrics["dead_fraction_train"] = tr.dead_mask().float().mean().item()
        metrics["norm_scale"] = scales[tr.hook_name]
        metadata = {
            "model_name": tr.config.model.name,
            "hook_name": tr.hook_name,
            "context_size": tr.config.data.context_size,
            "prepend_bos": True,
            "dataset_path": tr.config.data.dataset,
            "saerun_run_id": tr.run_id,
            "saerun_architecture": tr.config.sae.architecture,
            "numerics_mode": lm.numerics_mode,
            "normalization_scale_folded": scales[tr.hook_name],
        }
        artifacts.write_sae(reg.artifacts_dir(tr.run_id), folded[tr.run_id][0], metadata,
                            res.density)
        reg.mark_done(tr.run_id, metrics, train_seconds, eval_seconds, tr.tokens, OWNER)
    return failures
