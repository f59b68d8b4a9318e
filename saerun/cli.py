"""The command line: parse, call one library function, print. Heavy imports stay lazy so that
`saerun --help` is instant. A SaerunError prints as one line and exits 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saerun.errors import SaerunError

if TYPE_CHECKING:
    from rich.console import Console

    from saerun.execute import Summary
    from saerun.spec import LineMap

# The one list of commands: name -> (synopsis, what it does). The usage text, the subparsers'
# help and the default-command check all read it; `cmd_<name>` (dashes as underscores) runs it.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("SPEC [options]", "validate, plan, train, evaluate and register a spec"),
    "plan": ("SPEC [--json]", "what would run, every resolved value and its source"),
    "ls": ("[--json]", "runs in the registry"),
    "status": ("[SPEC]", "queued / running / done / failed per run, with Slurm job ids"),
    "collect": ("SPEC|--all", "register what cluster jobs left when their driver died"),
    "show": ("RUN_ID [--json]", "one run: config, environment, metrics"),
    "report": ("--frontier|--all", "Markdown + PNG reports from the registry"),
    "findings": ("", "train specs/findings/, write docs/FINDINGS.md"),
    "export-spec": ("RUN_ID", "a standalone spec that reproduces one run"),
    "reproduce": ("RUN_ID", "retrain a run and compare, metric by metric, tensor by tensor"),
    "schema": ("", "the spec's JSON schema"),
}


def _usage() -> str:
    lines = []
    for name, (synopsis, what) in COMMANDS.items():
        head = f"saerun {synopsis}" if name == "run" else f"saerun {name} {synopsis}".rstrip()
        lines.append(f"{head:<32} {what}")
    return "\n".join(lines)


def _command(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """The subparser of one command of COMMANDS, bound to its `cmd_` function."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=COMMANDS[name][1])
    parser.set_defaults(func=globals()["cmd_" + name.replace("-", "_")])
    return parser


def _registry_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="registry database (default: $SAERUN_REGISTRY or registry/saerun.db)",
    )


