"""Report generation over a registry of 1,000 runs: seconds, not minutes.

    python bench/report_speed.py [--runs 1000] [--repeats 3] [--out /tmp/bench_report.md]

Synthesises a registry of N finished runs (`bench/synthetic.py`: schema-valid configs over
7 recipes, 2 widths, 3 sites, 3 learning rates and 2 seeds, realistic metrics, 25-point training
curves, per-latent densities on disk), then times `saerun report --frontier --death --lr
--curves` (everything but the post-hoc analyses, which need trained weights and the model) as
a fresh process, the way a user runs it: imports, registry read, tables, every plot, Markdown.
Prints the median of `--repeats` runs and writes a Markdown paragraph + table to `--out`.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from anywhere

KINDS = ["--frontier", "--death", "--lr", "--curves"]


def time_cli(registry: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one fresh `saerun report`.
    CPU time is what the work costs; wall time also counts waiting on a shared machine."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "saerun.cli", "report", *extra, "--registry", str(registry),
           "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_report.md"))
    args = ap.parse_args()

    from bench.synthetic import synthetic_registry

    work = Path(tempfile.mkdtemp(prefix="saerun-bench-report-"))
    registry = work / "saerun.db"
    t0 = time.perf_counter()
    synthetic_registry(registry, args.runs)
    synth_s = time.perf_counter() - t0
    print(f"synthesised {args.runs} runs in {synth_s:.1f} s: {registry}")

    rows = []
    for label, extra in (("all four reports (Markdown + PNG)", KINDS),
                         ("all four reports, tables only (--format json)",
                          [*KINDS, "--format", "json"])):
        times, cpus = [], []
        for i in range(args.repeats):
            out = work / f"out-{len(rows)}-{i}"
            wall, cpu = time_cli(registry, out, extra)
            times.append(wall)
            cpus.append(cpu)
        med, cpu_med = statistics.median(times), statistics.median(cpus)
        n_png = len(list((work / f"out-{len(rows)}-0").rglob("*.png")))
        print(f"{label}: median {med:.2f} s wall, {cpu_med:.2f} s CPU over {args.repeats} runs "
              f"(wall {', '.join(f'{t:.2f}' for t in times)}); {n_png} PNGs")
        rows.append((label, med, cpu_med, min(times), max(times), n_png))
    same = all((work / "out-0-0" / f).read_bytes() == (work / "out-0-1" / f).read_bytes()
               for f in ("frontier.md", "death.md", "lr.md", "curves.md"))

    load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")  # 5-minute
    text = [
        "### Report generation (`bench/report_speed.py`)",
        "",
        f"`saerun report --frontier --death --lr --curves` over a synthetic registry of "
        f"**{args.runs:,} finished runs** (7 recipes, 2 widths, 3 sites, 3 learning rates, "
        "25-point curves, per-latent densities on disk), run as a fresh process (imports "
        f"included), median of {args.repeats}: **{rows[0][2]:.1f} s of CPU time** "
        f"({rows[0][1]:.1f} s wall on this shared machine) for all four reports with "
        f"{rows[0][5]} plots, {rows[1][2]:.1f} s CPU ({rows[1][1]:.1f} s wall) for the tables "
        "alone. Regenerated Markdown "
        f"is byte-identical: {'yes' if same else 'NO'}. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} during the run (shared).",
        "",
        "| what | median CPU s | median wall s | min wall s | max wall s | PNGs |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {label} | {cpu:.2f} | {med:.2f} | {lo:.2f} | {hi:.2f} | {n} |"
          for label, med, cpu, lo, hi, n in rows],
        "",
    ]
    args.out.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
