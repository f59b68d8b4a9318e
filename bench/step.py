"""Workload (a): one training step, d_in 512, d_sae 4096, batch 4096, k 32, activations in
memory; every architecture against every peer that has it.

Per architecture, each round runs saerun then each peer, one subprocess each, in alternation, so
a noisy machine slows both sides alike; the medians pool every timed step of every round.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import common, data, trained
from bench.common import Comparison, DriverError, log

ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka")
# Which peer has which architecture (its own driver also refuses the others).
PEER_ARCHS = {
    "sae_lens": set(ARCHS),
    "dictionary_learning": set(ARCHS),
    "sparsify": {"topk"},
}
SCRIPTS = {"saerun": "saerun_step.py", "sae_lens": "saelens_step.py",
           "dictionary_learning": "dictlearn_step.py", "sparsify": "sparsify_step.py"}
N_BATCHES = 4  # distinct batches the drivers cycle through


def run(archs: list[str], peers: list[str], rounds: int, steps: int, warmup: int,
        venvs: Path = common.VENVS, timeout: float = 1800, grouped: bool = False,
        emit: Callable[[Comparison], None] = lambda c: None, state: str = "fresh",
        ) -> tuple[list[Comparison], dict]:
    """Returns the comparisons (each also passed to `emit` once its architecture is done) and
    the raw driver outputs (for BENCHMARKS.md).

    grouped=False: per architecture, rounds of [saerun, peer, peer, ...] processes, one
    architecture each (the strictest alternation). grouped=True (--quick): per round, one
    process per tool covering all its architectures, each in a forked child (one interpreter
    start and import per tool and round instead of per architecture).

    state="trained": only the architectures of bench/trained.py, every tool starting from the
    same trained weights (`--init`); the comparisons' workload is "step_trained".
    """
    pythons = {p: py for p in peers if (py := common.venv_python(p, venvs)) is not None}
    raw: dict = {"runs": [], "versions": {}, "errors": [], "grouped": grouped, "state": state}
    workload = "step" if state == "fresh" else "step_trained"
    init: list[str] = []
    if state == "trained":
        archs = [a for a in archs if a in trained.ARCHS]
        raw["trained"] = trained.ensure(archs)
        raw["trained_steps"] = trained.STEPS
        init = ["--init", *(f"{a}={trained.path_for(a)}" for a in archs)]
    results: dict[str, dict[str, list[dict]]] = {a: {"saerun": []} for a in archs}
    for arch in archs:
        results[arch].update({p: [] for p in pythons if arch in PEER_ARCHS[p]})
    comparisons: list[Comparison] = []

    def launch(tool: str, tool_archs: list[str], acts: Path, label: str) -> None:
        python = common.SAERUN_PYTHON if tool == "saerun" else pythons[tool]
        cmd = [python, common.PEERS_DIR / SCRIPTS[tool], "--arch", *tool_archs,
               "--acts", acts, "--steps", str(steps), "--warmup", str(warmup), *init]
        log(f"step {label}: {tool} ({' '.join(tool_archs)})")
        try:
            lines = common.run_json_lines(cmd, timeout)
        except DriverError as e:
            log(f"  {tool} failed: {e}")
            raw["errors"].append({"arch": " ".join(tool_archs), "tool": tool, "error": str(e)})
            return
        for out in lines:
            if out.get("unsupported"):
                continue
            if "error" in out:
                log(f"  {tool} {out['arch']} failed: {out['error']}")
                raw["errors"].append({"arch": out["arch"], "tool": tool, "error": out["error"]})
                continue
            results[out["arch"]][tool].append(out)
            raw["runs"].append(out)
            raw["versions"][tool] = out.get("version")
            log(f"  {tool} {out['arch']}: median {common.median(out['step_s']):.3f} s/step, "
                f"peak RSS {out['peak_rss_mb']:.0f} MB")

    def finish(arch: str) -> None:
        for c in compare(arch, results[arch], workload):
            emit(c)
            comparisons.append(c)

    with tempfile.TemporaryDirectory(prefix="saerun-bench-") as tmp:
        acts = data.save_batches(Path(tmp) / "acts.pt", N_BATCHES, 4096, 512)
        if grouped:
            for r in range(rounds):
                for tool in ["saerun", *pythons]:
                    tool_archs = [a for a in archs if tool in results[a]]
                    if tool_archs:
                        launch(tool, tool_archs, acts, f"round {r + 1}/{rounds}")
            for arch in archs:
                finish(arch)
        else:
            for arch in archs:
                for r in range(rounds):
                    for tool in results[arch]:
                        launch(tool, [arch], acts, f"{arch} round {r + 1}/{rounds}")
                finish(arch)
    return comparisons, raw


def compare(arch: str, results: dict[str, list[dict]], workload: str = "step"
            ) -> list[Comparison]:
    """One comparison per peer with results, against saerun's pooled step times."""
    ours = results.get("saerun") or []
    if not ours:
        return []
    mine = summarize(ours)
    densities = [r["density"] for r in ours if "density" in r]
    extra = {"saerun_density": common.median(densities)} if densities else None
    out = []
    for tool, runs in results.items():
        if tool == "saerun" or not runs:
            continue
        theirs = summarize(runs)
        out.append(Comparison(workload, arch, mine["tokens_per_s"], tool, theirs["tokens_per_s"],
                              mine["peak_rss_mb"], theirs["peak_rss_mb"], extra=extra))
    return out


def summarize(runs: list[dict]) -> dict:
    """Pool every timed step of every round: tokens/s at the median, the largest peak RSS."""
    times = [t for run in runs for t in run["step_s"]]
    return {"tokens_per_s": common.tokens_per_s(times, runs[0]["batch"]),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs)}
