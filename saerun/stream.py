"""A group's shuffled training stream: where it stands, how it resumes, and its prefetching.

    stream = ActivationStream(lm, data, hooks, batch_tokens, device)
    stream.resume(load_snapshot(folder, step))   # a resumed job (or stream.skip(step))
    for batch in prefetch(stream): ...           # the next LM batch computed while SAEs step
    save_snapshot(folder, stream.snapshot(step)) # beside the step's checkpoints

A resumed stream gives the very batches the uninterrupted one would have. Regenerating it and
dropping what was trained on (`skip`) runs the model again over every batch before the step, a
cost that grows with the step: under a short time limit a requeued job spends its attempt
catching up and never trains. A `Snapshot` holds what the stream cannot get back cheaply: the
rows of the shuffle buffer not handed out yet, the shuffle generator's state, how many
language-model batches its source consumed, the packer's state after the last of them
(activations.PackerState) and the outlier positions dropped so far. Resumed from one, the
stream runs the model over what comes after the snapshot, nothing else (the norm estimate and
outlier limit measured on the stream head come from the checkpoints: execute.py); the batches
are bit-identical either way.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saerun.activations import LanguageModel, PackerState, StreamPosition, train_activations
from saerun.artifacts import tensor_sha256, write_json, write_tensors
from saerun.spec import DataConfig

KEPT_SNAPSHOTS = 8  # in memory: the prefetching producer runs at most depth + 2 batches ahead


@dataclass
class Snapshot:
    """A stream right after `produced` batches were handed out."""

    produced: int
    pending: dict[str, Tensor]  # hook -> this round's rows not handed out yet, in order
    pending_out: int  # how many of them this round still hands out; the rest is the buffer
    generator: Tensor | None  # the shuffle generator after this round's permutation
    batches: int  # language-model batches the source consumed
    packer: PackerState | None  # the packer after the last of them (None: inside the head)
    outliers: int  # outlier positions the source dropped so far


class ActivationStream:
    """Shuffled training activations for every hook of a group, from ONE forward per batch.

    Yields {hook: [batch_tokens, d]} (float32), special-token positions dropped, mixed through a
    buffer of data.shuffle_buffer_tokens vectors (one permutation shared by every hook so rows
    stay aligned: a transcoder's IN and OUT rows are the same tokens); 0: no shuffling, in the
    model's order. Stops after data.train_tokens // batch_tokens batches.
    """

    def __init__(self, lm: LanguageModel, data: DataConfig, hook_names: list[str],
                 batch_tokens: int, device: str = "cpu") -> None:
        self.lm, self.data, self.hooks = lm, data, list(hook_names)
        self.batch_tokens, self.device = batch_tokens, device
        self.n_batches = data.train_tokens // batch_tokens
        self._skip = 0
        self._resume: Snapshot | None = None
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self.position = StreamPosition()
        # Outlier positions the stream dropped (from its start, a resumed one included), read
        # ahead by the shuffle buffer.
        self.seen: dict[str, int] = {"outlier_positions": 0}

    def skip(self, n_batches: int) -> None:
        """Resume without a snapshot: regenerate the stream and drop its first n batches."""
        self._skip = n_batches

    def resume(self, snapshot: Snapshot) -> None:
        """Resume from a snapshot: the next batch is the one after it."""
        self._resume = snapshot
        self.seen["outlier_positions"] = snapshot.outliers
        self.position = StreamPosition(snapshot.batches, snapshot.packer)

    def snapshot(self, produced: int) -> Snapshot | None:
        """The stream right after batch `produced` - 1 (None once it is too far behind)."""
        return self._snapshots.get(produced)

    def _record(self, produced: int, pending: dict[str, Tensor], pending_out: int,
                generator: Tensor | None) -> None:
        self._snapshots[produced] = Snapshot(
            produced, pending, pending_out, generator, self.position.batches,
            self.position.packer, self.seen["outlier_positions"])
        while len(self._snapshots) > KEPT_SNAPSHOTS:
            self._snapshots.popitem(last=False)

    def _vectors(self) -> Iterator[dict[str, Tensor]]:
        r = self._resume
        source = train_activations(
            self.lm, self.data, self.hooks, self.seen, start=r.batches if r else 0,
            resume=r.packer if r else None, position=self.position)
        for acts in source:
            yield {h: a.float() for h, a in acts.items()}

    def _pending(self) -> dict[str, Tensor]:
        r = cast(Snapshot, self._resume)
        return {h: r.pending[h].to(self.lm.device).float() for h in self.hooks}

    def _hand_out(self, rows: dict[str, Tensor], n_out: int, produced: int,
                  generator: Tensor | None) -> Generator[dict[str, Tensor], None, int]:
        """rows[:n_out] a batch at a time, each batch's snapshot recorded before it goes out;
        returns the count of batches produced."""
        bt = self.batch_tokens
        for start in range(0, n_out, bt):
            if produced >= self.n_batches:
                break
            self._record(produced + 1, {h: v[start + bt:] for h, v in rows.items()},
                         n_out - start - bt, generator)
            if produced >= self._skip:
                yield {h: rows[h][start:start + bt].to(self.device) for h in self.hooks}
            produced += 1
        return produced

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.data.shuffle_buffer_tokens == 0:
            yield from self._in_order()
            return
        g = torch.Generator().manual_seed(self.data.shuffle_seed)
        capacity = max(self.data.shuffle_buffer_tokens, 2 * self.batch_tokens)
        buffer: dict[str, Tensor] | None = None
        produced = 0
        r = self._resume
        if r is not None:  # finish the round the snapshot was taken in
            g.set_state(cast(Tensor, r.generator))
            pending = self._pending()
            produced = yield from self._hand_out(pending, r.pending_out, r.produced,
                                                 r.generator)
            buffer = {h: v[r.pending_out:] for h, v in pending.items()}
        source = self._vectors()
        while produced < self.n_batches:
            # Refill to capacity, shuffle, emit the first half; the rest mixes with new data.
            filled = 0 if buffer is None else buffer[self.hooks[0]].shape[0]
            parts: list[dict[str, Tensor]] = [buffer] if buffer is not None else []
            while filled < capacity:
                chunk = next(source)
                parts.append(chunk)
                filled += chunk[self.hooks[0]].shape[0]
            merged = {h: torch.cat([p[h] for p in parts]) for h in self.hooks}
            perm = torch.randperm(filled, generator=g).to(merged[self.hooks[0]].device)
            merged = {h: v[perm] for h, v in merged.items()}
            n_out = max(self.batch_tokens, (filled // 2) // self.batch_tokens * self.batch_tokens)
            produced = yield from self._hand_out(merged, n_out, produced, g.get_state())
            buffer = {h: v[n_out:] for h, v in merged.items()}

    def _in_order(self) -> Iterator[dict[str, Tensor]]:
        """data.shuffle_buffer_tokens 0: the batches in the order the model produced them."""
        parts: list[dict[str, Tensor]] = []
        filled = produced = 0
        if self._resume is not None:
            parts, produced = [self._pending()], self._resume.produced
            filled = parts[0][self.hooks[0]].shape[0]
        source = self._vectors()
        bt = self.batch_tokens
        while produced < self.n_batches:
            while filled < bt:
                chunk = next(source)
                parts.append(chunk)
                filled += chunk[self.hooks[0]].shape[0]
            merged = {h: torch.cat([p[h] for p in parts]) for h in self.hooks}
            rest = {h: v[bt:] for h, v in merged.items()}
            self._record(produced + 1, rest, 0, None)
            if produced >= self._skip:
                yield {h: merged[h][:bt].to(self.device) for h in self.hooks}
            produced += 1
            parts = [rest]
            filled -= bt


# -- snapshot files: stream-<step>.safetensors + stream-<step>.json beside the checkpoints -------


def save_snapshot(folder: Path, snap: Snapshot, dtype: torch.dtype, keep: int = 2) -> None:
    """Tensors first, then the JSON with their checksums (a snapshot counts once its JSON
    exists); then all but the newest `keep` snapshots of the folder are removed. The pending
    rows are stored in the model's dtype, which holds them exactly (they were cast up from it)."""
    tensors = {f"pending.{h}": v.to(dtype) for h, v in snap.pending.items()}
    if snap.generator is not None:
        tensors["generator"] = snap.generator
    if snap.packer is not None:
        tensors["remainder"] = torch.tensor(snap.packer.remainder, dtype=torch.int64)
    meta = {
        "step": snap.produced, "pending_out": snap.pending_out, "batches": snap.batches,
        "outliers": snap.outliers, "has_generator": snap.generator is not None,
        "packer": None if snap.packer is None else
        {"epoch": snap.packer.epoch, "documents": snap.packer.documents},
        "checksums": {k: tensor_sha256(v) for k, v in sorted(tensors.items())},
    }
    write_tensors(folder / f"stream-{snap.produced}.safetensors", tensors)
    write_json(folder / f"stream-{snap.produced}.json", meta)
    for old in snapshot_steps(folder)[max(1, keep):]:
        (folder / f"stream-{old}.json").unlink(missing_ok=True)
        (folder / f"stream-{old}.safetensors").unlink(missing_ok=True)


def snapshot_steps(folder: Path) -> list[int]:
    """Steps with a snapshot JSON in the folder, newest first."""
    found = (re.fullmatch(r"stream-(\d+)\.json", p.name) for p in folder.glob("stream-*"))
    return sorted((int(m[1]) for m in found if m), reverse=True)


def remove_snapshots(folder: Path) -> None:
    for path in folder.glob("stream-*"):
        if re.fullmatch(r"stream-\d+\.(json|safetensors)", path.name):
            path.unlink(missing_ok=True)


def resume_stream(stream: ActivationStream, step: int, folders: list[Path]) -> str | None:
    """Resume the stream at `step` from its snapshot in one of the group's run folders. Without
    a usable one it is regenerated from the start (bit-identical, but the model runs again
    over every batch before the step); then the returned note says why."""
    reasons = []
    for folder in folders:
        snap, why = load_snapshot(folder, step, stream.hooks)
        if snap is not None:
            stream.resume(snap)
            return None
        if why is not None and not why.startswith("no stream snapshot"):
            reasons.append(f"{why} in {folder.name}")
    stream.skip(step)
    why = "; ".join(reasons) or f"no stream snapshot at step {step}"
    return f"{why}: regenerating the training stream up to step {step}"


def load_snapshot(folder: Path, step: int, hooks: list[str]
                  ) -> tuple[Snapshot | None, str | None]:
    """(the snapshot at `step`, None) or (None, why not: absent, unreadable, failing its
    checksum, or of other hooks)."""
    meta_path = folder / f"stream-{step}.json"
    if not meta_path.exists():
        return None, f"no stream snapshot at step {step}"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(folder / f"stream-{step}.safetensors"))
    except (OSError, ValueError, SafetensorError) as err:
        return None, f"stream snapshot at step {step} unreadable ({type(err).__name__}: {err})"
    actual = {k: tensor_sha256(v) for k, v in tensors.items()}
    if actual != meta.get("checksums"):
        return None, f"stream snapshot at step {step} fails its checksum"
    pending = {k.removeprefix("pending."): v for k, v in tensors.items()
               if k.startswith("pending.")}
    if sorted(pending) != sorted(hooks):
        return None, f"stream snapshot at step {step} holds hooks {sorted(pending)}, not {hooks}"
    packer = meta["packer"]
    return Snapshot(
        produced=int(meta["step"]),
        pending=pending,
        pending_out=int(meta["pending_out"]),
        generator=tensors["generator"] if meta["has_generator"] else None,
        batches=int(meta["batches"]),
        packer=None if packer is None else PackerState(
            int(packer["epoch"]), int(packer["documents"]),
            tuple(int(t) for t in tensors["remainder"].tolist())),
        outliers=int(meta["outliers"]),
    ), None


