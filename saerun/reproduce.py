"""Turn a registered run back into a spec, and retrain it to check that it reproduces.

`export_spec` (in `spec.compose`) writes the run's resolved config as a standalone spec, no
sweep, so planning it gives exactly that one run, with the same run id.

`reproduce` checks that the data still has the fingerprint recorded with the run (a reproduction
on other data is not one), trains the exported spec into another registry, and compares the two
results metric by metric and tensor by tensor. On the same kind of machine on CPU the weights
are expected bit-identical (every source of randomness is seeded and the data order is fixed);
across machines or on GPU, float results may differ in the last bits and the comparison falls
back to the stated tolerances.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from saerun.errors import SaerunError
from saerun.spec.compose import export_spec

# Across machines: relative tolerances a reproduction must meet (stated in the README).
WEIGHT_RTOL = 1e-3  # max |a - b| / max |a| per tensor
METRIC_RTOL = 1e-2  # |a - b| / max(|a|, 1e-8) per metric


@dataclass
class Comparison:
    run_id: str
    registry: Path
    metrics: list[tuple[str, float | None, float | None, float]] = field(default_factory=list)
    tensors: list[tuple[str, bool, float]] = field(default_factory=list)  # name, equal, max diff

    @property
    def bit_identical(self) -> bool:
        return all(equal for _, equal, _ in self.tensors)

    @property
    def within_tolerance(self) -> bool:
        return all(rel <= WEIGHT_RTOL for _, _, rel in self.tensors) and all(
            rel <= METRIC_RTOL for *_, rel in self.metrics
        )


def _rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), 1e-8)


def reproduce(run_id: str, registry_path: Path, target: Path | None = None) -> Comparison:
    """Retrain a done run from its exported spec into `target` (a registry file; default: a
    fresh temporary one) and compare. Raises SaerunError when the run cannot be reproduced."""
    from safetensors.torch import load_file

    from saerun import data
    from saerun.registry import Registry
    from saerun.runner import run_spec
    from saerun.spec import RunConfig

    with Registry(registry_path, must_exist=True) as reg:
        run = reg.get_run(run_id)
        if run is None:
            raise SaerunError(f"no run with id {run_id!r} in {registry_path}",
                              hint="see `saerun ls`")
        if run["status"] != "done":
            raise SaerunError(f"run {run['run_id'][:10]} is {run['status']}, not done",
                              hint="only a finished run can be reproduced")
        original = reg.artifacts_dir(run["run_id"])
    config = RunConfig.model_validate(run["config"])
    recorded, now = run.get("data_fingerprint"), data.fingerprint(config.data)
    if recorded and recorded != now:
        raise SaerunError(
            f"the data of run {run['run_id'][:10]} changed: {config.data.dataset!r} has "
            f"fingerprint {now[:12]} now, {recorded[:12]} when the run was trained",
            hint="a run can only be reproduced on the data it was trained on; restore that "
            "data, or run the spec to train a new run on the new data",
        )
    if target is None:
        target = Path(tempfile.mkdtemp(prefix="saerun-reproduce-")) / "saerun.db"
    if Path(target).resolve() == Path(registry_path).resolve():
        raise SaerunError("reproduce needs another registry than the run's own",
                          hint="pass --registry-out OTHER.db, or omit it for a temporary one")
    spec_path = Path(target).parent / f"reproduce-{run['run_id'][:10]}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(export_spec(run), encoding="utf-8")
    summary = run_spec(spec_path, target)
    if [j.run_id for j in summary.jobs] != [run["run_id"]]:
        raise SaerunError(
            f"the exported spec plans to {[j.run_id[:10] for j in summary.jobs]}, not "
            f"{run['run_id'][:10]}: this saerun resolves the config differently",
            hint="reproduce with the saerun version that trained the run",
        )
    if summary.failed:
        raise SaerunError(f"the reproduction failed: {summary.failed[run['run_id']]}")

    comparison = Comparison(run["run_id"], Path(target))
    with Registry(target) as reg:
        again = reg.get_run(run["run_id"]) or {"metrics": {}}  # it is there: run_spec made it
        copy_dir = reg.artifacts_dir(run["run_id"])
    names = sorted(set(run["metrics"]) | set(again["metrics"]))
    for name in names:
        a, b = run["metrics"].get(name), again["metrics"].get(name)
        comparison.metrics.append((name, a, b, _rel(a, b)))
    first = load_file(str(original / "sae_weights.safetensors"))
    second = load_file(str(copy_dir / "sae_weights.safetensors"))
    for name in sorted(set(first) | set(second)):
        if name not in first or name not in second or first[name].shape != second[name].shape:
            comparison.tensors.append((name, False, float("inf")))
            continue
        a, b = first[name].double(), second[name].double()
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        scale = max(a.abs().max().item() if a.numel() else 0.0, 1e-12)
        comparison.tensors.append((name, bool(first[name].equal(second[name])), diff / scale))
    return comparison
