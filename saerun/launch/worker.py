"""What runs inside a cluster job: one device job, through the same code as a local run
(execute.run_group).

submitit pickles `run_group` with its arguments (plain JSON-able values: paths, ids, resolved
configs) into the job folder saerun itself created; nothing from a spec is ever unpickled. The
job writes results into the run folders (launch/results.py), never into the registry.

Time limits and pre-emption: Slurm sends SIGUSR2 `signal_delay_s` before the time limit
(sbatch --signal, set by launch/slurm.py) and SIGTERM on pre-emption or cancellation. Either
stops training at the next batch boundary, where every unfinished SAE of the job is
checkpointed. After SIGUSR2 the job requeues itself (`scontrol requeue`: same job id, so the
driver keeps waiting for it) and exits; started again, it resumes from those checkpoints
bit-identically. After SIGTERM it exits and Slurm decides: a pre-emption with requeue starts it
again, a cancel ends it. More than `max_requeues` requeues fail its runs with that reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

from saerun.execute import Interrupted, failure_reason, job_from_payload
from saerun.execute import run_group as train_and_evaluate
from saerun.launch.results import RunFolders

_WHY = {signal.SIGUSR2: "the time limit is near (SIGUSR2)",
        signal.SIGTERM: "pre-empted or cancelled (SIGTERM)"}


class StopFlag:
    """Set by the signal handlers, read by the training loop after every batch (a handler
    must not checkpoint itself: it may land mid-step)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: types.FrameType | None = None) -> None:
        if self.signum is None or signum == signal.SIGUSR2:
            self.signum = signum

    def reason(self) -> str | None:
        return None if self.signum is None else _WHY[signal.Signals(self.signum)]


def run_group(registry_dir: str, runs: list[dict[str, Any]],
              max_requeues: int = 3) -> dict[str, str]:
    """Train, evaluate and export one device job's runs; returns {run_id: reason} of those that
    failed.

    runs: [{"run_id", "name", "group_key", "config", "spec_name"}] as the driver planned them.
    A crash fails every run of the job without a result (with the reason) and is raised again,
    so Slurm records the job as FAILED too. A signal (see the module docstring) is not a crash.
    """
    job_id = _job_id()
    jobs = [job_from_payload(r) for r in runs]
    sink = RunFolders(Path(registry_dir),
                      {r["run_id"]: {"name": r["name"], "config": r["config"],
                                     "spec_name": r.get("spec_name")} for r in runs}, job_id)
    flag = StopFlag()
    for signum in _WHY:  # over submitit's own handlers: ours checkpoint every SAE first
        signal.signal(signum, flag.handle)
    if os.environ.get("SAERUN_FAULT") == "signal_at_start":  # tests: a warning at once
        flag.handle(signal.SIGUSR2)
    requeues = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    try:
        if os.environ.get("SAERUN_FAULT") == "job_raises":  # tests/test_slurm.py
            raise RuntimeError("injected failure (SAERUN_FAULT=job_raises)")
        return train_and_evaluate(sink, jobs, progress=None, stop=flag.reason)
    except Interrupted as stopped:
        _stopped(sink, stopped, flag.signum, requeues, max_requeues)
        raise SystemExit(1) from None  # no result file: submitit and the driver keep waiting
    except Exception as err:
        reason = failure_reason(err)
        for job in jobs:
            if not sink.has_result(job.run_id):
                sink.mark_failed(job.run_id, reason)
        raise


def _stopped(sink: RunFolders, stopped: Interrupted, signum: int | None, requeues: int,
             max_requeues: int) -> None:
    """Every unfinished SAE is checkpointed: requeue this job, or fail its runs past the limit."""
    sys.stderr.write(f"saerun: {stopped.reason}: checkpointed {len(stopped.run_ids)} run(s) "
                     f"at a batch boundary (requeued {requeues} time(s) so far)\n")
    if signum != signal.SIGUSR2:
        return  # SIGTERM: Slurm requeues a pre-empted job itself, or it was cancelled
    if requeues >= max_requeues:
        reason = (f"cut off by the time limit {requeues + 1} times: requeued {requeues} "
                  f"time(s), launcher.max_requeues = {max_requeues}; raise launcher.time or "
                  "max_requeues and run again with --retry-failed (training resumes from the "
                  "last checkpoint)")
        for run_id in stopped.run_ids:
            sink.mark_failed(run_id, reason)
        return
    for run_id in stopped.run_ids:
        sink.note_requeue(run_id, requeues + 1, stopped.reason)
    raw = os.environ.get("SLURM_JOB_ID")
    if raw:
        subprocess.run(["scontrol", "requeue", raw], check=False, timeout=60)


def _job_id() -> str:
    """This job's id as the driver recorded it: `<array id>_<task>` in an array."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "local")
