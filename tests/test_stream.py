"""A resumed training stream (saerun/stream.py): from a snapshot it hands out the very batches
the uninterrupted stream does, without tokenising or running the model over what came before;
snapshot files are checksummed, and one that is missing or bad falls back to regenerating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saerun.activations import LanguageModel, PackerState, token_batches
from saerun.spec import DataConfig
from saerun.stream import (
    ActivationStream,
    Snapshot,
    load_snapshot,
    resume_stream,
    save_snapshot,
    snapshot_steps,
)

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
# 64 batches of 1,024 vectors from language-model batches of 32 rows of 32 tokens (BOS and EOS
# dropped, so a batch of vectors is not an LM batch); the first ~34 LM batches are the stream
# head (NORM_SAMPLE_TOKENS), so snapshots fall inside it and after it.
DATA = DataConfig(context_size=32, train_tokens=65_536, eval_tokens=512,
                  shuffle_buffer_tokens=4096, lm_batch_sequences=32)


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return LanguageModel.load("saerun/tiny-stdlib")


def tiny_corpus(tmp_path: Path) -> DataConfig:
    """Six short documents: the train split wraps into new epochs every few batches."""
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i * i}\n"
                                        * (i + 1)}) + "\n" for i in range(6)))
    return DataConfig(dataset=str(path), context_size=16, lm_batch_sequences=2,
                      eval_fraction=0.01, train_tokens=4096, eval_tokens=64)


@pytest.mark.parametrize("corpus", ["embedded", "tiny"])
def test_the_packer_resumed_after_any_batch_goes_on_as_the_uninterrupted_one(lm, tmp_path,
                                                                             corpus):
    data = DATA if corpus == "embedded" else tiny_corpus(tmp_path)
    states: list[PackerState] = []
    batches = token_batches(lm, data, "train", track=states.append)
    full = [next(batches) for _ in range(40)]
    assert len(states) == 40
    if corpus == "tiny":  # the resumes below cross epoch ends
        assert len({s.epoch for s in states}) > 3
    for i in (0, 1, 7, 19, 33):
        resumed = token_batches(lm, data, "train", resume=states[i])
        for j in range(i + 1, 40):
            assert torch.equal(next(resumed), full[j]), (corpus, i, j)


def consume(stream: ActivationStream, at: set[int]) -> tuple[list[dict], dict[int, Snapshot]]:
    """Every batch, and the stream's snapshot right after batch p - 1 for each p in `at`."""
    out, snaps = [], {}
    for batch in stream:
        out.append(batch)
        if len(out) in at:
            snap = stream.snapshot(len(out))
            assert snap is not None
            snaps[len(out)] = snap
    return out, snaps


def count_forwards(lm: LanguageModel, monkeypatch) -> list[int]:
    calls: list[int] = []
    capture = lm.capture
    monkeypatch.setattr(lm, "capture", lambda *a, **k: calls.append(1) or capture(*a, **k))
    return calls


@pytest.mark.parametrize("shuffle", [4096, 0])
def test_a_stream_resumed_from_a_saved_snapshot_is_bit_identical_and_skips_the_model(
        lm, tmp_path, monkeypatch, shuffle):
    data = DATA.model_copy(update={"shuffle_buffer_tokens": shuffle})
    full, snaps = consume(ActivationStream(lm, data, HOOKS, 1024), {5, 40, 63})
    assert len(full) == 64
    for step, snap in snaps.items():
        folder = tmp_path / f"{shuffle}-{step}"
        folder.mkdir()
        save_snapshot(folder, snap, lm.dtype)
        loaded, why = load_snapshot(folder, step, HOOKS)
        assert why is None and loaded is not None
        calls = count_forwards(lm, monkeypatch)
        resumed = ActivationStream(lm, data, HOOKS, 1024)
        resumed.resume(loaded)
        rest = list(resumed)
        assert len(rest) == 64 - step
        for a, b in zip(rest, full[step:], strict=True):
            assert all(torch.equal(a[h], b[h]) for h in HOOKS), (shuffle, step)
        # The model ran over the language-model batches after the snapshot's only (the head,
        # which a job computes again for its norm estimate, is this process's already).
        assert len(calls) == resumed.position.batches - loaded.batches, step
        monkeypatch.undo()
    # Regenerating (no snapshot) costs a forward over every batch before the step.
    calls = count_forwards(lm, monkeypatch)
    skipped = ActivationStream(lm, data, HOOKS, 1024)
    skipped.skip(40)
    assert all(torch.equal(a[HOOKS[0]], b[HOOKS[0]]) for a, b in
               zip(list(skipped), full[40:], strict=True))
    assert len(calls) >= 40


def test_a_snapshot_keeps_its_rows_in_the_models_dtype_and_the_newest_two(lm, tmp_path):
    _, snaps = consume(ActivationStream(lm, DATA, HOOKS, 1024), {10, 20, 30})
    for step in (10, 20, 30):
        save_snapshot(tmp_path, snaps[step], torch.bfloat16)
    assert snapshot_steps(tmp_path) == [30, 20]
    assert not (tmp_path / "stream-10.safetensors").exists()
    loaded, _ = load_snapshot(tmp_path, 30, HOOKS)
    assert loaded is not None and loaded.pending[HOOKS[0]].dtype == torch.bfloat16
    assert torch.equal(loaded.pending[HOOKS[0]].float(),
                       snaps[30].pending[HOOKS[0]].bfloat16().float())


def test_a_bad_or_foreign_snapshot_is_passed_over_and_the_stream_regenerated(lm, tmp_path):
    full, snaps = consume(ActivationStream(lm, DATA, HOOKS, 1024), {12})
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder in (good, bad):
        folder.mkdir()
        save_snapshot(folder, snaps[12], lm.dtype)
    tensors = bad / "stream-12.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF  # the header parses; the last tensor's bytes are wrong
    tensors.write_bytes(bytes(data))
    assert load_snapshot(bad, 12, HOOKS) == (None, "stream snapshot at step 12 fails its checksum")
    assert load_snapshot(good, 11, HOOKS) == (None, "no stream snapshot at step 11")
    snap, why = load_snapshot(good, 12, HOOKS[:1])
    assert snap is None and "holds hooks" in str(why)

    stream = ActivationStream(lm, DATA, HOOKS, 1024)
    assert resume_stream(stream, 12, [bad, good]) is None  # the good one is taken
    assert torch.equal(next(iter(stream))[HOOKS[1]], full[12][HOOKS[1]])
    stream = ActivationStream(lm, DATA, HOOKS, 1024)
    note = resume_stream(stream, 12, [bad, tmp_path])
    assert note == ("stream snapshot at step 12 fails its checksum in bad: regenerating the "
                    "training stream up to step 12")
    assert torch.equal(next(iter(stream))[HOOKS[1]], full[12][HOOKS[1]])
