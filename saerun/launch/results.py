"""The files a cluster job leaves in each run's folder instead of writing the registry.

Only the driver writes the SQLite registry (SQLite over NFS from many nodes corrupts it). A job
writes into `<registry dir>/runs/<run_id>/`, on storage the nodes share, every file atomically:

    curve.json    the training curve so far, rewritten at each checkpoint
    requeue.json  how many times the job has requeued itself so far, and why (launch/worker.py)
    result.json   written last, once: done (metrics, timings) or failed (error), with the
                  environment, the data fingerprint and the Slurm job id that wrote it

The driver (`launch/slurm.py`) ingests a result into the registry in one transaction, and only
one that carries the job id the registry has handed the run to: a stale file from an earlier
attempt is never taken for a new one. Everything here is JSON; nothing is unpickled.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saerun import artifacts
from saerun.errors import SaerunError

RESULT, CURVE, REQUEUE = "result.json", "curve.json", "requeue.json"
_RUN_ID = re.compile(r"[0-9a-f]{8,64}")


def run_folder(registry_dir: Path, run_id: str) -> Path:
    """The same folder as `Registry.artifacts_dir`, without opening the registry."""
    if not _RUN_ID.fullmatch(run_id):
        raise SaerunError(f"invalid run id {run_id!r}", hint="8-64 lowercase hex characters")
    return registry_dir / "runs" / run_id


def read_result(folder: Path, job_id: str) -> dict[str, Any] | None:
    """The result `job_id` wrote in `folder`, with the curve; None if there is none (yet), or
    if it came from another job."""
    try:
        result = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent; a partial file cannot exist (atomic rename)
        return None
    if not isinstance(result, dict) or result.get("job_id") != job_id:
        return None
    result["curve"] = read_curve(folder)
    return result


def read_curve(folder: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((folder / CURVE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []


def read_requeues(folder: Path, job_id: str) -> int:
    """How many times `job_id` has requeued itself for this run (0: never, or another job's)."""
    try:
        note = json.loads((folder / REQUEUE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    if not isinstance(note, dict) or note.get("job_id") != job_id:
        return 0
    return int(note.get("count", 0))


def clear_result(folder: Path) -> None:
    """Before a run is submitted again: its old result must not be read as the new one."""
    (folder / RESULT).unlink(missing_ok=True)
    (folder / REQUEUE).unlink(missing_ok=True)


class RunFolders:
    """The `execute.RunSink` of a cluster job: the registry's write calls `execute.run_group`
    makes, each landing as a file in the run's folder (see the module docstring) instead of in
    SQLite.

    runs: {run_id: {"name", "config", "spec_name"}} as the driver sent them.
    """

    def __init__(self, registry_dir: Path, runs: dict[str, dict[str, Any]], job_id: str) -> None:
        self.registry_dir, self.runs, self.job_id = registry_dir, runs, job_id
        self.started: dict[str, dict[str, Any]] = {}

    def artifacts_dir(self, run_id: str) -> Path:
        return run_folder(self.registry_dir, run_id)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Enough of a registry row for `spec.export_spec` (the run's run.yaml)."""
        return {"run_id": run_id, **self.runs[run_id], **self.started.get(run_id, {})}

    def mark_running(self, run_id: str, environment: dict[str, Any], data_fingerprint: str,
                     owner: str | None = None) -> bool:
        self.started[run_id] = {
            "environment": environment, "data_fingerprint": data_fingerprint,
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        return True

    def add_curve(self, run_id: str, points: list[dict[str, float]]) -> bool:
        folder = self.artifacts_dir(run_id)
        by_step = {p["step"]: p for p in read_curve(folder)}
        by_step.update({p["step"]: p for p in points})  # a resumed run redoes steps: upsert
        artifacts.write_json(folder / CURVE, [by_step[s] for s in sorted(by_step)])
        return True

    def mark_done(self, run_id: str, metrics: dict[str, float], train_seconds: float,
                  eval_seconds: float, tokens_trained: int, owner: str | None = None) -> bool:
        self._write(run_id, status="done", metrics={k: float(v) for k, v in metrics.items()},
                    train_seconds=float(train_seconds), eval_seconds=float(eval_seconds),
                    tokens_trained=int(tokens_trained))
        return True

    def mark_failed(self, run_id: str, error: str, owner: str | None = None) -> bool:
        self._write(run_id, status="failed", error=error)
        return True

    def note_requeue(self, run_id: str, count: int, reason: str) -> None:
        """The job is about to requeue itself for the `count`-th time."""
        artifacts.write_json(self.artifacts_dir(run_id) / REQUEUE, {
            "job_id": self.job_id, "count": int(count), "reason": reason,
            "written_at": time.time()})

    def has_result(self, run_id: str) -> bool:
        return read_result(self.artifacts_dir(run_id), self.job_id) is not None

    def _write(self, run_id: str, **fields: Any) -> None:
        result = {"run_id": run_id, "job_id": self.job_id, "written_at": time.time(),
                  **self.started.get(run_id, {}), **fields}
        artifacts.write_json(self.artifacts_dir(run_id) / RESULT, result)
