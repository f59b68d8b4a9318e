"""The command line: parse, call one library function, print. Heavy imports stay lazy so that
`saerun --help` is instant. A SaerunError prints as one line and exits 2, never a traceback; a
closed output pipe (`saerun ls | head`) ends quietly."""

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


# The one list of commands: name -> (synopsis, what it does). The usage text, the subparsers'
# help and the default-command check all read it; `cmd_<name>` (dashes as underscores) runs it.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("SPEC [options]", "validate, plan, train, evaluate and register a spec"),
    "plan": ("SPEC [--json]", "what would run, every resolved value and its source"),
    "ls": ("[--json] [--sort M] [K=V ...]", "runs: what differs, L0, FVU, CE loss recovered"),
    "status": ("[SPEC]", "queued / running / done / failed per run, with Slurm job ids"),
    "collect": ("SPEC|--all", "register what cluster jobs left when their driver died"),
    "show": ("RUN_ID [--json]", "one run: config, environment, metrics"),
    "report": ("--frontier|--all", "Markdown + PNG reports from the registry"),
    "findings": ("", "train specs/findings/, write docs/FINDINGS.md"),
    "export-spec": ("RUN_ID", "a standalone spec that reproduces one run"),
    "export": ("RUN_ID --format saebench", "a run's results as SAEBench's core-eval file"),
    "reproduce": ("RUN_ID", "retrain a run and compare, metric by metric, tensor by tensor"),
    "schema": ("", "the spec's JSON schema"),
}


def _usage() -> str:
    lines = []
    for name, (synopsis, what) in COMMANDS.items():
        head = f"saerun {synopsis}" if name == "run" else f"saerun {name} {synopsis}".rstrip()
        lines.append(f"{head:<38} {what}")
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


