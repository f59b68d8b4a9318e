"""The rich progress display of a training group: tokens/s, loss, L0, dead fraction, ETA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class _Train(Protocol):
    @property
    def batch_tokens(self) -> int: ...


class _Config(Protocol):
    @property
    def train(self) -> _Train: ...


class _Job(Protocol):  # a planned job (plan.Job): only its batch size is shown
    @property
    def config(self) -> _Config: ...


class _Trainer(Protocol):  # a train.Trainer: the curve points since its last checkpoint
    curve: list[dict[str, float]]


class Progress:
    def __init__(self, console: Console) -> None:
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.batch_tokens = 0

    def start_group(self, jobs: Sequence[_Job], total_steps: int, start: int) -> TaskID:
        self.bar.start()
        self.batch_tokens = jobs[0].config.train.batch_tokens
        name = f"{len(jobs)} SAE(s)"
        return self.bar.add_task(name, total=total_steps, completed=start, rate="", stats="")

    def advance(self, task: TaskID, step: int, trainers: Sequence[_Trainer]) -> None:
        t = self.bar.tasks[task]
        rate = ""
        if t.speed:
            rate = f"{t.speed * self.batch_tokens / 1000:.1f}k tok/s"
        stats = ""
        latest = [tr.curve[-1] for tr in trainers if tr.curve]
        if latest:
            l0 = [p["l0"] for p in latest]
            mse = [p["mse"] for p in latest]
            stats = f"L0 {min(l0):.0f}-{max(l0):.0f}  mse {min(mse):.3g}-{max(mse):.3g}"
        self.bar.update(task, completed=step, rate=rate, stats=stats)

    def finish(self, task: TaskID) -> None:
        self.bar.stop()

    def note(self, text: str) -> None:
        """One line about jobs elsewhere (a cluster launcher's submissions and results)."""
        self.bar.console.print(text)
