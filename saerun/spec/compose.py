"""Reading a spec file: `extends` composition (`merge_over`, `composed_text`) and `load_spec`;
and `export_spec`, a registered run back as a standalone spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from saerun import __version__
from saerun.errors import SpecError, shown
from saerun.spec import derive
from saerun.spec.locate import locate, spec_error_from_validation
from saerun.spec.schema import Spec
from saerun.spec.yaml_io import LineMap, _Dumper, _read_text, parse_yaml

# ---------------------------------------------------------------------------------------------
# Reading spec files, and composing a spec with the bases it extends
# ---------------------------------------------------------------------------------------------

MAX_EXTENDS = 16  # bases in one `extends` chain; real teams use one or two


def _identity(path: Path) -> str:
    """What makes two paths the same file for cycle detection (symlinks and ./ resolved)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL: reading will refuse it
        return os.path.abspath(path)


def _compose(
    path: Path, file: str, data: dict, lines: LineMap, chain: tuple[tuple[str, str], ...] = ()
) -> tuple[dict, LineMap, list[str]]:
    """Apply the `extends` chain of a parsed spec: (composed data, composed line map, the files
    it was composed from, this one first).

    `extends: PATH` (top level, a string) names a base spec: a relative PATH is relative to the
    folder of the file that contains it (`~` is not expanded), an absolute one is taken as it is.
    The base is read and parsed like any spec (the same size, shape and YAML guards), may itself
    extend another (at most MAX_EXTENDS deep), and a cycle is an error naming the chain. The
    base need not be a valid spec on its own: only the composed spec is validated. How the
    child is merged over its base: see `merge_over`.
    """
    chain = chain + ((_identity(path), file),)
    if "extends" not in data:
        return data, lines, [file]
    target = data["extends"]
    extended_at: dict[str, Any] = dict(
        file=file, line=int(lines.get(("extends",), 1)), field="extends")
    if not isinstance(target, str) or not target:
        raise SpecError(
            f"extends must be the path of a spec file, got {shown(target)}", **extended_at,
            hint="e.g. extends: base.yaml (relative to the folder of this file)",
        )
    base_path = path.parent / target
    base_file = str(base_path)
    if _identity(base_path) in (identity for identity, _ in chain):
        cycle = " extends ".join([f for _, f in chain] + [base_file])
        raise SpecError(f"extends makes a cycle: {cycle}", **extended_at)
    if len(chain) > MAX_EXTENDS:
        raise SpecError(
            f"extends chains more than {MAX_EXTENDS} base specs, from {chain[0][1]}",
            **extended_at,
        )
    base_text = _read_text(base_path, base_file, extended_at)
    base_data, base_lines = parse_yaml(base_text, base_file)
    base_data, base_lines, files = _compose(base_path, base_file, base_data, base_lines, chain)
    own = {key: value for key, value in data.items() if key != "extends"}
    own_lines = {p: line for p, line in lines.items() if p[:1] != ("extends",)}
    merged, merged_lines = merge_over(base_data, base_lines, own, own_lines)
    return merged, merged_lines, [file, *files]


def merge_over(base: dict, base_lines: LineMap, child: dict, child_lines: LineMap
               ) -> tuple[dict, LineMap]:
    """The child spec's mapping deep-merged over its base's, and the line map to match.

    - Mappings merge key by key, recursively; a key only in the base is inherited.
    - Any other child value (a scalar, a list, `null`) replaces the base's whole: a list is
      never appended to, and `null` is a value like any other: `grad_clip_norm: null` turns
      clipping off, `d_sae: null` unsets a base's width so that `expansion_factor` can be given.
      The composed spec means what the same keys written into one file would mean.
    - `sae`: when the child's `sae.architecture` differs from the base's, the child's `sae`
      replaces the base's whole (the options of one architecture mean nothing to another:
      relu's `sparsity` would otherwise leak into a topk section; a child naming a folder,
      `from_pretrained`, counts as architecture `imported`). A child `sae` without an
      `architecture`, or with the base's, merges key by key. `launcher` likewise, by `kind`.
    - `sweep`: inherited when the child has none; a child `sweep` replaces the base's whole
      (it states what the child varies; `sweep: {}` drops the base's).
    - `name` and `seed` are ordinary keys: inherited unless the child sets them.

    Each key path keeps the line (and file) of the value that won, so an error in an inherited
    field names the base's file and line, in an overridden one the child's.
    """
    replaced: set[tuple] = set()
    merged = _merge(base, child, (), replaced)
    lines: LineMap = {
        p: line for p, line in base_lines.items()
        if not any(p[:i] in replaced for i in range(len(p) + 1))
    }
    lines.update(child_lines)
    return merged, lines


# Sections whose tag picks their options: a child with another tag replaces the section whole.
_TAGGED = {("sae",): "architecture", ("launcher",): "kind"}


def _tag_of(section: dict, tag: str) -> Any:
    """A section's tag; an `sae` that names a folder and no architecture is an imported one."""
    if tag == "architecture" and tag not in section and "from_pretrained" in section:
        return "imported"
    return section.get(tag)


