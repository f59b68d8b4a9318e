"""Model names -> where the weights are and how wide each hook is, without loading weights.

No transformer-lens import here (that lives in activations.py): the planner needs widths and
layer counts offline, from a model's config.json or from a small table of well-known models.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from saerun import realmodel
from saerun.errors import SaerunError

EMBEDDED_MODELS = {
    "saerun/tiny-stdlib": Path(__file__).resolve().parent / "embedded" / "tiny-stdlib",
}
DEFAULT_MODEL = "saerun/tiny-stdlib"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # local directory, or the hub name
    d_model: int
    d_mlp: int
    n_layers: int
    n_ctx: int
    embedded: bool = False
    d_attn: int | None = None  # n_heads * d_head, the width of attn.hook_z; None: d_model
    # What the memory model (saerun/memory.py) needs besides the widths; None: not known.
    n_heads: int | None = None
    d_vocab: int | None = None
    family: str = "gpt2"  # how the weights are laid out (see FAMILIES)
    n_params: int | None = None  # exact count (a local model's safetensors header); None: formula


# Weight layout by family: (matrices per MLP: 2, or 3 for a gated MLP; learned position
# embeddings; unembedding tied to the embedding).
FAMILIES = {
    "gpt2": (2, True, True),
    "neox": (2, False, False),
    "gemma": (3, False, True),
    "llama": (3, False, False),
}
_FAMILY_OF_TYPE = {"gpt2": "gpt2", "gpt_neox": "neox", "gemma": "gemma", "gemma2": "gemma",
                   "gemma3": "gemma", "llama": "llama", "mistral": "llama", "qwen2": "llama",
                   "qwen3": "llama"}


# Published configs of models the paper recipes use, so `saerun plan` works offline on them:
# (d_model, d_mlp, n_layers, n_ctx, n_heads, d_head, d_vocab, family). n_heads * d_head is the
# width of attn.hook_z, which is not d_model for Gemma (16 x 256 = 4096 vs 3072 for 7B; 8 x 256
# = 2048 vs 2304 for Gemma 2 2B). Numbers from each model's config.json (hidden_size,
# intermediate_size, num_hidden_layers, max_position_embeddings, num_attention_heads, head_dim,
# vocab_size, model_type).
KNOWN_MODELS = {
    "gpt2": (768, 3072, 12, 1024, 12, 64, 50257, "gpt2"),
    "gpt2-small": (768, 3072, 12, 1024, 12, 64, 50257, "gpt2"),
    "gpt2-medium": (1024, 4096, 24, 1024, 16, 64, 50257, "gpt2"),
    "gelu-1l": (512, 2048, 1, 1024, 8, 64, 48262, "gpt2"),
    "NeelNanda/GELU_1L512W_C4_Code": (512, 2048, 1, 1024, 8, 64, 48262, "gpt2"),
    "EleutherAI/pythia-70m-deduped": (512, 2048, 6, 2048, 8, 64, 50304, "neox"),
    "EleutherAI/pythia-160m-deduped": (768, 3072, 12, 2048, 12, 64, 50304, "neox"),
    "EleutherAI/pythia-2.8b": (2560, 10240, 32, 2048, 32, 80, 50304, "neox"),
    "EleutherAI/pythia-2.8b-deduped": (2560, 10240, 32, 2048, 32, 80, 50304, "neox"),
    "google/gemma-2-2b": (2304, 9216, 26, 8192, 8, 256, 256000, "gemma"),
    "google/gemma-7b": (3072, 24576, 28, 8192, 16, 256, 256000, "gemma"),
    # The real-model tier (realmodel.py), so its specs plan before the model is built.
    "saerun/smollm2-135m": (576, 1536, 30, 8192, 9, 64, 49152, "llama"),
}


def known_dims(name: str) -> ModelInfo | None:
    """A well-known model's dims from the table; None for any other (the embedded model too:
    its own config.json is at hand)."""
    if name not in KNOWN_MODELS:
        return None
    d_model, d_mlp, n_layers, n_ctx, n_heads, d_head, d_vocab, family = KNOWN_MODELS[name]
    return ModelInfo(name, name, d_model, d_mlp, n_layers, n_ctx, d_attn=n_heads * d_head,
                     n_heads=n_heads, d_vocab=d_vocab, family=family)


def lm_params(info: ModelInfo) -> int:
    """The language model's parameter count: exact where a local safetensors header gave it,
    else from the config by its family's layout (norms and biases left out: < 0.1%; grouped
    key/value heads counted as full heads: an overestimate)."""
    if info.n_params is not None:
        return info.n_params
    mlp_mats, learned_pos, tied = FAMILIES.get(info.family, FAMILIES["gpt2"])
    d, d_attn, vocab = info.d_model, info.d_attn or info.d_model, info.d_vocab or 0
    per_layer = 4 * d * d_attn + mlp_mats * d * info.d_mlp
    embed = vocab * d * (1 if tied else 2) + (info.n_ctx * d if learned_pos else 0)
    return info.n_layers * per_layer + embed


def _safetensors_params(folder: Path) -> int | None:
    """Parameter count from the headers of a local model's *.safetensors files (a small JSON
    read, no weights); None when there are none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for n in entry["shape"]:
                    count *= int(n)
                total += count
    return total


