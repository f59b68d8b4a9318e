"""Running one group of runs, the part every launcher shares: claim, train, evaluate, record.

A group is the set of jobs that share one activation stream; its language model is loaded once
and each batch of its forward pass feeds every SAE. `run_group` writes what it finds to a
`RunSink`: the SQLite `Registry` on this machine, or inside a cluster job
`launch.results.RunFolders`, which writes the same calls as files for the driver to ingest.

`claim_groups` is the one claim loop: it takes device job after device job for this process (the
runs of one group that fit one device, `plan.DeviceJob`; a whole group without a budget), one
transaction each, so processes sharing a registry never run a run twice. The launchers
(launch/local.py, launch/slurm.py) sit above this module; runner.py above them picks one.
"""

from __future__ import annotations

import copy
import errno
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from saerun.errors import SaerunError
from saerun.plan import Job
from saerun.spec import RunConfig, export_spec

if TYPE_CHECKING:
    from saerun.progress import Progress
    from saerun.registry import Registry

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class Interrupted(Exception):
    """Training stopped on request (a cluster's time-limit warning or a pre-emption signal):
    every unfinished SAE of the group was checkpointed at the same batch boundary first, so a
    restart resumes all of them bit-identically. `run_ids`: the runs left unfinished."""

    def __init__(self, reason: str, run_ids: list[str]) -> None:
        super().__init__(reason)
        self.reason, self.run_ids = reason, run_ids


class RunSink(Protocol):
    """Where `run_group` records a group's runs: exactly the calls it makes."""

    def artifacts_dir(self, run_id: str) -> Path: ...

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    def mark_running(self, run_id: str, environment: dict[str, Any], data_fingerprint: str,
                     owner: str | None = None) -> bool: ...

    def add_curve(self, run_id: str, points: list[dict[str, float]]) -> bool: ...

    def mark_done(self, run_id: str, metrics: dict[str, float], train_seconds: float,
                  eval_seconds: float, tokens_trained: int, owner: str | None = None) -> bool: ...

    def mark_failed(self, run_id: str, error: str, owner: str | None = None) -> bool: ...


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

        from saerun.registry import LEASE_SECONDS  # lazy: sqlite-utils only when a run starts

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


def claim_groups(reg: Registry, groups: Iterable[list[Job]], retry_failed: bool,
                 elsewhere: dict[str, str], skip: Collection[str] = ()) -> Iterator[list[Job]]:
    """Claim device job after device job (each a list of runs of one activation group: the whole
    group, or a part that fits one device) for this process; yields the claimed runs of each
    (never empty).

    Lazy on purpose: a local process asks for the next group only when it is free to run it, so
    processes sharing a registry take turns group by group; a launcher that hands every group
    out at once takes the whole list. A run is wanted when it is planned or running (a dead
    process's, taken over), or failed with `retry_failed`; runs in `skip` (already out in
    cluster jobs) never are. Runs another live process holds are added to `elsewhere`.
    """
    from saerun.registry import OWNER  # lazy: runner imports this module for `saerun plan` too

    takes = ("planned", "running", "failed") if retry_failed else ("planned", "running")
    for jobs in groups:
        wanted = [j.run_id for j in jobs if j.run_id not in skip
                  and (reg.get_run(j.run_id) or {}).get("status") in takes]
        if not wanted:
            continue
        # One transaction: two processes on one spec never both get a run.
        claimed, held = reg.claim(wanted, OWNER, retry_failed)
        elsewhere.update(held)
        todo = [j for j in jobs if j.run_id in claimed]
        if todo:
            yield todo


def job_payload(job: Job, spec_name: str | None = None) -> dict[str, Any]:
    """A job as plain JSON for another process (a local worker, a cluster job): nothing from a
    spec is ever pickled or re-planned there."""
    return {"run_id": job.run_id, "name": job.name, "group_key": job.group_key,
            "config": job.config.model_dump(mode="json"), "spec_name": spec_name}


def job_from_payload(payload: dict[str, Any]) -> Job:
    return Job(payload["run_id"], payload["name"], RunConfig.model_validate(payload["config"]),
               payload["group_key"], {})


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def set_tf32(device: str, allowed: bool) -> bool | None:
    """TF32 matmuls and convolutions on CUDA as train.tf32 says; what was set (None off CUDA,
    where there is no TF32 to set)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    return allowed


def environment(device: str, numerics_mode: str) -> dict[str, Any]:
    """What a reader needs to trust or reproduce a number: versions, device, git commit."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
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


