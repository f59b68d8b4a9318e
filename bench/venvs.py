"""`python -m bench --setup`: one virtualenv per peer under bench/.venvs/<peer>.

Each peer pins its own transformer-lens / transformers / nnsight, which conflict with each other
and with saerun's, hence one venv each. torch==2.13.0 goes in first and is repeated on the
peer's own line, so the resolver can never swap in a CUDA build (../shared/PEERS.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from bench.common import log


def base_python() -> str:
    """The interpreter the project venv was made from (same Python for every peer)."""
    cfg = common.ROOT / ".venv" / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable":
                return value.strip()
    return sys.executable


def setup(peers: list[str], venvs: Path = common.VENVS, fresh: bool = False) -> dict[str, dict]:
    """Create or update each peer's venv; returns {peer: {seconds, size_mb, ok}}."""
    report = {}
    for peer in peers:
        spec = common.PEERS[peer]
        target = venvs / peer
        if fresh and target.exists():
            shutil.rmtree(target)
        t0 = time.perf_counter()
        python = target / "bin" / "python"
        steps = []
        if not python.exists():
            steps.append([base_python(), "-m", "venv", str(target)])
        steps.append([str(python), "-m", "pip", "install", "-q", common.TORCH_REQUIREMENT])
        steps.append([str(python), "-m", "pip", "install", "-q", common.TORCH_REQUIREMENT,
                      spec["requirement"]])
        steps += [[str(python), *cmd] for cmd in spec["post"]]
        ok = True
        for cmd in steps:
            log(f"[{peer}] {' '.join(cmd)}")
            if subprocess.run(cmd).returncode != 0:
                log(f"[{peer}] failed: {' '.join(cmd)}")
                ok = False
                break
        seconds = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
        report[peer] = {"ok": ok, "seconds": round(seconds), "size_mb": round(size_mb)}
        log(f"[{peer}] {'ready' if ok else 'FAILED'} in {seconds:.0f} s, {size_mb:.0f} MB")
    return report