def _device_memory_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--device-memory", type=float, metavar="GB", dest="device_memory_gb",
                   help="memory of one device in GB: split each activation group into jobs "
                   "that fit (default: the spec's launcher.device_memory_gb, else for a run the "
                   "visible GPU's memory, none on a CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saerun", usage=_usage(), description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p = _command(sub, "run")
    p.add_argument("spec", type=Path)
    _registry_arg(p)
    p.add_argument("--retry-failed", action="store_true", help="re-run runs that failed")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--activation-cache", type=Path, metavar="DIR",
                   help="read and write training activations under DIR, content-addressed by "
                   "model, hook, data and context: a later spec on the same stream skips the "
                   "model (default: $SAERUN_ACTIVATION_CACHE, else off)")
    g = p.add_argument_group("launcher (over the spec's launcher section)")
    g.add_argument("--launcher", choices=["local", "slurm"], dest="kind",
                   help="where the jobs run (default: the spec's, else local)")
    g.add_argument("--gpus", help="local: GPU indices to spread jobs over, e.g. 0,1 (or all)")
    _device_memory_arg(g)
    g.add_argument("--partition", help="slurm: partition")
    g.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job")
    g.add_argument("--cpus-per-job", type=int, help="slurm: CPU cores per job")
    g.add_argument("--mem-gb", type=float, help="slurm: memory per job in GB")
    g.add_argument("--time", help="slurm: time limit per job (90m, 6h, 2d, D-HH:MM:SS)")
    g.add_argument("--max-parallel", type=int, help="slurm: jobs running at once")
    g.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                   help="slurm: an extra sbatch option, e.g. account=lab (repeatable)")
    g.add_argument("--no-wait", action="store_true",
                   help="slurm: submit and return; `saerun collect` registers the results")
    p = _command(sub, "plan")
    p.add_argument("spec", type=Path)
    p.add_argument("--json", action="store_true")
    _device_memory_arg(p)
    _command(sub, "schema")
    p = _command(sub, "ls")
    _registry_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", choices=["planned", "running", "done", "failed"])
    p = _command(sub, "status")
    p.add_argument("spec", type=Path, nargs="?", help="only this spec's runs")
    _registry_arg(p)
    p.add_argument("--json", action="store_true")
    p = _command(sub, "collect")
    p.add_argument("spec", type=Path, nargs="?", help="this spec's runs")
    p.add_argument("--all", action="store_true", help="every run of the registry")
    p.add_argument("--wait", action="store_true", help="until every job has ended")
    _registry_arg(p)
    p = _command(sub, "show")
    p.add_argument("run_id")
    _registry_arg(p)
    p.add_argument("--json", action="store_true")
    p = _command(sub, "report")
    p.add_argument("--frontier", action="store_true",
                   help="L0 vs FVU / CE loss recovered / delta LM loss, and at matched compute")
    p.add_argument("--death", action="store_true",
                   help="dead and dense latents by architecture, width and remedy")
    p.add_argument("--lr", action="store_true", help="each metric against the learning rate")
    p.add_argument("--curves", action="store_true", help="training curves against tokens")
    p.add_argument("--posthoc", action="store_true",
                   help="threshold ablation, TopK at other k, opposing decoder directions "
                   "(loads the SAEs and the model)")
    p.add_argument("--all", action="store_true", help="every report above")
    p.add_argument("--format", choices=["md", "json", "csv"], default="md",
                   help="md: Markdown + PNG plots (default); json / csv: the tables only")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE",
                   help="keep runs whose field equals the value, e.g. architecture=relu "
                   "spec_name=quickstart train.lr=0.001")
    _registry_arg(p)
    p = _command(sub, "findings")
    p.add_argument("--specs", type=Path, default=Path("specs/findings"),
                   help="folder of findings specs (files starting with '_' are bases)")
    p.add_argument("--out", type=Path, default=Path("docs"),
                   help="FINDINGS.md goes here, its reports under OUT/findings/")
    p.add_argument("--registry", type=Path, default=Path("registry/findings/saerun.db"),
                   help="registry of the findings runs (default: registry/findings/saerun.db)")
    p.add_argument("--no-train", action="store_true",
                   help="only write the page from the runs already registered")
    p = _command(sub, "export-spec")
    p.add_argument("run_id")
    _registry_arg(p)
    p.add_argument("-o", "--output", type=Path, default=None, help="write to a file")
    p = _command(sub, "reproduce")
    p.add_argument("run_id")
    _registry_arg(p)
    p.add_argument("--into", type=Path, default=None,
                   help="registry to retrain into (default: a fresh temporary one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")  # `saerun SPEC` is `saerun run SPEC`
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        return int(args.func(args))
    except SaerunError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished runs are registered; run the spec again to resume",
              file=sys.stderr)
        return 130


def _registry_path(args: argparse.Namespace) -> Path:
    from saerun.registry import default_registry_path

    return args.registry or default_registry_path()


def _console() -> Console:
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    # A pipe, a log, nohup: rich would assume 80 columns and cut every table cell (run names,
    # derivations); a log wants whole values.
    return Console(width=200)


def cmd_run(args: argparse.Namespace) -> int:
    from saerun.progress import Progress
    from saerun.runner import run_spec

    console = _console()
    progress = None if args.quiet else Progress(console)
    if args.activation_cache is not None:
        from saerun import actcache

        # An environment variable, so local worker processes and Slurm jobs inherit it.
        os.environ[actcache.ENV] = str(args.activation_cache.resolve())
    summary = run_spec(args.spec, _registry_path(args), progress, args.retry_failed,
                       _launcher_options(args), wait=not args.no_wait)
    if not summary.trained and not summary.failed and not summary.elsewhere:
        console.print(
            f"all {len(summary.jobs)} runs of this spec are already done; nothing to train"
        )
    _print_summary(console, summary, _registry_path(args))
    return 1 if summary.failed else 0


def _launcher_options(args: argparse.Namespace) -> dict[str, Any]:
    """The launcher flags given, by field name (None: not given, the spec's value stands)."""
    options = {name: getattr(args, name) for name in (
        "kind", "partition", "gpus_per_job", "cpus_per_job", "mem_gb", "time", "max_parallel",
        "device_memory_gb")}
    if args.gpus is not None:
        options["gpus"] = "all" if args.gpus == "all" else [
            int(g) if g.strip().isdigit() else g for g in args.gpus.split(",")]
    if args.sbatch:
        options["sbatch"] = {}
        for item in args.sbatch:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SaerunError(f"--sbatch {item!r} is not KEY=VALUE", hint="e.g. account=lab")
            options["sbatch"][key] = value
    return options


