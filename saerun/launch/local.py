"""The local launcher with several GPUs: one `saerun run` process per GPU, each seeing only its
own (CUDA_VISIBLE_DEVICES), all sharing the registry. Each process takes the next activation
group no one holds (the registry's claims are one transaction each: no group is run twice), so
the groups spread over the GPUs without a scheduler. With one GPU or none, or a model pinned to
one device, runner.run_spec trains everything in its own process, as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError

CHILD = "SAERUN_LOCAL_CHILD"  # set in the per-GPU processes: they never spread again


def devices_to_spread(launcher: Any, plan: Any) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each per-GPU process; [] to run in this process."""
    if os.environ.get(CHILD) or len(plan.groups) < 2:
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
    chosen = [names[i] for i in wanted][: len(plan.groups)]
    return chosen if len(chosen) >= 2 else []


def spread(reg: Any, spec_path: Path, plan: Any, devices: list[str], retry_failed: bool) -> Any:
    """Run the spec in one child process per device and wait; the summary is the registry's."""
    from saerun.runner import Summary

    run_ids = [j.run_id for j in plan.jobs]
    before = {r: reg.get_run(r)["status"] for r in run_ids}
    command = [sys.executable, "-m", "saerun.cli", "run", str(spec_path), "--registry",
               str(reg.path), "--launcher", "local", "--quiet"]
    if retry_failed:
        command.append("--retry-failed")
    children = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL,
                         env={**os.environ, CHILD: "1", "CUDA_VISIBLE_DEVICES": device})
        for device in devices
    ]
    codes = [child.wait() for child in children]
    summary = Summary(jobs=plan.jobs)
    for run_id in run_ids:
        run = reg.get_run(run_id)
        summary.statuses[run_id] = run["status"]
        if run["status"] == "done" and before[run_id] != "done":
            summary.trained.append(run_id)
        elif run["status"] == "failed" and (before[run_id] != "failed" or retry_failed):
            summary.failed[run_id] = run["error"]
    if any(code == 2 for code in codes):  # a user error the children printed
        raise SaerunError("a per-GPU saerun process stopped on an error (printed above)")
    return summary
