"""Write the reports a command asks for, from one read of the registry.

`write_reports(registry_path, kinds, filters, out_dir, form)`: reads the result rows once (and
the curves, densities and post-hoc records only when a requested report needs them: nothing
here loads a model or recomputes; `saerun.posthoc.compute` stores the records first), builds
each report
and writes `out_dir/<kind>.md` with its PNGs (form "md"), or its tables as `<kind>.json` /
`<kind>__<table>.csv` (form "json" / "csv", no plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saerun.errors import SaerunError
from saerun.registry import Registry
from saerun.report.common import write_tables
from saerun.report.rows import results

KINDS = ("frontier", "death", "lr", "curves", "posthoc")
FORMS = ("md", "json", "csv")


def read_densities(folders: dict[str, Path]) -> dict[str, list[float] | None]:
    """run_id -> log10 densities from `sparsity.safetensors` (None when the file is absent)."""
    from safetensors.numpy import load_file

    out: dict[str, list[float] | None] = {}
    for run_id, folder in folders.items():
        path = folder / "sparsity.safetensors"
        out[run_id] = load_file(str(path))["sparsity"].tolist() if path.exists() else None
    return out


def load_inputs(registry_path: Path, filters: dict[str, str],
                kinds: tuple[str, ...]) -> dict[str, Any]:
    """Rows (and what the kinds need) from the registry; a clear error when there is none."""
    with Registry(registry_path, must_exist=True) as reg:
        rows = results(reg, filters)
        if not rows:
            done = len(reg.list_runs(status="done"))
            if done == 0:
                raise SaerunError(
                    f"the registry {registry_path} has no finished runs to report on",
                    hint="train a spec first, e.g. `saerun specs/quickstart.yaml`",
                )
            shown = " ".join(f"{k}={v}" for k, v in filters.items())
            raise SaerunError(
                f"no finished runs match the filters {shown} ({done} finished runs in "
                f"{registry_path})", hint="`saerun ls` and `saerun show RUN` show the values",
            )
        ids = [r["run_id"] for r in rows]
        inputs: dict[str, Any] = {"rows": rows}
        if {"death", "lr", "curves"} & set(kinds):
            inputs["curves"] = reg.curves(ids)
        if "death" in kinds:
            inputs["densities"] = read_densities({i: reg.artifacts_dir(i) for i in ids})
        if "posthoc" in kinds:
            inputs["posthoc_records"] = reg.posthoc(ids)
    return inputs


def build(kind: str, inputs: dict[str, Any], out_dir: Path | None) -> tuple[str, list[Any]]:
    """(Markdown, tables) of one report; plots are written under out_dir when it is given."""
    rows = inputs["rows"]
    if kind == "frontier":
        from saerun.report.frontier import build_frontier

        return build_frontier(rows, out_dir)
    if kind == "death":
        from saerun.report.death import build_death

        return build_death(rows, inputs["densities"], inputs["curves"], out_dir)
    if kind == "lr":
        from saerun.report.lr import build_lr

        return build_lr(rows, inputs["curves"], out_dir)
    if kind == "curves":
        from saerun.report.curves import build_curves

        return build_curves(rows, inputs["curves"], out_dir)
    if kind == "posthoc":
        from saerun.report.posthoc import build_posthoc

        return build_posthoc(rows, inputs["posthoc_records"], out_dir)
    raise SaerunError(f"unknown report {kind!r}", hint=f"one of {', '.join(KINDS)}")


def write_reports(registry_path: Path, kinds: tuple[str, ...], filters: dict[str, str],
                  out_dir: Path, form: str = "md",
                  inputs: dict[str, Any] | None = None) -> list[Path]:
    """Write every report of `kinds`; returns the files written (Markdown or tables)."""
    if form not in FORMS:
        raise SaerunError(f"unknown format {form!r}", hint=f"one of {', '.join(FORMS)}")
    if inputs is None:
        inputs = load_inputs(Path(registry_path), filters, kinds)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for kind in kinds:
        text, tables = build(kind, inputs, out_dir if form == "md" else None)
        if form == "md":
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{kind}.md"
            path.write_text(text, encoding="utf-8")
            written.append(path)
        else:
            written += write_tables(tables, out_dir, kind, form)
    return written
