"""An on-disk, content-addressed cache of training activations, shared by every spec.

Opt-in: `saerun SPEC --activation-cache DIR` (or SAERUN_ACTIVATION_CACHE=DIR, which the flag
sets, so local worker processes and Slurm jobs inherit it). It changes no result, only where
the activations come from, so it is not part of the spec or of any run id.

One stream of one site has the key sha256(format version, the model's identity (a hub name, or
the content of a local model folder), its dtype and device type, the numerics mode, the hook,
the data's fingerprint (source bytes or hub revision, column, split, eval fraction), the
context size, the sequences per forward pass, whether special tokens are dropped). Under
DIR/<key>/ sit meta.json (those ingredients, for people) and one safetensors file per
language-model batch of the train stream, numbered in stream order, holding that batch's
activations at the kept positions, in the model's dtype. A later spec with the same stream
reads them instead of running the model; a missing batch is computed and written atomically,
so a cache fills as runs go and a killed run leaves only whole files. Shuffling happens after
this point, so the shuffle seed and batch size are not in the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saerun.artifacts import write_tensors, write_text

ENV = "SAERUN_ACTIVATION_CACHE"
FORMAT = 1


def cache_root() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value).expanduser() if value else None


def model_identity(name: str, source: str) -> str:
    """A hub name as it is; a local folder by the sha256 of its files' contents (so a copy
    elsewhere hits the cache and an edited checkpoint misses it). Each file's hash comes from
    `data.file_sha256`, cached while its size and mtime stay the same."""
    from saerun.data import file_sha256

    folder = Path(source)
    if not folder.is_dir():
        return name
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder)}\0{file_sha256(path)}\0".encode())
    return "sha256:" + h.hexdigest()


class ActivationCache:
    """The cached batches of one group's train stream, one folder per hook."""

    def __init__(self, root: Path, ingredients: dict[str, str | int | bool],
                 hooks: list[str]) -> None:
        self.hooks = list(hooks)
        self.folders: dict[str, Path] = {}
        for hook in self.hooks:
            meta = {"format": FORMAT, **ingredients, "hook": hook}
            key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
            folder = root / key
            if not (folder / "meta.json").exists():
                write_text(folder / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
            self.folders[hook] = folder

    def _path(self, hook: str, index: int) -> Path:
        return self.folders[hook] / f"{index:07d}.safetensors"

    def get(self, index: int) -> dict[str, Tensor] | None:
        """Batch `index` of the stream for every hook, or None if any hook lacks it (or its
        file is unreadable: then it is computed and written again)."""
        out = {}
        for hook in self.hooks:
            path = self._path(hook, index)
            if not path.exists():
                return None
            try:
                out[hook] = load_file(str(path))["acts"]
            except (SafetensorError, OSError, KeyError):
                return None
        return out

    def put(self, index: int, acts: dict[str, Tensor]) -> None:
        for hook, value in acts.items():
            path = self._path(hook, index)
            if not path.exists():
                write_tensors(path, {"acts": value})
