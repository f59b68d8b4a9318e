"""The training half of `saerun findings`: every findings spec trained into one registry.

    plans, failed = campaign.run(Path("specs/findings"), Path("registry/findings/saerun.db"))

Runs every `specs/findings/*.yaml` (files starting with "_" are bases) in name order.
Resumable: finished runs are skipped by the registry, a killed run resumes. The page that
answers the research questions from these runs is written by `saerun.report.findings`, which
only reads the registry.
"""

from __future__ import annotations

from pathlib import Path

from saerun.errors import SaerunError
from saerun.progress import Progress
from saerun.runner import prepare, run_spec


def spec_paths(specs_dir: Path) -> list[Path]:
    """The findings specs of a folder, by name; an error when there is none."""
    specs = sorted(p for p in Path(specs_dir).glob("*.yaml") if not p.name.startswith("_"))
    if not specs:
        raise SaerunError(f"no findings spec in {specs_dir}", hint="expected *.yaml files")
    return specs


def spec_run_ids(specs_dir: Path) -> dict[str, list[str]]:
    """spec file name -> run ids it plans (no model loaded, nothing written)."""
    return {p.name: [j.run_id for j in prepare(p).plan.jobs] for p in spec_paths(specs_dir)}


def run(specs_dir: Path, registry_path: Path, train: bool = True,
        progress: Progress | None = None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(spec name -> planned run ids, run id -> failure reason) after training every spec
    (with `train` False: the plans only, nothing trained)."""
    plans = spec_run_ids(specs_dir)
    failed: dict[str, str] = {}
    if train:
        for name in plans:
            failed.update(run_spec(Path(specs_dir) / name, registry_path, progress).failed)
    return plans, failed
