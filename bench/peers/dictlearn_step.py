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


def load_init(ae, arch: str) -> None:
    """--init weights (saerun's names) onto dictionary_learning's: nn.Linear weights are the
    transposes; Gated's b_enc is gate_bias and b_mag mag_bias; JumpReLU's threshold is
    exp(log_threshold)."""
    w = _driver.initial_weights(arch)
    if w is None:
        return
    if arch == "relu":
        mapped = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"],
                  "decoder.weight": w["W_dec"].T, "bias": w["b_dec"]}
    elif arch == "gated":
        mapped = {"encoder.weight": w["W_enc"].T, "gate_bias": w["b_enc"], "r_mag": w["r_mag"],
                  "mag_bias": w["b_mag"], "decoder.weight": w["W_dec"].T,
                  "decoder_bias": w["b_dec"]}
    elif arch == "jumprelu":
        mapped = {k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        mapped["threshold"] = w["log_threshold"].exp()
    else:
        raise ValueError(f"no --init mapping for {arch}")
    _driver.copy_into(ae, mapped)


def make_step(arch: str):
    trainer = make_trainer(arch)
    load_init(trainer.ae, arch)
    counter = {"step": 0}

    def step(x):
        trainer.update(counter["step"], x)
        counter["step"] += 1

    return step


if __name__ == "__main__":
    import dictionary_learning.trainers  # noqa: F401  (imported once, before any fork)
    _driver.main("dictionary_learning", version("dictionary-learning"), ARCHS, make_step,
                 extra=lambda arch: {"trainer": TRAINERS[arch]})