def _print_summary(console: Console, summary: Summary, registry: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from saerun.registry import Registry

    table = Table(title="runs")
    for col in ("run", "name", "status", "L0", "FVU", "CE rec.", "dead %"):
        table.add_column(col)
    with Registry(registry) as reg:
        for job in summary.jobs:
            run = reg.get_run(job.run_id) or {}
            m = run.get("metrics") or {}
            table.add_row(
                job.run_id[:10], escape(job.name), run.get("status", "?"),
                _fmt(m.get("l0")), _fmt(m.get("fvu")), _fmt(m.get("ce_loss_recovered")),
                _fmt(100 * m["dead_fraction"] if "dead_fraction" in m else None),
            )
    console.print(table)
    if summary.trained:  # which runs THIS process executed (others may share the registry)
        console.print("trained here: " + " ".join(r[:10] for r in summary.trained),
                      soft_wrap=True)
    for run_id, reason in summary.failed.items():
        console.print(f"[red]failed[/red] {run_id[:10]}: {escape(reason)}")
    if summary.failed:
        console.print("re-run them with --retry-failed (they resume from their last checkpoint)")
    for run_id, owner in summary.elsewhere.items():
        console.print(f"{run_id[:10]} is being run by another process ({escape(owner)})")
    if summary.submitted and any(s == "running" for s in summary.statuses.values()):
        console.print("jobs are still out: `saerun status SPEC` shows them, "
                      "`saerun collect SPEC` registers their results")


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def cmd_plan(args: argparse.Namespace) -> int:
    from saerun.plan import resolved_items
    from saerun.runner import prepare

    prepared = prepare(args.spec, device_memory_gb=args.device_memory_gb)
    plan = prepared.plan
    if args.json:
        runs = [
            {"run_id": j.run_id, "name": j.name, "group": j.group_key,
             "config": j.config.model_dump(mode="json"), "provenance": j.provenance,
             "step_flops_per_token": j.step_flops_per_token}
            for j in plan.jobs
        ]
        jobs = [{"index": dj.index, "group": dj.group_key, "run_ids": dj.run_ids,
                 "memory_gb": dj.memory_gb, "memory": dj.memory, "memory_detail": dj.memory_detail}
                for dj in plan.device_jobs]
        limit = None if plan.budget is None else {"gb": plan.budget.gb, "from": plan.budget.named}
        print(json.dumps({"runs": runs, "jobs": jobs, "budget": limit}, indent=2,
                         sort_keys=True))
        return 0
    console = _console()
    from rich.markup import escape
    from rich.table import Table

    groups = plan.groups
    budget = ("no device memory budget: one job per group" if plan.budget is None else
              f"jobs sized for {plan.budget.named} {plan.budget.gb:g} GB")
    console.print(f"[bold]{plan.spec.name}[/bold]: {len(plan.jobs)} runs in {len(groups)} "
                  "activation group(s) (one language-model pass per batch per group), "
                  f"{len(plan.device_jobs)} job(s); {budget}")
    names = {j.run_id: j.name for j in plan.jobs}
    for dj in plan.device_jobs:
        first = dj.runs[0].config
        tokens = first.data.train_tokens + first.data.eval_tokens
        console.print(f"\njob {dj.index} (group {dj.group_key}): model {first.model.name}, "
                      f"{len(dj.runs)} SAEs, {tokens:,} tokens through the model, "
                      f"~{_gb(dj.memory_gb)} GB on its device")
        if dj.memory:
            parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in dj.memory.items()
                              if k != "total")
            console.print(f"  GB: {parts}; {escape(dj.memory_detail)}")
        for run_id in dj.run_ids:
            console.print(f"  {run_id}  {escape(names[run_id])}")
    console.print()
    first_job = plan.jobs[0]
    table = Table(title=f"resolved values (first run; sweep axes vary): {first_job.name}")
    table.add_column("field")
    table.add_column("value")
    table.add_column("source")
    notes = _SourceNotes(prepared.path, prepared.lines)
    for key, value in resolved_items(first_job.config).items():
        source = first_job.provenance.get(key, "?")
        if source in ("spec", "sweep"):
            source += notes.note(key) if source == "spec" else notes.sweep_note(key)
        table.add_row(key, json.dumps(value), escape(source))
    if first_job.step_flops_per_token is not None:  # what a step costs, stored with the run
        table.add_row("step_flops_per_token", f"{first_job.step_flops_per_token:,.0f}",
                      "derived: FLOPs per token of one training step (saerun.flops)")
    console.print(table)
    return 0


