"""The trained state for the step workload's `--workload trained` variant.

A fresh ReLU, Gated or JumpReLU SAE fires on about half its latents, so every tool's step is
dense; after a few hundred steps of training only a few percent fire, and that is the state
most of a real run's steps are taken in. Timing only fresh SAEs would hide the one thing that
makes those steps cheap. So, per architecture, saerun trains one SAE for STEPS steps on fresh
synthetic activations (bench/data.py, a different seed from the timed batches) and saves its
whole training state (the resumable checkpoint: weights, Adam's moments, step, dead-latent
clocks). Every step driver then starts from the SAME weights (`--init`, mapped by the driver
onto its own parameter names) before its timed steps on the same batches. saerun's driver
resumes the whole state, as a resumed run would; the peers start their own optimizers fresh
(their steps are dense products whatever the weights or optimizer state). A fresh Adam on
trained weights is not a trained state: its first, sign-like updates move every weight by the
LR and drove ReLU from 3 % to 15 % density within five steps when saerun tried it.

Cached under bench/.cache/, keyed by the architecture, the sizes, STEPS, the pretraining
objective and the data seed: a re-run of the benchmark reuses the state.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench import common, data

ARCHS = ("relu", "gated", "jumprelu")  # the architectures whose step cost depends on density
STEPS = 300
CHUNK = 4  # synthetic batches generated at a time
DATA_SEED = 1  # the timed batches use seed 0
# The pretraining objective, where the timed step's (the peers' objective) does not reach a
# trained density in STEPS steps. JumpReLU's plain L0 penalty moves only the thresholds
# (about lr per step in log space), so at 300 steps it still fires on 90 % of the latents; its
# default tanh penalty at the default coefficient settles near 12 %. So JumpReLU pretrains on
# the tanh penalty at coefficient 1, which ends near the ReLU and Gated states' density.
PRETRAIN = {"jumprelu": {"sparsity_mode": "tanh", "pre_act_coefficient": 0.1,
                         "coefficient": 1.0}}
CACHE = common.BENCH / ".cache"


def _drivers():
    """The drivers' shared module and saerun's driver (scripts, not a package)."""
    if str(common.PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(common.PEERS_DIR))
    import _driver
    import saerun_step

    return _driver, saerun_step


def path_for(arch: str, cache: Path = CACHE) -> Path:
    _driver, _ = _drivers()
    D_IN, D_SAE, BATCH = _driver.D_IN, _driver.D_SAE, _driver.BATCH  # noqa: N806
    objective = "-" + "-".join(f"{k}{v}" for k, v in PRETRAIN[arch].items()) \
        if arch in PRETRAIN else ""
    return cache / (f"trained2-{arch}-{D_IN}x{D_SAE}-b{BATCH}-s{STEPS}-seed{DATA_SEED}"
                    f"{objective}.safetensors")


def train(arch: str) -> tuple[dict[str, torch.Tensor], dict]:
    """saerun's own trainer, its defaults (the bench driver's config), for STEPS steps; the
    schedule is STEPS long so the LR and sparsity warm-ups finish inside it."""
    _driver, saerun_step = _drivers()
    BATCH, D_IN = _driver.BATCH, _driver.D_IN  # noqa: N806
    torch.manual_seed(0)
    trainer = saerun_step.make_trainer(arch, train_steps=STEPS, **PRETRAIN.get(arch, {}))
    t0 = time.perf_counter()
    for start in range(0, STEPS, CHUNK):
        for x in data.make_batches(CHUNK, BATCH, D_IN, seed=DATA_SEED * 1_000_003 + start):
            trainer.train_step(x)
    probe = data.make_batches(1, BATCH, D_IN, seed=0)[0]
    with torch.no_grad():
        density = (trainer.sae.encode(probe) > 0).float().mean().item()
    info = {"arch": arch, "steps": STEPS, "seconds": round(time.perf_counter() - t0, 1),
            "density": round(density, 5), "d_sae": trainer.sae.W_dec.shape[0],
            "l0": round(density * trainer.sae.W_dec.shape[0], 1)}
    tensors, meta = trainer.state()
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    return tensors, {**info, "trainer": meta}


def ensure(archs: list[str], cache: Path = CACHE) -> dict[str, dict]:
    """The cached trained state of each architecture in ARCHS among `archs`, trained now where
    missing. Returns {arch: info} (density and L0 on the first timed batch, training time)."""
    out = {}
    for arch in archs:
        if arch not in ARCHS:
            continue
        path = path_for(arch, cache)
        meta = path.with_suffix(".json")
        if not (path.exists() and meta.exists()):
            common.log(f"trained state: training saerun {arch} for {STEPS} steps (cached after)")
            tensors, info = train(arch)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path), metadata={"trainer": json.dumps(info["trainer"])})
            meta.write_text(json.dumps(info) + "\n")
        out[arch] = json.loads(meta.read_text())
        common.log(f"trained state {arch}: density {out[arch]['density']:.4f} "
                   f"(L0 {out[arch]['l0']}) on the timed batches")
    return out