def _merge(base: Any, child: Any, path: tuple, replaced: set[tuple]) -> Any:
    tag = _TAGGED.get(path)
    whole = path == ("sweep",) or (
        tag is not None and isinstance(base, dict) and isinstance(child, dict)
        and _tag_of(base, tag) is not None and _tag_of(child, tag) is not None
        and _tag_of(child, tag) != _tag_of(base, tag)
    )
    if isinstance(base, dict) and isinstance(child, dict) and not whole:
        out = dict(base)
        for key, value in child.items():
            out[key] = _merge(base[key], value, path + (key,), replaced) if key in base else value
        return out
    replaced.add(path)
    return child


def composed_text(data: dict, files: list[str]) -> str:
    """A composed spec as one standalone YAML document (what the registry keeps of a spec that
    extends others): a header naming the files, then every key of the merged mapping, `name`
    first. Loading it gives the same data, hence the same plan and run ids."""
    names = [f if f.isprintable() else ascii(f) for f in files]
    header = (
        f"# Composed by saerun from {' extends '.join(names)}:\n"
        "# the spec with its bases merged in, standalone (it extends nothing).\n"
    )
    ordered = {k: data[k] for k in ("name",) if k in data} | data
    return header + yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def load_spec(path: str | Path) -> tuple[Spec, dict, LineMap, str]:
    """Read and validate a spec file: (spec, raw data, line map, YAML text).

    A spec with `extends` is composed with its bases first (`_compose`, `merge_over`): the data
    and line map are the composed ones (each line knows its file), and the text is the composed
    spec as standalone YAML (`composed_text`), which is what the registry keeps. A spec without
    `extends` is returned as it was read, its text byte for byte.
    """
    path = Path(path)
    file = str(path)
    text = _read_text(path, file)
    data, lines = parse_yaml(text, file)
    files = [file]
    if "extends" in data:
        data, lines, files = _compose(path, file, data, lines)
    data = _folders_resolved(data, lines, file)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise locate(spec_error_from_validation(err, data=data), lines, file) from None
    if len(files) > 1:
        text = composed_text(data, files)
    return spec, data, lines, text



def _folders_resolved(data: dict, lines: LineMap, file: str) -> dict:
    """`sae.from_pretrained` (also as a sweep grid or zip axis) made absolute: a relative folder
    is relative to the folder of the spec file that names it (a base spec's, for one it
    inherits), like `extends`; `~` is expanded. Other values are left for the schema."""

    def absolute(value: Any, at: tuple) -> Any:
        if not isinstance(value, str) or not value:
            return value
        folder = Path(value).expanduser()
        if folder.is_absolute():
            return str(folder)
        owner = getattr(lines.get(at), "file", None) or file
        return os.path.abspath(Path(owner).parent / folder)

    def in_section(sae: Any, at: tuple) -> Any:
        if isinstance(sae, dict) and "from_pretrained" in sae:
            return {**sae, "from_pretrained": absolute(sae["from_pretrained"],
                                                       at + ("from_pretrained",))}
        return sae

    out = dict(data)
    out["sae"] = in_section(data.get("sae"), ("sae",))
    sweep = data.get("sweep")
    if isinstance(sweep, dict):
        sweep = dict(sweep)
        for kind in ("grid", "zip"):
            axes = sweep.get(kind)
            if not isinstance(axes, dict):
                continue
            axes = dict(axes)
            for key in ("sae.from_pretrained", "sae"):
                values, at = axes.get(key), ("sweep", kind, key)
                if isinstance(values, list):
                    axes[key] = [absolute(v, at) if key != "sae" else in_section(v, at)
                                 for v in values]
            sweep[kind] = axes
        out["sweep"] = sweep
    if "sae" not in data:
        del out["sae"]
    return out


# -- a registered run back as a spec ------------------------------------------------------------

SPEC_SECTIONS = ("seed", "model", "site", "data", "sae", "train", "eval")


def export_spec(run: dict[str, Any]) -> str:
    """A standalone spec (YAML) that plans to exactly this run (the same run id).

    Every value is written out as resolved, except those saerun v1 left to a rule (aux_k,
    Matryoshka prefixes: null, derived again the same way) and eval.metrics, in v1's names:
    the spec is the run's identity view (`derive.v1_identity`), which is what its id hashes."""
    stem = (run.get("spec_name") or "run").strip() or "run"
    spec = {"name": f"{stem}-{run['run_id'][:10]}"}
    config = derive.v1_identity(run["config"])
    spec.update({key: config[key] for key in SPEC_SECTIONS})
    header = (
        f"# Exported by saerun {__version__} from run {run['run_id']} ({run['name']}).\n"
        f"# Every value is resolved, so `saerun THIS_FILE` trains exactly that run (same run id)\n"
        f"# on any machine; data fingerprint {run.get('data_fingerprint') or 'unknown'}.\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