class _SourceNotes:
    """Where a value was written: `line N` of its file and that line's YAML comment, which is
    where a recipe says where each value comes from (e.g. `lr: 3e-4  # paper, section 5`)."""

    def __init__(self, path: Path, lines: LineMap) -> None:
        self.path, self.lines = path, lines
        self.texts: dict[str, list[str]] = {}

    def sweep_note(self, dotted: str) -> str:
        """The line of the sweep axis that sets `dotted` (a parent section's axis counts)."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            axis = ".".join(parts[:n])
            for kind in ("zip", "grid"):
                if ("sweep", kind, axis) in self.lines:
                    return self._at(("sweep", kind, axis))
        return self._at(("sweep",))

    def note(self, dotted: str) -> str:
        return self._at(tuple(dotted.split(".")))

    def _at(self, parts: tuple) -> str:
        while parts and parts not in self.lines:
            parts = parts[:-1]
        if not parts:
            return ""
        line = self.lines[parts]
        file = getattr(line, "file", None) or str(self.path)
        if file not in self.texts:
            try:
                self.texts[file] = Path(file).read_text(encoding="utf-8").splitlines()
            except OSError:
                self.texts[file] = []
        text = self.texts[file]
        comment = _comment(text[line - 1]) if 0 < line <= len(text) else ""
        above = line - 2  # else a comment-only line right above the key says it
        if not comment and 0 <= above < len(text) and text[above].lstrip().startswith("#"):
            comment = text[above].lstrip().lstrip("#").strip()
        where = f" {Path(file).name}:{int(line)}"
        return f"{where} ({comment})" if comment else where


def _comment(line: str) -> str:
    """The trailing `# ...` of a YAML line, ignoring # inside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i + 1:].strip()
    return ""


def cmd_schema(args: argparse.Namespace) -> int:
    from saerun.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from saerun.registry import Registry

    with Registry(_registry_path(args), must_exist=True) as reg:
        runs = reg.list_runs(status=args.status)
        if args.json:
            print(json.dumps(runs, indent=2, sort_keys=True, default=str))
            return 0
        from rich.table import Table

        table = Table()
        for col in ("run", "name", "status", "finished"):
            table.add_column(col)
        for run in runs:
            table.add_row(run["run_id"][:12], run["name"], run["status"],
                          run.get("finished_at") or "")
        _console().print(table)
    return 0


def _spec_run_ids(spec: Path | None) -> list[str] | None:
    from saerun.runner import prepare

    return None if spec is None else [job.run_id for job in prepare(spec).plan.jobs]


