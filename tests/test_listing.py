"""`saerun ls`: what differs within a spec, the reports' filters, sort, sites; through the CLI on
a hand-made registry (no training), a closed pipe, `python -m saerun`, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import saerun

from saerun.errors import SaerunError
from saerun.listing import differing_keys, listing, show_value, site_of, values_text
from saerun.registry import Registry


def config(k: int = 32, lr: float = 3e-4, **site: Any) -> dict[str, Any]:
    return {"seed": 0, "model": {"name": "tiny"},
            "site": {"hook_name": "blocks.0.hook_resid_post", **site},
            "data": {"train_tokens": 4096, "context_size": 16},
            "sae": {"architecture": "topk", "d_sae": 64, "k": k},
            "train": {"lr": lr, "batch_tokens": 128}}


def make_registry(path: Path) -> dict[str, str]:
    """Spec `a`: three runs (k and lr vary; one still planned); spec `b`: one run."""
    ids = {"a1": "a1" * 8, "a2": "a2" * 8, "a3": "a3" * 8, "b1": "b1" * 8}
    with Registry(path) as reg:
        spec_a = reg.add_spec("a", "a.yaml", "name: a")
        spec_b = reg.add_spec("b", "b.yaml", "name: b")
        reg.ensure_runs(spec_a, [
            {"run_id": ids["a1"], "name": "a", "group_key": "g", "config": config(32, 3e-4)},
            {"run_id": ids["a2"], "name": "a", "group_key": "g", "config": config(64, 3e-4)},
            {"run_id": ids["a3"], "name": "a", "group_key": "g", "config": config(64, 1e-3)}])
        transcoder = config(8, 3e-4, hook_name_out="blocks.0.hook_mlp_out")
        reg.ensure_runs(spec_b, [{"run_id": ids["b1"], "name": "b", "group_key": "h",
                                  "config": transcoder}])
        for key, fvu in (("a1", 0.3), ("a2", 0.1), ("b1", 0.2)):
            reg.mark_running(ids[key], {"device": "cpu"}, "fp")
            reg.mark_done(ids[key], {"fvu": fvu, "l0": 32.0, "dead_fraction": 0.25}, 1.0, 1.0,
                          4096)
    return ids


def test_differing_keys_and_values_text():
    assert differing_keys([config(32), config(64)]) == ["sae.k"]
    assert differing_keys([config(32)]) == []  # one run: nothing sets it apart
    # A key only some configs have differs too.
    assert differing_keys([config(), config(hook_name_out="x")]) == ["site.hook_name_out"]
    assert values_text({"sae.k": 32, "train.lr": 3e-4}) == "sae.k=32 train.lr=3e-4"
    assert [show_value(v) for v in (1e-3, 0.25, 3.0, 1e-10, None, True, [1, 0.5])] == [
        "1e-3", "0.25", "3", "1e-10", "null", "true", "[1, 0.5]"]
    assert site_of(config(hook_name_out="blocks.0.hook_mlp_out")) == (
        "blocks.0.hook_resid_post -> blocks.0.hook_mlp_out")


def test_listing_values_filters_sort(tmp_path):
    ids = make_registry(tmp_path / "saerun.db")
    with Registry(tmp_path / "saerun.db") as reg:
        runs = reg.list_runs(details=True)
    rows = listing(runs)
    by_id = {r["run_id"]: r for r in rows}
    # Per spec: `a` varies k and lr (over all three runs, the planned one included); `b` is one
    # run, so nothing differs.
    assert by_id[ids["a1"]]["values"] == {"sae.k": 32, "train.lr": 3e-4}
    assert by_id[ids["a3"]]["values"] == {"sae.k": 64, "train.lr": 1e-3}
    assert by_id[ids["b1"]]["values"] == {}
    assert by_id[ids["b1"]]["site"] == "blocks.0.hook_resid_post -> blocks.0.hook_mlp_out"
    assert by_id[ids["a1"]]["metrics"] == {"dead_fraction": 0.25, "fvu": 0.3, "l0": 32.0}
    # The values do not change with the filters.
    kept = listing(runs, filters={"sae.k": "64"})
    assert [r["run_id"] for r in kept] == [ids["a2"], ids["a3"]]
    assert kept[0]["values"] == {"sae.k": 64, "train.lr": 3e-4}
    assert [r["run_id"] for r in listing(runs, status="planned")] == [ids["a3"]]
    assert [r["run_id"] for r in listing(runs, filters={"architecture": "topk", "lr": "0.001"})
            ] == [ids["a3"]]
    # Sort by a metric; runs without it last, in the registry's order.
    assert [r["run_id"] for r in listing(runs, sort="fvu")] == [
        ids["a2"], ids["b1"], ids["a1"], ids["a3"]]
    assert [r["run_id"] for r in listing(runs, sort="-fvu")] == [
        ids["a1"], ids["b1"], ids["a2"], ids["a3"]]
    with pytest.raises(SaerunError, match="did you mean 'fvu'"):
        listing(runs, sort="fvv")
    with pytest.raises(SaerunError, match="did you mean 'sae.k'"):
        listing(runs, filters={"sae.kk": "3"})


def test_ls_through_the_cli(tmp_path):
    ids = make_registry(tmp_path / "registry" / "saerun.db")
    out = saerun("ls", "--json", "--sort", "fvu", "status=done", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["run_id"] for r in rows] == [ids["a2"], ids["b1"], ids["a1"]]
    assert rows[0]["metrics"]["fvu"] == 0.1 and rows[0]["config"]["sae"]["k"] == 64
    table = saerun("ls", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    line = next(t for t in table.stdout.splitlines() if ids["a1"][:12] in t)
    assert "sae.k=32 train.lr=3e-4" in line and "0.3" in line and "25" in line
    bad = saerun("ls", "sae.kk=3", cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'sae.k'" in bad.stderr


@pytest.mark.parametrize("flag", ["--json", None])
def test_a_closed_pipe_ends_quietly(tmp_path, flag):
    """`saerun ls | head -1`: the reader is gone before saerun writes; no traceback."""
    make_registry(tmp_path / "registry" / "saerun.db")
    args = [sys.executable, "-m", "saerun", "ls"] + ([flag] if flag else [])
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves at once
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code in (0, 141)


def test_python_m_saerun_and_help(tmp_path):
    out = subprocess.run([sys.executable, "-m", "saerun", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "saerun specs/quickstart.yaml" in out.stdout and "README.md" in out.stdout
    assert "saerun ls" in out.stdout and "lazy" not in out.stdout
