"""Errors -> file:line:field. A pydantic error becomes one SpecError naming the file, line and
field it is about; `locate` is the one place where an error carrying only a key path gets its
file and line (the planner raises such errors)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from saerun.errors import SpecError, shown
from saerun.spec.architectures import IMPORTED_TAG, ImportedSAEConfig
from saerun.spec.schema import SAE_CONFIG_BY_TAG, Spec, SweepConfig
from saerun.spec.yaml_io import Line, LineMap, _dotted

_ARCH_TAGS = set(SAE_CONFIG_BY_TAG)
_SAE_SECTIONS: dict[str, type[BaseModel]] = {**SAE_CONFIG_BY_TAG, IMPORTED_TAG: ImportedSAEConfig}


# ---------------------------------------------------------------------------------------------
# Validation errors -> file:line:field
# ---------------------------------------------------------------------------------------------


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-tag elements ('sae', 'trained', 'relu', 'd_sae') -> ('sae',
    'd_sae')."""
    out = []
    for i, part in enumerate(loc):
        after_sae = i > 0 and (loc[i - 1] == "sae" or loc[i - 2:i] == ("sae", "trained"))
        if after_sae and (part in _SAE_SECTIONS or part == "trained"):
            continue
        if isinstance(part, str) and part.startswith("function-after["):
            continue
        out.append(part)
    return tuple(out)


def _model_at(path: tuple, root: type[BaseModel], data: dict) -> type[BaseModel] | None:
    """The pydantic model class that owns the mapping at `path` (for key suggestions)."""
    model: Any = root
    node: Any = data
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        node = node.get(part, {}) if isinstance(node, dict) else {}
        annotation = field.annotation
        if part == "sae":
            arch = node.get("architecture") if isinstance(node, dict) else None
            if arch is None and isinstance(node, dict) and "from_pretrained" in node:
                arch = IMPORTED_TAG
            model = _SAE_SECTIONS.get(arch) if isinstance(arch, str) else None
            continue
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def spec_error_from_validation(
    err: ValidationError, *, data: dict, root: type[BaseModel] = Spec, note: str = ""
) -> SpecError:
    """The first pydantic error as one SpecError naming its field and carrying its key path;
    `locate` then gives it its file and line. `data` is what was validated (for the key
    suggestions of an unknown key), `note` is appended to the message."""
    error = err.errors()[0]
    loc = _clean_loc(tuple(error["loc"]))
    hint = None
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1], root, data)
        valid = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        message = f"unknown key '{loc[-1]}'"
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "union_tag_invalid":
        message = f"unknown architecture {error['ctx']['tag']!r}"
        hint = f"allowed: {', '.join(sorted(_ARCH_TAGS))}"
    elif kind == "union_tag_not_found":
        message = "missing 'architecture'"
        hint = (f"allowed: {', '.join(sorted(_ARCH_TAGS))}; or from_pretrained: FOLDER to "
                "evaluate an SAE trained elsewhere")
    else:
        message = error["msg"].removeprefix("Value error, ")
        if "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {shown(error['input'])})"
    if note:
        message = f"{message} {note}"
    return SpecError(message, path=loc, field=_dotted(loc), hint=hint)


# ---------------------------------------------------------------------------------------------
# Key path -> file:line (the one place)
# ---------------------------------------------------------------------------------------------


def sweep_axes(sweep: SweepConfig, sites: str | list[str]) -> list[tuple[tuple, tuple]]:
    """(field path a sweep sets, key path of the line that sets it), for every axis: a list of
    sites in site.hook_name, the grid's and the zip's dotted paths, and the seeds."""
    axes: list[tuple[tuple, tuple]] = []
    if isinstance(sites, list):
        axes.append((("site", "hook_name"), ("site", "hook_name")))
    for section in ("grid", "zip"):
        for dotted in getattr(sweep, section):
            axes.append((tuple(dotted.split(".")), ("sweep", section, dotted)))
    if sweep.seeds is not None:
        axes.append((("seed",), ("sweep", "seeds")))
    return axes


def line_of(path: tuple, lines: LineMap) -> int:
    """The line of `path`, or of its nearest ancestor that has one (the document's first line
    when none has)."""
    probe = path
    while probe:
        if probe in lines:
            return lines[probe]
        probe = probe[:-1]
    return lines.get((), 1)


def locate(
    err: SpecError,
    lines: LineMap,
    file: str | None = None,
    spec: Spec | None = None,
) -> SpecError:
    """Give an error the file and line it is about, in place (and return it).

    An error carrying a key path (`err.path`) and no line gets the line of that path, walking
    up to the nearest ancestor that has one; with the `spec` given (the planner's errors, each
    about one job of its sweep), a path a sweep axis sets (`sweep_axes`: the value came from
    the sweep, or the error is about a section that holds one) gets the axis's line instead.
    The file is the one that line is in: `file` (the spec loaded), or a base spec's for a
    value the spec inherits through `extends`. An error
    raised with a line read from `lines` (a `Line`) only has its file corrected likewise.
    """
    if err.path is not None and err.line is None:
        report = err.path
        axes = sweep_axes(spec.sweep, spec.site.hook_name) if spec is not None else []
        for src, dst in axes:
            if report[: len(src)] == src or src[: len(report)] == report:
                report = dst
                break
        line = line_of(report, lines)
        err.file, err.line = _file_of(line, lines, err.file or file or ""), int(line)
    elif isinstance(err.line, Line):
        err.file, err.line = _file_of(err.line, lines, err.file or file or ""), int(err.line)
    return err


def _file_of(line: int, lines: LineMap, file: str) -> str:
    """The file a line of `lines` is in: the caller's `file` (its name for the spec it loaded)
    unless the line came from a base spec, whose path the line carries."""
    origin = getattr(line, "file", None)
    if origin is None or origin == getattr(lines.get(()), "file", None):
        return file
    return origin