HELP = """\
saerun trains and evaluates sparse autoencoders from a YAML spec, and keeps every result in a
registry (registry/saerun.db, or --registry / $SAERUN_REGISTRY).

start here:
  saerun specs/quickstart.yaml        train six SAEs on the embedded model (~2.5 min on a CPU)
  saerun ls                           what ran: the values that differ, L0, FVU, CE recovered
  saerun report --frontier            Markdown + PNG frontiers under reports/

  saerun plan SPEC                    check a spec: every resolved value and where it came from
  saerun COMMAND --help               the options of one command

the spec's fields and the metrics' definitions: README.md ("A spec", "What is computed");
the JSON schema: saerun schema"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saerun", usage=_usage(), description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p = _command(sub, "run")
    p.add_argument("spec", type=Path)
    _registry_arg(p)
    p.add_argument("--retry-failed", action="store_true", help="re-run runs that failed")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                   help="without a terminal (nohup, a pipe, a log file): one progress line "
                   "every SECONDS (default 30)")
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
    _registry_arg(p)  # read only: a job's measured time, for the time-limit warning
    _command(sub, "schema")
    p = _command(sub, "ls")
    _registry_arg(p)
    p.add_argument("--json", action="store_true",
                   help="every field of every run: config, metrics, the values that differ")
    p.add_argument("--status", choices=["planned", "running", "done", "failed"])
    p.add_argument("--sort", metavar="METRIC",
                   help="sort by a metric or any filter key, e.g. fvu; --sort=-fvu descending")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE",
                   help="keep runs whose field equals the value, as in `saerun report`")
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
                   help="threshold ablation, TopK at other k, top-n per token, opposing decoder "
                   "directions "
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
    p.add_argument("--registry", type=Path, default=Path("docs/findings/registry/saerun.db"),
                   help="registry of the findings runs (default: the committed one, "
                   "docs/findings/registry/saerun.db)")
    p.add_argument("--no-train", action="store_true",
                   help="only write the page from the runs already registered")
    p.add_argument("--real", action="store_true",
                   help="train the real-model specs (SPECS/real/) too: needs the real model "
                   "(bash scripts/setup.sh --real-model); about 1.5 h on 2 cores with an "
                   "activation cache")
    p = _command(sub, "export-spec")
    p.add_argument("run_id")
    _registry_arg(p)
    p.add_argument("-o", "--output", type=Path, default=None, help="write to a file")
    p = _command(sub, "export")
    p.add_argument("run_id")
    _registry_arg(p)
    p.add_argument("--format", choices=["saebench"], required=True,
                   help="saebench: SAEBench 0.6.0's core-eval results file")
    p.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR",
                   help="folder to write <release>_<sae_id>_eval_results.json into "
                   "(default: the current one)")
    p.add_argument("--release", help="the file's SAELens release id (default: the spec's name)")
    p.add_argument("--sae-id", help="the file's SAELens SAE id (default: HOOK__RUNID)")
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
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except SaerunError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished runs are registered; run the spec again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`saerun ls | head -1`): end quietly, as a shell tool does. Python
        # would flush stdout again at exit and fail on the same pipe, so stdout is pointed at
        # /dev/null first (what the CPython docs on SIGPIPE recommend).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the pipe


def _registry_path(args: argparse.Namespace) -> Path:
    from saerun.registry import default_registry_path

    return args.registry or default_registry_path()


def _console() -> Console:
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1 here; `main` ends a closed pipe the same way for every command.
            self.quiet = True
            raise BrokenPipeError

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return PipeConsole()
    # A pipe, a log, nohup: rich would assume 80 columns and cut every table cell (run names,
    # derivations); a log wants whole values.
    return PipeConsole(width=200)


def cmd_run(args: argparse.Namespace) -> int:
    from saerun.progress import Progress
    from saerun.runner import run_spec

    console = _console()
    progress = None if args.quiet else Progress(console, log_every=args.log_every)
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
    from saerun.views import print_summary

    print_summary(console, summary, _registry_path(args))
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


def cmd_plan(args: argparse.Namespace) -> int:
    from saerun.runner import prepare
    from saerun.views import plan_json, print_plan

    prepared = prepare(args.spec, device_memory_gb=args.device_memory_gb)
    if args.json:
        print(json.dumps(plan_json(prepared.plan), indent=2, sort_keys=True))
        return 0
    print_plan(_console(), prepared, _registry_path(args))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from saerun.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from saerun.listing import listing, table_cells, table_header
    from saerun.registry import Registry

    with Registry(_registry_path(args), must_exist=True) as reg:
        runs = reg.list_runs(details=True)
    rows = listing(runs, args.status, _filters(args.filters), args.sort)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for i, col in enumerate(table_header()):
        # The values wrap (never cut: they are what tells a sweep's runs apart); ids and
        # numbers stay on one line.
        if col in ("values", "site"):
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, no_wrap=True, justify="right" if i > 4 else "left")
    for row in rows:
        table.add_row(*(escape(cell) for cell in table_cells(row)))
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
    for col in ("run", "name", "status", "requeues", "checkpoint", "Slurm job", "log / error"):
        table.add_column(col)
    for row in rows:
        job = row["job_id"] or ""
        if row["slurm_state"] and row["status"] == "running" and row["error"]:
            job += f" ({row['slurm_state']})"
        saved, total = row["saved_tokens"], row["train_tokens"]
        checkpoint = "" if saved is None else f"{saved:,} tok" + (
            f" ({saved / total:.0%})" if total else "")
        table.add_row(row["run_id"][:10], escape(row["name"]), row["status"],
                      str(row["requeues"] or ""), checkpoint, job,
                      escape(row["error"] or row["log_path"] or ""))
    console = _console()
    console.print(table)
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("planned", "queued", "requeued", "running", "done", "failed")}
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
    from saerun.listing import is_imported, site_of

    console = _console()
    console.print(f"[bold]{run['run_id']}[/bold] {run['name']} ({run['status']})")
    console.print(f"  site: {site_of(run['config'])}")
    if is_imported(run["config"]):
        console.print(f"  imported from {run['config']['sae']['from_pretrained']} (not trained)")
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
    filters = _filters(args.filters)
    registry = _registry_path(args)
    if "posthoc" in kinds:  # re-evaluate what is missing or stale; the report only reads
        from saerun.posthoc import compute
        from saerun.report.build import load_inputs

        compute(registry, [r["run_id"] for r in load_inputs(registry, filters, ())["rows"]])
    for path in write_reports(registry, kinds, filters, args.out, args.format):
        print(f"wrote {os.path.relpath(path)}")
    return 0


def _filters(items: list[str]) -> dict[str, str]:
    """KEY=VALUE arguments (`report`, `ls`) as {key: value}."""
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SaerunError(f"filter {item!r} is not KEY=VALUE", hint="e.g. architecture=relu")
        filters[key] = value
    return filters


def cmd_findings(args: argparse.Namespace) -> int:
    from saerun import campaign, posthoc
    from saerun.report.findings import posthoc_run_ids, write_findings

    plans, failed = campaign.run(args.specs, args.registry, train=not args.no_train,
                                 real=args.real)
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


def cmd_export(args: argparse.Namespace) -> int:
    from saerun.saebench import write_saebench

    path = write_saebench(_registry_path(args), args.run_id, args.output, args.release,
                          args.sae_id)
    print(f"wrote {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from rich.table import Table

    from saerun.reproduce import METRIC_RTOL, WEIGHT_RTOL, reproduce
    from saerun.views import fmt

    result = reproduce(args.run_id, _registry_path(args), args.into)
    console = _console()
    table = Table(title=f"run {result.run_id[:10]}: original vs reproduction")
    for col in ("metric", "original", "reproduced", "rel. diff"):
        table.add_column(col)
    for name, a, b, rel in result.metrics:
        table.add_row(name, fmt(a), fmt(b), "0" if rel == 0 else f"{rel:.2e}")
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
