"""saerun's training step, timed: `Trainer.train_step(x)` on normalised activations (loss,
backward, gradient clipping, Adam, decoder renorm, dead-latent clocks). Run with the project's
own .venv. The saerun API is used in `make_step` only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import _driver

ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka")
TRAINERS: dict = {}  # arch -> its Trainer, for `density`


def density(arch: str, acts: str) -> dict:
    """The fraction of latents firing on the first timed batch, after the timed steps: which
    side of the sparse kernels' density threshold the steps ran on."""
    import torch

    x = _driver.load_batches(acts)[0]
    with torch.no_grad():
        return {"density": round((TRAINERS[arch].sae.encode(x) > 0).float().mean().item(), 5)}


def make_trainer(arch: str, train_steps: int = 100_000, train_fields: dict | None = None,
                 **sae_fields):
    """saerun's Trainer for the benchmark's sizes, its defaults otherwise; `train_steps` sets
    the schedule's length (long by default, so the timed steps sit at the constant LR),
    `train_fields` and `sae_fields` override the train and SAE sections."""
    from saerun.spec import RunConfig
    from saerun.train import Trainer

    sae = {"architecture": arch, "d_in": _driver.D_IN, "d_sae": _driver.D_SAE}
    if arch in ("topk", "batchtopk", "matryoshka"):
        sae["k"] = _driver.K
    if arch == "jumprelu":
        # The peers' objective (SAELens and dictionary_learning both train JumpReLU on the L0
        # with no pre-activation term), not saerun's default tanh + pre-act, so the work is equal.
        sae.update(sparsity_mode="l0", pre_act_coefficient=0.0)
    sae.update(sae_fields)
    config = RunConfig.model_validate({
        "seed": 0,
        "model": {},
        "site": {"hook_name": "bench"},
        "data": {"train_tokens": _driver.BATCH * train_steps},
        "sae": sae,
        "train": {"batch_tokens": _driver.BATCH, "lr": 1e-3, **(train_fields or {})},
        "eval": {},
    })
    return Trainer.create("bench" + arch, config, "cpu")


def make_step(arch: str):
    """A callable doing one full saerun training step on a [BATCH, D_IN] tensor."""
    init = _driver.initial_state(arch)
    if init is None:
        trainer = TRAINERS[arch] = make_trainer(arch)
        return trainer.train_step
    # Resume bench/trained.py's run as a resumed saerun run would (weights, Adam's moments,
    # step, clocks), with the sparsity coefficient at full strength: the 100k-step schedule's
    # warm-up would otherwise still be at 6 % at step 300.
    trainer = TRAINERS[arch] = make_trainer(arch, train_fields={"sparsity_warmup_fraction": 0.0})
    trainer.load_state(*init)
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
    _driver.main("saerun", version(), ARCHS, make_step,
                 extra=lambda arch: density(arch, _driver.ARGS.acts))
