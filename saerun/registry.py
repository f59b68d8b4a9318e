"""The SQLite registry: every spec, run, metric and training curve (the only SQLite import).

WAL journal plus a busy timeout so several saerun processes can share one file; every write is
one transaction (`db.atomic()`); the schema is versioned with `PRAGMA user_version` and
migrated forward on open. A finished run's row is never rewritten by re-running its spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from saerun.errors import SaerunError

STATUSES = ("planned", "running", "done", "failed")

# Each entry upgrades the schema by one version; never edit a released entry, append one.
MIGRATIONS = [
    """
    CREATE TABLE specs (
        spec_hash TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT, yaml_text TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, name TEXT NOT NULL, group_key TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('planned', 'running', 'done', 'failed')),
        config TEXT NOT NULL, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
        train_seconds REAL, eval_seconds REAL, tokens_trained INTEGER, environment TEXT,
        data_fingerprint TEXT, error TEXT
    );
    CREATE TABLE spec_runs (
        spec_hash TEXT NOT NULL REFERENCES specs(spec_hash),
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        PRIMARY KEY (spec_hash, run_id)
    );
    CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT NOT NULL, value REAL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE curves (
        run_id TEXT NOT NULL REFERENCES runs(run_id), step INTEGER NOT NULL,
        tokens INTEGER, loss REAL, mse REAL, l0 REAL, dead_fraction REAL, lr REAL,
        PRIMARY KEY (run_id, step)
    );
    CREATE INDEX runs_status ON runs(status);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
_RUN_ID = re.compile(r"^[0-9a-f]{8,64}$")


def default_registry_path() -> Path:
    return Path(os.environ.get("SAERUN_REGISTRY") or "registry/saerun.db")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


