"""Overlap and devices (train.overlap, train.device): the next LM batch is produced by a
background thread while the SAEs step, bit-identical to producing it in line; errors in the
producer reach the consumer; no thread outlives the loop; the SAEs may train on another device
string than the model's."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saerun.activations import LanguageModel
from saerun.cli import main
from saerun.spec import DataConfig
from saerun.stream import ActivationStream, prefetch


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "saerun-prefetch"]


def numbered(n: int, fail_at: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"producer failed at batch {i}")
        yield {"h": torch.full((2,), float(i))}


def test_prefetch_yields_the_same_batches_in_order_and_ends_its_thread():
    got = [b["h"][0].item() for b in prefetch(numbered(7), depth=1)]
    assert got == list(range(7))
    assert producer_threads() == []


def test_an_error_in_the_producer_reaches_the_consumer_at_its_batch():
    seen: list[float] = []
    with pytest.raises(ValueError, match="producer failed at batch 3"):
        for b in prefetch(numbered(7, fail_at=3)):
            seen.append(b["h"][0].item())
    assert seen == [0.0, 1.0, 2.0]  # every batch before the failure, none lost or repeated
    assert producer_threads() == []


def test_a_consumer_that_stops_early_stops_and_joins_the_producer():
    ahead = prefetch(numbered(1000), depth=2)
    assert next(ahead)["h"][0].item() == 0.0
    ahead.close()
    assert producer_threads() == []
    with pytest.raises(RuntimeError, match="consumer"):
        for _ in prefetch(numbered(1000)):
            raise RuntimeError("the consumer failed")
    assert producer_threads() == []


def test_the_stream_prefetched_is_bit_identical_also_resumed():
    lm = LanguageModel.load("saerun/tiny-stdlib")
    data = DataConfig(context_size=32, train_tokens=4096, shuffle_buffer_tokens=2048,
                      lm_batch_sequences=8)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    plain = list(ActivationStream(lm, data, hooks, batch_tokens=256))
    ahead = list(prefetch(ActivationStream(lm, data, hooks, batch_tokens=256)))
    assert len(ahead) == len(plain) == 16
    for a, b in zip(plain, ahead, strict=True):
        assert all(torch.equal(a[h], b[h]) for h in hooks)
    resumed = ActivationStream(lm, data, hooks, batch_tokens=256)
    resumed.skip(5)
    first = next(prefetch(resumed))
    assert all(torch.equal(first[h], plain[5][h]) for h in hooks)


TINY = """\
name: tiny
model: {{name: saerun/tiny-stdlib, device: cpu}}
site: {{hook_name: blocks.1.hook_resid_post}}
data: {{context_size: 64, train_tokens: 16384, eval_tokens: 2048, shuffle_buffer_tokens: 4096,
       lm_batch_sequences: 16}}
sae: {{architecture: relu, d_sae: 256, sparsity: {{penalty: l1, coefficient: 1}}}}
train: {{lr: 5e-3, batch_tokens: 512, checkpoint_every_tokens: 4096, log_every_steps: 4{train}}}
eval: {{metrics: []}}
"""


def trained(folder: Path, train: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    folder.mkdir()
    (folder / "tiny.yaml").write_text(TINY.format(train=train))
    db = folder / "saerun.db"
    assert main(["run", str(folder / "tiny.yaml"), "--registry", str(db), "--quiet"]) == 0
    with sqlite3.connect(db) as conn:
        [(run_id, status, env)] = conn.execute("SELECT run_id, status, environment FROM runs")
    assert status == "done"
    weights = load_file(next(folder.glob("**/sae_weights.safetensors")))
    return weights, {"run_id": run_id, **json.loads(env)}


def test_overlap_and_a_separate_sae_device_train_bit_identical_weights(tmp_path):
    plain, env = trained(tmp_path / "plain")
    overlapped, env_o = trained(tmp_path / "overlap", ", overlap: true")
    # "cpu:0" is another device string for the same CPU: run_group's separate SAE device path
    # (SAEs built there, batches moved there, evaluation back beside the LM) runs for real.
    moved, env_d = trained(tmp_path / "device", ", device: 'cpu:0'")
    assert env_o["run_id"] == env["run_id"] != env_d["run_id"]  # overlap is not in the id
    assert env["sae_device"] == "cpu" and env_d["sae_device"] == "cpu:0"
    assert env["precision"] == "fp32" and env["tf32"] is None  # no TF32 to set on the CPU
    for name, w in plain.items():
        assert torch.equal(w, overlapped[name]), name
        assert torch.equal(w, moved[name]), name
    assert producer_threads() == []
