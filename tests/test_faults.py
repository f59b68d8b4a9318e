"""Real processes killed at seeded points (SAERUN_FAULT, see saerun/faults.py), concurrent
runners on one registry, numerical failures: the outcomes the reliability issue promises."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import saerun as run_cli
from safetensors.torch import load_file

from saerun.registry import Registry

# Two SAEs in one group (one LM pass), 32 steps each, a checkpoint every 4 steps.
SPEC = """\
name: faults
model: {name: saerun/tiny-stdlib}
site: {hook_name: blocks.1.hook_resid_post}
data: {context_size: 64, train_tokens: 16384, eval_tokens: 1024, shuffle_buffer_tokens: 4096,
       lm_batch_sequences: 16}
sae: {architecture: relu, d_sae: 128}
train: {lr: 5e-3, batch_tokens: 512, checkpoint_every_tokens: 2048, log_every_steps: 4}
eval: {metrics: [l0, mse, fvu, dead]}
sweep:
  zip: {sae: [{architecture: relu, d_sae: 128}, {architecture: topk, d_sae: 128, k: 8}]}
"""

# How often each point is reached in one full run of SPEC (roughly): a kill drawn from these
# ranges lands somewhere in the run, from the first model forward to the last registry write.
POINTS = {"lm_forward": 30, "train_step": 64, "checkpoint": 32, "registry": 20, "eval": 2}


def saerun(folder: Path, *args: str, fault: str | None = None,
           preexec_fn=None) -> subprocess.CompletedProcess:
    return run_cli("spec.yaml", "--quiet", *args, cwd=folder, fault=fault, preexec_fn=preexec_fn)


def final_weights(folder: Path) -> dict[str, dict]:
    with Registry(folder / "registry" / "saerun.db") as reg:
        runs = reg.list_runs()
        assert {r["status"] for r in runs} == {"done"}, runs
        return {r["run_id"]: load_file(reg.artifacts_dir(r["run_id"]) / "sae_weights.safetensors")
                for r in runs}


def same(a: dict[str, dict], b: dict[str, dict]) -> bool:
    return a.keys() == b.keys() and all(
        a[r].keys() == b[r].keys() and all(a[r][k].equal(b[r][k]) for k in a[r]) for r in a
    )


def fresh(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "spec.yaml").write_text(SPEC)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("reference")
    (folder / "spec.yaml").write_text(SPEC)
    done = saerun(folder)
    assert done.returncode == 0, done.stderr
    return final_weights(folder)


def kill_and_resume(tmp_path: Path, reference: dict, kills: int, seed: int) -> int:
    """`kills` seeded SIGKILLs in a row, each followed by a resume; every run that finishes
    must equal the uninterrupted reference bit for bit. Returns the number of cycles."""
    rng = random.Random(seed)
    killed, cycles, folder = 0, 0, fresh(tmp_path, "cycle0")
    while killed < kills:
        point = rng.choice(sorted(POINTS))
        n = rng.randint(1, POINTS[point])
        run = saerun(folder, fault=f"{point}:{n}")
        if run.returncode == -signal.SIGKILL:
            killed += 1
            continue
        # The kill point lay beyond what was left to do: the run finished. It must equal the
        # uninterrupted reference; then a new cycle starts in a fresh registry.
        assert run.returncode == 0, run.stderr
        assert same(final_weights(folder), reference), f"cycle {cycles} differs"
        cycles += 1
        folder = fresh(tmp_path, f"cycle{cycles}")
    last = saerun(folder)
    assert last.returncode == 0, last.stderr
    assert same(final_weights(folder), reference)
    return cycles + 1


def test_seeded_kills_in_a_row_each_resume_bit_identically(tmp_path, reference):
    kill_and_resume(tmp_path, reference, kills=6, seed=6)


@pytest.mark.slow
def test_twenty_seeded_kills_in_a_row_each_resume_bit_identically(tmp_path, reference):
    kill_and_resume(tmp_path, reference, kills=20, seed=20261121)


def test_deleted_run_folder_between_kill_and_resume_restarts_that_run(tmp_path, reference):
    folder = fresh(tmp_path, "deleted")
    assert saerun(folder, fault="train_step:30").returncode == -signal.SIGKILL
    runs = folder / "registry" / "runs"
    victim = sorted(runs.iterdir())[0]
    for path in sorted(victim.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    victim.rmdir()
    done = saerun(folder)
    assert done.returncode == 0, done.stderr
    assert same(final_weights(folder), reference)


def test_four_concurrent_runners_execute_each_run_exactly_once(tmp_path):
    folder = fresh(tmp_path, "concurrent")
    # Four activation groups (the shuffle seed splits groups), two SAEs each.
    spec = SPEC.replace("  zip:", "  grid: {data.shuffle_seed: [0, 1, 2, 3]}\n  zip:")
    (folder / "spec.yaml").write_text(spec)
    env = {k: v for k, v in os.environ.items() if k != "SAERUN_FAULT"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "saerun.cli", "spec.yaml", "--quiet"],
                         cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1] for o in outs]
    assert not any("locked" in out + err for out, err in outs)
    trained = [line.split(":", 1)[1].split() for out, _ in outs for line in out.splitlines()
               if line.startswith("trained here:")]
    ids = [i for chunk in trained for i in chunk]
    with Registry(folder / "registry" / "saerun.db") as reg:
        runs = reg.list_runs()
    assert len(runs) == 8 and {r["status"] for r in runs} == {"done"}
    assert sorted(ids) == sorted(r["run_id"][:10] for r in runs)  # each once, none twice


def test_a_full_disk_fails_cleanly_and_the_retry_resumes_bit_identically(tmp_path, reference):
    import resource

    folder = fresh(tmp_path, "full")
    # Bytes per file: the registry (~200 kB with its WAL) fits, a checkpoint (~400 kB) does not.
    limit = 300_000

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = saerun(folder, preexec_fn=small_disk)
    assert full.returncode in (1, 2), full.stderr
    assert "Traceback" not in full.stderr + full.stdout
    assert "disk full" in full.stdout + full.stderr or "too large" in full.stdout + full.stderr
    # Nothing half-written: the registry opens, every run is planned, running or failed.
    with Registry(folder / "registry" / "saerun.db") as reg:
        assert {r["status"] for r in reg.list_runs()} <= {"planned", "running", "failed"}
    again = saerun(folder, "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert same(final_weights(folder), reference)


def test_a_diverging_run_fails_alone_and_retry_failed_runs_it_again(tmp_path):
    folder = fresh(tmp_path, "explode")
    # lr 1e9: Adam moves every weight by ~1e9 in one step; the next loss is not finite.
    spec = SPEC.replace("  zip: {sae:", "  grid: {train.lr: [5e-3, 1e9]}\n  zip: {sae:")
    (folder / "spec.yaml").write_text(spec)
    first = saerun(folder)
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    with Registry(folder / "registry" / "saerun.db") as reg:
        runs = {r["run_id"]: r for r in reg.list_runs()}
        statuses = sorted(r["status"] for r in runs.values())
        assert statuses == ["done", "done", "failed", "failed"]
        for r in runs.values():
            if r["status"] == "failed":
                assert r["error"] == "non-finite loss at step 1 (no checkpoint yet)"
                assert f"failed {r['run_id'][:10]}" in first.stdout
    plain = saerun(folder)  # failed runs stay failed unless asked
    assert plain.returncode == 0 and "trained here" not in plain.stdout
    retry = saerun(folder, "--retry-failed")
    assert retry.returncode == 1 and retry.stdout.count("non-finite loss at step 1") == 2


def test_a_checkpoint_corrupted_between_kill_and_resume_is_passed_over_with_a_note(tmp_path,
                                                                                 reference):
    import json

    folder = fresh(tmp_path, "corrupted")
    # 64 step points a run (two SAEs a batch): killed at about batch 15, after the checkpoints
    # of steps 4, 8 and 12 (the last two kept).
    assert saerun(folder, fault="train_step:30").returncode == -signal.SIGKILL
    victim = sorted((folder / "registry" / "runs").iterdir())[0]
    newest = json.loads((victim / "checkpoint.json").read_text())["step"]
    assert sorted(p.name for p in victim.glob("checkpoint-*.safetensors")) == [
        f"checkpoint-{newest}.safetensors", f"checkpoint-{newest - 4}.safetensors"]
    tensors = victim / f"checkpoint-{newest}.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-8:] = bytes(8)  # a bad disk: the header parses, the last tensor's bytes are wrong
    tensors.write_bytes(bytes(data))
    done = saerun(folder)
    assert done.returncode == 0, done.stderr
    assert f"checkpoint at step {newest} in {victim.name} is checksum mismatch" in done.stderr
    assert f"resumed from step {newest - 4}" in done.stderr
    with Registry(folder / "registry" / "saerun.db") as reg:
        notes = reg.get_run(victim.name)["environment"]["checkpoint_notes"]
    assert notes[0].startswith(f"checkpoint at step {newest} in {victim.name} is checksum "
                               "mismatch in ") and notes[-1] == f"resumed from step {newest - 4}"
    assert same(final_weights(folder), reference)
