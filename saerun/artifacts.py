"""On-disk formats of a run's folder, all written atomically (temp file, fsync, rename).

    <registry>/runs/<run_id>/
        run.yaml                   the standalone, fully resolved spec of this one run
        cfg.json                   SAELens-loadable config (normalisation folded in)
        sae_weights.safetensors    W_enc, b_enc, W_dec, b_dec
        sparsity.safetensors       log10 feature density on the eval tokens ("sparsity")
        checkpoint.safetensors     resumable training state (+ checkpoint.json)

Nothing here is ever loaded with pickle: tensors go through safetensors, the rest is JSON.
"""

from __future__ import annotations

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

    d_in: int
    d_sae: int

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


def write_sae(
    folder: Path, sae: ExportableSAE, metadata: dict[str, Any], density: torch.Tensor | None
) -> None:
    """SAELens layout: cfg.json + sae_weights.safetensors (+ sparsity.safetensors)."""
    cfg = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        # Normalisation is folded into the weights, so the SAE takes raw activations.
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        **sae.saelens_cfg(),
    }
    if "hook_name_out" in metadata:  # a transcoder's target, also where pre-6.0 readers look
        cfg["hook_name_out"] = metadata["hook_name_out"]
    weights = sae.export_tensors()  # SAELens names (e.g. gated b_gate, jumprelu threshold)
    write_tensors(folder / "sae_weights.safetensors", weights)
    if density is not None:
        log_density = density.clamp_min(1e-10).log10()
        write_tensors(folder / "sparsity.safetensors", {"sparsity": log_density})
    write_json(folder / "cfg.json", cfg)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


# -- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensors first, then the JSON that points at them: a checkpoint counts only once its JSON
    (which names the step) exists, so a kill between the two leaves the previous one valid."""
    step = meta["step"]
    write_tensors(folder / f"checkpoint-{step}.safetensors", tensors)
    write_json(folder / "checkpoint.json", meta)
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != f"checkpoint-{step}.safetensors":
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    meta_path = folder / "checkpoint.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(folder / f"checkpoint-{meta['step']}.safetensors"))
    return tensors, meta


def remove_checkpoint(folder: Path) -> None:
    (folder / "checkpoint.json").unlink(missing_ok=True)
    for old in folder.glob("checkpoint-*.safetensors"):
        old.unlink(missing_ok=True)
