"""The SQLite registry: every spec, run, metric and training curve (the only SQLite import).

One file, `registry/saerun.db` by default, with each run's artifacts under
`registry/runs/<run_id>/`. WAL journal plus a 30 s busy timeout so several saerun processes can
share the file; every write is one short `BEGIN IMMEDIATE` transaction. The schema is versioned
with `PRAGMA user_version` and migrated forward on open (the steps: saerun/migrations.py).

A run moves planned -> running -> done | failed (failed -> running on retry, running -> running
on resume). A finished run's row is never rewritten by re-running its spec; only
`reset_to_planned` touches a done run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from saerun import faults
from saerun.errors import SaerunError
from saerun.migrations import MIGRATIONS

STATUSES = ("planned", "running", "done", "failed")
CURVE_COLUMNS = ("step", "tokens", "loss", "mse", "l0", "dead_fraction", "lr")

SCHEMA_VERSION = len(MIGRATIONS)
_RUN_ID = re.compile(r"[0-9a-f]{8,64}")


# A process's claim on a run lasts LEASE_SECONDS unless renewed (a heartbeat thread renews it
# every LEASE_SECONDS / 4). An owner on this host whose pid is gone is dead at once.
LEASE_SECONDS = float(os.environ.get("SAERUN_LEASE_SECONDS", "60"))
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None, lease_until: float | None, now: float) -> bool:
    """Whether the process named by `owner` may still be running its claimed runs."""
    if not owner or lease_until is None or lease_until <= now:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, someone else's
            pass
    return True


def default_registry_path() -> Path:
    """`$SAERUN_REGISTRY` if set, else `registry/saerun.db` relative to the working directory."""
    return Path(os.environ.get("SAERUN_REGISTRY") or "registry/saerun.db")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(obj: Any) -> str:
    # Sorted keys, no spaces: the same config is always the same bytes.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Registry:
    """One registry file. Use as a context manager; every public write is one transaction."""

    def __init__(self, path: Path | str, must_exist: bool = False) -> None:
        self.path = Path(path)
        if must_exist and not self.path.is_file():
            raise SaerunError(
                f"no registry at {self.path}", hint="run a spec first, or pass --registry PATH"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; ours are explicit (see _write).
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
        except (OSError, sqlite3.Error) as err:
            raise SaerunError(f"cannot open the registry {self.path}: {err}") from None
        try:
            self.db.execute("PRAGMA busy_timeout = 30000")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._check_version()  # before any write: a newer file is left untouched
            self.db.enable_wal()
            self._migrate()
        except sqlite3.Error as err:
            self.db.close()
            raise SaerunError(f"cannot open the registry {self.path}: {err}") from None
        except BaseException:
            self.db.close()
            raise

    def _check_version(self) -> int:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SaerunError(
                f"the registry {self.path} has schema version {version}, newer than this saerun "
                f"understands ({SCHEMA_VERSION})",
                hint="upgrade saerun; the registry was left untouched",
            )
        return version

    def _migrate(self) -> None:
        if self._check_version() == SCHEMA_VERSION:
            return  # the common case: no write, no lock
        with self._write():
            # Re-read under the write lock: another process may have migrated meanwhile.
            for target in range(self._check_version() + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction that takes the write lock up front (waits up to the busy timeout)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if "locked" not in str(err):
                raise
            raise SaerunError(
                f"the registry {self.path} stayed locked for 30 s ({err})",
                hint="another saerun process is writing to it; retry when it is idle",
            ) from None
        try:
            yield
            faults.point("registry")  # a kill here, mid-transaction, must lose nothing
            self.db.execute("COMMIT")
        except BaseException as err:
            if self.db.conn.in_transaction:  # an error may already have ended it
                self.db.execute("ROLLBACK")
            if isinstance(err, sqlite3.OperationalError):
                raise self._write_error(err) from None
            raise

    def _write_error(self, err: sqlite3.OperationalError) -> SaerunError:
        """A failed write, said plainly; the transaction was rolled back, so nothing is half
        written and nothing already registered is lost."""
        text = str(err)
        if "readonly" in text:
            what, hint = "is read-only", "check the file's and its folder's permissions"
        elif "full" in text:
            what, hint = "cannot grow: the disk is full", "free some space and run again"
        else:
            what, hint = "could not be written", "run again; nothing was half written"
        return SaerunError(f"the registry {self.path} {what} ({text}); the change was rolled "
                           "back, nothing registered was lost", hint=hint)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------
    def add_spec(self, name: str, path: str, yaml_text: str) -> str:
        """Record a spec file; returns sha256(yaml_text). Re-adding it changes nothing."""
        spec_hash = hashlib.sha256(yaml_text.encode()).hexdigest()
        with self._write():
            self.db.execute(
                "INSERT INTO specs (spec_hash, name, path, yaml_text, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (spec_hash) DO NOTHING",
                [spec_hash, name, path, yaml_text, _now()],
            )
        return spec_hash

    def ensure_runs(self, spec_hash: str, jobs: list[dict[str, Any]]) -> dict[str, str]:
        """Insert missing runs as 'planned' and link them to the spec; returns {run_id: status}.

        Existing runs stay byte-identical (only a missing spec link, or a missing FLOP count, is
        added). Each job is a
        dict with run_id, name, group_key and config (the fully resolved job config), and
        optionally step_flops_per_token (the planner's count; not part of the run id).
        """
        now = _now()  # one moment per call: runs of a spec sort by run_id among themselves
        with self._write():
            known = self.db.execute("SELECT 1 FROM specs WHERE spec_hash=?", [spec_hash])
            if known.fetchone() is None:
                raise SaerunError(f"unknown spec hash {spec_hash!r}", hint="call add_spec first")
            for job in jobs:
                # ON CONFLICT (not INSERT OR IGNORE): only an existing id is skipped; a missing
                # name or config still fails loudly.
                self.db.execute(
                    "INSERT INTO runs (run_id, spec_hash, name, group_key, status, config, "
                    "created_at, step_flops_per_token) VALUES (?, ?, ?, ?, 'planned', ?, ?, ?) "
                    # A run registered before FLOPs were counted gets its count, nothing else.
                    "ON CONFLICT (run_id) DO UPDATE SET step_flops_per_token = "
                    "COALESCE(runs.step_flops_per_token, excluded.step_flops_per_token)",
                    [job["run_id"], spec_hash, job["name"], job["group_key"],
                     _json(job["config"]), now, job.get("step_flops_per_token")],
                )
                self.db.execute(
                    "INSERT INTO spec_runs (spec_hash, run_id) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    [spec_hash, job["run_id"]],
                )
            return {job["run_id"]: self._status(job["run_id"]) for job in jobs}

    def _status(self, run_id: str) -> str:
        row = self.db.execute("SELECT status FROM runs WHERE run_id=?", [run_id]).fetchone()
        if row is None:
            raise SaerunError(f"no run with id {run_id!r} in {self.path}")
        return str(row[0])

    def _transition(self, run_id: str, allowed: tuple[str, ...], target: str,
                    owner: str | None = None) -> bool:
        """Check a status change inside a write; False when the run is already done, or when
        `owner` is given and another process has taken the run over (our lease lapsed).

        A done run is left alone rather than raising: another process may have finished it.
        """
        status = self._status(run_id)
        if status == "done":
            return False
        if owner is not None:
            holder = self.db.execute("SELECT owner FROM runs WHERE run_id=?", [run_id]).fetchone()
            if holder[0] not in (None, owner):
                return False
        if status not in allowed:
            raise SaerunError(f"run {run_id} is {status}; it cannot become {target}")
        return True

    def claim(self, run_ids: list[str], owner: str = OWNER, retry_failed: bool = False,
              lease_seconds: float | None = None) -> tuple[list[str], dict[str, str]]:
        """Take runs for `owner` in one transaction: planned ones, running ones whose owner is
        dead or whose lease lapsed (take-over), and failed ones if `retry_failed`. Returns
        (claimed ids, {id: owner} of runs another live process holds). Done runs are neither."""
        now = time.time()
        until = now + (LEASE_SECONDS if lease_seconds is None else lease_seconds)
        claimed: list[str] = []
        held: dict[str, str] = {}
        with self._write():
            for run_id in run_ids:
                row = self.db.execute(
                    "SELECT status, owner, lease_until FROM runs WHERE run_id=?", [run_id]
                ).fetchone()
                if row is None:
                    raise SaerunError(f"no run with id {run_id!r} in {self.path}")
                status, holder, lease = row
                if status == "running" and holder != owner and owner_alive(holder, lease, now):
                    held[run_id] = holder
                    continue
                if status == "planned" or status == "running" or (
                    status == "failed" and retry_failed
                ):
                    self.db.execute(
                        "UPDATE runs SET status='running', owner=?, lease_until=?, started_at=?, "
                        "finished_at=NULL, error=NULL, requeues=0 WHERE run_id=?",
                        [owner, until, _now(), run_id],
                    )
                    claimed.append(run_id)
        return claimed, held

    def renew(self, run_ids: list[str], owner: str = OWNER,
              lease_seconds: float | None = None) -> int:
        """Extend `owner`'s lease on those of `run_ids` it still holds; returns how many."""
        until = time.time() + (LEASE_SECONDS if lease_seconds is None else lease_seconds)
        with self._write():
            cur = self.db.execute(
                f"UPDATE runs SET lease_until=? WHERE owner=? AND status='running' AND run_id IN "
                f"({','.join('?' * len(run_ids))})",
                [until, owner, *run_ids],
            )
            return cur.rowcount

    def mark_running(self, run_id: str, environment: dict[str, Any],
                     data_fingerprint: str, owner: str | None = None) -> bool:
        """planned | running (resume) | failed (retry) -> running; started_at = latest start.
        With `owner`: False (nothing written) if another process holds the run."""
        with self._write():
            if not self._transition(run_id, ("planned", "running", "failed"), "running", owner):
                return False
            self.db.execute(
                "UPDATE runs SET status='running', started_at=?, finished_at=NULL, environment=?, "
                "data_fingerprint=?, error=NULL WHERE run_id=?",
                [_now(), _json(environment), data_fingerprint, run_id],
            )
        return True

    def mark_done(self, run_id: str, metrics: dict[str, float], train_seconds: float,
                  eval_seconds: float, tokens_trained: int, owner: str | None = None) -> bool:
        """running -> done; the metrics and the status change land together or not at all.
        With `owner`: False (nothing written) if another process has taken the run over."""
        with self._write():
            if not self._transition(run_id, ("running",), "done", owner):
                return False
            self._set_done(run_id, metrics, train_seconds, eval_seconds, tokens_trained)
        return True

    def _set_done(self, run_id: str, metrics: dict[str, float], train_seconds: float,
                  eval_seconds: float, tokens_trained: int) -> None:
        self.db.execute("DELETE FROM metrics WHERE run_id=?", [run_id])
        self.db.table("metrics").insert_all(
            {"run_id": run_id, "name": str(k), "value": float(v)}
            for k, v in sorted(metrics.items())
        )
        self.db.execute(
            "UPDATE runs SET status='done', finished_at=?, train_seconds=?, eval_seconds=?, "
            "tokens_trained=?, error=NULL, owner=NULL, lease_until=NULL WHERE run_id=?",
            [_now(), float(train_seconds), float(eval_seconds), int(tokens_trained), run_id],
        )

    def mark_failed(self, run_id: str, error: str, owner: str | None = None) -> bool:
        """planned | running | failed -> failed, with the reason (and owner check, as above)."""
        with self._write():
            if not self._transition(run_id, ("planned", "running", "failed"), "failed", owner):
                return False
            self._set_failed(run_id, error)
        return True

    def _set_failed(self, run_id: str, error: str) -> None:
        self.db.execute(
            "UPDATE runs SET status='failed', finished_at=?, error=?, owner=NULL, "
            "lease_until=NULL WHERE run_id=?",
            [_now(), error, run_id],
        )

    def reset_to_planned(self, run_id: str) -> None:
        """Any status -> planned: clears timings, environment, error, metrics, curve and
        post-hoc records.

        The one way to redo a done run. Artifacts on disk are the caller's business.
        """
        with self._write():
            self._status(run_id)
            for table in ("metrics", "curves", "posthoc"):
                self.db.execute(f"DELETE FROM {table} WHERE run_id=?", [run_id])
            self.db.execute(
                "UPDATE runs SET status='planned', owner=NULL, lease_until=NULL, "
                "started_at=NULL, finished_at=NULL, "
                "train_seconds=NULL, eval_seconds=NULL, tokens_trained=NULL, environment=NULL, "
                "data_fingerprint=NULL, error=NULL WHERE run_id=?",
                [run_id],
            )

    def add_curve(self, run_id: str, points: list[dict[str, float]]) -> bool:
        """Upsert training-curve points by (run_id, step); False (no write) for a done run."""
        for point in points:
            extra = set(point) - set(CURVE_COLUMNS)
            if extra or "step" not in point:
                raise ValueError(f"curve point {point} needs 'step' and only {CURVE_COLUMNS}")
        with self._write():
            if self._status(run_id) == "done":
                return False
            if points:
                self.db.table("curves").upsert_all(
                    [{"run_id": run_id, **p} for p in points], pk=("run_id", "step")
                )
        return True

    # -- launched jobs (saerun/launch/) -------------------------------------------------------
    def record_launch(self, run_ids: list[str], launcher: dict[str, Any], owner: str = OWNER,
                      job_id: str | None = None, log_path: str | None = None,
                      job_owner: str | None = None, lease_seconds: float | None = None
                      ) -> list[str]:
        """Note how `owner`'s claimed runs are launched; with `job_owner`, hand them over to that
        cluster job, its lease lasting `lease_seconds`: from then on only the job's end, as the
        scheduler tells it, frees them (saerun/launch/slurm.py). Returns the ids recorded (those
        `owner` still held)."""
        until = None if job_owner is None else time.time() + (lease_seconds or LEASE_SECONDS)
        recorded = []
        with self._write():
            for run_id in run_ids:
                cur = self.db.execute(
                    "UPDATE runs SET launcher=?, job_id=?, log_path=?, owner=?, "
                    "lease_until=COALESCE(?, lease_until) "
                    "WHERE run_id=? AND owner=? AND status='running'",
                    [_json(launcher), job_id, log_path, job_owner or owner, until, run_id, owner],
                )
                if cur.rowcount:
                    recorded.append(run_id)
        return recorded

    def set_requeues(self, run_id: str, count: int) -> None:
        """How many times the run's cluster job has requeued itself (as the job reported it)."""
        with self._write():
            self.db.execute("UPDATE runs SET requeues=? WHERE run_id=?", [int(count), run_id])

    def in_flight(self, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Running runs handed to a cluster job (owner `slurm:...`), optionally among `run_ids`:
        run_id, job_id, log_path, owner, started_at, requeues."""
        rows = self.db.query(
            "SELECT run_id, job_id, log_path, owner, started_at, requeues FROM runs "
            "WHERE status='running' AND job_id IS NOT NULL AND owner LIKE 'slurm:%' "
            "ORDER BY run_id"
        )
        wanted = None if run_ids is None else set(run_ids)
        return [r for r in rows if wanted is None or r["run_id"] in wanted]

    def ingest(self, run_id: str, owner: str, result: dict[str, Any]) -> bool:
        """A cluster job's result for one run (launch/results.py), registered in one
        transaction: its training curve, environment and data fingerprint, then done (metrics,
        timings) or failed (error). False, and nothing written, when the run is done already or
        `owner` no longer holds it."""
        target = "done" if result["status"] == "done" else "failed"
        with self._write():
            if self._status(run_id) != "running" or not self._transition(
                    run_id, ("running",), target, owner):
                return False
            points = result.get("curve") or []
            if points:
                self.db.table("curves").upsert_all(
                    [{"run_id": run_id, **p} for p in points], pk=("run_id", "step")
                )
            if result.get("environment") is not None:
                self.db.execute(
                    "UPDATE runs SET environment=?, data_fingerprint=?, "
                    "started_at=COALESCE(?, started_at) WHERE run_id=?",
                    [_json(result["environment"]), result.get("data_fingerprint"),
                     result.get("started_at"), run_id],
                )
            if target == "done":
                self._set_done(run_id, result["metrics"], result["train_seconds"],
                               result["eval_seconds"], result["tokens_trained"])
            else:
                self._set_failed(run_id, result["error"])
        return True

    def set_posthoc(self, run_id: str, tokens: int, run_finished_at: str | None,
                    records: dict[str, dict[str, Any]]) -> None:
        """Replace a run's post-hoc records ({variant: JSON-able record}) in one transaction."""
        with self._write():
            self.db.execute("DELETE FROM posthoc WHERE run_id=?", [run_id])
            for variant, record in sorted(records.items()):
                self.db.execute(
                    "INSERT INTO posthoc (run_id, variant, tokens, run_finished_at, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [run_id, variant, int(tokens), run_finished_at, _json(record)])

    def posthoc(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """The post-hoc records of `run_ids` (full ids), by run and variant: each record's
        fields plus `tokens` and `run_finished_at` (what it was computed on)."""
        wanted = set(run_ids)
        out = []
        for row in self.db.query("SELECT * FROM posthoc ORDER BY run_id, variant"):
            if row["run_id"] in wanted:
                out.append({**json.loads(row["record"]), "run_id": row["run_id"],
                            "tokens": row["tokens"], "run_finished_at": row["run_finished_at"]})
        return out

    # -- reads -------------------------------------------------------------------------------
    def _resolve(self, prefix: str) -> str | None:
        """A full run id from a unique prefix; None when nothing matches."""
        prefix = prefix.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            return None
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id LIMIT 11",
            [len(prefix), prefix],
        ).fetchall()
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
            raise SaerunError(
                f"run id prefix {prefix!r} is ambiguous", hint=f"candidates: {shown}"
            )
        return str(rows[0][0]) if rows else None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """One run by id or unique prefix: every column, config/environment parsed, metrics,
        spec_name (the spec that first asked for it) and spec_names (every spec that did)."""
        full = self._resolve(run_id)
        if full is None:
            return None
        run = dict(self.db.table("runs").get(full))
        run["config"] = json.loads(run["config"])
        run["environment"] = json.loads(run["environment"]) if run["environment"] else None
        run["metrics"] = self._metrics(full)
        run["spec_name"] = self._spec_name(run["spec_hash"])
        run["spec_names"] = [r[0] for r in self.db.execute(
            "SELECT DISTINCT s.name FROM spec_runs sr JOIN specs s USING (spec_hash) "
            "WHERE sr.run_id=? ORDER BY s.name", [full])]
        return run

    def _metrics(self, run_id: str) -> dict[str, float | None]:
        return dict(self.db.execute(
            "SELECT name, value FROM metrics WHERE run_id=? ORDER BY name", [run_id]))

    def _spec_name(self, spec_hash: str | None) -> str | None:
        row = self.db.execute("SELECT name FROM specs WHERE spec_hash=?", [spec_hash]).fetchone()
        return str(row[0]) if row else None

    def list_runs(self, status: str | None = None, spec_name: str | None = None,
                  details: bool = False) -> list[dict[str, Any]]:
        """Run summaries, oldest first; optionally one status / runs of one spec. With
        `details`, each also has its config (parsed) and metrics ({name: value}), read in the
        same snapshot (what `saerun ls` shows)."""
        if status is not None and status not in STATUSES:
            raise SaerunError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
        where, args = [], []
        if status is not None:
            where.append("r.status = ?")
            args.append(status)
        if spec_name is not None:
            where.append("r.run_id IN (SELECT sr.run_id FROM spec_runs sr JOIN specs s "
                         "USING (spec_hash) WHERE s.name = ?)")
            args.append(spec_name)
        sql = (
            "SELECT r.run_id, r.name, s.name AS spec_name, r.group_key, r.status, r.created_at, "
            "r.started_at, r.finished_at, r.train_seconds, r.eval_seconds, r.tokens_trained, "
            "r.error, r.launcher, r.job_id, r.log_path, r.step_flops_per_token, r.requeues"
            + (", r.config " if details else " ")
            + "FROM runs r LEFT JOIN specs s ON s.spec_hash = r.spec_hash "
            + ("WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY r.created_at, r.run_id"
        )
        if not details:
            return list(self.db.query(sql, args))
        with self.db.atomic():  # one read snapshot for both queries
            runs = list(self.db.query(sql, args))
            metrics: dict[str, dict[str, float | None]] = {}
            for run_id, name, value in self.db.execute(
                    "SELECT run_id, name, value FROM metrics ORDER BY run_id, name"):
                metrics.setdefault(run_id, {})[name] = value
        for run in runs:
            run["config"] = json.loads(run["config"])
            run["metrics"] = metrics.get(run["run_id"], {})
        return runs

    def finished_runs(self) -> list[dict[str, Any]]:
        """Every done run, sorted by run_id, read in one snapshot: run_id, name, spec_name,
        config (parsed), train_seconds, eval_seconds, tokens_trained, finished_at,
        step_flops_per_token and metrics ({name: value}). What the reports are built from."""
        with self.db.atomic():  # one read snapshot for both queries
            runs = list(self.db.query(
                "SELECT r.run_id, r.name, s.name AS spec_name, r.config, r.train_seconds, "
                "r.eval_seconds, r.tokens_trained, r.finished_at, r.step_flops_per_token "
                "FROM runs r LEFT JOIN specs s ON s.spec_hash = r.spec_hash "
                "WHERE r.status = 'done' ORDER BY r.run_id"))
            metrics: dict[str, dict[str, float | None]] = {}
            for run_id, name, value in self.db.execute(
                "SELECT m.run_id, m.name, m.value FROM metrics m JOIN runs r USING (run_id) "
                "WHERE r.status = 'done' ORDER BY m.run_id, m.name"
            ):
                metrics.setdefault(run_id, {})[name] = value
        for run in runs:
            run["config"] = json.loads(run["config"])
            run["metrics"] = metrics.get(run["run_id"], {})
        return runs

    def curve(self, run_id: str) -> list[dict[str, Any]]:
        """The training curve of one run (full id), by step."""
        return list(self.db.query(
            "SELECT step, tokens, loss, mse, l0, dead_fraction, lr FROM curves "
            "WHERE run_id = ? ORDER BY step", [run_id]))

    def curves(self, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The training curves of many runs (full ids) in one query: run_id -> points by step
        (runs with no point are absent). Reports read a thousand runs' curves at once."""
        wanted = set(run_ids)
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.db.query(
            "SELECT run_id, step, tokens, loss, mse, l0, dead_fraction, lr FROM curves "
            "ORDER BY run_id, step"
        ):
            if row["run_id"] in wanted:
                out.setdefault(row.pop("run_id"), []).append(row)
        return out

    def artifacts_dir(self, run_id: str) -> Path:
        """<registry dir>/runs/<run_id>; the id must be lowercase hex, so no path can escape."""
        if not _RUN_ID.fullmatch(run_id):
            raise SaerunError(f"invalid run id {run_id!r}", hint="8-64 lowercase hex characters")
        return self.path.parent / "runs" / run_id

