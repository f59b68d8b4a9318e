"""What the CLI prints about a plan and a finished run: `saerun plan` (text and --json) and
the summary table after `saerun SPEC`. Printing only; cli.py parses and dispatches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from saerun.execute import Summary
    from saerun.plan import Job, Plan
    from saerun.runner import Prepared
    from saerun.spec import LineMap


# A failure a retry can fix comes from outside the run (the machine, the cluster, the disk);
# anything else (an exception in the code, a diverging loss) repeats on a retry, which resumes
# the same deterministic run from its last checkpoint.
TRANSIENT = ("disk full", "Slurm job", "not submitted to Slurm", "OutOfMemoryError",
             "MemoryError", "out of memory", "Killed", "interrupted")


def retry_helps(reason: str) -> bool:
    """Whether `--retry-failed` can help a run that failed with `reason`."""
    return any(marker in reason for marker in TRANSIENT)


def print_summary(console: Console, summary: Summary, registry: Path) -> None:
    """The table after `saerun SPEC`: each run by its id and the values that set it apart in
    this spec (not its long name, which a narrow terminal cuts), with delta LM loss beside CE
    loss recovered. The values wrap instead of being cut, at any width."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from saerun.listing import differing_keys, values_text
    from saerun.registry import Registry
    from saerun.report.rows import flatten

    configs = {job.run_id: job.config.model_dump(mode="json") for job in summary.jobs}
    keys = differing_keys(configs.values())
    rows = []
    with Registry(registry) as reg:
        for job in summary.jobs:
            run = reg.get_run(job.run_id) or {}
            m = run.get("metrics") or {}
            flat = flatten(configs[job.run_id])
            values = values_text({k: flat[k] for k in keys if k in flat})
            rows.append([
                job.run_id[:10], escape(values or job.name), run.get("status", "?"),
                fmt(m.get("l0")), fmt(m.get("fvu")), fmt(m.get("ce_loss_recovered")),
                fmt(m.get("delta_lm_loss")),
                fmt(100 * m["dead_fraction"] if "dead_fraction" in m else None),
            ])
    headers = ("run", "values", "status", "L0", "FVU", "CE rec.", "ΔLM", "dead%")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    fixed = sum(w for i, w in enumerate(widths) if i != 1) + 2 * len(headers)
    if console.width < fixed + 12:
        # Too narrow for a table whose numbers stay whole: one block per run instead, the
        # values on their own wrapped line.
        console.print("[bold]runs[/bold]")
        for row in rows:
            stats = "  ".join(f"{h} {v}" for h, v in zip(headers[3:], row[3:], strict=True))
            console.print(f"{row[0]} {row[2]}  {stats}", soft_wrap=False)
            console.print(f"  {row[1]}")
    else:
        # No vertical rules, and every column but the values as wide as its widest cell: the
        # values take what is left and wrap there, so nothing is cut to "…".
        table = Table(title="runs", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, col in enumerate(headers):
            if i == 1:
                table.add_column(col, overflow="fold", min_width=12, ratio=1)
            else:
                table.add_column(col, no_wrap=True, min_width=widths[i],
                                 justify="left" if i < 3 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if summary.trained:  # which runs THIS process executed (others may share the registry)
        console.print("trained here: " + " ".join(r[:10] for r in summary.trained),
                      soft_wrap=True)
    for run_id, reason in summary.failed.items():
        console.print(f"[red]failed[/red] {run_id[:10]}: {escape(reason)}")
    retryable = [r for r, reason in summary.failed.items() if retry_helps(reason)]
    if retryable:
        console.print(f"re-run {' '.join(r[:10] for r in retryable)} with --retry-failed "
                      "(they resume from their last checkpoint)")
    if len(retryable) < len(summary.failed):
        console.print("a retry repeats the other failures: fix their cause first (the spec, "
                      "the model, or a bug to report), then --retry-failed")
    for run_id, owner in summary.elsewhere.items():
        console.print(f"{run_id[:10]} is being run by another process ({escape(owner)})")
    if summary.submitted and any(s == "running" for s in summary.statuses.values()):
        console.print("jobs are still out: `saerun status SPEC` shows them, "
                      "`saerun collect SPEC` registers their results")


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def plan_json(plan: Plan) -> dict[str, Any]:
    """`saerun plan --json`: {runs, jobs, budget}."""
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
    return {"runs": runs, "jobs": jobs, "budget": limit}


def print_plan(console: Console, prepared: Prepared, registry: Path | None = None) -> None:
    """`saerun plan`: the device jobs, then every resolved value of the first run and its
    source (spec line and comment, sweep axis, or the rule that derived it). `registry`: where
    a job's time was measured (its runs done or checkpointed), for the time-limit warning."""
    from rich.markup import escape
    from rich.table import Table

    from saerun.plan import checkpoint_disk_gb, resolved_items
    from saerun.spec import slurm_minutes

    plan = prepared.plan
    groups = plan.groups
    budget = ("no device memory budget: one job per group" if plan.budget is None else
              f"jobs sized for {plan.budget.named} {plan.budget.gb:g} GB")
    console.print(f"[bold]{plan.spec.name}[/bold]: {len(plan.jobs)} runs in {len(groups)} "
                  "activation group(s) (one language-model pass per batch per group), "
                  f"{len(plan.device_jobs)} job(s); {budget}")
    names = {j.run_id: j.name for j in plan.jobs}
    measured = measured_rates(registry, [dj.run_ids for dj in plan.device_jobs]) \
        if plan.spec.launcher.kind == "slurm" else []
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
        console.print(f"  checkpoints: ~{checkpoint_disk_gb(dj.runs):.3g} GB on disk "
                      f"(train.keep_checkpoints = {first.train.keep_checkpoints}, one being "
                      "written, the final export, the stream's snapshots)")
        if plan.spec.launcher.kind == "slurm":
            warning = time_limit_warning(dj.runs, slurm_minutes(plan.spec.launcher.time),
                                         plan.spec.launcher.max_requeues,
                                         measured=measured[dj.index])
            if warning:
                console.print(f"  [yellow]warning[/yellow]: {escape(warning)}")
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


# Achieved FLOP/s assumed for a job's time when nothing was measured (README: about 30 % of an
# H100's bf16 dense peak), and how many requeues count as "a few".
ASSUMED_FLOPS = 3e14
FEW_REQUEUES = 3


def measured_rates(registry: Path | None, jobs: list[list[str]]
                   ) -> list[tuple[float, str] | None]:
    """For each device job (its run ids): (training seconds per token, where that was measured)
    from its runs' records, a done run's train_seconds / tokens_trained, else its newest
    checkpoint's (both count every attempt, the language model's forward included); the
    slowest when several. None: nothing measured yet (all None without a registry)."""
    from saerun import artifacts
    from saerun.registry import Registry

    if registry is None or not registry.exists():
        return [None] * len(jobs)
    with Registry(registry, must_exist=True) as reg:  # one read of the registry for all jobs
        runs = {r["run_id"]: r for r in reg.list_runs()}
        folders = {run_id: reg.artifacts_dir(run_id) for ids in jobs for run_id in ids}
    out: list[tuple[float, str] | None] = []
    for ids in jobs:
        slowest: tuple[float, str] | None = None
        for run_id in ids:
            run = runs.get(run_id)
            if run is None:
                continue
            seconds, tokens = run["train_seconds"], run["tokens_trained"]
            if run["status"] != "done":
                meta = artifacts.checkpoint_meta(folders[run_id]) or {}
                seconds, tokens = meta.get("train_seconds"), meta.get("tokens")
            if not seconds or not tokens:
                continue
            rate = float(seconds) / int(tokens)
            if slowest is None or rate > slowest[0]:
                slowest = (rate, f"measured on run {run_id[:10]}: {int(tokens):,} tokens in "
                                 f"{float(seconds):.0f} s")
        out.append(slowest)
    return out


def _duration(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds < 3600 else f"~{seconds / 3600:.1f} h"


def time_limit_warning(runs: list[Job], limit_minutes: int, max_requeues: int,
                       flops: float = ASSUMED_FLOPS,
                       measured: tuple[float, str] | None = None) -> str | None:
    """A warning when one device job cannot finish within a few requeues of its time limit;
    None when it can or nothing is known. Its time: `measured` (seconds per training token of
    this job, `measured_rates`) x its training tokens once known; before that its SAE steps
    alone (step FLOPs per token x training tokens at `flops` FLOP/s), a lower bound (the LM
    forward is not counted). None: the FLOPs are unknown and nothing was measured."""
    if measured is not None:
        rate, where = measured
        seconds = rate * max(j.config.data.train_tokens for j in runs)
        what = f"its training needs {_duration(seconds)} ({where})"
    elif any(j.step_flops_per_token is None for j in runs):
        return None
    else:
        seconds = sum(float(j.step_flops_per_token or 0) * j.config.data.train_tokens
                      for j in runs) / flops
        what = f"its SAE steps alone need {_duration(seconds)} at {flops:.0e} FLOP/s"
    attempts = 1 + min(max_requeues, FEW_REQUEUES)
    if seconds <= attempts * limit_minutes * 60:
        return None
    return (f"{what}, more than {attempts} x the {limit_minutes} min time limit: raise "
            "launcher.time or launcher.max_requeues, or split the job (--device-memory)")
