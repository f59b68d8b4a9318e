"""The training half of `saerun findings`: every findings spec trained into one registry.

    plans, failed = campaign.run(Path("specs/findings"), Path("docs/findings/registry/saerun.db"))

Runs every `specs/findings/*.yaml` (files starting with "_" are bases) in name order, and with
`real` the real-model specs of `specs/findings/real/` after them (their file names are
`real-*.yaml`, unique beside the others). The real specs are always planned (the real-model
tier plans from a built-in table before it is built), so the page shows their runs from the
registry on any machine; they train only when asked. Resumable: finished runs are skipped by
the registry, a killed run resumes. The page that answers the research questions from these
runs is written by `saerun.report.findings`, which only reads the registry.
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


REAL_DIR = "real"  # the real-model specs' folder inside the findings folder


def spec_files(specs_dir: Path) -> dict[str, Path]:
    """spec file name -> its path: the findings specs, then the real-model ones (if any)."""
    found = {p.name: p for p in spec_paths(specs_dir)}
    real = Path(specs_dir) / REAL_DIR
    if real.is_dir() and any(real.glob("*.yaml")):
        found.update((p.name, p) for p in spec_paths(real))
    return found


def run(specs_dir: Path, registry_path: Path, train: bool = True,
        progress: Progress | None = None, real: bool = False
        ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(spec name -> planned run ids, run id -> failure reason) after training every spec,
    the real-model ones only with `real` (with `train` False: the plans only, nothing
    trained). No model is loaded to plan, and nothing is written."""
    paths = spec_files(specs_dir)
    plans = {name: [j.run_id for j in prepare(path).plan.jobs] for name, path in paths.items()}
    real_dir = Path(specs_dir) / REAL_DIR
    failed: dict[str, str] = {}
    if train:
        for path in paths.values():
            if path.parent == real_dir and not real:
                continue
            failed.update(run_spec(path, registry_path, progress).failed)
    return plans, failed
