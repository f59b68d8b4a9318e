"""The Slurm launcher: submit device jobs as one job array through submitit, watch the jobs,
and register what they leave behind.

One array task per device job (`plan.DeviceJob`: the SAEs of one activation group that fit one
device, sharing one model pass; the whole group without a budget), one array per submission, at
most `max_parallel` tasks at once. Only this driver writes the registry; jobs write result files
into the run folders (launch/results.py), which `reconcile` ingests as jobs end. A run handed to
a job is `running`, owned by `slurm:job:<id>` with a lease that never lapses by itself: it is
freed only when Slurm says the job ended (squeue, then sacct: accounting through slurmdbd is
what remembers a job that was killed or cancelled after it left the queue).

Exactly once, whenever the driver dies: the array is submitted held (`--hold`), its job ids are
written to the registry, and only then released. A driver killed before the ids were written
leaves a held array that nothing ever releases (a later driver cancels it); one killed after
leaves runs the next `saerun SPEC` or `saerun collect` recognises as its jobs (and releases, if
they were still held). Stop and restart the driver at any time: it submits what no live job
holds and waits for the rest.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saerun.errors import SaerunError
from saerun.execute import Heartbeat, Summary, claim_groups, job_payload
from saerun.launch import results, worker
from saerun.plan import Job, Plan
from saerun.spec import SlurmLauncher, slurm_minutes
from saerun.spec.launcher import signal_seconds

if TYPE_CHECKING:
    from saerun.progress import Progress
    from saerun.registry import Registry

JOB_LEASE_SECONDS = 10 * 365 * 86400.0  # never lapses: a job's runs are freed by its end
POLL_SECONDS = float(os.environ.get("SAERUN_POLL_SECONDS", "10"))
# A job Slurm knows nothing about yet: right after submission accounting may lag; after this
# long it is lost (the cluster was reset, or accounting is off).
UNKNOWN_GRACE_SECONDS = 120.0
# A held job of ours that the registry never heard of is an orphan after this long.
ORPHAN_SECONDS = 60.0

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD",
          "CONFIGURING", "RESIZING", "STOPPED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


def job_owner(job_id: str) -> str:
    """The registry owner of runs handed to a job (never host:pid, so never probed locally)."""
    return f"slurm:job:{job_id}"


def phase(state: str | None) -> str:
    """queued | running | ended | unknown, from a Slurm job state."""
    if state in QUEUED:
        return "queued"
    if state in RUNNING:
        return "running"
    if state in ENDED:
        return "ended"
    return "unknown"


def _slurm(*args: str, timeout: float = 60) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SaerunError(f"`{args[0]}` not found: Slurm's commands are not installed here",
                          hint="run the driver on a node of the cluster (a login node)") from None
    except subprocess.TimeoutExpired:
        raise SaerunError(f"`{' '.join(args)}` did not answer in {timeout:.0f} s",
                          hint="is slurmctld up? `sinfo` says") from None
    if out.returncode != 0:
        raise SaerunError(f"`{' '.join(args)}` failed: {out.stderr.strip() or out.stdout}")
    return out.stdout


def job_states(job_ids: set[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason or exit code)} for the jobs Slurm knows (array tasks as
    `<array>_<task>`): the queue first, accounting for the jobs that left it."""
    if not job_ids:
        return {}
    states: dict[str, tuple[str, str]] = {}
    for line in _slurm("squeue", "-h", "-r", "-u", getpass.getuser(),
                       "-o", "%i|%T|%r").splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job in job_ids:
            states[job] = (state, reason)
    rest_ids = job_ids - set(states)
    if rest_ids:
        bases = sorted({j.split("_")[0] for j in rest_ids})
        for line in _slurm("sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode",
                           "-j", ",".join(bases)).splitlines():
            job, state, code = (line.split("|") + ["", ""])[:3]
            if job in rest_ids:
                # "CANCELLED by 0" -> CANCELLED; the exit code says how a FAILED job ended.
                states[job] = (state.split()[0] if state else "", f"exit code {code}")
    return states