_DONE = object()  # the producer's end-of-stream marker


def prefetch(batches: Iterable[dict[str, Tensor]], depth: int = 2
             ) -> Generator[dict[str, Tensor], None, None]:
    """`batches`, produced ahead by a background thread into a queue of `depth` batches, so the
    next language-model forward runs while the SAEs step (torch releases the GIL in its ops).

    The same batches in the same order: the producer runs the very iterator the consumer would
    have, so the result is bit-identical. An exception in the producer is raised here, in the
    consumer, at the batch where it happened; when the consumer stops early (a break, an error,
    the generator closed) the producer is told to stop and joined, so no thread outlives the
    loop. On CUDA the producer works on a side stream; each batch waits for it on the
    consumer's stream before it is used."""
    items: queue.Queue[tuple[dict[str, Tensor] | object, torch.cuda.Event | None]] = \
        queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []
    cuda = torch.cuda.is_available()

    def put(item: dict[str, Tensor] | object, event: torch.cuda.Event | None) -> bool:
        while not stop.is_set():
            try:
                items.put((item, event), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        side = torch.cuda.Stream() if cuda else None
        source = iter(batches)
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in source:
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not put(batch, event):
                        return
        except BaseException as err:  # handed to the consumer, never swallowed
            failure.append(err)
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator left mid-way is closed on its own thread
                close()
        put(_DONE, None)

    thread = threading.Thread(target=produce, name="saerun-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, event = items.get()
            if item is _DONE:
                if failure:
                    raise failure[0]
                return
            batch = cast("dict[str, Tensor]", item)
            if event is not None:  # the side stream's work on this batch is done before use
                current = torch.cuda.current_stream()
                current.wait_event(event)
                for t in batch.values():
                    t.record_stream(current)  # its memory is not reused while in use here
            yield batch
    finally:
        stop.set()
        thread.join()
