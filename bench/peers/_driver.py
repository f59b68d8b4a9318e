"""Shared by every step driver, whatever venv runs it: arguments, the activations, the timed
loop, and the one JSON line each driver prints. Standard library + torch only, so it imports in
every peer's venv (a script's own folder is on sys.path, so `import _driver` works)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Collection

import torch

D_IN, D_SAE, BATCH, K = 512, 4096, 4096, 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", nargs="+", required=True,
                   help="one or more architectures; with several, each runs in its own forked "
                   "child (fresh SAE, fresh peak RSS) after one shared import")
    p.add_argument("--acts", required=True, help="a .pt file of [n_batches, BATCH, D_IN] fp32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--init", nargs="*", default=[], metavar="ARCH=FILE",
                   help="start that architecture's SAE from these weights (a safetensors file "
                   "in saerun's parameter names, bench/trained.py); the driver maps them")
    return p.parse_args()


ARGS: argparse.Namespace | None = None  # the parsed command line, once main() has run

# ARCH -> safetensors file from --init; an architecture's entry is removed when its driver
# reads it, and main() refuses a driver that ignored one.
INIT: dict[str, str] = {}


def initial_state(arch: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The --init file for `arch` as it is: saerun's whole training state (tensors "sae.*",
    "adam.*", "tokens_since_fired"; the trainer's step etc. in the metadata), or None."""
    path = INIT.pop(arch, None)
    if path is None:
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("trainer", "{}"))
    return load_file(path), meta


def initial_weights(arch: str) -> dict[str, torch.Tensor] | None:
    """The --init SAE weights for `arch` in saerun's names and layouts (W_enc [d_in, d_sae],
    W_dec [d_sae, d_in], b_enc, b_dec; gated r_mag, b_mag; jumprelu log_threshold), or None."""
    state = initial_state(arch)
    if state is None:
        return None
    return {k.removeprefix("sae."): v for k, v in state[0].items() if k.startswith("sae.")}


@torch.no_grad()
def copy_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy each named tensor into the module's parameter or buffer of that name (shapes must
    match exactly; every parameter must be given)."""
    own = dict(module.named_parameters()) | dict(module.named_buffers())
    missing = set(dict(module.named_parameters())) - set(tensors)
    if missing:
        raise ValueError(f"no initial value for {sorted(missing)}")
    for name, value in tensors.items():
        if own[name].shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(own[name].shape)}")
        own[name].copy_(value)


def setup_torch() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def load_batches(path: str) -> torch.Tensor:
    return torch.load(path, weights_only=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_steps(step: Callable[[torch.Tensor], object], batches: torch.Tensor, warmup: int,
               steps: int) -> list[float]:
    """`warmup` untimed steps, then `steps` timed ones; batches cycle. Returns seconds each."""
    n = batches.shape[0]
    for i in range(warmup):
        step(batches[i % n])
    times = []
    for i in range(steps):
        x = batches[(warmup + i) % n]
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    return times


def emit(tool: str, version: str, arch: str, times: list[float], **extra: object) -> None:
    """The driver's one line of output on stdout (the harness parses the last line)."""
    line = {"tool": tool, "version": version, "arch": arch, "step_s": times,
            "batch": BATCH, "peak_rss_mb": round(peak_rss_mb(), 1), **extra}
    sys.stdout.flush()
    print(json.dumps(line), flush=True)


def main(tool: str, version: str, supported: Collection[str],
         make_step: Callable[[str], Callable[[torch.Tensor], object]],
         extra: Callable[[str], dict] = lambda arch: {}) -> None:
    """Time every requested architecture; one JSON line each. With several architectures the
    library is imported once and each architecture runs in a forked child, so it gets a fresh
    SAE and its own peak RSS but no second interpreter start. (The parent runs no torch op
    before forking, so the child's thread pool is unaffected.)"""
    global ARGS
    args = ARGS = parse_args()
    INIT.update(item.split("=", 1) for item in args.init)
    setup_torch()
    batches = load_batches(args.acts)

    def one(arch: str) -> None:
        given = arch in INIT
        step = make_step(arch)
        if arch in INIT:
            raise RuntimeError(f"{tool}'s driver ignored --init for {arch}")
        times = time_steps(step, batches, args.warmup, args.steps)
        emit(tool, version, arch, times, init=given, **extra(arch))

    for arch in args.arch:
        if arch not in supported:
            print(json.dumps({"tool": tool, "arch": arch, "unsupported": True}), flush=True)
            continue
        if len(args.arch) == 1:
            one(arch)
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                one(arch)
            except BaseException as e:  # report, never fall back into the parent's loop
                print(f"{tool} {arch} failed: {e!r}", file=sys.stderr, flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(json.dumps({"tool": tool, "arch": arch, "error": f"exit {status}"}), flush=True)
