"""python -m bench [--setup] [--quick] [--workload step|trained|sweep|all] [--arch A ...] [--write]

Prints one JSON line per comparison on stdout (progress on stderr), saves every result to
bench/results.json, and with --write rewrites BENCHMARKS.md from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import common, report, step, sweep, venvs

RESULTS = common.BENCH / "results.json"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true",
                   help="create/update the peer virtualenvs under bench/.venvs/, then exit")
    p.add_argument("--fresh", action="store_true", help="with --setup: recreate the venvs")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, steps and tokens (a few minutes once the venvs exist)")
    p.add_argument("--workload", choices=["step", "trained", "sweep", "all"], default="all",
                   help="step: the training step from fresh SAEs; trained: the same from one "
                   "trained SAE per ReLU-family architecture, loaded into every tool "
                   "(bench/trained.py); sweep: 8 SAEs end to end; all: the three")
    p.add_argument("--arch", nargs="+", choices=step.ARCHS, default=list(step.ARCHS))
    p.add_argument("--peer", nargs="+", choices=list(common.PEERS), default=list(common.PEERS))
    p.add_argument("--rounds", type=int, help="alternation rounds (default 2 quick, 3 full)")
    p.add_argument("--steps", type=int, help="timed steps per process (default 3 quick, 10)")
    p.add_argument("--warmup", type=int, help="untimed steps per process (default 2 quick, 3)")
    p.add_argument("--sweep-tokens", type=int,
                   help="training tokens per SAE in the sweep, rounded down to whole batches "
                   "(default 100k quick, 500k full)")
    p.add_argument("--grouped", action=argparse.BooleanOptionalAction, default=None,
                   help="step workload: one process per tool and round covering all its "
                   "architectures (forked per architecture); default on with --quick, off "
                   "otherwise (then one process per architecture, tool and round)")
    p.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md from the results")
    p.add_argument("--from", dest="from_results", type=Path, nargs="+", metavar="RESULTS_JSON",
                   help="run nothing: --write from saved results files (several: merged, e.g. a "
                   "step run and a sweep run)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where to save the results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.setup:
        done = venvs.setup(args.peer, fresh=args.fresh)
        print(json.dumps({"setup": done}))
        return 0 if all(r["ok"] for r in done.values()) else 1
    if args.from_results:
        results = merge([json.loads(p.read_text()) for p in args.from_results])
        if len(args.from_results) > 1:  # keep the merged runs next to the report they made
            args.results.write_text(json.dumps(results, indent=1) + "\n")
            common.log(f"merged results saved to {args.results}")
    else:
        results = run(args)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        common.log(f"results saved to {args.results}")
    if args.write:
        path = report.write(results)
        common.log(f"wrote {path}")
    return 0


def merge(parts: list[dict]) -> dict:
    """Several saved runs as one: comparisons and workloads concatenated, commands joined."""
    merged = dict(parts[0])
    for part in parts[1:]:
        merged["command"] = f"{merged['command']}; {part['command']}"
        merged["comparisons"] = merged["comparisons"] + part["comparisons"]
        merged["raw"] = {**merged["raw"], **part["raw"]}
        merged["settings"] = {**merged["settings"], **part["settings"]}
        versions = dict(merged.get("versions", {}))
        for tool, version in part.get("versions", {}).items():
            had = versions.get(tool)  # runs at different commits: each is named, in order
            if had is None:
                versions[tool] = version
            elif had.split(", then ")[-1] != version:
                versions[tool] = f"{had}, then {version}"
        merged["versions"] = versions
        merged["seconds"] = merged.get("seconds", 0) + part.get("seconds", 0)
        merged["load_after"] = part.get("load_after")
    return merged


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    steps = args.steps or (3 if quick else 10)
    warmup = args.warmup if args.warmup is not None else (2 if quick else 3)
    results: dict = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": report.machine(), "load_before": report.loadavg(),
        "settings": {"rounds": rounds, "steps": steps, "warmup": warmup},
        "comparisons": [], "raw": {},
    }

    def emit(c: common.Comparison) -> None:
        print(c.json_line(), flush=True)
        results["comparisons"].append(c.as_dict())

    t0 = time.perf_counter()
    if args.workload in ("step", "all"):
        grouped = quick if args.grouped is None else args.grouped
        results["settings"]["grouped"] = grouped
        _, raw = step.run(args.arch, args.peer, rounds, steps, warmup, grouped=grouped,
                          emit=emit)
        results["raw"]["step"] = raw
    if args.workload in ("trained", "all"):
        grouped = quick if args.grouped is None else args.grouped
        results["settings"]["grouped"] = grouped
        _, raw = step.run(args.arch, args.peer, rounds, steps, warmup, grouped=grouped,
                          emit=emit, state="trained")
        results["raw"]["step_trained"] = raw
    if args.workload in ("sweep", "all"):
        tokens = args.sweep_tokens or (100_000 if quick else 500_000)
        sweep_rounds = args.rounds or 1
        _, raw = sweep.run(args.peer, tokens, sweep_rounds, emit=emit)
        results["raw"]["sweep"] = raw
        results["settings"].update({"sweep_tokens_per_sae": tokens, "sweep_rounds": sweep_rounds})
    results["seconds"] = round(time.perf_counter() - t0)
    results["load_after"] = report.loadavg()
    results["versions"] = report.versions(results)
    return results


if __name__ == "__main__":
    sys.exit(main())
