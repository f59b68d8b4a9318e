"""saerun's training step, timed: `Trainer.train_step(x)` on normalised activations (loss,
backward, gradient clipping, Adam, decoder renorm, dead-latent clocks). Run with the project's
own .venv. The saerun API is used in `make_step` only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import _driver

ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka")


def make_step(arch: str):
    """A callable doing one full saerun training step on a [BATCH, D_IN] tensor."""
    from saerun.spec import RunConfig
    from saerun.train import Trainer

    sae = {"architecture": arch, "d_in": _driver.D_IN, "d_sae": _driver.D_SAE}
    if arch in ("topk", "batchtopk", "matryoshka"):
        sae["k"] = _driver.K
    if arch == "jumprelu":
        # The peers' objective (SAELens and dictionary_learning both train JumpReLU on the L0
        # with no pre-activation term), not saerun's default tanh + pre-act, so the work is equal.
        sae.update(sparsity_mode="l0", pre_act_coefficient=0.0)
    config = RunConfig.model_validate({
        "seed": 0,
        "model": {},
        "site": {"hook_name": "bench"},
        # Long enough that the timed steps sit in the constant-LR part of the schedule.
        "data": {"train_tokens": _driver.BATCH * 100_000},
        "sae": sae,
        "train": {"batch_tokens": _driver.BATCH, "lr": 1e-3},
        "eval": {},
    })
    trainer = Trainer.create("bench" + arch, config, "cpu")
    return trainer.train_step


def version() -> str:
    import saerun

    root = Path(saerun.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "saerun"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return getattr(saerun, "__version__", "unknown")


if __name__ == "__main__":
    import saerun.train  # noqa: F401  (imported once, before any fork)
    _driver.main("saerun", version(), ARCHS, make_step)
