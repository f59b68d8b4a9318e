"""The hardened YAML reader: spec text -> (data, line map), every problem a SpecError at its line.

Refuses what no spec needs and what would make loading slow or crash: alias bombs, deep nesting,
duplicate keys, non-finite numbers, malformed tagged scalars, files too large or not UTF-8.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from saerun.errors import SpecError, shown

# ---------------------------------------------------------------------------------------------
# YAML loading with line numbers
# ---------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 needs a dot: '1.0e-4')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

# Integers are unbounded in Python, but printing one with more than 4300 digits raises, and no
# spec number comes near this bound (floats end at 2^1024 too).
MAX_INT_BITS = 1024


def _checked_scalar(kind: str, construct: Callable[[yaml.SafeLoader, yaml.ScalarNode], Any]
                    ) -> Callable[[yaml.SafeLoader, yaml.ScalarNode], Any]:
    """Wrap one of SafeLoader's scalar constructors so that a malformed explicitly tagged scalar
    (`!!int abc`, `!!bool maybe`, `!!timestamp 2001-13-45`, `!!float`) is a YAML error at its
    line. SafeLoader lets ValueError, KeyError, IndexError or AttributeError escape from these;
    each wrapper converts one scalar, so nothing but that conversion is caught."""

    def construct_checked(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        try:
            value = construct(loader, node)
        except (ValueError, KeyError, IndexError, AttributeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown(node.value, 40)} as {kind}", node.start_mark
            ) from None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer of {len(node.value)} characters is too large", node.start_mark
            )
        return value

    return construct_checked


for _kind, _name in (("an integer", "int"), ("a number", "float"), ("a boolean", "bool"),
                     ("a date", "timestamp")):
    _Loader.add_constructor(
        f"tag:yaml.org,2002:{_name}",
        _checked_scalar(_kind, getattr(yaml.SafeLoader, f"construct_yaml_{_name}")),
    )


class Line(int):
    """A 1-based line number that also knows the file it is in.

    A spec that `extends` another is composed from several files, so a key path of its line map
    may point into a base spec. A Line is an int everywhere (comparison, formatting, arithmetic),
    so code that reports `line=lines.get(path, 1)` with `file=` the spec it was given keeps
    working unchanged; `locate` then moves such an error to the file the line is in.
    """

    file: str | None

    def __new__(cls, value: int, file: str | None = None) -> Line:
        self = super().__new__(cls, value)
        self.file = file
        return self


LineMap = dict[tuple, int]  # key path -> Line (an int); see `Line`

# Bounds on what a spec file may be. A real spec is a few hundred values in a few kB; the bounds
# are far above that, and far below what would make loading slow: YAML aliases share one node,
# so a few lines of nested aliases ("billion laughs") expand to 10^9 values in every consumer
# that walks the data (the line map, pydantic, the planner), and nesting deeper than Python's
# stack ends in a RecursionError. Both are refused while scanning the event stream, before
# anything is built.
MAX_SPEC_BYTES = 1_000_000
MAX_SPEC_DEPTH = 64  # nested mappings/lists; real specs use 5
MAX_SPEC_VALUES = 100_000  # scalars + collections after alias expansion


def _check_shape(text: str, file: str) -> None:
    """Refuse alias bombs, recursive aliases and deep nesting, in one pass over the events.

    yaml.parse is an iterative state machine (no recursion, nothing expanded), so this is linear
    in the text whatever the text is. Each anchored node's expanded size is recorded when it
    closes; an alias adds that size, so the running total is the size of the expanded document.
    """
    sizes: dict[str, int] = {}  # anchor -> expanded values under it (itself included)
    open_: list[list[Any]] = []  # enclosing collections: [anchor, expanded values so far]
    total = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in open_):
                raise SpecError(
                    f"alias *{event.anchor} refers to a mapping or list that contains it",
                    file=file, line=line, hint="a spec cannot be recursive",
                )
            # An undefined alias (or none): compose reports it.
            size = sizes.get(event.anchor, 1) if event.anchor is not None else 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(open_) >= MAX_SPEC_DEPTH:
                raise SpecError(
                    f"the spec nests mappings/lists deeper than {MAX_SPEC_DEPTH} levels",
                    file=file, line=line,
                )
            open_.append([event.anchor, 1])
            total += 1
            continue
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = open_.pop()
            if anchor is not None:
                sizes[anchor] = size
            if open_:
                open_[-1][1] += size
            continue
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        else:
            continue
        if open_:
            open_[-1][1] += size
        total += size
        if total > MAX_SPEC_VALUES:
            raise SpecError(
                f"the spec expands to more than {MAX_SPEC_VALUES:,} values",
                file=file, line=line,
                hint="aliases (*name) repeat what they refer to; a spec needs far fewer values",
            )


def _line_map(
    node: yaml.Node, path: tuple = (), out: LineMap | None = None, file: str | None = None
) -> LineMap:
    """Map every key path of the document to its 1-based line (a `Line` in `file`); reject
    duplicate keys and keys that are mappings or lists (`? [a]`), which no spec field can be and
    which are unhashable.
    """
    out = {} if out is None else out
    out.setdefault(path, Line(node.start_mark.line + 1, file))
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
                raise SpecError(
                    f"a key must be a name, not a {kind}",
                    line=key_node.start_mark.line + 1, field=_dotted(path) or None,
                )
            key = key_node.value
            if key in seen:
                raise SpecError(
                    "duplicate key", line=key_node.start_mark.line + 1, field=_dotted(path + (key,))
                )
            seen.add(key)
            out[path + (key,)] = Line(key_node.start_mark.line + 1, file)
            _line_map(value_node, path + (key,), out, file)
            out[path + (key,)] = Line(key_node.start_mark.line + 1, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out, file)
    return out


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def parse_yaml(text: str, file: str) -> tuple[dict, LineMap]:
    """safe_load the text; return (data, line map). Any YAML problem is a SpecError."""
    try:
        _check_shape(text, file)
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            raise SpecError("the spec is empty", file=file, hint="see `saerun schema`")
        try:
            lines = _line_map(node, file=file)
        except SpecError as err:
            err.file = file
            raise
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (err.problem or str(err)).strip()
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.reader.ReaderError as err:  # a control character: YAML forbids them anywhere
        char = chr(err.character) if isinstance(err.character, int) else err.character
        raise SpecError(
            f"invalid YAML: character {char!r} is not allowed in YAML text",
            file=file, line=text.count("\n", 0, err.position) + 1,
            hint="write control characters as escapes in a double-quoted string, e.g. \"\\t\"",
        ) from None
    except yaml.YAMLError as err:  # pragma: no cover - non-marked YAML errors are rare
        raise SpecError(f"invalid YAML: {err}", file=file) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"the spec must be a mapping of sections, got {type(data).__name__}",
            file=file,
            line=1,
            hint="see `saerun schema`",
        )
    _check_finite(data, (), lines, file)
    return data, lines


def _check_finite(value: Any, path: tuple, lines: LineMap, file: str) -> None:
    """Refuse .inf, .nan and overflowing literals (1e999) anywhere, sweep values included.

    No field means anything by them, yet pydantic's float admits them and `gt=0` lets inf
    through: lr: .inf would plan and train NaNs, and an inf reaching `round()` in the planner
    or the compute matcher's JSON round trip was a traceback. The data is bounded by
    `_check_shape` (depth and size), so this walk is too.
    """
    if isinstance(value, float) and not math.isfinite(value):
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        raise SpecError(
            f"{value} is not a finite number", file=file, line=lines.get(probe, 1),
            field=_dotted(path) or None, hint="every number in a spec is finite",
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, path + (key,), lines, file)
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            _check_finite(item, path + (i,), lines, file)



def _read_text(path: Path, file: str, extended_at: dict | None = None) -> str:
    """The UTF-8 text of a spec file of at most MAX_SPEC_BYTES, or a SpecError.

    A file that cannot be read is an error naming `file`; for a base spec (`extended_at`: file,
    line and field of the `extends` that names it) it names that `extends` line instead, with the
    base's path in the message. A base must be a regular file: a FIFO or a device (an `extends`
    pointing at /dev/stdin or a named pipe) could block forever.
    """
    name = shown(file, 200)

    def unreadable(own: str, as_base: str) -> SpecError:
        if extended_at is None:
            return SpecError(own, file=file)
        return SpecError(as_base, **extended_at)

    try:
        if extended_at is not None:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise unreadable("", f"the base spec {name} is a directory")
            if not stat.S_ISREG(mode):
                raise unreadable("", f"the base spec {name} is not a regular file")
        with path.open("rb") as handle:  # at most one byte past the limit, whatever the file
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise unreadable("spec file not found", f"base spec {name} not found") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        reason = getattr(err, "strerror", None) or str(err)
        raise unreadable(f"cannot read the spec: {reason}",
                         f"cannot read the base spec {name}: {reason}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise unreadable(f"the spec file is larger than {MAX_SPEC_BYTES:,} bytes",
                         f"the base spec {name} is larger than {MAX_SPEC_BYTES:,} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"the spec is not UTF-8 text (byte {raw[err.start]:#04x} cannot be decoded)",
            file=file, line=raw.count(b"\n", 0, err.start) + 1, hint="save the file as UTF-8",
        ) from None



class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what `_Loader` would read back as a float ('1e-4', a name '1e5')."""


_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


