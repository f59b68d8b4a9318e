"""On-disk formats of a run's folder, all written atomically (temp file, fsync, rename).

    <registry>/runs/<run_id>/
        run.yaml                   the standalone, fully resolved spec of this one run
        cfg.json                   SAELens-loadable config (normalisation folded in)
        sae_weights.safetensors    W_enc, b_enc, W_dec, b_dec
        sparsity.safetensors       log10 feature density on the eval tokens ("sparsity")
        checkpoint-<step>.*        the last train.keep_checkpoints training states, each with
                                   its tensors' sha256 (+ checkpoint.json, the newest)

Nothing here is ever loaded with pickle: tensors go through safetensors, the rest is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saerun import faults


class ExportableSAE(Protocol):
    """What `write_sae` reads of an SAE (`sae.base.SAE` has it; this layer sits below sae/)."""

    def saelens_cfg(self) -> dict[str, Any]: ...

    def export_tensors(self) -> dict[str, torch.Tensor]: ...


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through `write(tmp_path)`, fsync, then rename over `path`: readers see the old file
    or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if path.name.startswith("checkpoint"):
            faults.point("checkpoint")  # written, not yet in place
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: _save(tensors, p))


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors reports I/O failures (disk full, file too large) as its own error type with
    the OS error number in the text: give them back as the OSError they are."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as err:
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, f"{os.strerror(code)} (writing {path.name})") from err


def write_sae(folder: Path, sae: ExportableSAE, cfg: dict[str, Any],
              density: torch.Tensor | None) -> None:
    """SAELens layout: cfg.json + sae_weights.safetensors (+ sparsity.safetensors). cfg.json is
    `cfg` (the run's part, `saelens.export_cfg`) with the architecture's keys over it."""
    weights = sae.export_tensors()  # SAELens names (e.g. gated b_gate, jumprelu threshold)
    write_tensors(folder / "sae_weights.safetensors", weights)
    if density is not None:
        log_density = density.clamp_min(1e-10).log10()
        write_tensors(folder / "sparsity.safetensors", {"sparsity": log_density})
    write_json(folder / "cfg.json", {**cfg, **sae.saelens_cfg()})


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


# -- checkpoints -------------------------------------------------------------------------------
#
#     checkpoint-<step>.safetensors   the training state at that step
#     checkpoint-<step>.json          its metadata, with the sha256 of every tensor's bytes
#     checkpoint.json                 the newest one's metadata (written last: the commit point)
#
# The last `keep` checkpoints are kept (train.keep_checkpoints); loading takes the newest whose
# tensors match their checksums and says why it passed over any newer one.


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as stored (contiguous, on the CPU), with its dtype and shape."""
    t = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep: int = 2) -> None:
    """Tensors first, then the JSON that describes them (with their checksums), then
    checkpoint.json: a checkpoint counts only once its JSON exists, so a kill between the writes
    leaves the previous one valid. Then all but the newest `keep` checkpoints are removed."""
    step = int(meta["step"])
    meta = {**meta, "checksums": {k: tensor_sha256(v) for k, v in sorted(tensors.items())}}
    write_tensors(folder / f"checkpoint-{step}.safetensors", tensors)
    write_json(folder / f"checkpoint-{step}.json", meta)
    write_json(folder / "checkpoint.json", meta)
    for old in _checkpoint_steps(folder)[max(1, keep):]:
        (folder / f"checkpoint-{old}.json").unlink(missing_ok=True)
        (folder / f"checkpoint-{old}.safetensors").unlink(missing_ok=True)
    for stray in folder.glob("checkpoint-*.safetensors"):  # a kill mid-save left no JSON for it
        if not (folder / f"{stray.name[: -len('.safetensors')]}.json").exists():
            stray.unlink(missing_ok=True)


def _checkpoint_steps(folder: Path) -> list[int]:
    """Steps that have a checkpoint JSON, newest first."""
    found = (re.fullmatch(r"checkpoint-(\d+)\.json", p.name) for p in folder.glob("checkpoint-*"))
    return sorted((int(m[1]) for m in found if m), reverse=True)


def load_checkpoint(folder: Path, notes: list[str] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest checkpoint whose tensors match their checksums; None if there is none.

    A checkpoint that cannot be read or does not match (a truncated write, a bad disk) is passed
    over for the previous one, never trained from; why is appended to `notes`. A checkpoint of
    an older saerun (checkpoint.json alone, no checksums) is taken as it is."""
    candidates: list[tuple[int, Path]] = [(s, folder / f"checkpoint-{s}.json")
                                          for s in _checkpoint_steps(folder)]
    if not candidates and (folder / "checkpoint.json").exists():
        candidates = [(-1, folder / "checkpoint.json")]
    for step, meta_path in candidates:
        problem = None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(folder / f"checkpoint-{meta['step']}.safetensors"))
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            problem = f"unreadable ({type(err).__name__}: {err})"
        else:
            expected = meta.get("checksums")
            if expected is not None:
                actual = {k: tensor_sha256(v) for k, v in tensors.items()}
                bad = sorted(k for k in expected.keys() | actual.keys()
                             if expected.get(k) != actual.get(k))
                if bad:
                    problem = f"checksum mismatch in {', '.join(bad[:3])}" + (
                        f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        if problem is None:
            return tensors, meta
        if notes is not None:
            notes.append(f"checkpoint at step {step} in {folder.name} is {problem}: passed over")
    return None


def checkpoint_meta(folder: Path) -> dict[str, Any] | None:
    """The newest checkpoint's metadata (checkpoint.json alone, no tensor read: its step and
    tokens, its training time so far), or None without a readable one; what `saerun status` and
    `saerun plan` read of a run not done yet. The tensors are checked when a run resumes
    (`load_checkpoint`), not here."""
    try:
        meta = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("tokens"), int) else None


def remove_checkpoint(folder: Path) -> None:
    (folder / "checkpoint.json").unlink(missing_ok=True)
    for old in folder.glob("checkpoint-*"):
        old.unlink(missing_ok=True)
