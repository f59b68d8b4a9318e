"""Checkpoints you can trust: per-tensor checksums, retention, fallback to the previous good
checkpoint, and the stop path (a cluster's warning signal) that checkpoints every SAE of a job
at one batch boundary and resumes bit-identically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saerun import artifacts


def state(step: int) -> tuple[dict[str, torch.Tensor], dict]:
    return ({"w": torch.full((4, 3), float(step)), "clock": torch.arange(5) * step},
            {"step": step, "tokens": 64 * step})


def save_steps(folder: Path, steps: list[int], keep: int = 2) -> None:
    for step in steps:
        artifacts.save_checkpoint(folder, *state(step), keep=keep)


def test_a_checksum_is_the_sha256_of_dtype_shape_and_bytes():
    t = torch.tensor([1.0, 2.0], dtype=torch.float32)
    expected = hashlib.sha256(b"torch.float32:(2,):" + t.numpy().tobytes()).hexdigest()
    assert artifacts.tensor_sha256(t) == expected
    assert artifacts.tensor_sha256(t.double()) != expected  # same values, other bytes


def test_retention_keeps_the_newest_n_and_records_every_tensors_checksum(tmp_path):
    save_steps(tmp_path, [4, 8, 12])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-12.json", "checkpoint-12.safetensors", "checkpoint-8.json",
                     "checkpoint-8.safetensors", "checkpoint.json"]
    meta = json.loads((tmp_path / "checkpoint-12.json").read_text())
    tensors, _ = state(12)
    assert meta["checksums"] == {k: artifacts.tensor_sha256(v) for k, v in tensors.items()}
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == meta
    save_steps(tmp_path / "one", [4, 8], keep=1)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "checkpoint-8.json", "checkpoint-8.safetensors", "checkpoint.json"]


def test_the_newest_good_checkpoint_is_loaded(tmp_path):
    save_steps(tmp_path, [4, 8])
    notes: list[str] = []
    tensors, meta = artifacts.load_checkpoint(tmp_path, notes)
    assert meta["step"] == 8 and tensors["w"].equal(torch.full((4, 3), 8.0)) and notes == []


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one_and_says_so(tmp_path):
    save_steps(tmp_path, [4, 8])
    flip_last_byte(tmp_path / "checkpoint-8.safetensors")
    notes: list[str] = []
    tensors, meta = artifacts.load_checkpoint(tmp_path, notes)
    assert meta["step"] == 4 and tensors["w"].equal(torch.full((4, 3), 4.0))
    bad = sorted(load_file(str(tmp_path / "checkpoint-8.safetensors")))[-1]
    assert notes == [f"checkpoint at step 8 in {tmp_path.name} is checksum mismatch in "
                     f"{bad}: passed over"]


def test_a_truncated_checkpoint_is_unreadable_and_with_none_left_nothing_loads(tmp_path):
    save_steps(tmp_path, [4, 8])
    path = tmp_path / "checkpoint-8.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    flip_last_byte(tmp_path / "checkpoint-4.safetensors")
    notes: list[str] = []
    assert artifacts.load_checkpoint(tmp_path, notes) is None
    assert len(notes) == 2 and "step 8" in notes[0] and "unreadable (" in notes[0]
    assert "step 4" in notes[1] and "checksum mismatch" in notes[1]


def test_an_older_saeruns_checkpoint_without_checksums_still_loads(tmp_path):
    tensors, meta = state(4)
    artifacts.write_tensors(tmp_path / "checkpoint-4.safetensors", tensors)
    artifacts.write_json(tmp_path / "checkpoint.json", meta)
    loaded = artifacts.load_checkpoint(tmp_path)
    assert loaded is not None and loaded[1] == meta and loaded[0]["w"].equal(tensors["w"])


def test_a_save_killed_before_its_json_leaves_the_previous_checkpoint_in_charge(tmp_path):
    save_steps(tmp_path, [4])
    tensors, _ = state(8)
    artifacts.write_tensors(tmp_path / "checkpoint-8.safetensors", tensors)  # no JSON yet
    assert artifacts.load_checkpoint(tmp_path)[1]["step"] == 4
    save_steps(tmp_path, [12], keep=5)  # the stray tensors file is swept away
    assert not (tmp_path / "checkpoint-8.safetensors").exists()


def test_keep_checkpoints_never_changes_a_run_id():
    from conftest import unit_config

    from saerun.plan import run_id_of

    assert run_id_of(unit_config()) == run_id_of(unit_config(keep_checkpoints=5))


def test_plan_counts_each_jobs_checkpoint_disk_and_warns_about_the_time_limit():
    from conftest import unit_config

    from saerun.plan import Job, checkpoint_disk_gb
    from saerun.views import time_limit_warning

    job = Job("ab12cd34", "r", unit_config(), "g", {}, step_flops_per_token=1e12)
    # relu 8 -> 32: 2*8*32 + 32 + 8 = 552 parameters. A checkpoint: 3 float32 copies (weights,
    # Adam's moments) + 32 int64 clocks = 6,880 B; 2 kept + 1 being written; the export 2,336 B.
    # The job's stream snapshots, as many: the 65,536-row buffer plus one LM batch (32 x 128
    # tokens) of 8 float32 values.
    stream = (65_536 + 32 * 128) * 8 * 4
    assert checkpoint_disk_gb([job]) == pytest.approx(
        (3 * 6880 + 4 * 552 + 4 * 32 + 3 * stream) / 1e9)
    kept5 = Job("ab12cd34", "r", unit_config(keep_checkpoints=5), "g", {})
    assert checkpoint_disk_gb([kept5]) == pytest.approx((6 * 6880 + 2336 + 6 * stream) / 1e9)
    two = Job("ef56ab78", "r2", unit_config(), "g", {})  # a second SAE: the stream is shared
    assert checkpoint_disk_gb([job, two]) == pytest.approx(
        (2 * (3 * 6880 + 4 * 552 + 4 * 32) + 3 * stream) / 1e9)
    # 1e12 FLOPs/token x 1,280 tokens at 1e12 FLOP/s: 1,280 s of steps; 1 + 3 attempts of 5 min
    # is 1,200 s (too short), of 6 min 1,440 s (enough); max_requeues 0: one attempt only.
    assert time_limit_warning([job], 6, 3, flops=1e12) is None
    assert time_limit_warning([job], 5, 3, flops=1e12) == (
        "its SAE steps alone need ~21 min at 1e+12 FLOP/s, more than 4 x the 5 min time limit: "
        "raise launcher.time or launcher.max_requeues, or split the job (--device-memory)")
    assert "more than 1 x the 6 min" in time_limit_warning([job], 6, 0, flops=1e12)
    assert time_limit_warning([Job("ab12cd34", "r", unit_config(), "g", {})], 1, 0) is None


def test_plan_warns_from_the_time_a_job_measured(tmp_path, capsys):
    """Once a job's runs have trained (done, or checkpointed), `saerun plan` reads its time
    per token from them (the slowest; LM forward included) instead of assuming a GPU's FLOP/s."""
    from saerun.cli import main
    from saerun.views import measured_rates

    def measured_rate(path, ids):  # one device job
        return measured_rates(path, [ids])[0]

    reg, jobs = planned(tmp_path / "measured")
    (tmp_path / "measured" / "spec.yaml").write_text(
        SPEC + "launcher: {kind: slurm, time: 1m, max_requeues: 0}\n")
    ids = [j.run_id for j in jobs]
    assert measured_rate(reg.path, ids) is None  # nothing trained yet
    assert reg.mark_done(ids[0], {}, 20.0, 1.0, 8192)  # 8,192 tokens in 20 s
    assert measured_rate(reg.path, ids) == pytest.approx((20 / 8192, (
        f"measured on run {ids[0][:10]}: 8,192 tokens in 20 s")))
    artifacts.save_checkpoint(reg.artifacts_dir(ids[1]), {"x": torch.zeros(1)},
                              {"step": 2, "tokens": 1024, "train_seconds": 10.0})  # slower
    rate, where = measured_rate(reg.path, ids)
    assert (rate, where) == (10 / 1024, f"measured on run {ids[1][:10]}: 1,024 tokens in 10 s")
    reg.close()
    # 8,192 training tokens x 10/1024 s = 80 s, more than one attempt of 1 minute.
    assert main(["plan", str(tmp_path / "measured" / "spec.yaml"), "--registry",
                 str(tmp_path / "measured" / "saerun.db")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"warning: its training needs ~1 min (measured on run {ids[1][:10]}: 1,024 tokens "
            "in 10 s), more than 1 x the 1 min time limit") in out


# -- the stop path: every SAE of a job checkpointed at one batch boundary ----------------------

SPEC = """\
name: stop
model: {name: saerun/tiny-stdlib}
site: {hook_name: blocks.1.hook_resid_post}
data: {context_size: 64, train_tokens: 8192, eval_tokens: 1024, shuffle_buffer_tokens: 2048,
       lm_batch_sequences: 16, normalize: none}
sae: {architecture: relu, d_sae: 128}
train: {lr: 5e-3, batch_tokens: 512, checkpoint_every_tokens: 2048, log_every_steps: 4}
eval: {metrics: [l0, mse, fvu, dead]}
sweep:
  zip: {sae: [{architecture: relu, d_sae: 128}, {architecture: topk, d_sae: 128, k: 8}]}
"""


def planned(folder: Path):
    from saerun.registry import Registry
    from saerun.runner import prepare

    folder.mkdir()
    (folder / "spec.yaml").write_text(SPEC)
    plan = prepare(folder / "spec.yaml").plan
    reg = Registry(folder / "saerun.db")
    spec_hash = reg.add_spec(plan.spec.name, "spec.yaml", SPEC)
    reg.ensure_runs(spec_hash, [{"run_id": j.run_id, "name": j.name, "group_key": j.group_key,
                                 "config": j.config.model_dump(mode="json")} for j in plan.jobs])
    reg.claim([j.run_id for j in plan.jobs])
    return reg, plan.jobs


@pytest.mark.parametrize("snapshot", ["kept", "corrupted"])
def test_a_stop_checkpoints_every_sae_at_one_batch_and_the_resume_is_bit_identical(
        tmp_path, capsys, monkeypatch, snapshot):
    """...and the restart takes the stream head's measurements (norm scales, outlier limits)
    from the checkpoints: it never measures the head again."""
    from saerun import activations
    from saerun.cli import main
    from saerun.execute import Interrupted, run_group

    reg, jobs = planned(tmp_path / "stopped")
    asked: list[int] = []

    def stop() -> str | None:  # asked after every batch: stop after the 7th (not a checkpoint)
        asked.append(1)
        return "the time limit is near" if len(asked) == 7 else None

    with pytest.raises(Interrupted) as caught:
        run_group(reg, jobs, None, stop=stop)
    assert caught.value.reason == "the time limit is near"
    assert sorted(caught.value.run_ids) == sorted(j.run_id for j in jobs)
    for job in jobs:
        meta = json.loads((reg.artifacts_dir(job.run_id) / "checkpoint.json").read_text())
        assert meta["step"] == 7
    # `saerun status` says how far each run's newest checkpoint goes (7 steps of 512 tokens).
    db = str(reg.path)
    capsys.readouterr()
    assert main(["status", "--registry", db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["saved_tokens"], r["train_tokens"]) for r in rows] == [(3584, 8192)] * 2
    assert main(["status", "--registry", db]) == 0
    assert capsys.readouterr().out.count("3,584 tok (44%)") == 2
    # The stream's position is saved once for the group, beside the first run's checkpoints.
    lead = reg.artifacts_dir(min(j.run_id for j in jobs))
    assert (lead / "stream-7.json").exists() and (lead / "stream-7.safetensors").exists()
    assert {p.parent for j in jobs for p in reg.artifacts_dir(j.run_id).glob("stream-*")} == \
        {lead}
    if snapshot == "corrupted":
        flip_last_byte(lead / "stream-7.safetensors")
    capsys.readouterr()

    def no_measure(*args, **kwargs):
        raise AssertionError("the restart measured the stream head again")

    monkeypatch.setattr(activations, "_measure", no_measure)
    assert run_group(reg, jobs, None) == {}
    monkeypatch.undo()
    said = capsys.readouterr().err
    if snapshot == "corrupted":  # regenerated, and said why
        assert (f"saerun: stream snapshot at step 7 fails its checksum in {lead.name}: "
                "regenerating the training stream up to step 7") in said
    else:
        assert "regenerating" not in said
    for job in jobs:  # a finished run keeps no stream snapshot
        assert not list(reg.artifacts_dir(job.run_id).glob("stream-*"))
    assert main(["status", "--registry", db, "--json"]) == 0
    assert [(r["status"], r["saved_tokens"]) for r in json.loads(capsys.readouterr().out)] == \
        [("done", None)] * 2
    reg.close()

    ref, _ = planned(tmp_path / "uninterrupted")
    assert run_group(ref, jobs, None) == {}
    for job in jobs:
        a = artifacts.read_weights(reg.artifacts_dir(job.run_id))
        b = artifacts.read_weights(ref.artifacts_dir(job.run_id))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    ref.close()


def test_a_stop_while_evaluating_requeues_and_the_restart_only_evaluates(tmp_path, monkeypatch):
    """Cut off after the last step (every SAE trained and checkpointed, evaluation under way):
    the job stops with every run unfinished; the restart trains nothing, takes the norm
    scales and outlier limits its checkpoints recorded (no model pass over the stream head)
    and ends with the metrics and weights of an uninterrupted run."""
    from saerun import activations, faults
    from saerun.execute import Interrupted, run_group

    reg, jobs = planned(tmp_path / "stopped")
    asked: list[int] = []

    def stop() -> str | None:  # 16 training batches, then the evaluation's first batch
        asked.append(1)
        return "the time limit is near" if len(asked) == 17 else None

    with monkeypatch.context() as m:  # each of the 16 steps takes 0.05 s at least
        m.setattr(faults, "_DELAY_POINT", "train_step")
        m.setattr(faults, "_DELAY", "0.05")
        with pytest.raises(Interrupted) as caught:
            run_group(reg, jobs, None, stop=stop)
    assert sorted(caught.value.run_ids) == sorted(j.run_id for j in jobs)
    for job in jobs:
        meta = json.loads((reg.artifacts_dir(job.run_id) / "checkpoint.json").read_text())
        assert meta["step"] == 16 and "outlier_limits" in meta
        assert reg.get_run(job.run_id)["status"] != "done"

    def no_head(*args, **kwargs):
        raise AssertionError("the restart ran the model over the stream head")

    monkeypatch.setattr(activations, "stream_head", no_head)
    assert run_group(reg, jobs, None) == {}
    monkeypatch.undo()
    ref, _ = planned(tmp_path / "uninterrupted")
    assert run_group(ref, jobs, None) == {}
    for job in jobs:
        a, b = reg.get_run(job.run_id), ref.get_run(job.run_id)
        assert a["status"] == b["status"] == "done"
        assert a["metrics"] == b["metrics"]
        # The training time is the first process's (16 steps of 0.05 s), though the restart
        # trained nothing.
        assert a["train_seconds"] >= 16 * 0.05
        wa = artifacts.read_weights(reg.artifacts_dir(job.run_id))
        wb = artifacts.read_weights(ref.artifacts_dir(job.run_id))
        assert all(wa[k].equal(wb[k]) for k in wa)
    reg.close()
    ref.close()
