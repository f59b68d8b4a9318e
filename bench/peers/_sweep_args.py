"""Arguments every sweep driver takes (standard library only: imported from every venv)."""

from __future__ import annotations

import argparse
import json
import resource
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="local Hugging Face GPT-2 folder")
    p.add_argument("--corpus", required=True, help="JSONL with a 'text' field")
    p.add_argument("--layer", type=int, required=True, help="resid_post of this block")
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True, help="training tokens per SAE")
    p.add_argument("--batch", type=int, required=True, help="tokens per optimiser step")
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--coefficients", type=float, nargs="+", required=True,
                   help="one L1 coefficient per SAE")
    p.add_argument("--out", required=True, help="a scratch folder for the tool's outputs")
    return p.parse_args()


def emit(tool: str, version: str, t_start: float, **extra: object) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = {"tool": tool, "version": version, "inner_s": round(time.perf_counter() - t_start, 2),
            "peak_rss_mb": round(peak, 1), **extra}
    print(json.dumps(line), flush=True)
