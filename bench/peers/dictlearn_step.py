"""dictionary_learning's training step, timed: `trainer.update(step, x)`, the call trainSAE
makes per step and per trainer (zero_grad, loss, backward, optimizer + scheduler step, the
trainer's own decoder renorm / gradient projection, thresholds, dead-latent counters). Run with
bench/.venvs/dictionary_learning. Trainer defaults, except the sizes (and k, 1000-step warm-ups
and a long run so the timed steps are ordinary ones)."""

from __future__ import annotations

from importlib.metadata import version

import _driver

STEPS = 100_000
ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka")
TRAINERS = {"relu": "StandardTrainer", "topk": "TopKTrainer", "batchtopk": "BatchTopKTrainer",
            "gated": "GatedSAETrainer", "jumprelu": "JumpReluTrainer",
            "matryoshka": "MatryoshkaBatchTopKTrainer"}


def make_trainer(arch: str):
    common = dict(steps=STEPS, activation_dim=_driver.D_IN, dict_size=_driver.D_SAE,
                  layer=2, lm_name="bench", device="cpu", seed=0)
    k = dict(k=_driver.K)
    if arch == "relu":
        from dictionary_learning.trainers import StandardTrainer
        return StandardTrainer(**common)
    if arch == "topk":
        from dictionary_learning.trainers import TopKTrainer
        return TopKTrainer(**common, **k)
    if arch == "batchtopk":
        from dictionary_learning.trainers import BatchTopKTrainer
        return BatchTopKTrainer(**common, **k)
    if arch == "gated":
        from dictionary_learning.trainers import GatedSAETrainer
        return GatedSAETrainer(**common)
    if arch == "jumprelu":
        from dictionary_learning.trainers import JumpReluTrainer
        return JumpReluTrainer(**common)
    if arch == "matryoshka":
        # Not exported from dictionary_learning.trainers in 0.1.0.
        from dictionary_learning.trainers.matryoshka_batch_top_k import (
            MatryoshkaBatchTopKTrainer,
        )
        # saerun's default prefixes d_sae/64, /16, /4, d_sae as group fractions.
        return MatryoshkaBatchTopKTrainer(**common, **k,
                                          group_fractions=[1 / 64, 3 / 64, 12 / 64, 48 / 64])
    raise ValueError(f"unknown architecture {arch!r}")


def make_step(arch: str):
    trainer = make_trainer(arch)
    counter = {"step": 0}

    def step(x):
        trainer.update(counter["step"], x)
        counter["step"] += 1

    return step


if __name__ == "__main__":
    import dictionary_learning.trainers  # noqa: F401  (imported once, before any fork)
    _driver.main("dictionary_learning", version("dictionary-learning"), ARCHS, make_step,
                 extra=lambda arch: {"trainer": TRAINERS[arch]})
