"""Launchers: where the jobs of a spec run (this machine, or a Slurm cluster); never part of a
run's id. `launcher_with` puts the command line's options over the spec's section, and its
errors name the command-line flag."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from saerun.errors import SpecError
from saerun.spec.base import Strict as _Strict

# -- launchers: where the jobs run (never part of a run's id) ----------------------------------

_TIME_UNITS = {"s": 1 / 60, "m": 1, "h": 60, "d": 24 * 60}


def signal_seconds(launcher: SlurmLauncher) -> int:
    """The lead time of Slurm's warning before the time limit (see SlurmLauncher)."""
    if launcher.signal_seconds is not None:
        return launcher.signal_seconds
    return min(90, max(10, slurm_minutes(launcher.time) * 6))


def slurm_minutes(text: str) -> int:
    """A time limit in whole minutes (at least 1) from `90m`, `6h`, `1d12h`, `45` (minutes) or
    Slurm's own forms (`MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`)."""
    text = str(text).strip()
    units = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", text)
    if units:
        minutes = sum(float(n) * _TIME_UNITS[u] for n, u in re.findall(r"([\d.]+)([smhd])", text))
    elif re.fullmatch(r"\d+", text):
        minutes = int(text)
    else:
        found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not found or (found[1] is None and found[3] is None):
            raise ValueError(f"{text!r} is not a time limit (e.g. 90m, 6h, 2d, 1-12:00:00)")
        days, a, b, c = (int(x) if x else 0 for x in found.groups())
        if found[1] is not None:  # D-HH[:MM[:SS]]
            minutes = days * 1440 + a * 60 + b + c / 60
        elif found[4] is not None:  # HH:MM:SS
            minutes = a * 60 + b + c / 60
        else:  # MM:SS
            minutes = a + b / 60
    return max(1, math.ceil(minutes))


class LocalLauncher(_Strict):
    """Train on this machine, in this process."""

    kind: Literal["local"] = Field("local", description="train on this machine (the default).")
    gpus: Literal["all"] | list[Annotated[int, Field(ge=0)]] = Field(
        "all", description="CUDA devices to spread device jobs over, one process per "
        "device (`all`: every visible one); with fewer than two, or a model.device other than "
        "auto/cuda, everything runs in this process.",
    )
    device_memory_gb: float | None = Field(
        None, gt=0, description="memory of one device in GB (10^9 bytes): each activation group "
        "is split into jobs whose estimated peak fits (`saerun plan` shows the estimates); "
        "null: the visible GPU's memory when a run starts (one job per group on a CPU)",
    )


# sbatch options saerun sets itself: letting a spec set them would break the job accounting.
_RESERVED_SBATCH = {"array", "hold", "output", "error", "signal", "open-mode", "job-name",
                    "wrap", "parsable"}


class SlurmLauncher(_Strict):
    """Submit to a Slurm cluster through submitit: one array task per device job (the SAEs of
    one activation group that fit one device, or the whole group without a budget), one job
    array per submission, capped at `max_parallel` at once."""

    kind: Literal["slurm"] = Field(description="submit the jobs to Slurm (submitit).")
    partition: str | None = Field(None, description="sbatch --partition; null: the default one.")
    gpus_per_job: int = Field(0, ge=0, description="GPUs per job (sbatch --gpus-per-node).")
    cpus_per_job: int = Field(1, ge=1, description="CPU cores per job (sbatch --cpus-per-task).")
    mem_gb: float | None = Field(
        None, gt=0, description="memory per job in GB (sbatch --mem); null: the cluster default."
    )
    time: str = Field(
        "1h", description="time limit per job: 90m, 6h, 2d, or Slurm's D-HH:MM:SS.",
    )
    max_parallel: int = Field(8, ge=1, description="jobs of one array running at once (%N).")
    max_requeues: int = Field(
        3, ge=0, description="times a job cut off by its time limit requeues itself (each time "
        "after checkpointing every SAE it holds) before its runs fail with that reason.",
    )
    signal_seconds: int | None = Field(
        None, ge=1, description="seconds before the time limit Slurm warns the job (SIGUSR2; "
        "Slurm may send it up to 60 s earlier) to checkpoint and requeue; null: 90, or 6 per "
        "minute of a shorter limit (at least 10).",
    )
    device_memory_gb: float | None = Field(
        None, gt=0, description="memory of one device in GB (10^9 bytes): each activation group "
        "is split into jobs whose estimated peak fits (`saerun plan` shows the estimates); "
        "null: one job per activation group",
    )
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="extra sbatch options without the dashes, e.g. {account: lab, qos: high}.",
    )
    folder: str | None = Field(
        None, description="submitit's job files and the logs; null: <registry dir>/slurm (it "
        "must be on storage the nodes share, like the registry's run folders).",
    )

    @field_validator("time")
    @classmethod
    def _time_parses(cls, value: str) -> str:
        slurm_minutes(value)
        return value

    @field_validator("sbatch")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(k for k in value if k.replace("_", "-").lstrip("-") in _RESERVED_SBATCH)
        if taken:
            raise ValueError(f"saerun sets {', '.join(taken)} itself; leave them out")
        return value


LAUNCHERS: dict[str, type[BaseModel]] = {"local": LocalLauncher, "slurm": SlurmLauncher}
LauncherConfig = Annotated[LocalLauncher | SlurmLauncher, Field(discriminator="kind")]


def launcher_with(base: LocalLauncher | SlurmLauncher,
                  options: dict[str, Any]) -> LocalLauncher | SlurmLauncher:
    """The spec's launcher section with the command line's options on top (`kind` switches the
    launcher: the other kind's settings are then its defaults). Options are named as fields;
    an error names the command-line flag."""
    from pydantic import TypeAdapter

    kind = options.get("kind") or base.kind
    data = base.model_dump() if kind == base.kind else {}
    data.update({k: v for k, v in options.items() if v is not None}, kind=kind)
    try:
        return TypeAdapter(LauncherConfig).validate_python(data)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else "launcher"
        flag = "--" + name.replace("_", "-")
        if first["type"] == "extra_forbidden":
            others = [k for k, cls in LAUNCHERS.items() if name in cls.model_fields]
            raise SpecError(f"{flag} is an option of the {' / '.join(others) or 'other'} "
                            f"launcher, not of {kind}",
                            hint=f"add --launcher {others[0]}" if others else None) from None
        raise SpecError(f"{flag}: {first['msg']}") from None

