"""Tests run offline: a hub lookup by mistake fails at once instead of retrying for 23 s."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


# -- shared helpers (imported by the test modules: `from conftest import ...`) -----------------

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def saerun(*args: str, cwd: Path, fault: str | None = None, timeout: float = 600,
           preexec_fn: Any = None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process (`python -m saerun.cli ARGS` in `cwd`), as a user runs it.
    SAERUN_FAULT (saerun/faults.py) is set only when `fault` asks for it."""
    env = {k: v for k, v in os.environ.items() if k != "SAERUN_FAULT"}
    if fault:
        env["SAERUN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "saerun.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def unit_config(sae: dict[str, Any] | None = None, **train: Any) -> Any:
    """A resolved RunConfig for unit tests of the training loop: an 8-wide input `h`, a 32-latent
    ReLU SAE, 20 steps of 64 tokens, a checkpoint every 7 steps. `sae` and `train` override."""
    from saerun.spec import RunConfig

    return RunConfig.model_validate({
        "seed": 0, "model": {}, "site": {"hook_name": "h"}, "data": {"train_tokens": 64 * 20},
        "sae": {"architecture": "relu", "d_in": 8, "d_sae": 32, "sparsity": {"coefficient": 0.1},
                **(sae or {})},
        "train": {"batch_tokens": 64, "lr": 1e-2, "checkpoint_every_tokens": 64 * 7, **train},
        "eval": {},
    })
