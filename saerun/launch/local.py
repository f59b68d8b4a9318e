"""The local launcher: train on this machine, in this process (`run_here`: one device job after
another), or with several GPUs in one worker process per GPU (`spread`), each seeing only its own
(CUDA_VISIBLE_DEVICES), all sharing the registry. Each process takes the next device job no one
holds (the registry's claims are one transaction each: no job is run twice), so the jobs spread
over the GPUs without a scheduler, the rest queueing. With one GPU or none, or a model pinned to
one device, everything runs in this process.

A device job (`plan.DeviceJob`) is the runs of one activation group that fit one device's
budget, or the whole group without one. A worker (launch/local_worker.py) gets the planned jobs
as JSON, never the spec: it does not plan again, it claims and runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saerun.errors import SaerunError
from saerun.execute import Heartbeat, Summary, claim_groups, failure_reason, job_payload, run_group
from saerun.plan import Job, Plan
from saerun.registry import OWNER, Registry
from saerun.spec import LocalLauncher

if TYPE_CHECKING:
    from saerun.progress import Progress

CHILD = "SAERUN_LOCAL_CHILD"  # set in the per-GPU processes: they never spread again
WORKER = "saerun.launch.local_worker"  # the module each per-GPU process runs


def devices_to_spread(launcher: LocalLauncher, plan: Plan) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each per-GPU process; [] to run in this process."""
    if os.environ.get(CHILD) or len(plan.device_jobs) < 2:
        return []
    if any(job.config.model.device not in ("auto", "cuda") for job in plan.jobs):
        return []  # the spec pinned a device (cpu, cuda:1): it is obeyed as written
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(count)]
    names = names[:count]
    wanted = list(range(len(names))) if launcher.gpus == "all" else list(launcher.gpus)
    missing = [i for i in wanted if i >= len(names)]
    if missing:
        raise SaerunError(f"launcher.gpus asks for GPU {missing[0]}, but {len(names)} are visible",
                          hint="list GPUs by their index among the visible ones")
    chosen = [names[i] for i in wanted][: len(plan.device_jobs)]
    return chosen if len(chosen) >= 2 else []


def run_here(reg: Registry, groups: Iterable[list[Job]], launcher: dict[str, Any],
             retry_failed: bool, progress: Progress | None, summary: Summary) -> None:
    """Claim device job after device job (each a list of runs of one activation group) and run
    each in this process, recording into `summary`.

    launcher: the launch record each claimed run gets (the resolved launcher section)."""
    for todo in claim_groups(reg, groups, retry_failed, summary.elsewhere):
        claimed = [j.run_id for j in todo]
        reg.record_launch(claimed, launcher)
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


def spread(reg: Registry, plan: Plan, devices: list[str], launcher: dict[str, Any],
           retry_failed: bool) -> Summary:
    """Run the plan's device jobs in one worker process per device and wait; the summary is the
    registry's. Each worker's launch record names its CUDA_VISIBLE_DEVICES."""
    run_ids = [j.run_id for j in plan.jobs]
    before = {r: _status(reg, r) for r in run_ids}
    groups = [[job_payload(j, plan.spec.name) for j in dj.runs] for dj in plan.device_jobs]
    with tempfile.TemporaryDirectory(prefix="saerun-spread-") as tmp:
        children = []
        for i, device in enumerate(devices):
            payload = Path(tmp) / f"worker-{i}.json"
            record = {**launcher, "cuda_visible_devices": device}
            payload.write_text(json.dumps({"launcher": record, "groups": groups}),
                               encoding="utf-8")
            command = [sys.executable, "-m", WORKER, str(payload), str(reg.path)]
            if retry_failed:
                command.append("--retry-failed")
            children.append(subprocess.Popen(
                command, stdout=subprocess.DEVNULL,
                env={**os.environ, CHILD: "1", "CUDA_VISIBLE_DEVICES": device}))
        codes = [child.wait() for child in children]
    summary = Summary(jobs=plan.jobs)
    for run_id in run_ids:
        run = reg.get_run(run_id) or {}
        summary.statuses[run_id] = run.get("status", "?")
        if run.get("status") == "done" and before[run_id] != "done":
            summary.trained.append(run_id)
        elif run.get("status") == "failed" and (before[run_id] != "failed" or retry_failed):
            summary.failed[run_id] = run["error"]
    if any(code == SaerunError.exit_code for code in codes):  # a user error a worker printed
        raise SaerunError("a per-GPU saerun process stopped on an error (printed above)")
    return summary


def _status(reg: Registry, run_id: str) -> str:
    return (reg.get_run(run_id) or {}).get("status", "?")
