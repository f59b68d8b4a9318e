"""The registry: migrations, idempotent writes, status transitions, flat results, safe paths."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from saerun.errors import SaerunError
from saerun.registry import MIGRATIONS, SCHEMA_VERSION, Registry, default_registry_path
from saerun.report.rows import results

TABLES = {"specs", "runs", "spec_runs", "metrics", "curves", "posthoc"}


def config(arch: str = "relu", lr: float = 3e-4, coefficient: float = 5.0) -> dict[str, Any]:
    return {
        "seed": 0,
        "model": {"name": "tiny", "dtype": "float32"},
        "site": {"hook_name": "blocks.0.hook_resid_post"},
        "data": {"train_tokens": 4096, "context_size": 16},
        "sae": {"architecture": arch, "d_sae": 64, "sparsity": {"penalty": "l1",
                                                                "coefficient": coefficient}},
        "train": {"lr": lr, "batch_tokens": 128},
    }


def job(run_id: str, **kw: Any) -> dict[str, Any]:
    return {"run_id": run_id, "name": f"run-{run_id[:4]}", "group_key": "g0",
            "config": config(**kw)}


def dump(path: Path) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Every row of every table, as stored: the byte-for-byte view of the registry."""
    conn = sqlite3.connect(path)
    try:
        return [(t, conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall())
                for t in sorted(TABLES)]
    finally:
        conn.close()


@pytest.fixture
def reg(tmp_path: Path):
    with Registry(tmp_path / "reg" / "saerun.db") as r:
        yield r


def finish(reg: Registry, run_id: str, **metrics: float) -> None:
    reg.mark_running(run_id, {"device": "cpu"}, "fp0")
    reg.mark_done(run_id, metrics, train_seconds=1.5, eval_seconds=0.5, tokens_trained=4096)


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAERUN_REGISTRY", raising=False)
    assert default_registry_path() == Path("registry/saerun.db")
    monkeypatch.setenv("SAERUN_REGISTRY", "/x/y.db")
    assert default_registry_path() == Path("/x/y.db")