def cmd_status(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from saerun.launch.slurm import run_states
    from saerun.registry import Registry

    run_ids = _spec_run_ids(args.spec)
    with Registry(_registry_path(args), must_exist=True) as reg:
        rows, note = run_states(reg, run_ids)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    table = Table()
    for col in ("run", "name", "status", "Slurm job", "log / error"):
        table.add_column(col)
    for row in rows:
        job = row["job_id"] or ""
        if row["slurm_state"] and row["status"] == "running" and row["error"]:
            job += f" ({row['slurm_state']})"
        table.add_row(row["run_id"][:10], escape(row["name"]), row["status"], job,
                      escape(row["error"] or row["log_path"] or ""))
    console = _console()
    console.print(table)
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("planned", "queued", "running", "done", "failed")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs")
    if note:
        console.print(escape(note))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from saerun.launch.slurm import collect
    from saerun.registry import Registry

    if (args.spec is None) == (not args.all):
        raise SaerunError("say which runs to collect", hint="saerun collect SPEC, or --all")
    run_ids = _spec_run_ids(args.spec)
    console = _console()
    with Registry(_registry_path(args), must_exist=True) as reg:
        events, still = collect(reg, run_ids, args.wait)
    for run_id, status, detail in events:
        line = f"{status} {run_id[:10]}" + (f": {detail}" if status == "failed" else "")
        console.print(escape(line))
    jobs = ", ".join(sorted({f["job_id"] for f in still}))
    tail = f"{len(still)} still out in Slurm job(s) {jobs}" if still else "no job is out"
    console.print(f"registered {len(events)} run(s); {tail}")
    return 1 if any(status == "failed" for _, status, _ in events) else 0


def cmd_show(args: argparse.Namespace) -> int:
    from saerun.registry import Registry

    with Registry(_registry_path(args), must_exist=True) as reg:
        run = reg.get_run(args.run_id)
        if run is None:
            raise SaerunError(f"no run with id {args.run_id!r}", hint="see `saerun ls`")
        run["artifacts"] = str(reg.artifacts_dir(run["run_id"]).resolve())
    if args.json:
        print(json.dumps(run, indent=2, sort_keys=True, default=str))
        return 0
    console = _console()
    console.print(f"[bold]{run['run_id']}[/bold] {run['name']} ({run['status']})")
    for key in ("created_at", "started_at", "finished_at", "train_seconds", "eval_seconds",
                "tokens_trained", "data_fingerprint", "artifacts", "error"):
        if run.get(key) is not None:
            console.print(f"  {key}: {run[key]}")
    for name, value in sorted((run.get("metrics") or {}).items()):
        console.print(f"  {name}: {value:.6g}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from saerun.report.build import KINDS, write_reports

    kinds = tuple(k for k in KINDS if args.all or getattr(args, k))
    if not kinds:
        raise SaerunError("say which report to write",
                          hint="--frontier, --death, --lr, --curves, --posthoc or --all")
    filters = {}
    for item in args.filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise SaerunError(f"filter {item!r} is not KEY=VALUE", hint="e.g. architecture=relu")
        filters[key] = value
    registry = _registry_path(args)
    if "posthoc" in kinds:  # re-evaluate what is missing or stale; the report only reads
        from saerun.posthoc import compute
        from saerun.report.build import load_inputs

        compute(registry, [r["run_id"] for r in load_inputs(registry, filters, ())["rows"]])
    for path in write_reports(registry, kinds, filters, args.out, args.format):
        print(f"wrote {os.path.relpath(path)}")
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    from saerun import campaign, posthoc
    from saerun.report.findings import posthoc_run_ids, write_findings

    plans, failed = campaign.run(args.specs, args.registry, train=not args.no_train)
    posthoc.compute(args.registry, posthoc_run_ids(args.registry, plans))
    page = write_findings(args.registry, plans, failed, args.out)
    print(f"wrote {os.path.relpath(page)}")
    return 0


def cmd_export_spec(args: argparse.Namespace) -> int:
    from saerun.registry import Registry
    from saerun.spec import export_spec

    with Registry(_registry_path(args), must_exist=True) as reg:
        run = reg.get_run(args.run_id)
    if run is None:
        raise SaerunError(f"no run with id {args.run_id!r}", hint="see `saerun ls`")
    text = export_spec(run)
    if args.output is None:
        sys.stdout.write(text)
    else:
        from saerun.artifacts import write_text

        write_text(args.output, text)
        print(f"wrote {args.output}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from rich.table import Table

    from saerun.reproduce import METRIC_RTOL, WEIGHT_RTOL, reproduce

    result = reproduce(args.run_id, _registry_path(args), args.into)
    console = _console()
    table = Table(title=f"run {result.run_id[:10]}: original vs reproduction")
    for col in ("metric", "original", "reproduced", "rel. diff"):
        table.add_column(col)
    for name, a, b, rel in result.metrics:
        table.add_row(name, _fmt(a), _fmt(b), "0" if rel == 0 else f"{rel:.2e}")
    console.print(table)
    tensors = Table(title="sae_weights.safetensors")
    for col in ("tensor", "bit-identical", "max |diff| / max |orig|"):
        tensors.add_column(col)
    for name, equal, rel in result.tensors:
        tensors.add_row(name, "yes" if equal else "no", "0" if rel == 0 else f"{rel:.2e}")
    console.print(tensors)
    console.print(f"retrained into {result.registry}")
    if result.bit_identical:
        console.print("[green]reproduced: every weight is bit-identical[/green]")
        return 0
    if result.within_tolerance:
        console.print(f"[yellow]reproduced within tolerance[/yellow] (weights {WEIGHT_RTOL:g}, "
                      f"metrics {METRIC_RTOL:g} relative), not bit for bit")
        return 0
    console.print("[red]NOT reproduced[/red]: differences beyond the tolerances above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
