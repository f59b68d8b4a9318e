"""What runs inside a cluster job: one activation group, through the same code as a local run
(execute.run_group).

submitit pickles `run_group` with its arguments (plain JSON-able values: paths, ids, resolved
configs) into the job folder saerun itself created; nothing from a spec is ever unpickled. The
job writes results into the run folders (launch/results.py), never into the registry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from saerun.execute import failure_reason, job_from_payload
from saerun.execute import run_group as train_and_evaluate
from saerun.launch.results import RunFolders


def run_group(registry_dir: str, runs: list[dict[str, Any]]) -> dict[str, str]:
    """Train, evaluate and export one group's runs; returns {run_id: reason} of those that failed.

    runs: [{"run_id", "name", "group_key", "config", "spec_name"}] as the driver planned them.
    A crash fails every run of the group without a result (with the reason) and is raised
    again, so Slurm records the job as FAILED too. That includes submitit's signal that the time
    limit is near (UncompletedJobError). An exit is not a crash: on pre-emption submitit
    requeues the job and exits, and the job, started again, resumes from the checkpoints.
    """
    job_id = _job_id()
    jobs = [job_from_payload(r) for r in runs]
    sink = RunFolders(Path(registry_dir),
                      {r["run_id"]: {"name": r["name"], "config": r["config"],
                                     "spec_name": r.get("spec_name")} for r in runs}, job_id)
    try:
        if os.environ.get("SAERUN_FAULT") == "job_raises":  # tests/test_slurm.py
            raise RuntimeError("injected failure (SAERUN_FAULT=job_raises)")
        return train_and_evaluate(sink, jobs, progress=None)
    except Exception as err:
        reason = failure_reason(err)
        for job in jobs:
            if not sink.has_result(job.run_id):
                sink.mark_failed(job.run_id, reason)
        raise


def _job_id() -> str:
    """This job's id as the driver recorded it: `<array id>_<task>` in an array."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "local")
