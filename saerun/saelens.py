"""SAELens's folder format, both ways: the cfg.json saerun writes at export, and reading a folder
that SAELens (or anyone writing its layout) made, to evaluate it (`sae: {from_pretrained: ...}`).

Written for SAELens 6.x: cfg.json carries `metadata.sae_lens_version`, so SAELens's loader keeps
`metadata` as written (a config without it, or older than 6.0, is rebuilt from top-level keys
only, which loses hook_name and model_name: `HookedSAETransformer.add_sae` then attaches
nothing).

Reading checks every cfg.json key: an architecture, option or tensor saerun cannot honour is a
SaerunError naming it, never a silent mis-load. `read_folder` reads the JSON and hashes the
weights file without loading it (the planner calls it, through `planned_values`); `load_sae`
(`imported.py`) reads the weights (safetensors only) into `SAELensSAE`, which computes what
SAELens's inference classes compute. This module imports no torch: planning stays light.

Transcoders (transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder) read
the same way: d_out, W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] for the skip
kinds; the spec's site.hook_name_out must be the target (`metadata.hook_name_out` when the
folder records one). As in SAELens 6.x, a transcoder never subtracts b_dec from its input
(apply_b_dec_to_input must be false), scales only its input for expected_average_only_in (its
decode undoes nothing) and adds the skip term x W_skip^T on the raw input.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from saerun.errors import SaerunError, SpecError, shown
from saerun.spec import RunConfig
from saerun.spec.architectures import ImportedSAEConfig
from saerun.spec.derive import Derived

# The SAELens release whose format saerun writes (PEP 440; >= 6.0 keeps `metadata`), the one
# bench/saelens_check.py loads the exports with.
SAELENS_VERSION = "6.54.12"
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SCALER_FILENAME = "activation_scaler.json"  # SAELens's trainer writes it in checkpoints

# SAELens architecture -> the tensors of sae_weights.safetensors ([d_in/d_sae] shape tags).
TENSORS: dict[str, dict[str, tuple[str, ...]]] = {
    "standard": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"),
                 "b_dec": ("d_in",)},
    "gated": {"W_enc": ("d_in", "d_sae"), "b_gate": ("d_sae",), "r_mag": ("d_sae",),
              "b_mag": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)},
    "jumprelu": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"),
                 "b_dec": ("d_in",), "threshold": ("d_sae",)},
    "topk": {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"),
             "b_dec": ("d_in",)},
}
_TRANSCODER = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"),
               "b_dec": ("d_out",)}
_SKIP = {"W_skip": ("d_out", "d_in")}
_THRESHOLD = {"threshold": ("d_sae",)}
TENSORS.update({"transcoder": _TRANSCODER, "skip_transcoder": {**_TRANSCODER, **_SKIP},
                "jumprelu_transcoder": {**_TRANSCODER, **_THRESHOLD},
                "jumprelu_skip_transcoder": {**_TRANSCODER, **_THRESHOLD, **_SKIP}})
TRANSCODER_KINDS = ("transcoder", "skip_transcoder", "jumprelu_transcoder",
                    "jumprelu_skip_transcoder")
# cfg.json keys every architecture has, and each architecture's own.
COMMON_KEYS = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
               "normalize_activations", "reshape_activations", "metadata"}
OPTION_KEYS: dict[str, set[str]] = {"standard": set(), "gated": set(), "jumprelu": set(),
                                    "topk": {"k", "rescale_acts_by_decoder_norm"},
                                    **{kind: {"d_out"} for kind in TRANSCODER_KINDS}}
DTYPES = ("float32", "float64", "float16", "bfloat16")  # evaluated in float32 whatever they are
NORMALIZATIONS = ("none", "expected_average_only_in")
RESHAPES = ("none", "hook_z")


# -- writing ---------------------------------------------------------------------------------


class ExportedSAE(Protocol):
    """What `export_cfg` reads of a trained SAE (`sae.base.SAE` has it)."""

    d_in: int
    d_sae: int


def export_cfg(sae: ExportedSAE, config: RunConfig, run_id: str, numerics_mode: str,
               norm_scale: float, metrics: dict[str, float],
               norm_scale_out: float | None = None) -> dict[str, Any]:
    """The run's part of a finished run's cfg.json (`artifacts.write_sae` adds the
    architecture's keys, `SAE.saelens_cfg`). The normalisation scale is folded into the
    weights, so the SAE takes raw activations (`normalize_activations: none`)."""
    dead = metrics.get("dead_fraction_train")
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": None,  # trained by saerun, not by SAELens
        "model_name": config.model.name,
        "hook_name": config.site.hook_name,
        "hook_head_index": None,
        "context_size": config.data.context_size,
        "prepend_bos": True,
        # saerun never reconstructs special tokens (BOS/EOS/pad); SAELens's add_sae applies an
        # SAE at every position unless told (README, "SAELens").
        "exclude_special_tokens": config.data.exclude_special_tokens,
        "dataset_path": config.data.dataset,
        # SAELens 6.46/6.47's provenance keys: what trained it, with which options, and what
        # it came out as (l0 on the held-out tokens; dead latents over the training window).
        "training_architecture": config.sae.architecture,
        "training_architecture_details": {**config.sae.model_dump(mode="json"),
                                          "train": config.train.model_dump(mode="json")},
        "l0": _finite(metrics.get("l0")),
        "num_dead_features": None if dead is None else round(dead * sae.d_sae),
        "saerun_run_id": run_id,
        "saerun_architecture": config.sae.architecture,
        "numerics_mode": numerics_mode,
        "normalization_scale_folded": norm_scale,
    }
    top: dict[str, Any] = {}
    hook_out = config.site.hook_name_out
    if hook_out is not None:  # a transcoder: SAELens's field for its target, in metadata and at
        # the top level (where SAELens's pre-6.0 reader looks)
        metadata["hook_name_out"] = top["hook_name_out"] = hook_out
        metadata["normalization_scale_out_folded"] = norm_scale_out
    return {
        **top,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if config.site.hook_name.endswith("hook_z") else "none",
        "metadata": metadata,
    }


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a metric that is not finite is written as null."""
    return value if value is not None and math.isfinite(value) else None


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderSAE:
    """What a SAELens folder says, checked: all the planner needs, without loading weights."""

    folder: Path
    architecture: str  # SAELens's name: standard, gated, jumprelu, topk, a transcoder kind
    d_in: int
    d_sae: int
    options: dict[str, Any]  # every cfg.json value that changes the SAE's output
    scaling_factor: float | None  # inputs are multiplied by it (expected_average_only_in)
    content_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    d_out: int | None = None  # a transcoder's output width (None: an SAE, d_out = d_in)

    @property
    def hook_name(self) -> str | None:
        hook = self.metadata.get("hook_name")
        return hook if isinstance(hook, str) else None

    @property
    def hook_name_out(self) -> str | None:
        hook = self.metadata.get("hook_name_out")
        return hook if isinstance(hook, str) else None

    @property
    def transcoder(self) -> bool:
        return self.architecture in TRANSCODER_KINDS


def _fail(folder: Path, key: str, message: str, hint: str | None = None) -> SaerunError:
    return SaerunError(f"{folder / CFG_FILENAME}: {key}: {message}", hint=hint)


def read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / CFG_FILENAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaerunError(f"no {CFG_FILENAME} in {folder}",
                          hint="from_pretrained names a folder in SAELens's layout (cfg.json, "
                          "sae_weights.safetensors), e.g. what SAE.save_model writes") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SaerunError(f"cannot read {path}: {err}") from None
    if not isinstance(cfg, dict):
        raise SaerunError(f"{path} is not a JSON object")
    return cfg


def read_folder(folder: str | Path, scaling_factor: float | None = None) -> FolderSAE:
    """Check a SAELens folder's cfg.json (every key) and hash its content. `scaling_factor`: the
    input scale for `normalize_activations: expected_average_only_in` when the spec gives it
    (else the folder's activation_scaler.json must)."""
    folder = Path(folder)
    cfg = read_cfg(folder)
    metadata = cfg.get("metadata")
    if not isinstance(metadata, dict):
        raise _fail(folder, "metadata", "missing: not a SAELens 6.x config",
                    hint="load it with SAELens (SAE.load_from_disk) and write it again with "
                    "save_model")
    _check_version(folder, metadata.get("sae_lens_version"))
    if metadata.get("hook_head_index") is not None:
        raise _fail(folder, "metadata.hook_head_index", f"{metadata['hook_head_index']!r}: an SAE "
                    "on one attention head is not evaluated (saerun's sites are whole hooks)")
    arch = cfg.get("architecture")
    if arch not in TENSORS:
        raise _fail(folder, "architecture", f"unknown architecture {arch!r}",
                    hint=f"saerun evaluates {', '.join(TENSORS)}")
    unknown = sorted(set(cfg) - COMMON_KEYS - OPTION_KEYS[arch])
    if unknown:
        raise _fail(folder, unknown[0], f"an option saerun does not know for a {arch} SAE",
                    hint="saerun refuses what it cannot honour rather than mis-load it")
    d_in, d_sae = (_positive_int(folder, cfg, key) for key in ("d_in", "d_sae"))
    d_out = _positive_int(folder, cfg, "d_out") if arch in TRANSCODER_KINDS else None
    options = _options(folder, cfg, arch, d_sae)
    factor = _scaling_factor(folder, options["normalize_activations"], scaling_factor)
    weights = folder / WEIGHTS_FILENAME
    if not weights.is_file():
        raise SaerunError(f"no {WEIGHTS_FILENAME} in {folder}")
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    identity: dict[str, Any] = {"architecture": arch, "d_in": d_in, "d_sae": d_sae,
                                "options": options, "scaling_factor": factor,
                                "weights": digest.hexdigest()}
    if d_out is not None:  # only a transcoder's identity has it (an SAE's hash is unchanged)
        identity["d_out"] = d_out
    content = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return FolderSAE(folder, arch, d_in, d_sae, options, factor, content, metadata, d_out)


def _check_version(folder: Path, version: object) -> None:
    """SAELens 6.0 (pre-releases included) or later: the PEP 440 release's first number."""
    found = re.match(r"\s*v?(\d+)", version) if isinstance(version, str) else None
    if found is None or int(found.group(1)) < 6:
        key = "metadata.sae_lens_version"
        raise _fail(folder, key, f"{version!r}: saerun reads SAELens 6.x folders only",
                    hint="load it with SAELens (SAE.load_from_disk converts older configs) "
                    "and write it again with save_model")


def _positive_int(folder: Path, cfg: dict[str, Any], key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(folder, key, f"must be a positive integer, got {value!r}")
    return value


def _options(folder: Path, cfg: dict[str, Any], arch: str, d_sae: int) -> dict[str, Any]:
    """Every cfg.json value that changes the output, checked; the ones that do not (device)
    are not kept."""
    dtype = cfg.get("dtype", "float32")
    if dtype not in DTYPES:
        raise _fail(folder, "dtype", f"unknown dtype {dtype!r}", hint=f"one of {list(DTYPES)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in NORMALIZATIONS:
        raise _fail(folder, "normalize_activations", f"{norm!r} is not honoured",
                    hint="saerun evaluates 'none' and 'expected_average_only_in' (with its "
                    "scaling factor)")
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in RESHAPES:
        raise _fail(folder, "reshape_activations", f"{reshape!r} is not honoured",
                    hint="'none' or 'hook_z'")
    transcoder = arch in TRANSCODER_KINDS
    apply_b_dec = cfg.get("apply_b_dec_to_input", not transcoder)
    if not isinstance(apply_b_dec, bool):
        raise _fail(folder, "apply_b_dec_to_input", f"must be true or false, got {apply_b_dec!r}")
    if transcoder and apply_b_dec:  # b_dec is d_out wide; SAELens refuses it too
        raise _fail(folder, "apply_b_dec_to_input", f"true is not defined for a {arch} (b_dec "
                    "is the output's bias)", hint="SAELens transcoders have it false")
    options: dict[str, Any] = {"dtype": dtype, "normalize_activations": norm,
                               "reshape_activations": reshape, "apply_b_dec_to_input": apply_b_dec}
    if arch == "topk":
        k = cfg.get("k", 100)  # SAELens's default
        if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= d_sae:
            raise _fail(folder, "k", f"must be an integer in 1..d_sae ({d_sae}), got {k!r}")
        rescale = cfg.get("rescale_acts_by_decoder_norm", False)
        if not isinstance(rescale, bool):
            raise _fail(folder, "rescale_acts_by_decoder_norm",
                        f"must be true or false, got {rescale!r}")
        options.update(k=k, rescale_acts_by_decoder_norm=rescale)
    return options


def _scaling_factor(folder: Path, norm: str, given: float | None) -> float | None:
    if norm == "none":
        if given is not None:
            raise _fail(folder, "normalize_activations", "'none' takes no norm_scaling_factor",
                        hint="remove sae.norm_scaling_factor from the spec")
        return None
    if given is not None:
        return float(given)
    path = folder / SCALER_FILENAME
    factor = None
    if path.is_file():
        try:
            factor = json.loads(path.read_text(encoding="utf-8")).get("scaling_factor")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            factor = None
    if not isinstance(factor, int | float) or isinstance(factor, bool) or not factor > 0:
        raise _fail(folder, "normalize_activations",
                    "'expected_average_only_in' needs the factor the inputs were scaled by, "
                    f"and the folder has none ({SCALER_FILENAME})",
                    hint="give it as sae.norm_scaling_factor in the spec (SAELens lists it as "
                    "norm_scaling_factor in pretrained_saes.yaml)")
    return float(factor)


# -- planning ------------------------------------------------------------------------------


def planned_values(sae: ImportedSAEConfig, hook: str, width: int,
                   hook_out: str | None = None, width_out: int | None = None) -> Derived:
    """The planner's derived values of an imported SAE: what its folder says (`read_folder`,
    every cfg.json key checked), each with the folder's cfg.json as its provenance. A value the
    spec gives must agree, and so must the site (a transcoder's target: `hook_out`, of width
    `width_out`). Errors name their key path (SpecError)."""
    path = ("sae", "from_pretrained")
    try:
        info = read_folder(sae.from_pretrained, sae.norm_scaling_factor)
    except SaerunError as err:
        raise SpecError(err.message, path=path, field="sae.from_pretrained",
                        hint=err.hint) from None
    source = f"{sae.from_pretrained}/{CFG_FILENAME}"
    values: dict[str, tuple[Any, str]] = {
        "d_in": (info.d_in, source), "d_sae": (info.d_sae, source),
        "d_out": (info.d_out, source),
        "saelens_architecture": (info.architecture, source), "k": (info.options.get("k"), source),
        "content_sha256": (info.content_sha256, f"{source} and its weights"),
        "norm_scaling_factor": (info.scaling_factor,
                                f"{sae.from_pretrained}/{SCALER_FILENAME}"),
    }
    out: Derived = {}
    for key, (value, how) in values.items():
        given = getattr(sae, key)
        if given is None and value is not None:
            out[("sae", key)] = (value, how)
        elif given != value:
            raise SpecError(f"{key} {shown(given)} does not match {how} ({shown(value)})",
                            path=("sae", key), field=f"sae.{key}",
                            hint="omit it: the planner reads it from the folder")
    if info.hook_name is not None and info.hook_name != hook:
        raise SpecError(
            f"the SAE in {sae.from_pretrained} was trained at {info.hook_name!r} (its cfg.json's "
            f"metadata.hook_name), not {hook!r}", path=("site", "hook_name"),
            field="site.hook_name", hint=f"site: {{hook_name: {info.hook_name}}}")
    if info.options["reshape_activations"] == "hook_z" and not hook.endswith("hook_z"):
        raise SpecError(
            f"the SAE in {sae.from_pretrained} reshapes attn.hook_z activations "
            f"(reshape_activations: hook_z), and {hook!r} is not one", path=("site", "hook_name"),
            field="site.hook_name")
    if info.d_in != width:
        raise SpecError(
            f"the SAE in {sae.from_pretrained} takes d_in {info.d_in}, the model's width at "
            f"{hook!r} is {width}", path=path, field="sae.from_pretrained")
    _check_target(sae.from_pretrained, info, hook_out, width_out)
    return out


def _check_target(where: str, info: FolderSAE, hook_out: str | None,
                  width_out: int | None) -> None:
    """A transcoder needs site.hook_name_out, the one its folder names, as wide as its d_out;
    an SAE must not have one."""
    at = ("site", "hook_name_out")
    if not info.transcoder:
        if hook_out is not None:
            raise SpecError(f"the SAE in {where} is a {info.architecture} SAE, not a transcoder, "
                            "so it has no target hook", path=at, field="site.hook_name_out",
                            hint="omit site.hook_name_out")
        return
    named = info.hook_name_out
    if hook_out is None:
        raise SpecError(f"the SAE in {where} is a {info.architecture}: it reads one hook and "
                        "writes another, and site.hook_name_out is not set", path=at,
                        field="site.hook_name_out",
                        hint=f"site.hook_name_out: {named}" if named else
                        "set site.hook_name_out to the hook it was trained to predict")
    if named is not None and named != hook_out:
        raise SpecError(f"the transcoder in {where} was trained to predict {named!r} (its "
                        f"cfg.json's metadata.hook_name_out), not {hook_out!r}", path=at,
                        field="site.hook_name_out", hint=f"site.hook_name_out: {named}")
    if width_out is not None and info.d_out != width_out:
        raise SpecError(f"the transcoder in {where} writes d_out {info.d_out}, the model's "
                        f"width at {hook_out!r} is {width_out}", path=("sae", "from_pretrained"),
                        field="sae.from_pretrained")