class Registry:
    def __init__(self, path: Path | str, must_exist: bool = False) -> None:
        self.path = Path(path)
        if must_exist and not self.path.exists():
            raise SaerunError(
                f"no registry at {self.path}", hint="run a spec first, or pass --registry PATH"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30.0)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA busy_timeout = 30000")
            self.db.execute("PRAGMA foreign_keys = ON")
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.enable_wal()
            self._migrate()
        except sqlite3.Error as err:
            raise SaerunError(f"cannot open the registry {self.path}: {err}") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SaerunError(
                f"the registry {self.path} has schema version {version}, newer than this saerun "
                f"understands ({SCHEMA_VERSION})",
                hint="upgrade saerun; the registry was left untouched",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.db.atomic():
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {target}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------
    def add_spec(self, name: str, path: str, yaml_text: str) -> str:
        spec_hash = hashlib.sha256(yaml_text.encode()).hexdigest()
        with self.db.atomic():
            self.db.execute(
                "INSERT OR IGNORE INTO specs VALUES (?, ?, ?, ?, ?)",
                [spec_hash, name, path, yaml_text, _now()],
            )
        return spec_hash

    def ensure_runs(self, spec_hash: str, jobs: list[dict[str, Any]]) -> dict[str, str]:
        """Insert missing runs as 'planned'; existing rows stay byte-identical."""
        with self.db.atomic():
            for job in jobs:
                self.db.execute(
                    "INSERT OR IGNORE INTO runs (run_id, name, group_key, status, config, "
                    "created_at) VALUES (?, ?, ?, 'planned', ?, ?)",
                    [job["run_id"], job["name"], job["group_key"], _json(job["config"]), _now()],
                )
                self.db.execute(
                    "INSERT OR IGNORE INTO spec_runs VALUES (?, ?)", [spec_hash, job["run_id"]]
                )
        ids = [job["run_id"] for job in jobs]
        rows = self.db.execute(
            f"SELECT run_id, status FROM runs WHERE run_id IN ({','.join('?' * len(ids))})", ids
        ).fetchall()
        return dict(rows)

    def mark_running(self, run_id: str, environment: dict, data_fingerprint: str) -> None:
        with self.db.atomic():
            self.db.execute(
                "UPDATE runs SET status='running', started_at=?, environment=?, "
                "data_fingerprint=?, error=NULL WHERE run_id=? AND status != 'done'",
                [_now(), _json(environment), data_fingerprint, run_id],
            )

    def mark_done(self, run_id: str, metrics: dict[str, float], train_seconds: float,
                  eval_seconds: float, tokens_trained: int) -> None:
        """Metrics and the status change land together or not at all."""
        with self.db.atomic():
            self.db.execute("DELETE FROM metrics WHERE run_id=?", [run_id])
            self.db["metrics"].insert_all(
                [{"run_id": run_id, "name": k, "value": float(v)} for k, v in metrics.items()]
            )
            self.db.execute(
                "UPDATE runs SET status='done', finished_at=?, train_seconds=?, eval_seconds=?, "
                "tokens_trained=?, error=NULL WHERE run_id=?",
                [_now(), train_seconds, eval_seconds, tokens_trained, run_id],
            )

    def mark_failed(self, run_id: str, error: str) -> None:
        with self.db.atomic():
            self.db.execute(
                "UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=?",
                [_now(), error, run_id],
            )

    def add_curve(self, run_id: str, points: list[dict[str, float]]) -> None:
        if not points:
            return
        with self.db.atomic():
            self.db["curves"].upsert_all(
                [{"run_id": run_id, **p} for p in points], pk=("run_id", "step")
            )

    # -- reads -------------------------------------------------------------------------------
    def _resolve(self, run_id: str) -> str | None:
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY run_id", [f"{run_id}%"]
        ).fetchall()
        if len(rows) > 1:
            raise SaerunError(
                f"run id prefix {run_id!r} is ambiguous",
                hint="candidates: " + ", ".join(r[0] for r in rows[:10]),
            )
        return rows[0][0] if rows else None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"[0-9a-f]{1,64}", run_id):
            return None
        full = self._resolve(run_id)
        if full is None:
            return None
        run = dict(self.db["runs"].get(full))
        run["config"] = json.loads(run["config"])
        run["environment"] = json.loads(run["environment"]) if run["environment"] else None
        run["metrics"] = dict(
            self.db.execute("SELECT name, value FROM metrics WHERE run_id=? ORDER BY name", [full])
        )
        run["spec_names"] = self._spec_names(full)
        return run

    def _spec_names(self, run_id: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT s.name FROM spec_runs sr JOIN specs s USING (spec_hash) "
            "WHERE sr.run_id=? ORDER BY s.name", [run_id])]

    def list_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE status=?", [status]) if status else ("", [])
        rows = self.db.execute(
            f"SELECT run_id, name, status, created_at, finished_at, error FROM runs {where} "
            "ORDER BY created_at, run_id", args
        )
        cols = ("run_id", "name", "status", "created_at", "finished_at", "error")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def results(self, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """One flat dict per done run: config as dotted keys, convenience keys, every metric."""
        out = []
        for run_id, name, config_text in self.db.execute(
            "SELECT run_id, name, config FROM runs WHERE status='done' ORDER BY run_id"
        ):
            config = json.loads(config_text)
            sae = config["sae"]
            sparsity = sae.get("sparsity") or {}
            row: dict[str, Any] = {"run_id": run_id, "name": name, **_flatten(config)}
            specs = self._spec_names(run_id)
            row.update(
                spec_name=specs[0] if specs else None,
                model=config["model"]["name"],
                hook_name=config["site"]["hook_name"],
                architecture=sae["architecture"],
                penalty=sparsity.get("penalty"),
                sparsity_coefficient=sparsity.get("coefficient"),
                d_sae=sae["d_sae"],
                lr=config["train"]["lr"],
                seed=config["seed"],
                train_tokens=config["data"]["train_tokens"],
            )
            row.update(dict(self.db.execute(
                "SELECT name, value FROM metrics WHERE run_id=?", [run_id])))
            if all(_matches(row.get(k), v) for k, v in (filters or {}).items()):
                out.append(row)
        return out

    def curve(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db["curves"].rows_where("run_id = ?", [run_id], order_by="step"))

    def artifacts_dir(self, run_id: str) -> Path:
        """<registry dir>/runs/<run_id>; the id is checked to be hex so no path can escape."""
        if not _RUN_ID.match(run_id):
            raise SaerunError(f"invalid run id {run_id!r}")
        return self.path.parent / "runs" / run_id


def _matches(value: Any, wanted: str) -> bool:
    if value is None:
        return wanted in ("None", "null", "")
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == wanted