def test_migrations_create_tables_and_reopen_is_noop(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "saerun.db"
    with Registry(path) as reg:
        names = set(reg.db.table_names())
        assert TABLES <= names
        assert reg.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert reg.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert reg.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        schema = reg.db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    with Registry(path) as reg:
        assert reg.db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
        assert reg.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_v1_registry_is_migrated_and_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "saerun.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + """
        INSERT INTO specs VALUES ('h1', 'old', 'old.yaml', 'name: old', '2026-01-01T00:00:00Z');
        INSERT INTO runs (run_id, name, group_key, status, config, created_at)
            VALUES ('ab12cd34', 'r', 'g', 'planned', '{}', '2026-01-01T00:00:00Z');
        INSERT INTO spec_runs VALUES ('h1', 'ab12cd34');
        PRAGMA user_version = 1;
    """)
    conn.close()
    with Registry(path) as reg:
        assert reg.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        run = reg.get_run("ab12")
        assert run is not None and run["spec_hash"] == "h1" and run["spec_name"] == "old"


def test_v5_registry_gains_a_requeue_count_and_a_claim_resets_it(tmp_path: Path) -> None:
    path = tmp_path / "saerun.db"
    conn = sqlite3.connect(path)
    conn.executescript(";".join(MIGRATIONS[:5]) + """;
        INSERT INTO runs (run_id, name, group_key, status, config, created_at)
            VALUES ('ab12cd34', 'r', 'g', 'planned', '{}', '2026-01-01T00:00:00Z');
        PRAGMA user_version = 5;
    """)
    conn.close()
    with Registry(path) as reg:
        assert SCHEMA_VERSION == 6
        assert [r["requeues"] for r in reg.list_runs()] == [0]  # the column's default
        reg.set_requeues("ab12cd34", 2)
        assert reg.get_run("ab12cd34")["requeues"] == 2
        assert reg.claim(["ab12cd34"])[0] == ["ab12cd34"]  # a new job: its own count
        assert reg.get_run("ab12cd34")["requeues"] == 0


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "saerun.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SaerunError) as err:
        Registry(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(err.value)
    assert "upgrade saerun" in str(err.value)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_must_exist_on_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "saerun.db"
    with pytest.raises(SaerunError, match="no registry at .*nope"):
        Registry(path, must_exist=True)
    assert not path.parent.exists()


def test_add_spec_is_idempotent(reg: Registry) -> None:
    h = reg.add_spec("s", "specs/s.yaml", "name: s\n")
    before = dump(reg.path)
    assert reg.add_spec("s", "elsewhere.yaml", "name: s\n") == h
    assert dump(reg.path) == before
    assert len(h) == 64


def test_ensure_runs_is_idempotent_and_leaves_done_rows_byte_identical(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "name: s\n")
    jobs = [job("aaaa0001"), job("bbbb0002", lr=1e-3)]
    assert reg.ensure_runs(h, jobs) == {"aaaa0001": "planned", "bbbb0002": "planned"}
    reg.add_curve("aaaa0001", [{"step": 1, "tokens": 128, "loss": 2.0, "mse": 1.5, "l0": 9.0,
                                "dead_fraction": 0.0, "lr": 1e-4}])
    finish(reg, "aaaa0001", l0=12.0, fvu=0.2)
    before = dump(reg.path)
    assert reg.ensure_runs(h, jobs) == {"aaaa0001": "done", "bbbb0002": "planned"}
    assert dump(reg.path) == before
    # A second spec asking for a done run links to it and changes nothing else.
    h2 = reg.add_spec("t", "t.yaml", "name: t\n")
    assert reg.ensure_runs(h2, [job("aaaa0001", arch="gated")]) == {"aaaa0001": "done"}
    after = dict(dump(reg.path))
    assert after["runs"] == dict(before)["runs"]
    assert (h2, "aaaa0001") in after["spec_runs"]
    assert reg.get_run("aaaa0001")["spec_names"] == ["s", "t"]  # type: ignore[index]


def test_ensure_runs_needs_a_known_spec(reg: Registry) -> None:
    with pytest.raises(SaerunError, match="unknown spec hash"):
        reg.ensure_runs("f" * 64, [job("aaaa0001")])


def test_status_transitions(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    reg.ensure_runs(h, [job("aaaa0001")])
    with pytest.raises(SaerunError, match="is planned; it cannot become done"):
        reg.mark_done("aaaa0001", {}, 0.0, 0.0, 0)
    assert reg.mark_running("aaaa0001", {"device": "cpu", "torch": "2"}, "fp")
    run = reg.get_run("aaaa0001")
    assert run and run["status"] == "running" and run["environment"] == {"device": "cpu",
                                                                         "torch": "2"}
    assert run["started_at"].endswith("Z") and run["data_fingerprint"] == "fp"
    assert reg.mark_failed("aaaa0001", "boom")
    run = reg.get_run("aaaa0001")
    assert run and run["status"] == "failed" and run["error"] == "boom"
    assert reg.mark_running("aaaa0001", {}, "fp")  # retry
    assert reg.get_run("aaaa0001")["error"] is None  # type: ignore[index]
    assert reg.mark_done("aaaa0001", {"l0": 3.0}, 1.0, 2.0, 100)
    before = dump(reg.path)
    # Nothing but reset_to_planned touches a done run.
    assert reg.mark_running("aaaa0001", {}, "other") is False
    assert reg.mark_failed("aaaa0001", "late") is False
    assert reg.mark_done("aaaa0001", {"l0": 9.0}, 1.0, 2.0, 100) is False
    assert reg.add_curve("aaaa0001", [{"step": 5, "loss": 1.0}]) is False
    assert dump(reg.path) == before
    reg.reset_to_planned("aaaa0001")
    run = reg.get_run("aaaa0001")
    assert run and run["status"] == "planned" and run["metrics"] == {}
    assert run["finished_at"] is None and run["environment"] is None
    with pytest.raises(SaerunError, match="no run with id"):
        reg.mark_running("cccc0003", {}, "fp")


def test_mark_done_writes_metrics_and_timings(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    reg.ensure_runs(h, [job("aaaa0001")])
    finish(reg, "aaaa0001", l0=12.5, fvu=0.25, ce_loss_recovered=0.9)
    run = reg.get_run("aaaa0001")
    assert run is not None
    assert run["metrics"] == {"ce_loss_recovered": 0.9, "fvu": 0.25, "l0": 12.5}
    assert (run["status"], run["train_seconds"], run["eval_seconds"], run["tokens_trained"]) == (
        "done", 1.5, 0.5, 4096)
    rows = reg.db.execute("SELECT name, value FROM metrics ORDER BY name").fetchall()
    assert rows == [("ce_loss_recovered", 0.9), ("fvu", 0.25), ("l0", 12.5)]


def test_curve_upserts_by_step(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    reg.ensure_runs(h, [job("aaaa0001")])
    reg.add_curve("aaaa0001", [{"step": 2, "loss": 3.0}, {"step": 1, "loss": 4.0}])
    reg.add_curve("aaaa0001", [{"step": 2, "loss": 2.5, "l0": 7.0}])
    assert [(p["step"], p["loss"], p["l0"]) for p in reg.curve("aaaa0001")] == [
        (1, 4.0, None), (2, 2.5, 7.0)]
    with pytest.raises(ValueError, match="needs 'step'"):
        reg.add_curve("aaaa0001", [{"loss": 1.0}])


def test_results_flatten_and_filter(reg: Registry) -> None:
    h = reg.add_spec("sweep", "s.yaml", "x")
    reg.ensure_runs(h, [job("bbbb0002", lr=1e-3), job("aaaa0001", arch="gated"),
                        job("cccc0003", coefficient=2.0)])
    finish(reg, "bbbb0002", l0=10.0, fvu=0.3)
    finish(reg, "aaaa0001", l0=20.0, fvu=0.1)
    rows = results(reg)  # cccc0003 is not done: left out
    assert [r["run_id"] for r in rows] == ["aaaa0001", "bbbb0002"]
    row = rows[1]
    expected = {
        "run_id": "bbbb0002", "spec_name": "sweep", "status": "done", "name": "run-bbbb",
        "model": "tiny", "hook_name": "blocks.0.hook_resid_post", "architecture": "relu",
        "penalty": "l1", "sparsity_coefficient": 5.0, "d_sae": 64, "lr": 1e-3, "seed": 0,
        "train_tokens": 4096, "sae.d_sae": 64, "train.lr": 1e-3, "model.name": "tiny",
        "sae.sparsity.coefficient": 5.0, "l0": 10.0, "fvu": 0.3, "tokens_trained": 4096,
    }
    assert {k: row[k] for k in expected} == expected
    assert [r["run_id"] for r in results(reg, {"architecture": "gated"})] == ["aaaa0001"]
    assert [r["run_id"] for r in results(reg, {"train.lr": "0.001"})] == ["bbbb0002"]
    assert [r["run_id"] for r in results(reg, {"lr": "1e-3", "penalty": "l1"})] == ["bbbb0002"]
    assert [r["run_id"] for r in results(reg, {"d_sae": "64.0"})] == ["aaaa0001", "bbbb0002"]
    assert results(reg, {"architecture": "topk"}) == []
    with pytest.raises(SaerunError, match="did you mean 'architecture'"):
        results(reg, {"archtecture": "relu"})


def test_step_flops_are_stored_with_the_run_and_keep_its_id(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    reg.ensure_runs(h, [dict(job("aaaa0001"), step_flops_per_token=1.5e6), job("bbbb0002")])
    finish(reg, "aaaa0001")
    finish(reg, "bbbb0002")
    assert reg.get_run("aaaa0001")["step_flops_per_token"] == 1.5e6  # type: ignore[index]
    assert [r["step_flops_per_token"] for r in reg.list_runs()] == [1.5e6, None]
    assert [r["step_flops_per_token"] for r in results(reg)] == [1.5e6, None]
    # a second spec asking for the run with another count leaves the row as it was
    h2 = reg.add_spec("t", "t.yaml", "y")
    reg.ensure_runs(h2, [dict(job("aaaa0001"), step_flops_per_token=9.0)])
    assert reg.get_run("aaaa0001")["step_flops_per_token"] == 1.5e6  # type: ignore[index]


def test_posthoc_records_are_replaced_per_run_and_cleared_on_reset(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    reg.ensure_runs(h, [job("aaaa0001"), job("bbbb0002")])
    finish(reg, "aaaa0001")
    finish(reg, "bbbb0002")
    done_at = reg.get_run("aaaa0001")["finished_at"]  # type: ignore[index]
    reg.set_posthoc("aaaa0001", 4096, done_at, {
        "t=0.0": {"kind": "threshold", "param": 0.0, "fvu": float("nan")},
        "k=8": {"kind": "k", "param": 8, "fvu": 0.25}})
    reg.set_posthoc("bbbb0002", 4096, None, {"opposing": {"kind": "opposing", "param": None}})
    got = reg.posthoc(["aaaa0001"])
    assert [(x["kind"], x["param"], x["tokens"], x["run_finished_at"]) for x in got] == [
        ("k", 8, 4096, done_at), ("threshold", 0.0, 4096, done_at)]
    assert isinstance(got[0]["param"], int) and got[1]["fvu"] != got[1]["fvu"]  # NaN kept
    reg.set_posthoc("aaaa0001", 2048, done_at, {"k=8": {"kind": "k", "param": 8}})
    assert [x["tokens"] for x in reg.posthoc(["aaaa0001", "bbbb0002"])] == [2048, 4096]
    reg.reset_to_planned("aaaa0001")
    assert [x["run_id"] for x in reg.posthoc(["aaaa0001", "bbbb0002"])] == ["bbbb0002"]


def test_list_runs(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    h2 = reg.add_spec("t", "t.yaml", "y")
    reg.ensure_runs(h, [job("bbbb0002"), job("aaaa0001")])
    reg.ensure_runs(h2, [job("cccc0003"), job("aaaa0001")])
    finish(reg, "bbbb0002")
    assert [r["run_id"] for r in reg.list_runs()] == ["aaaa0001", "bbbb0002", "cccc0003"]
    assert [r["run_id"] for r in reg.list_runs(status="done")] == ["bbbb0002"]
    assert [r["run_id"] for r in reg.list_runs(spec_name="t")] == ["aaaa0001", "cccc0003"]
    assert reg.list_runs(spec_name="t")[0]["spec_name"] == "s"  # first asked for by s
    with pytest.raises(SaerunError, match="unknown status 'finished'"):
        reg.list_runs(status="finished")


def test_get_run_by_prefix(reg: Registry) -> None:
    h = reg.add_spec("s", "s.yaml", "x")
    reg.ensure_runs(h, [job("abcd0001"), job("abce0002")])
    run = reg.get_run("abcd")
    assert run and run["run_id"] == "abcd0001" and run["config"]["sae"]["d_sae"] == 64
    assert reg.get_run("ABCE")["run_id"] == "abce0002"  # type: ignore[index]
    assert reg.get_run("ffff") is None
    assert reg.get_run("../x") is None
    with pytest.raises(SaerunError, match="ambiguous") as err:
        reg.get_run("abc")
    assert "abcd0001, abce0002" in str(err.value)


def test_artifacts_dir(reg: Registry) -> None:
    assert reg.artifacts_dir("abcd0001") == reg.path.parent / "runs" / "abcd0001"
    for bad in ("../x", "ABCD0001", "abcd0001/..", "", "abcd000g"):
        with pytest.raises(SaerunError, match="invalid run id"):
            reg.artifacts_dir(bad)


def test_two_connections_can_both_write(tmp_path: Path) -> None:
    path = tmp_path / "saerun.db"
    with Registry(path) as a, Registry(path) as b:
        ha = a.add_spec("a", "a.yaml", "a")
        hb = b.add_spec("b", "b.yaml", "b")
        a.ensure_runs(ha, [job("aaaa0001")])
        b.ensure_runs(hb, [job("bbbb0002"), job("aaaa0001")])
        finish(a, "aaaa0001", l0=1.0)
        finish(b, "bbbb0002", l0=2.0)
        # b sees a's finished run and cannot redo it; a sees b's.
        assert b.mark_running("aaaa0001", {}, "fp") is False
        assert [r["run_id"] for r in results(a)] == ["aaaa0001", "bbbb0002"]
    with Registry(path, must_exist=True) as c:
        assert [r["status"] for r in c.list_runs()] == ["done", "done"]


def test_a_writer_waits_for_another_processes_lock(tmp_path: Path) -> None:
    path = tmp_path / "saerun.db"
    Registry(path).close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()  # ...for 0.3 s
    with Registry(path) as reg:
        reg.add_spec("s", "s.yaml", "x")  # waits (busy timeout) instead of failing
        assert [r[0] for r in reg.db.execute("SELECT name FROM specs")] == ["s"]
    other.close()


# -- claims and leases (reliability) -----------------------------------------------------------


def _planned(reg: Registry, *ids: str) -> None:
    h = reg.add_spec("s", "s.yaml", "name: s\n")
    reg.ensure_runs(h, [job(i) for i in ids])


def test_a_claim_is_exclusive_while_its_owner_lives(reg: Registry) -> None:
    import os
    import socket

    _planned(reg, "aaaa0001", "bbbb0002")
    me = f"{socket.gethostname()}:{os.getpid()}:x"
    other = f"{socket.gethostname()}:{os.getppid()}:y"  # a live process on this host
    assert reg.claim(["aaaa0001"], me) == (["aaaa0001"], {})
    assert reg.claim(["aaaa0001", "bbbb0002"], other) == (["bbbb0002"], {"aaaa0001": me})
    # The owner itself may re-claim (resume in the same process); nobody else can finish it.
    assert reg.claim(["aaaa0001"], me)[0] == ["aaaa0001"]
    assert reg.mark_done("aaaa0001", {}, 0.0, 0.0, 0, owner=other) is False
    assert reg.mark_done("aaaa0001", {}, 0.0, 0.0, 0, owner=me) is True
    assert reg.claim(["aaaa0001"], other) == ([], {})  # done runs are never claimed


def test_a_dead_owner_or_a_lapsed_lease_is_taken_over(reg: Registry) -> None:
    import socket
    import subprocess
    import sys

    _planned(reg, "aaaa0001", "bbbb0002")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    dead = f"{socket.gethostname()}:{gone}:z"  # same host, the pid has exited
    remote = "some-other-host:1234:w"  # cannot be probed: only its lease counts
    assert reg.claim(["aaaa0001"], dead)[0] == ["aaaa0001"]
    assert reg.claim(["bbbb0002"], remote, lease_seconds=0.2)[0] == ["bbbb0002"]
    me = "here:1:me"
    claimed, held = reg.claim(["aaaa0001", "bbbb0002"], me)
    assert claimed == ["aaaa0001"] and held == {"bbbb0002": remote}  # lease still running
    import time

    time.sleep(0.3)
    assert reg.claim(["bbbb0002"], me) == (["bbbb0002"], {})  # lapsed: taken over
    assert reg.renew(["aaaa0001", "bbbb0002"], me) == 2
    assert reg.renew(["aaaa0001"], remote) == 0  # the old owner's heartbeat renews nothing


def test_failed_runs_are_claimed_only_on_retry(reg: Registry) -> None:
    _planned(reg, "aaaa0001")
    reg.claim(["aaaa0001"], "h:1:a")
    assert reg.mark_failed("aaaa0001", "non-finite loss at step 3", owner="h:1:a")
    assert reg.claim(["aaaa0001"], "h:1:a") == ([], {})
    assert reg.claim(["aaaa0001"], "h:1:a", retry_failed=True)[0] == ["aaaa0001"]


def test_a_read_only_registry_is_a_clear_error_and_loses_nothing(tmp_path: Path,
                                                                 monkeypatch) -> None:
    path = tmp_path / "saerun.db"
    with Registry(path) as reg:
        _planned(reg, "aaaa0001")
    before = dump(path)
    real_connect = sqlite3.connect
    # As root, chmod cannot make a file read-only; SQLite's own read-only mode can.
    monkeypatch.setattr(sqlite3, "connect", lambda db, **kw: real_connect(
        f"file:{db}?mode=ro", uri=True, **kw))
    with pytest.raises(SaerunError, match="read-only") as err:
        with Registry(path) as reg:
            reg.add_spec("t", "t.yaml", "name: t\n")
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert dump(path) == before


def test_list_runs_with_details_carries_config_and_metrics(reg: Registry) -> None:
    spec = reg.add_spec("s", "s.yaml", "name: s")
    reg.ensure_runs(spec, [job("aa" * 8, lr=1e-3), job("bb" * 8)])
    finish(reg, "aa" * 8, fvu=0.25, l0=3.0)
    plain = reg.list_runs()
    assert "config" not in plain[0] and "metrics" not in plain[0]
    rows = {r["run_id"]: r for r in reg.list_runs(details=True)}
    assert rows["aa" * 8]["config"] == config(lr=1e-3)
    assert rows["aa" * 8]["metrics"] == {"fvu": 0.25, "l0": 3.0}
    assert rows["bb" * 8]["metrics"] == {} and rows["bb" * 8]["status"] == "planned"
    assert [r["run_id"] for r in reg.list_runs(status="done", details=True)] == ["aa" * 8]
