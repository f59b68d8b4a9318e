"""SAELens's training step, timed: `SAETrainer.step(batch)` plus the rest of one iteration of
`SAETrainer.fit`'s loop (sparsity-window bookkeeping, the step counter, the progress bar's
every-100-steps loss read), wandb off. `step` is forward (training_forward_pass with the dead
mask and coefficients), firing statistics, backward, gradient clipping, Adam, LR and
coefficient schedulers. Run with bench/.venvs/sae_lens. SAE config defaults except sizes and k.
"""

from __future__ import annotations

from importlib.metadata import version

import _driver

ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka")


def make_sae(arch: str):
    import sae_lens as sl

    size = dict(d_in=_driver.D_IN, d_sae=_driver.D_SAE, dtype="float32", device="cpu")
    k = dict(k=_driver.K)
    if arch == "relu":
        return sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(**size))
    if arch == "topk":
        return sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(**size, **k))
    if arch == "batchtopk":
        return sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(**size, **k))
    if arch == "gated":
        return sl.GatedTrainingSAE(sl.GatedTrainingSAEConfig(**size))
    if arch == "jumprelu":
        return sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(**size))
    if arch == "matryoshka":
        # saerun's default prefixes: d_sae/64, /16, /4, d_sae.
        widths = [_driver.D_SAE // 64, _driver.D_SAE // 16, _driver.D_SAE // 4, _driver.D_SAE]
        return sl.MatryoshkaBatchTopKTrainingSAE(
            sl.MatryoshkaBatchTopKTrainingSAEConfig(**size, **k, matryoshka_widths=widths))
    raise ValueError(f"unknown architecture {arch!r}")


def load_init(sae, arch: str) -> None:
    """--init weights (saerun's names) onto SAELens's: same layouts; Gated's b_enc is b_gate,
    JumpReLU's threshold is exp(log_threshold)."""
    w = _driver.initial_weights(arch)
    if w is None:
        return
    mapped = {k: w[k] for k in ("W_enc", "W_dec", "b_dec")}
    if arch == "relu":
        mapped["b_enc"] = w["b_enc"]
    elif arch == "gated":
        mapped.update(b_gate=w["b_enc"], r_mag=w["r_mag"], b_mag=w["b_mag"])
    elif arch == "jumprelu":
        mapped.update(b_enc=w["b_enc"], threshold=w["log_threshold"].exp())
    else:
        raise ValueError(f"no --init mapping for {arch}")
    _driver.copy_into(sae, mapped)


def make_step(arch: str):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from tqdm import tqdm

    sae = make_sae(arch)
    load_init(sae, arch)
    cfg = SAETrainerConfig(total_training_samples=_driver.BATCH * 100_000,
                           train_batch_size_samples=_driver.BATCH, lr=3e-4, lr_end=3e-4,
                           device="cpu")
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    pbar = tqdm(total=cfg.total_training_samples, disable=True)

    def step(x):
        trainer.maybe_reset_sparsity()
        out = trainer.step(x)
        trainer._checkpoint_if_needed()
        trainer.n_training_steps += 1
        trainer._update_pbar(out, pbar)

    return step


if __name__ == "__main__":
    import sae_lens  # noqa: F401  (imported once, before any fork)
    _driver.main("sae_lens", version("sae-lens"), ARCHS, make_step)