def failure_reason(err: Exception) -> str:
    """What a run that crashed is marked failed with."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return (f"disk full while writing ({err}); free space and run again with "
                "--retry-failed: training resumes from the last checkpoint")
    return f"{type(err).__name__}: {err}"


def run_group(reg: RunSink, jobs: list[Job], progress: Progress | None,
              stop: Callable[[], str | None] | None = None) -> dict[str, str]:
    """Train, evaluate and register one group of claimed jobs; returns {run_id: reason} of the
    runs that failed numerically (marked failed; the others were finished).

    stop: asked after every batch; a reason (not None) checkpoints every unfinished SAE at that
    batch and raises `Interrupted` (launch/worker.py: Slurm's warning before the time limit, or
    pre-emption)."""
    import torch

    from saerun import artifacts, data, imported, realmodel, saelens
    from saerun import stream as stream_mod
    from saerun.activations import (
        LanguageModel,
        estimate_norm_scale,
        eval_token_batches,
        outlier_limits,
        remember_head,
    )
    from saerun.evaluate import evaluate_group
    from saerun.registry import OWNER
    from saerun.train import Trainer, train_group

    first = jobs[0].config
    device = pick_device(first.model.device)
    # The SAEs may train on another device than the LM's (train.device); batches move there.
    sae_device = pick_device(first.train.device) if first.train.device else device
    dtype = getattr(torch, first.model.dtype)
    lm = LanguageModel.load(first.model.name, device=device, dtype=dtype)
    env = environment(device, lm.numerics_mode)
    if first.model.name in realmodel.REAL_MODELS:  # where its weights came from (quantised)
        env["model_build"] = realmodel.build_info(first.model.name)
    env["sae_device"] = sae_device
    env["precision"] = first.train.precision
    env["tf32"] = set_tf32(sae_device, first.train.tf32)
    fingerprint = data.fingerprint(first.data)
    hooks = sorted({h for j in jobs for h in (j.config.site.hook_name, j.config.site.hook_name_out)
                    if h is not None})  # a transcoder's target rides the same forward
    if imported.is_imported(first):  # SAEs trained elsewhere: evaluated only (imported.py)
        return imported.evaluate_imported(reg, jobs, lm, env, fingerprint)

    trainers: list[Trainer] = []
    metas: list[dict[str, Any]] = []  # each trainer's checkpoint meta ({} when it starts afresh)
    for job in jobs:
        folder = reg.artifacts_dir(job.run_id)
        tr = Trainer.create(job.run_id, job.config, sae_device)
        notes: list[str] = []  # checkpoints passed over (checksum mismatch, unreadable)
        saved = artifacts.load_checkpoint(folder, notes)
        if saved is not None:
            tr.load_state(*saved)
        trainers.append(tr)
        metas.append(saved[1] if saved is not None else {})
        run_env = env
        if notes:  # said in the job's log and kept with the run
            notes.append(f"resumed from step {tr.step}" if saved else "restarted from step 0")
            run_env = {**env, "checkpoint_notes": notes}
            sys.stderr.write(f"saerun: run {job.run_id[:10]}: {'; '.join(notes)}\n")
        reg.mark_running(job.run_id, run_env, fingerprint, OWNER)
        run = reg.get_run(job.run_id)
        if run is None:  # the sink lost a run this process holds: nothing sensible to write
            raise SaerunError(f"run {job.run_id[:10]} vanished from the registry while running")
        # The standalone spec of this one run (what `saerun export-spec` prints).
        artifacts.write_text(folder / "run.yaml", export_spec(run))

    # A resumed job (every SAE has a checkpoint): the norm scales and outlier limits its
    # checkpoints recorded, instead of a model pass over the stream head to measure them again;
    # a restart then costs only what comes after its stream snapshot (or, every SAE trained,
    # the evaluation).
    recorded = all("outlier_limits" in m for m in metas)  # {} for an SAE with no checkpoint
    if recorded:
        scales = {}
        for tr, m in zip(trainers, metas, strict=True):
            scales[tr.hook_name] = float(m["norm_scale"])
            if tr.hook_name_out is not None:
                scales[tr.hook_name_out] = float(m["norm_scale_out"])
        saved_limits = metas[0]["outlier_limits"]
        limits = None if saved_limits is None else {h: float(v) for h, v in saved_limits.items()}
        remember_head(lm, first.data, hooks, limits, scales)
    elif first.data.normalize == "expected_norm":
        scales = estimate_norm_scale(lm, first.data, hooks)
    else:
        scales = dict.fromkeys(hooks, 1.0)

    streams: list[stream_mod.ActivationStream] = []  # the group's stream, while training
    snapshotted: set[int] = set()

    def checkpoint(tr: Trainer) -> None:
        # The stream's state at this step first (once per step, in the folder of the first
        # unfinished run), so that no checkpoint exists without it: a resumed job goes on
        # from there instead of running the model over everything before the step.
        snap = streams[0].snapshot(tr.step) if streams and not tr.done else None
        if snap is not None and tr.step not in snapshotted:
            lead = min(t.run_id for t in trainers if not t.done and t.failure is None)
            stream_mod.save_snapshot(reg.artifacts_dir(lead), snap, lm.dtype,
                                     tr.config.train.keep_checkpoints)
            snapshotted.add(tr.step)
        tensors, meta = tr.state()
        meta["train_seconds"] = before[tr.run_id] + time.perf_counter() - t0
        meta["norm_scale"] = scales[tr.hook_name]
        meta["outlier_limits"] = outlier_limits(lm, first.data, hooks)  # the stream head's
        if streams:  # the training positions the stream dropped as outliers so far
            meta["stream_outliers"] = streams[0].seen["outlier_positions"]
        if tr.hook_name_out is not None:
            meta["norm_scale_out"] = scales[tr.hook_name_out]
        artifacts.save_checkpoint(reg.artifacts_dir(tr.run_id), tensors, meta,
                                  tr.config.train.keep_checkpoints)
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
    # The training time of the earlier processes a checkpoint carries: a requeued run's
    # train_seconds is all of its training, not only the last process's.
    before = {tr.run_id: float(m.get("train_seconds", 0.0)) for tr, m in zip(trainers, metas,
                                                                             strict=True)}
    t0 = time.perf_counter()
    stream_outliers: int | None = None  # training positions dropped as outliers, when trained
    if recorded and all("stream_outliers" in m for m in metas):
        stream_outliers = max(int(m["stream_outliers"]) for m in metas)
    if any(not tr.done for tr in trainers):
        stream = stream_mod.ActivationStream(lm, first.data, hooks, first.train.batch_tokens,
                                             sae_device)
        if start:
            note = stream_mod.resume_stream(stream, start,
                                            [reg.artifacts_dir(tr.run_id) for tr in trainers])
            if note is not None:
                sys.stderr.write(f"saerun: {note}\n")
        streams.append(stream)
        # overlap: the next LM batch is computed while the SAEs step (bit-identical either way).
        ahead = stream_mod.prefetch(stream) if first.train.overlap else None
        batches = ahead if ahead is not None else stream
        task = progress.start_group(jobs, total, start) if progress is not None else None

        flushed = [time.monotonic()]

        def on_batch(i: int) -> None:
            if progress is not None and task is not None:
                progress.advance(task, i, trainers)
            # Curves reach the registry on their own clock too, not only at checkpoints.
            if time.monotonic() - flushed[0] >= first.train.curve_flush_seconds:
                flushed[0] = time.monotonic()
                for tr in trainers:
                    if tr.curve:
                        reg.add_curve(tr.run_id, tr.curve)
                        tr.curve = []
            reason = stop() if stop is not None else None
            if reason is not None:  # between batches: every trainer is at a step boundary
                raise Interrupted(reason, [tr.run_id for tr in trainers
                                           if not tr.done and tr.failure is None])

        try:
            train_group(trainers, batches, start, scales, checkpoint, on_batch, failed)
            if progress is not None and task is not None:
                progress.finish(task)
        except Interrupted:
            for tr in trainers:  # never from a broken state (as every checkpoint)
                if not tr.done and tr.failure is None and tr.check_health() is None:
                    checkpoint(tr)
            raise
        finally:
            if ahead is not None:
                ahead.close()  # stops and joins the producer, also when training stopped early
        stream_outliers = stream.seen["outlier_positions"]
    train_seconds = time.perf_counter() - t0

    trainers = [tr for tr in trainers if tr.failure is None]
    if not trainers:
        return failures
    t1 = time.perf_counter()
    folded = {}
    for tr in trainers:
        sae = copy.deepcopy(tr.sae).eval().to(device)  # evaluated beside the LM
        out = tr.hook_name_out
        sae.fold_scale(scales[tr.hook_name], None if out is None else scales[out])
        folded[tr.run_id] = (sae, tr.hook_name, out)
    eval_batches = eval_token_batches(lm, first.data)
    metric_names: set[str] = set(first.eval.metrics)
    if not recorded:
        limits = outlier_limits(lm, first.data, hooks)

    def between_eval_batches() -> None:  # a stop now: every SAE is trained and checkpointed
        reason = stop() if stop is not None else None
        if reason is not None:
            raise Interrupted(reason, [tr.run_id for tr in trainers])

    results = evaluate_group(lm, eval_batches, folded, metric_names,
                             first.data.exclude_special_tokens, limits, between_eval_batches)
    eval_seconds = time.perf_counter() - t1

    for tr in trainers:
        res = results[tr.run_id]
        metrics = dict(res.metrics)
        metrics["dead_fraction_train"] = tr.dead_mask().float().mean().item()
        metrics["norm_scale"] = scales[tr.hook_name]
        if limits is not None:  # why positions were excluded: the norm they exceeded
            metrics["outlier_norm_limit"] = limits[tr.hook_name]
            if stream_outliers is not None:
                metrics["excluded_outlier_positions_train"] = float(stream_outliers)
        out = tr.hook_name_out
        cfg = saelens.export_cfg(tr.sae, tr.config, tr.run_id, lm.numerics_mode,
                                 scales[tr.hook_name], metrics,
                                 None if out is None else scales[out])
        artifacts.write_sae(reg.artifacts_dir(tr.run_id), folded[tr.run_id][0], cfg, res.density)
        reg.mark_done(tr.run_id, metrics, before[tr.run_id] + train_seconds, eval_seconds,
                      tr.tokens, OWNER)
        stream_mod.remove_snapshots(reg.artifacts_dir(tr.run_id))  # nothing resumes a done run
    return failures
