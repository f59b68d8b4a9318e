"""The training loop: schedules by hand, lockstep groups, and resume == uninterrupted (bitwise)."""

from __future__ import annotations

import pytest
import torch
from conftest import unit_config

from saerun import artifacts
from saerun.spec import RunConfig, TrainConfig
from saerun.train import Trainer, lr_at, sparsity_at, train_group


def config(**train) -> RunConfig:
    return unit_config({"b_dec_init": "mean"}, **{"log_every_steps": 5, **train})


def batches(n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"h": torch.randn(64, 8, generator=g) * 3} for _ in range(n)]


def test_lr_schedule_by_hand():
    t = TrainConfig(lr=1.0, lr_warmup_steps=4, lr_decay="linear", lr_decay_fraction=0.5)
    assert [lr_at(s, 20, t) for s in (0, 1, 3, 4, 9, 10, 15, 19)] == pytest.approx([
        0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.1])
    cos = TrainConfig(lr=1.0, lr_decay="cosine", lr_decay_fraction=0.5)
    assert lr_at(10, 20, cos) == 1.0 and lr_at(15, 20, cos) == pytest.approx(0.5)
    assert lr_at(19, 20, TrainConfig(lr=1.0, lr_decay="none")) == 1.0


def test_sparsity_warmup_by_hand():
    t = TrainConfig(sparsity_warmup_fraction=0.2)
    assert [sparsity_at(s, 20, t) for s in (0, 1, 3, 4, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert sparsity_at(0, 20, TrainConfig(sparsity_warmup_fraction=0.0)) == 1.0


def run(trainers, data, start=0, on_checkpoint=lambda tr: None):
    train_group(trainers, data[start:], start, {"h": 0.5}, on_checkpoint)


def test_training_reduces_loss_and_logs_curves():
    tr = Trainer.create("a" * 16, config(), "cpu")
    run([tr], batches())
    assert tr.done and tr.step == 20 and tr.tokens == 20 * 64
    assert [p["step"] for p in tr.curve] == [5, 10, 15, 20]
    assert tr.curve[-1]["mse"] < tr.curve[0]["mse"]


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    data = batches()
    full = Trainer.create("a" * 16, config(), "cpu")
    run([full], data)

    # Interrupted: train until the first checkpoint (step 7), "die", resume from disk.
    first = Trainer.create("a" * 16, config(), "cpu")

    def save(tr):
        artifacts.save_checkpoint(tmp_path, *tr.state())

    run([first], data[:9], on_checkpoint=save)  # ran 2 steps past the checkpoint, then died
    tensors, meta = artifacts.load_checkpoint(tmp_path)
    assert meta["step"] == 7
    resumed = Trainer.create("a" * 16, config(), "cpu")
    resumed.load_state(tensors, meta)
    run([resumed], data, start=resumed.step)
    for (name, p), q in zip(full.sae.named_parameters(), resumed.sae.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(full.tokens_since_fired, resumed.tokens_since_fired)


def test_lockstep_group_equals_separate_runs():
    data = batches()
    a = Trainer.create("a" * 16, config(), "cpu")
    b = Trainer.create("b" * 16, config(lr=3e-3), "cpu")
    run([a, b], data)
    alone = Trainer.create("b" * 16, config(lr=3e-3), "cpu")
    run([alone], data)
    assert torch.equal(b.sae.W_dec, alone.sae.W_dec)
    assert not torch.equal(a.sae.W_dec, b.sae.W_dec)


def test_dead_latents_are_counted_in_tokens():
    tr = Trainer.create("a" * 16, config(dead_window_tokens=128), "cpu")
    with torch.no_grad():
        tr.sae.b_enc[:4] = -1e6  # these four can never fire
    run([tr], batches())
    dead = tr.dead_mask()
    assert dead[:4].all()
    assert tr.tokens_since_fired[:4].eq(20 * 64).all()


def test_a_non_finite_loss_stops_that_run_only_and_keeps_its_last_good_checkpoint():
    # One group, two sites: "g" carries an inf at batch 8, "h" is clean.
    data = [{"h": b["h"], "g": b["h"].clone()} for b in batches()]
    data[8]["g"][3, 2] = float("inf")
    ok = Trainer.create("a" * 16, config(), "cpu")
    cfg = config(lr=3e-3)
    bad = Trainer.create("b" * 16, cfg.model_copy(update={"site": cfg.site.model_copy(
        update={"hook_name": "g"})}), "cpu")
    checkpoints: dict[str, list[int]] = {"a" * 16: [], "b" * 16: []}
    failures: list[str] = []
    train_group([ok, bad], data, 0, {"h": 0.5, "g": 0.5},
                lambda tr: checkpoints[tr.run_id].append(tr.step),
                on_failure=lambda tr: failures.append(tr.failure))
    assert ok.done and ok.failure is None and checkpoints["a" * 16] == [7, 14, 20]
    # Step 8 (0-based) saw inf; the check on the next logging step (10) catches it, before
    # the checkpoint at step 14 could be written from the broken state.
    assert failures == ["non-finite loss at step 8"] and bad.step == 10
    assert checkpoints["b" * 16] == [7]


def test_exploding_weights_are_a_failure():
    tr = Trainer.create("a" * 16, config(), "cpu")
    with torch.no_grad():
        tr.sae.W_dec[0, 0] = 1e9
    assert tr.check_health().startswith("exploding weights (max |W_dec| = 1e+09")
