"""Harness plumbing shared by the workloads: where the venvs are, running a driver in a
subprocess, medians and ratios, and the JSON line of a comparison."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
PEERS_DIR = BENCH / "peers"
SAERUN_PYTHON = ROOT / ".venv" / "bin" / "python"

# Peer name (as reported) -> venv folder, PyPI requirement, extra setup commands.
PEERS: dict[str, dict] = {
    "sae_lens": {"requirement": "sae-lens==6.54.12", "post": []},
    "dictionary_learning": {
        "requirement": "dictionary-learning==0.1.0",
        # nnsight pulls a CUDA torchvision that breaks the import on the CPU torch wheel.
        "post": [["-m", "pip", "uninstall", "-y", "torchvision"]],
    },
    "sparsify": {"requirement": "eai-sparsify==1.3.3", "post": []},
}
TORCH_REQUIREMENT = "torch==2.13.0"

# The environment of every benchmark subprocess: offline, no wandb, 2 threads everywhere.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled", "WANDB_DISABLED": "true", "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0",
    "TQDM_DISABLE": "1",
}


class DriverError(RuntimeError):
    """A benchmark subprocess failed or printed no result line."""


def log(message: str) -> None:
    """Progress and skip messages go to stderr; stdout carries only the JSON lines."""
    print(message, file=sys.stderr, flush=True)


def venv_python(peer: str, venvs: Path = VENVS) -> Path | None:
    """The peer venv's interpreter, or None (with a message saying how to make it) if absent."""
    python = venvs / peer / "bin" / "python"
    if python.exists():
        return python
    log(f"skipping {peer}: no virtualenv at {python.parent.parent} "
        f"(create it with `python -m bench --setup`)")
    return None


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(CHILD_ENV)
    return env


def run_json_lines(cmd: list, timeout: float, cwd: Path | None = None) -> list[dict]:
    """Run a driver; return the JSON objects on the lines of its stdout that start with '{'."""
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, env=child_env(), cwd=cwd or ROOT)
    except subprocess.TimeoutExpired as e:
        raise DriverError(f"timed out after {timeout:.0f}s: {' '.join(map(str, cmd))}") from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise DriverError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{tail}")
    return [json.loads(ln) for ln in lines]


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)


def tokens_per_s(step_times: list[float], batch: int) -> float:
    """Tokens per second of a training step: batch / median step time."""
    return batch / median(step_times)


def ratio(saerun: float, peer: float) -> float:
    """saerun / peer for a rate (higher is better for saerun)."""
    return saerun / peer if peer > 0 else float("inf")


@dataclass(frozen=True)
class Comparison:
    """One (workload, architecture, peer) comparison: what a JSON line says."""

    workload: str
    architecture: str
    saerun_tokens_per_s: float
    peer: str
    peer_tokens_per_s: float
    saerun_peak_rss_mb: float | None = None
    peer_peak_rss_mb: float | None = None
    extra: dict | None = None

    @property
    def ratio(self) -> float:
        return ratio(self.saerun_tokens_per_s, self.peer_tokens_per_s)

    def as_dict(self) -> dict:
        line = {
            "workload": self.workload,
            "architecture": self.architecture,
            "saerun_tokens_per_s": round(self.saerun_tokens_per_s, 1),
            "peer": self.peer,
            "peer_tokens_per_s": round(self.peer_tokens_per_s, 1),
            "ratio": round(self.ratio, 3),
            "saerun_peak_rss_mb": self.saerun_peak_rss_mb,
            "peer_peak_rss_mb": self.peer_peak_rss_mb,
        }
        line.update(self.extra or {})
        return line

    def json_line(self) -> str:
        return json.dumps(self.as_dict())


def run_json_list(cmd: list, timeout: float) -> list:
    """Run a command whose whole stdout is one JSON document (e.g. `saerun ls --json`)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=ROOT)
    if proc.returncode != 0:
        raise DriverError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{proc.stderr}")
    return json.loads(proc.stdout)


def run_measured(cmd: list, timeout: float) -> dict:
    """Run a whole job; its wall time (process start to exit) and peak RSS (os.wait4 on that
    one child, so other children of the harness never count), plus the JSON object on the
    last '{' line of its stdout, if any, under "json"."""
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err,
                                env=child_env(), cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise DriverError(f"timed out after {timeout:.0f}s: {' '.join(map(str, cmd))}")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise DriverError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{tail}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "json": json.loads(lines[-1]) if lines else None}
