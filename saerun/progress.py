"""The progress of a training group: tokens/s, loss, L0, dead fraction, ETA. In a terminal a
rich bar; without one (nohup, a pipe, a log file) a plain log line every `log_every` seconds, its
rate the tokens trained by this process over its wall time so far (not a smoothed speed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    def __init__(self, console: Console, log_every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self.console = console
        self.log_lines = not console.is_terminal  # no terminal: log lines instead of a bar
        self.log_every, self.clock = log_every, clock
        self.batch_tokens = 0
        self.total = self.start = 0
        self.t0 = self.last_log = 0.0

    def start_group(self, jobs: Sequence[_Job], total_steps: int, start: int) -> TaskID:
        self.batch_tokens = jobs[0].config.train.batch_tokens
        self.total, self.start = total_steps, start
        self.t0 = self.last_log = self.clock()
        name = f"{len(jobs)} SAE(s)"
        if self.log_lines:
            self.console.print(f"training {name}: step {start} of {total_steps}, "
                               f"{total_steps * self.batch_tokens:,} tokens", soft_wrap=True)
            return TaskID(0)
        self.bar.start()
        return self.bar.add_task(name, total=total_steps, completed=start, rate="", stats="")

    def advance(self, task: TaskID, step: int, trainers: Sequence[_Trainer]) -> None:
        if self.log_lines:
            now = self.clock()
            if now - self.last_log >= self.log_every:
                self.last_log = now
                self.console.print(self.log_line(step, trainers, now), soft_wrap=True)
            return
        t = self.bar.tasks[task]
        rate = ""
        if t.speed:
            rate = f"{t.speed * self.batch_tokens / 1000:.1f}k tok/s"
        self.bar.update(task, completed=step, rate=rate, stats=_stats(trainers))

    def log_line(self, step: int, trainers: Sequence[_Trainer], now: float) -> str:
        """`tokens 409,600/1,500,000 (27%)  1.2k tok/s  loss ...  L0 ...  dead ...  ETA 15m02s`:
        the rate is this process's tokens over its wall time since the group started."""
        tokens = step * self.batch_tokens
        total = self.total * self.batch_tokens
        elapsed = now - self.t0
        done_here = (step - self.start) * self.batch_tokens
        rate = done_here / elapsed if elapsed > 0 else 0.0
        eta = (total - tokens) / rate if rate > 0 else None
        pct = 100 * tokens / total if total else 100.0
        parts = [f"tokens {tokens:,}/{total:,} ({pct:.0f}%)", f"{rate / 1000:.1f}k tok/s"]
        stats = _stats(trainers, loss=True)
        if stats:
            parts.append(stats)
        parts.append("ETA " + ("?" if eta is None else _duration(eta)))
        return "  ".join(parts)

    def finish(self, task: TaskID) -> None:
        if self.log_lines:
            elapsed = self.clock() - self.t0
            done = (self.total - self.start) * self.batch_tokens
            rate = done / elapsed if elapsed > 0 else 0.0
            self.console.print(f"trained {done:,} tokens in {_duration(elapsed)} "
                               f"({rate / 1000:.1f}k tok/s)", soft_wrap=True)
            return
        self.bar.stop()

    def note(self, text: str) -> None:
        """One line about jobs elsewhere (a cluster launcher's submissions and results)."""
        self.console.print(text)


def _stats(trainers: Sequence[_Trainer], loss: bool = False) -> str:
    """The range over the group's SAEs of their latest curve point: L0, MSE (loss), dead %."""
    latest = [tr.curve[-1] for tr in trainers if tr.curve]
    if not latest:
        return ""

    def span(key: str, form: str, scale: float = 1.0) -> str:
        lo, hi = (scale * min(p[key] for p in latest), scale * max(p[key] for p in latest))
        return f"{lo:{form}}" if f"{lo:{form}}" == f"{hi:{form}}" else f"{lo:{form}}-{hi:{form}}"

    text = f"L0 {span('l0', '.0f')}  mse {span('mse', '.3g')}"
    if loss:
        text = f"loss {span('loss', '.3g')}  {text}  dead {span('dead_fraction', '.1f', 100)}%"
    return text


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
