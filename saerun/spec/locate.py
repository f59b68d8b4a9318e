"""Errors -> file:line:field. A pydantic error becomes one SpecError naming the file, line and
field it is about; `locate` is the one place where an error carrying only a key path gets its
file and line (the planner raises such errors)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from saerun.errors import SpecError, shown
from saerun.spec.schema import SAE_CONFIG_BY_TAG, Spec
from saerun.spec.yaml_io import Line, LineMap, _dotted

_ARCH_TAGS = set(SAE_CONFIG_BY_TAG)


# ---------------------------------------------------------------------------------------------
# Validation errors -> file:line:field
# ---------------------------------------------------------------------------------------------



def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-tag element ('sae', 'relu', 'd_sae') -> ('sae', 'd_sae')."""
    out = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "sae" and part in _ARCH_TAGS:
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
            model = SAE_CONFIG_BY_TAG.get(arch) if arch in SAE_CONFIG_BY_TAG else None
            continue
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def spec_error_from_validation(
    err: ValidationError,
    *,
    file: str,
    lines: LineMap,
    data: dict,
    root: type[BaseModel] = Spec,
    relocate: dict[tuple, tuple] | None = None,
    note: str = "",
) -> SpecError:
    """Turn the first pydantic error into one SpecError naming file, line and field.

    `relocate` maps a field path that came from somewhere else (a sweep value) to the path whose
    line should be reported.
    """
    error = err.errors()[0]
    loc = _clean_loc(tuple(error["loc"]))
    report_path = loc
    for src, dst in (relocate or {}).items():
        if loc[: len(src)] == src or src[: len(loc)] == loc:
            report_path = dst
            break
    line = None
    probe = report_path
    while probe:
        if probe in lines:
            line = lines[probe]
            break
        probe = probe[:-1]
    if line is None:
        line = lines.get((), 1)
    file, line = _file_of(line, lines, file), int(line)
    field = _dotted(loc)
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
        hint = f"allowed: {', '.join(sorted(_ARCH_TAGS))}"
    else:
        message = error["msg"].removeprefix("Value error, ")
        if "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {shown(error['input'])})"
    if note:
        message = f"{message} {note}"
    return SpecError(message, file=file, line=line, field=field, hint=hint)



def _file_of(line: int, lines: LineMap, file: str) -> str:
    """The file a line of `lines` is in: the caller's `file` (its name for the spec it loaded)
    unless the line came from a base spec, whose path the line carries."""
    origin = getattr(line, "file", None)
    if origin is None or origin == getattr(lines.get(()), "file", None):
        return file
    return origin


def locate(err: SpecError, lines: LineMap) -> SpecError:
    """Move an error that was raised with the spec's file and a line read from `lines` (as the
    planner does) to the file that line is in: a base spec's, for a value the base defines."""
    if isinstance(err.line, Line):
        err.file, err.line = _file_of(err.line, lines, err.file), int(err.line)
    return err