def reconcile(reg: Registry, run_ids: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Register every run whose job has ended: its result if the job wrote one, else failed
    with Slurm's word for how the job ended and its log. Held jobs of ours are released.
    Returns [(run_id, "done" | "failed", detail)] of the runs registered now."""
    flights = reg.in_flight(run_ids)
    if not flights:
        return []
    # The state first, the files second: a job that ended wrote its files before it ended.
    states = job_states({f["job_id"] for f in flights})
    registry_dir = reg.path.parent
    events: list[tuple[str, str, str]] = []
    released: set[str] = set()
    for flight in flights:
        run_id, job_id, log = flight["run_id"], flight["job_id"], flight["log_path"]
        state, detail = states.get(job_id, (None, ""))
        folder = results.run_folder(registry_dir, run_id)
        requeues = results.read_requeues(folder, job_id)
        if requeues != flight["requeues"]:
            reg.set_requeues(run_id, requeues)
        result = results.read_result(folder, job_id)
        where = f"Slurm job {job_id}, log {log}"
        if result is not None:
            if result["status"] == "failed":
                result["error"] = f"{result['error']} ({where})"
            if reg.ingest(run_id, flight["owner"], result):
                events.append((run_id, result["status"], result.get("error") or where))
            continue
        if phase(state) == "ended" or (state is None and _older_than(
                flight["started_at"], UNKNOWN_GRACE_SECONDS)):
            if state is None:
                reason = f"Slurm job {job_id} is unknown to squeue and sacct; log {log}"
            elif state == "COMPLETED":
                reason = f"Slurm job {job_id} completed without writing a result; log {log}"
            else:  # FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY, ...
                reason = f"Slurm job {job_id} ended {state} ({detail}) without a result; log {log}"
            if reg.mark_failed(run_id, reason, flight["owner"]):
                events.append((run_id, "failed", reason))
        elif state == "PENDING" and detail == "JobHeldUser" and job_id not in released:
            # Our driver died between writing the job's id and releasing it.
            _slurm("scontrol", "release", job_id)
            released.add(job_id)
    return events


def _older_than(stamp: str | None, seconds: float) -> bool:
    from datetime import UTC, datetime

    if not stamp:
        return True
    started = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return time.time() - started.timestamp() > seconds


def registry_tag(reg: Registry) -> str:
    """In every job name of this registry, so a driver can tell its own orphans apart."""
    return hashlib.sha256(str(reg.path.resolve()).encode()).hexdigest()[:8]


def cancel_orphans(reg: Registry) -> list[str]:
    """Cancel held jobs of this registry that no run knows: a driver died between submitting
    them and writing their ids. They never ran (they were held)."""
    tag = f"-{registry_tag(reg)}"
    known = {f["job_id"] for f in reg.in_flight()}
    now = time.time()
    orphans = []
    for line in _slurm("squeue", "-h", "-r", "-u", getpass.getuser(), "-t", "PD",
                       "-o", "%i|%j|%r|%V").splitlines():
        job, name, reason, submitted = (line.strip().split("|") + ["", "", ""])[:4]
        if not name.endswith(tag) or reason != "JobHeldUser" or job in known:
            continue
        try:
            age = now - time.mktime(time.strptime(submitted, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            continue
        if age > ORPHAN_SECONDS:
            orphans.append(job)
    if orphans:
        _slurm("scancel", *orphans)
    return orphans


def submit(reg: Registry, groups: list[list[Job]], launcher: SlurmLauncher, spec_name: str,
           owner: str) -> dict[str, str]:
    """One held job array (one task per group), its ids written to the registry, released.
    Returns {run_id: job_id}."""
    import submitit  # lazy: only a Slurm driver needs it


    registry_dir = reg.path.parent.resolve()
    folder = Path(launcher.folder) if launcher.folder else registry_dir / "slurm"
    executor = submitit.SlurmExecutor(folder=folder / "%j", python=sys.executable)
    minutes = slurm_minutes(launcher.time)
    params: dict[str, Any] = {
        "job_name": f"saerun-{spec_name}-{registry_tag(reg)}",
        "time": minutes,
        # The warning before the time limit (SIGUSR2): checkpoint, requeue (launch/worker.py).
        "signal_delay_s": signal_seconds(launcher),
        "cpus_per_task": launcher.cpus_per_job,
        "array_parallelism": launcher.max_parallel,
        "stderr_to_stdout": True,  # one log per job: the one a failed run points at
        "additional_parameters": {"hold": True, **launcher.sbatch},
    }
    if launcher.partition:
        params["partition"] = launcher.partition
    if launcher.gpus_per_job:
        params["gpus_per_node"] = launcher.gpus_per_job
    if launcher.mem_gb:
        params["mem"] = f"{int(launcher.mem_gb * 1024)}M"
    executor.update_parameters(**params)

    for group in groups:  # an old result must never pass for the new job's
        for job in group:
            results.clear_result(results.run_folder(registry_dir, job.run_id))
    payloads = [[job_payload(j, spec_name) for j in group] for group in groups]
    try:
        with executor.batch():
            handles = [executor.submit(worker.run_group, str(registry_dir), p,
                                       launcher.max_requeues) for p in payloads]
    except Exception as err:  # sbatch refused (partition, account, resources...): nothing ran
        raise SaerunError(f"Slurm refused the jobs: {err}".strip(),
                          hint="check --partition, --time and the sbatch options") from None

    submitted: dict[str, str] = {}
    for group, handle in zip(groups, handles, strict=True):
        ids = [j.run_id for j in group]
        recorded = reg.record_launch(
            ids, launcher.model_dump(mode="json"), owner, job_id=handle.job_id,
            log_path=str(handle.paths.stdout), job_owner=job_owner(handle.job_id),
            lease_seconds=JOB_LEASE_SECONDS,
        )
        if len(recorded) < len(ids):  # our claim lapsed meanwhile: this job must never run
            _slurm("scancel", handle.job_id)
            ids = recorded
        submitted.update(dict.fromkeys(ids, handle.job_id))
    for array_id in sorted({h.job_id.split("_")[0] for h in handles}):
        _slurm("scontrol", "release", array_id)
    return submitted


def drive(reg: Registry, plan: Plan, launcher: SlurmLauncher, retry_failed: bool,
          progress: Progress | None, wait: bool) -> Summary:
    """`saerun SPEC --launcher slurm`: submit what no live job holds, then (with `wait`) watch
    every job of the spec until it ends, registering its runs as it does."""
    from saerun.registry import OWNER

    say: Callable[[str], None] = progress.note if progress is not None else (lambda _: None)
    summary = Summary(jobs=plan.jobs)
    run_ids = [j.run_id for j in plan.jobs]
    cancel_orphans(reg)
    flying = {f["run_id"]: f["job_id"] for f in reg.in_flight(run_ids)}
    # Every device job at once: one job array takes them all.
    groups = list(claim_groups(reg, [dj.runs for dj in plan.device_jobs], retry_failed,
                               summary.elsewhere, skip=flying))
    claimed = [j.run_id for group in groups for j in group]
    if groups:
        try:
            with Heartbeat(reg.path, claimed):
                summary.submitted = submit(reg, groups, launcher, plan.spec.name, OWNER)
        except SaerunError as err:
            for run_id in claimed:  # not submitted: failed, visibly, until --retry-failed
                reg.mark_failed(run_id, f"not submitted to Slurm: {err.message}", OWNER)
            raise
        ids = sorted({j.split("_")[0] for j in summary.submitted.values()})
        say(f"submitted {len(summary.submitted)} run(s) in {len(groups)} Slurm job(s) "
            f"({'array' if len(groups) > 1 else 'job'} {', '.join(ids)}, "
            f"at most {launcher.max_parallel} at once)")
    if flying:
        jobs = ", ".join(sorted(set(flying.values())))
        say(f"{len(flying)} run(s) already out in Slurm job(s) {jobs}")
    while wait and reg.in_flight(run_ids):
        time.sleep(POLL_SECONDS)
        for run_id, status, detail in reconcile(reg, run_ids):
            if status == "done":
                summary.trained.append(run_id)
                say(f"done {run_id[:10]}")
            else:
                summary.failed[run_id] = detail
    summary.statuses = {r: (reg.get_run(r) or {}).get("status", "?") for r in run_ids}
    return summary


def collect(reg: Registry, run_ids: list[str] | None = None,
            wait: bool = False) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """`saerun collect`: register what ended jobs left (a driver that died would have), cancel
    orphaned held jobs; with `wait`, until no job is out. Returns (events, runs still out)."""
    import shutil

    if shutil.which("squeue"):  # no Slurm here: no orphans either
        cancel_orphans(reg)
    events = reconcile(reg, run_ids)
    while wait and reg.in_flight(run_ids):
        time.sleep(POLL_SECONDS)
        events += reconcile(reg, run_ids)
    return events, reg.in_flight(run_ids)


def run_states(reg: Registry,
               run_ids: list[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """`saerun status`: every run (of `run_ids`, else all) with its status as a user thinks of
    it: planned, queued, requeued, running, done or failed (with `requeues`: how many times its
    job requeued itself; `saved_tokens`: the tokens its newest checkpoint holds, of
    `train_tokens`, while it is not done), asking Slurm about runs out in jobs. Returns
    (rows, a note when Slurm could not be asked)."""
    from saerun import artifacts

    runs = reg.list_runs(details=True)
    if run_ids is not None:
        order = {r: i for i, r in enumerate(run_ids)}
        runs = sorted((r for r in runs if r["run_id"] in order), key=lambda r: order[r["run_id"]])
    flights = {f["run_id"]: f for f in reg.in_flight(run_ids)}
    note = ""
    try:
        states = job_states({f["job_id"] for f in flights.values()})
    except SaerunError as err:
        states, note = {}, f"Slurm not asked: {err.message}"
    rows = []
    for run in runs:
        row = {k: run[k] for k in ("run_id", "name", "status", "job_id", "log_path", "error",
                                   "requeues")}
        row["slurm_state"] = None
        row["train_tokens"] = run["config"].get("data", {}).get("train_tokens")
        meta = None if run["status"] == "done" else \
            artifacts.checkpoint_meta(reg.artifacts_dir(run["run_id"]))
        row["saved_tokens"] = None if meta is None else meta["tokens"]
        if run["run_id"] in flights:
            # A job out on the cluster writes its requeue count into the run folder; the
            # registry learns it at the next reconcile, which a --no-wait driver never runs.
            folder = results.run_folder(reg.path.parent, run["run_id"])
            row["requeues"] = max(run["requeues"] or 0,
                                  results.read_requeues(folder, str(run["job_id"])))
            state = states.get(run["job_id"], ("", ""))[0] or None
            row["slurm_state"] = state
            kind = phase(state)
            if kind in ("queued", "running"):
                # A job waiting in the queue again after requeueing itself is `requeued`.
                row["status"] = "requeued" if kind == "queued" and row["requeues"] else kind
            elif kind == "ended":
                row["error"] = "the job has ended; `saerun collect` registers it"
        rows.append(row)
    return rows, note