def _from_config(name: str, source: str, config: dict, embedded: bool) -> ModelInfo:
    def first(*keys: str, default: int | None = None) -> int:
        for key in keys:
            if config.get(key) is not None:
                return int(config[key])
        if default is None:
            raise SaerunError(f"cannot read {keys[0]} from the config of model {name!r}")
        return default

    d_model = first("n_embd", "hidden_size", "d_model")
    local = Path(source)
    return ModelInfo(
        name=name,
        source=source,
        d_model=d_model,
        d_mlp=first("n_inner", "intermediate_size", "d_mlp", default=4 * d_model),
        n_layers=first("n_layer", "num_hidden_layers", "n_layers"),
        n_ctx=first("n_positions", "max_position_embeddings", "n_ctx", default=2048),
        embedded=embedded,
        # Gemma's heads are wider than d_model / n_heads: attn.hook_z is n_heads * head_dim.
        d_attn=first("num_attention_heads", "n_head", "n_heads") * int(config["head_dim"])
        if config.get("head_dim") is not None else None,
        n_heads=first("num_attention_heads", "n_head", "n_heads", default=0) or None,
        d_vocab=first("vocab_size", "d_vocab", default=0) or None,
        family=_FAMILY_OF_TYPE.get(str(config.get("model_type")), "gpt2"),
        n_params=_safetensors_params(local) if local.is_dir() else None,
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def model_info(name: str) -> ModelInfo:
    """Find a model by name: embedded, a real model built from a wheel (realmodel.py), a local
    directory, the HF cache, or the hub."""
    if name in EMBEDDED_MODELS:
        path = EMBEDDED_MODELS[name]
        return _from_config(name, str(path), json.loads((path / "config.json").read_text()), True)
    if name in realmodel.REAL_MODELS:
        path = realmodel.ready_folder(name)
        return _from_config(name, str(path), json.loads((path / "config.json").read_text()), False)
    try:
        path = Path(name).expanduser()
        local = path.is_dir()
    except RuntimeError:  # "~someone/..." for a user this machine does not know: no directory
        local = False
    except OSError as err:  # a name too long to be a path, a folder we may not look into
        raise SaerunError(f"cannot look for a model directory {name!r}: {err.strerror}") from None
    if local:
        if not (path / "config.json").is_file():
            raise SaerunError(f"model directory {name!r} has no config.json")
        return _from_config(name, str(path), json.loads((path / "config.json").read_text()), False)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:  # e.g. spaces, "a//b", > 96 characters: no hub name looks so
        raise SaerunError(
            f"model {name!r} is neither a local model directory nor a valid Hugging Face name",
            hint=f"use the embedded default '{DEFAULT_MODEL}', a local model directory or a hub "
            "name such as 'gpt2'",
        ) from None
    if isinstance(cached, str):
        return _from_config(name, name, json.loads(Path(cached).read_text()), False)
    from saerun.data import hub_unreachable_reason

    if _offline() or hub_unreachable_reason() is not None:
        raise SaerunError(
            f"model {name!r} is not available offline (no network and not in the local Hugging "
            "Face cache)",
            hint=f"use the embedded default '{DEFAULT_MODEL}' or a local model directory",
        )
    from huggingface_hub import hf_hub_download

    config_path = hf_hub_download(name, "config.json")
    return _from_config(name, name, json.loads(Path(config_path).read_text()), False)


# transformer-lens hook names (our vocabulary); each is checked against TransformerBridge in
# tests/test_activations.py (and tests/test_realmodel.py for a Llama).
_PER_LAYER = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
              "hook_mlp_in", "hook_mlp_out", "attn.hook_z", "mlp.hook_post")
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_names(info: ModelInfo) -> list[str]:
    """The hooks that carry an activation on this model, from its config alone. The bridge
    registers `hook_pos_embed` on every model, but only a model with learned position
    embeddings (GPT-2) ever calls it: on a rotary model (Llama, NeoX, Gemma) it stays empty and
    a run on it would fail at its first batch, so the planner refuses it instead."""
    learned_pos = FAMILIES.get(info.family, FAMILIES["gpt2"])[1]
    names = ["hook_embed", "hook_pos_embed"] if learned_pos else ["hook_embed"]
    for i in range(info.n_layers):
        names += [f"blocks.{i}.{h}" for h in _PER_LAYER]
    return names


def hook_width(info: ModelInfo, hook: str) -> int:
    if hook.endswith("mlp.hook_post"):
        return info.d_mlp
    if hook.endswith("attn.hook_z"):  # [n_heads, d_head], flattened (activations.py)
        return info.d_attn or info.d_model
    return info.d_model


def layer_of(hook: str) -> int | None:
    """The block a hook lives in (None for embeddings): the model runs only up to it."""
    m = _LAYER.match(hook)
    return int(m.group(1)) if m else None
