"""Property-based fuzzing of the spec loader and planner: every input, however hostile, ends in a
saerun error that names the file, or in a valid plan; never a traceback, a hang or code execution.

The entry point is `runner.prepare`, the function `saerun plan` and `saerun SPEC` call: it loads,
validates and plans the spec and checks the data exists, and it never loads model weights (the
planner reads widths from a config; with the hub offline, see conftest.py, an unknown model name
is a SpecError at once). Four families of inputs:

- text: arbitrary unicode, arbitrary bytes, YAML token soup, and mutations of a valid spec;
- plausible specs built from the real schema's keys (every architecture, the sweep's grid, zip
  and seeds), leaves replaced by a value of the wrong type, a huge or negative number, NaN/inf,
  deep nesting, control characters, and valid specs hit in one or two fields (or sweep axes)
  by a hostile value of the field's own type; sweep paths sometimes random;
- anchors and aliases, including alias bombs and recursive aliases;
- fixed hostile inputs: `!!python/...` tags that would run code, custom tags, non-string keys,
  duplicate keys, several documents, a top level that is not a mapping; names that try to
  escape a folder.

The default run is deterministic (derandomize) and quick; `pytest -m slow tests/test_fuzz.py -s`
runs 1,000 examples of each main family and prints how they ended.
"""

from __future__ import annotations

import json
import re
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from saerun import models
from saerun.cli import main as cli_main
from saerun.errors import SaerunError, SpecError
from saerun.runner import prepare
from saerun.spec import SAE_CONFIGS, Spec, SweepConfig

# ---------------------------------------------------------------------------------------------
# Settings: deterministic in CI, many more examples in the slow run
# ---------------------------------------------------------------------------------------------

_COMMON = dict(
    deadline=None,  # a first compute-matched spec imports torch: seconds, not a hang
    derandomize=True,  # the same examples on every run and machine
    database=None,  # nothing saved between runs: a derandomized run replays nothing anyway
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
settings.register_profile("saerun-fuzz", max_examples=200, **_COMMON)
settings.register_profile("saerun-fuzz-slow", max_examples=1000, **_COMMON)
FUZZ = settings.get_profile("saerun-fuzz")
FUZZ_SLOW = settings.get_profile("saerun-fuzz-slow")

# ---------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------

_SPEC_FILE = "spec.yaml"
_RUN_ID = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder per module: hypothesis re-runs the test body, not function-scoped fixtures."""
    return tmp_path_factory.mktemp("fuzz")


def outcome(folder: Path, content: str | bytes) -> str:
    """Write the spec and plan it as the CLI does: 'valid' or 'error'; anything else raises.

    An error must be a SaerunError that names this file and prints as one line; a valid plan's
    run ids must be lowercase hex, which is all that ever becomes a folder name.
    """
    path = folder / _SPEC_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        prepared = prepare(path)
    except SaerunError as err:
        assert err.file == str(path), f"the error does not name the file: {err}"
        text = str(err)
        assert text.startswith(f"error: {path}"), text
        assert text.isprintable(), f"not one printable line: {text!r}"
        return "error"
    assert prepared.plan.jobs
    for job in prepared.plan.jobs:
        assert _RUN_ID.fullmatch(job.run_id), job.run_id
    return "valid"


def _no_code_ran(folder: Path) -> None:
    assert not list(folder.glob("pwned*")), "a YAML tag ran code"


# ---------------------------------------------------------------------------------------------
# Wild values: wrong types, extreme numbers, odd strings, nesting
# ---------------------------------------------------------------------------------------------

ODD_STRINGS = [
    "", " ", "\x00", "\x07", "\x1b[2J", "\u202e", "\ufeff", "é", "日本", "\U0001f600",
    "../../x", "/abs", "~", "~nosuchuser/x", "a/b/c", "a" * 300, "a b", "null", "yes", "~",
    ".inf", "1e-4", "0x1F", "1_000", "1:20", "blocks.99.hook_resid_post", "*a", "&a", "!!int",
]
HUGE_INTS = [0, -1, 2**31, 2**63, -(2**63), 10**30, -(10**30), 2**1023, -(2**1023)]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324]),
    st.text(max_size=20),
    st.sampled_from(ODD_STRINGS),
    st.binary(max_size=8),  # !!binary
    st.dates(),  # !!timestamp
)


def _nested_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


WILD = st.one_of(
    st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none(),
                                      st.booleans()), children, max_size=4),
        ),
        max_leaves=12,
    ),
    st.integers(1, 120).map(_nested_list),  # past the loader's depth bound and below it
)

# ---------------------------------------------------------------------------------------------
# Plausible specs from the real schema
# ---------------------------------------------------------------------------------------------

_TINY = models.model_info(models.DEFAULT_MODEL)
HOOKS = models.hook_names(_TINY)
ARCH_TAGS = [cls.model_fields["architecture"].annotation.__args__[0] for cls in SAE_CONFIGS]
KNOWN_STRINGS: dict[str, list[str]] = {
    "name": ["t", "sweep-1", "a.b_c"],
    "hook_name": ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.2.mlp.hook_post"],
    "dataset": ["saerun/stdlib"],
    "text_column": ["text"],
    "split": ["train"],
    "device": ["cpu", "auto"],
    "architecture": ARCH_TAGS,
}
SECTIONS: dict[str, type[BaseModel]] = {
    name: f.annotation for name, f in Spec.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
}


def _leaf_paths(model: type[BaseModel], prefix: str) -> dict[str, Any]:
    """Every dotted field path under a section and its annotation (sweep targets)."""
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        out[path] = f.annotation
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out.update(_leaf_paths(f.annotation, path))
    return out


FIELD_PATHS: dict[str, Any] = {"seed": int, "sae": "sae"}
for _name, _section in SECTIONS.items():
    if _section is not SweepConfig:
        FIELD_PATHS[_name] = _section
        FIELD_PATHS.update(_leaf_paths(_section, _name))
for _cls in SAE_CONFIGS:
    FIELD_PATHS.update(_leaf_paths(_cls, "sae"))
SEGMENTS = sorted({part for path in FIELD_PATHS for part in path.split(".")})


def _kind(ann: Any) -> str:
    text = str(ann)
    for kind in ("Literal", "float", "int", "str", "list"):
        if kind in text:
            return kind
    return "other"


# Targeted hits pick a kind of field first, then a field: numbers and names are as likely to be
# hit as the sections that outnumber them.
PATHS_BY_KIND: dict[str, list[str]] = {}
for _path, _ann in sorted(FIELD_PATHS.items()):
    PATHS_BY_KIND.setdefault(_kind(_ann), []).append(_path)


def hostile(ann: Any) -> st.SearchStrategy:
    """A value of the field's own type that is still wrong or extreme: it passes the type check,
    so it reaches the constraints, the planner and the model/data lookups."""
    origin = get_origin(ann)
    if origin in (Union, types.UnionType):
        return st.one_of(*[hostile(a) for a in get_args(ann) if a is not type(None)])
    if origin is list:
        return st.lists(hostile(get_args(ann)[0]), max_size=4)
    if origin is tuple:
        return st.tuples(*[hostile(a) for a in get_args(ann)]).map(list)
    if ann is int:
        return st.one_of(st.sampled_from(HUGE_INTS), st.integers())
    if ann is float:
        return st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.0,
                                          1e308, 1e300, 5e-324, -1.0]), st.floats())
    if ann is str or origin is Literal:
        return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=30))
    return WILD


def _wild(draw: Callable, chaos: int) -> bool:
    """Whether this leaf is replaced by a wild value; shrinks towards 'no'."""
    return draw(st.integers(0, 99)) >= 100 - chaos


def gen_value(draw: Callable, ann: Any, chaos: int, name: str = "") -> Any:
    """A value for a field of this annotation: usually valid-looking, sometimes wild."""
    if _wild(draw, chaos):
        return draw(WILD if ann == "sae" or draw(st.booleans()) else hostile(ann))
    if ann == "sae":
        return gen_sae(draw, chaos)
    origin = get_origin(ann)
    if origin is Literal:
        return draw(st.sampled_from(get_args(ann)))
    if origin in (Union, types.UnionType):
        return gen_value(draw, draw(st.sampled_from(get_args(ann))), chaos, name)
    if ann is type(None):
        return None
    if origin is list:
        return [gen_value(draw, get_args(ann)[0], chaos, name)
                for _ in range(draw(st.integers(1, 3)))]
    if origin is tuple:
        return [gen_value(draw, a, chaos, name) for a in get_args(ann)]
    if ann is bool:
        return draw(st.booleans())
    if ann is int:
        return draw(st.integers(1, 256))
    if ann is float:
        return draw(st.sampled_from([1e-4, 1e-3, 0.05, 0.5, 0.9, 1.0, 4.0]))
    if ann is str:
        return draw(st.sampled_from(KNOWN_STRINGS.get(name, ["x"])))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return gen_section(draw, ann, chaos)
    return draw(WILD)  # Any


def gen_section(draw: Callable, model: type[BaseModel], chaos: int,
                fixed: dict[str, Any] | None = None) -> dict:
    """Some of the section's keys (required ones usually), now and then an unknown key."""
    out = dict(fixed or {})
    for name, f in model.model_fields.items():
        if name in out:
            continue
        if (f.is_required() and not _wild(draw, chaos)) or draw(st.integers(0, 3)) == 0:
            out[name] = gen_value(draw, f.annotation, chaos, name)
    if _wild(draw, chaos):
        out[draw(st.one_of(st.sampled_from(SEGMENTS), st.text(max_size=6)))] = draw(WILD)
    return out


def gen_sae(draw: Callable, chaos: int) -> dict:
    cls = draw(st.sampled_from(SAE_CONFIGS))
    tag = cls.model_fields["architecture"].annotation.__args__[0]
    return gen_section(draw, cls, chaos, fixed={"architecture": tag})


def gen_sweep_path(draw: Callable, chaos: int) -> str:
    if not _wild(draw, chaos):
        return draw(st.sampled_from(sorted(FIELD_PATHS)))
    parts = st.one_of(st.sampled_from(SEGMENTS + ["", "name", "sweep", "0", "grid"]),
                      st.text(max_size=5))
    return ".".join(draw(st.lists(parts, min_size=1, max_size=4)))


def gen_sweep(draw: Callable, chaos: int) -> dict:
    """grid, zip and seeds with real or random dotted paths (at most 2 x 2 values per axis so
    that a valid sweep stays a handful of jobs)."""
    out: dict[str, Any] = {}
    for section in ("grid", "zip"):
        if draw(st.booleans()):
            n = draw(st.integers(1, 2))
            axes: dict[Any, Any] = {}
            for _ in range(draw(st.integers(0, 2))):
                path = gen_sweep_path(draw, chaos)
                ann = FIELD_PATHS.get(path, Any)
                if _wild(draw, chaos):
                    axes[path] = draw(WILD)  # not a list, an empty list, a ragged zip...
                else:
                    size = n if section == "zip" else draw(st.integers(1, 2))
                    axes[path] = [gen_value(draw, ann, chaos, path.rsplit(".", 1)[-1])
                                  for _ in range(size)]
            out[section] = axes
    if draw(st.booleans()):
        out["seeds"] = (draw(WILD) if _wild(draw, chaos)
                        else draw(st.lists(st.integers(0, 10), min_size=1, max_size=2)))
    if _wild(draw, chaos):
        out[draw(st.text(max_size=6))] = draw(WILD)
    return out


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[path[-1]] = value


@st.composite
def plausible_specs(draw: Callable) -> str:
    """A spec mapping from the real schema, dumped as YAML text: a background share of wild
    leaves, then a few targeted hits, each one field (or one sweep axis) set to a hostile value
    of its own type, so that most specs fail, if at all, on that one value."""
    chaos = draw(st.sampled_from([0, 0, 0, 2, 10, 100]))  # percent of wild leaves
    base = False
    if chaos == 100 and draw(st.booleans()):
        spec: Any = draw(WILD)  # a top level that is not a spec at all
    elif chaos == 0 and draw(st.booleans()):  # a valid spec, so that only the hits can fail it
        base = True
        spec = {
            "name": "base",
            "site": {"hook_name": draw(st.sampled_from(KNOWN_STRINGS["hook_name"]))},
            "data": {"context_size": 64},
            "sae": {"architecture": draw(st.sampled_from(ARCH_TAGS)),
                    **draw(st.sampled_from([{"d_sae": 256}, {"expansion_factor": 2.0}, {}]))},
            "train": {"lr": 1e-3},
            "sweep": {"grid": {"train.lr": [1e-3, 3e-4]}},
        }
    else:
        spec = {}
        for name, f in Spec.model_fields.items():
            if name == "sweep":
                if draw(st.booleans()):
                    spec["sweep"] = gen_sweep(draw, chaos)
            elif name == "sae":
                if not _wild(draw, chaos):
                    spec["sae"] = gen_sae(draw, chaos)
            elif name == "site" and draw(st.booleans()):
                hooks = draw(st.lists(st.sampled_from(KNOWN_STRINGS["hook_name"]), min_size=1,
                                      max_size=2, unique=True))
                spec["site"] = {"hook_name": hooks if len(hooks) > 1 else hooks[0]}
            elif f.is_required() or draw(st.booleans()):
                spec[name] = gen_value(draw, f.annotation, chaos, name)
    if isinstance(spec, dict):
        for _ in range(draw(st.integers(int(base), 2))):
            kind = draw(st.sampled_from(sorted(PATHS_BY_KIND)))
            path = draw(st.sampled_from(PATHS_BY_KIND[kind]))
            ann = FIELD_PATHS[path]
            value = draw(WILD if ann == "sae" or isinstance(ann, type) and issubclass(
                ann, BaseModel) else hostile(ann))
            if draw(st.integers(0, 3)) == 0:  # the hostile value arrives through the sweep
                path, value = f"sweep.grid.{path}", [value]
            _set_path(spec, path.split(".", 2) if path.startswith("sweep.") else path.split("."),
                      value)
    return yaml.safe_dump(
        spec,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, None, True])),
        width=draw(st.sampled_from([80, 10**6])),
    )


# ---------------------------------------------------------------------------------------------
# Text: unicode, bytes, token soup, mutations of a valid spec
# ---------------------------------------------------------------------------------------------

VALID = """\
name: fuzz
seed: 1
model: {name: saerun/tiny-stdlib}
site: {hook_name: [blocks.0.hook_resid_post, blocks.1.hook_resid_post]}
data: {context_size: 64}
sae:
  architecture: topk
  d_sae: 256
  k: 8
train: {lr: 1e-3, adam_betas: [0.9, 0.999]}
eval: {metrics: [l0, mse]}
sweep:
  grid: {train.lr: [1e-3, 3e-4]}
  zip: {sae.k: [8, 16], sae.aux_k: [4, 8]}
  seeds: [0, 1]
"""

# A marker under the fuzz folder: its existence would prove a tag ran code.
PWN = "PWNDIR/pwned"
DANGEROUS_TAGS = [
    f'!!python/object/apply:os.system ["touch {PWN}"]',
    f"!!python/object/apply:builtins.exec [\"open('{PWN}2', 'w')\"]",
    f'!!python/object/new:subprocess.Popen [["touch", "{PWN}3"]]',
    "!!python/name:os.system",
    "!!python/module:os",
    '!!python/object:__main__.X {a: 1}',
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!pairs [a: 1]",
    "!!timestamp 2001-13-45",
    "!!int abc",
    "!!float",
    "!!bool maybe",
    "!custom x",
    "!<tag:example.com,2000:x> y",
]
TOKENS = [
    "name", "sae", "architecture", "relu", "topk", "sweep", "grid", "zip", "seeds", "train.lr",
    ":", ": ", " ", "\n", "  ", "- ", "[", "]", "{", "}", ", ", "?", "? ", "---", "...", "'", '"',
    "#", "|", ">", "&a ", "*a", "&b ", "*b", "<<: ", "1e5", "0x", "-1", "10" * 20, ".nan", "~",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "@", "`", "\t", "\x00", "\x85", "\ufeff", "\u2028",
    "é", "\\", "\\x", "!!", "!", *DANGEROUS_TAGS,
]


@st.composite
def mutated_valid(draw: Callable) -> str:
    """The valid spec with a few edits: delete, duplicate, insert a token or a dangerous tag."""
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 12)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate_line", "tag"]))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "replace":
            text = text[:i] + draw(st.text(max_size=4)) + text[j:]
        elif op == "duplicate_line":
            lines = text.splitlines(keepends=True)
            k = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: k + 1] + [lines[k]] + lines[k + 1:])
        else:  # a dangerous tag in front of some value
            colon = text.find(": ", i)
            if colon != -1:
                tag = draw(st.sampled_from(DANGEROUS_TAGS))
                text = f"{text[: colon + 2]}{tag} {text[colon + 2:]}"
    return text


TEXTS = st.one_of(
    st.text(),
    st.binary(),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    mutated_valid(),
    st.integers(1, 20_000).map(lambda n: "name: " + "[" * n + "]" * n),  # deep nesting
)


def _with_pwn_dir(content: str | bytes, folder: Path) -> str | bytes:
    if isinstance(content, bytes):
        return content
    return content.replace("PWNDIR", str(folder))


# ---------------------------------------------------------------------------------------------
# Anchors and aliases
# ---------------------------------------------------------------------------------------------


def _flow(value: Any) -> str:
    """JSON is YAML flow syntax (near enough: whatever PyYAML rejects must be a SpecError)."""
    return json.dumps(value, default=str)


@st.composite
def aliased_specs(draw: Callable) -> str:
    """Top-level keys whose values define anchors, refer to them (defined or not, from inside
    themselves or not), merge them (`<<`), or nest aliases in lists."""
    anchors = ["a", "b", "c"]
    keys = ["seed", "model", "site", "data", "sae", "train", "eval", "x", "y"]
    lines = ["name: t"] if draw(st.booleans()) else []
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=8, unique=True)):
        anchor = draw(st.sampled_from(anchors))
        kind = draw(st.sampled_from(["define", "alias", "nest", "merge", "sae", "laughs"]))
        if key == "sae" and draw(st.booleans()):
            kind = "sae"  # now and then a spec that is valid, aliases and all
        if kind == "define":
            value = f"&{anchor} {_flow(draw(WILD))}"
        elif kind == "alias":
            value = f"*{anchor}"
        elif kind == "nest":
            refs = draw(st.lists(st.sampled_from(anchors), min_size=1, max_size=10))
            value = f"&{anchor} [" + ", ".join(f"*{r}" for r in refs) + "]"
        elif kind == "merge":
            value = f"{{<<: *{anchor}, architecture: relu}}"
        elif kind == "sae":
            value = f"&{anchor} {{architecture: {draw(st.sampled_from(ARCH_TAGS))}, d_sae: 64}}"
        else:  # a layer of laughs: ten references to the previous anchor
            value = f"&{anchor} [" + ", ".join([f"*{draw(st.sampled_from(anchors))}"] * 10) + "]"
        lines.append(f"{key}: {value}")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["sweep: {grid: {sae: [*a, *b]}}",
                                           "sweep: {zip: {sae: [*a]}}"])))
    return "\n".join(lines) + "\n"


def billion_laughs(levels: int, width: int = 10) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "name: t\nsae: {architecture: relu}\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The properties (default run)
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(text=plausible_specs())
def test_plausible_specs_plan_or_fail_cleanly(workdir, text):
    outcome(workdir, text)


@FUZZ
@given(content=TEXTS)
def test_arbitrary_text_plans_or_fails_cleanly(workdir, content):
    outcome(workdir, _with_pwn_dir(content, workdir))
    _no_code_ran(workdir)


@FUZZ
@given(text=aliased_specs())
def test_anchors_and_aliases_plan_or_fail_cleanly(workdir, text):
    start = time.perf_counter()
    outcome(workdir, text)
    assert time.perf_counter() - start < 10, "aliases made loading slow"


@settings(max_examples=60, **_COMMON)
@given(levels=st.integers(1, 12), width=st.integers(1, 12))
def test_alias_bombs_are_bounded(workdir, levels, width):
    start = time.perf_counter()
    result = outcome(workdir, billion_laughs(levels, width))
    assert time.perf_counter() - start < 10
    if (width * 10 + 1) * width ** (levels - 1) > 200_000:  # far past the loader's bound
        assert result == "error"


# ---------------------------------------------------------------------------------------------
# Fixed hostile inputs
# ---------------------------------------------------------------------------------------------

BASE = "name: t\nsae: {architecture: relu}\n"


def spec_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        prepare(path)
    assert info.value.file == str(path)
    return info.value


@pytest.mark.parametrize("tag", DANGEROUS_TAGS[:6])
@pytest.mark.parametrize("where", ["top", "sae", "key", "sweep", "anchor", "name"])
def test_python_tags_never_run_code(tmp_path, tag, where):
    tag = tag.replace("PWNDIR", str(tmp_path))
    text = {
        "top": f"{tag}\n",
        "sae": f"name: t\nsae:\n  architecture: relu\n  d_sae: {tag}\n",
        "key": f"name: t\n? {tag}\n: 1\nsae: {{architecture: relu}}\n",
        "sweep": BASE + f"sweep:\n  grid:\n    train.lr:\n      - {tag}\n",
        "anchor": BASE + f"x: &a {tag}\ny: *a\n",
        "name": f"name: {tag}\nsae: {{architecture: relu}}\n",
    }[where]
    path = tmp_path / "s.yaml"
    path.write_text(text)
    err = spec_error(path)
    assert not list(tmp_path.glob("pwned*"))
    if where != "key":  # a mapping key is refused by the line map before any tag is read
        assert "tag" in err.message or "constructor" in err.message, err


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "x: !!set {a, b}\n", "3: x: unknown key 'x'"),
        ("name: t\nsae: !relu {d_sae: 4}\n", "2: invalid YAML: could not determine a constructor"
         " for the tag '!relu'"),
        (BASE + "seed: !!int abc\n", "3: invalid YAML: cannot read 'abc' as an integer"),
        (BASE + "seed: !!bool maybe\n", "3: invalid YAML: cannot read 'maybe' as a boolean"),
        (BASE + "seed: !!timestamp 2001-13-45\n", "3: invalid YAML: cannot read '2001-13-45' as "
         "a date"),
        (BASE + "seed: !!float\n", "3: invalid YAML: cannot read '' as a number"),
        (BASE + "seed: 0x" + "f" * 400 + "\n", "3: invalid YAML: integer of 402 characters is "
         "too large"),
        (BASE + "seed: " + "9" * 5000 + "\n", "3: invalid YAML: cannot read"),
        (BASE + "train: {lr: .nan}\n", "3: train.lr: nan is not a finite number"),
        (BASE + "sweep: {grid: {train.lr: [1e-3, 1e999]}}\n", "3: sweep.grid.train.lr.1: inf is "
         "not a finite number"),
        ("? [a]\n: 1\nname: t\n", "1: a key must be a name, not a list"),
        ("name: t\nsae:\n  ? {a: 1}\n  : 1\n", "3: sae: a key must be a name, not a mapping"),
        ("1: x\n" + BASE, "1: 1: Keys should be strings (got 1)"),
        ("name: t\nsae: {architecture: relu, 1.5: x}\n", "2: sae.1.5: Keys should be strings"),
        (BASE + "name: u\n", "3: name: duplicate key"),
        (BASE + "---\nname: u\n", "3: invalid YAML: but found another document"),
        ("- name: t\n", "1: the spec must be a mapping of sections, got list"),
        ("42\n", "1: the spec must be a mapping of sections, got int"),
        ("!!set {a}\n", "1: the spec must be a mapping of sections, got set"),
        ("", ": the spec is empty"),
        ("name: t\nsae: &a [*a]\n", "2: alias *a refers to a mapping or list that contains it"),
        ("name: t\nsae: &a {b: *a}\n", "2: alias *a refers to a mapping or list that contains"),
        ("name: *nope\n", "1: invalid YAML: found undefined alias 'nope'"),
        ("name: [" * 10_000 + "]" * 10_000 + "\n", "1: the spec nests mappings/lists deeper "
         "than 64 levels"),
        ("name: t\x00\n", "1: invalid YAML: character '\\x00' is not allowed in YAML text"),
        (BASE + "model: {name: '~nosuchuser/x'}\n", "3: model.name: model '~nosuchuser/x' is "
         "neither a local model directory nor a valid Hugging Face name"),
        (BASE + "model: {name: " + "m" * 300 + "}\n", "3: model.name: cannot look for a model "
         "directory"),
        (BASE + "data: {dataset: '~nosuchuser/x'}\n", "3: data.dataset: dataset file not found"),
        (BASE + "sweep: {grid: {site.hook_name: [[blocks.0.hook_resid_post]]}}\n",
         "3: site.hook_name: each value swept over site.hook_name must be one hook name"),
        (BASE.replace("relu}", "relu, expansion_factor: 1e308}"), "2: sae.expansion_factor: "
         "expansion_factor 1e+308 x d_in 128 is not a finite width"),
        (BASE.replace("relu}", f"relu, compute_matched_to: {{architecture: relu, d_sae: "
                               f"{2**1020}}}}}"),
         "2: sae.compute_matched_to.d_sae: Input should be less than or equal to 67108864"),
        (BASE + "sweep: {grid: {seed: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], train.lr: " +
         str([i / 1e4 + 1e-4 for i in range(40)]) + ", data.shuffle_seed: " +
         str(list(range(40))) + "}}\n", "3: the spec expands to 16,000 runs"),
    ],
)
def test_hostile_yaml_is_a_spec_error(tmp_path, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    start = time.perf_counter()
    err = spec_error(path)
    assert time.perf_counter() - start < 10
    where = expected if expected.startswith(":") else f":{expected}"  # ':LINE: ...' or ': ...'
    assert str(err).startswith(f"error: {path}{where}"), str(err)


def test_billion_laughs_is_refused_at_once(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(billion_laughs(9))  # 10^10 values when expanded
    start = time.perf_counter()
    err = spec_error(path)
    assert time.perf_counter() - start < 2
    assert "expands to more than 100,000 values" in str(err)


def test_big_and_non_utf8_files(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: t\n# " + b"x" * 1_000_000 + b"\n")
    assert "larger than 1,000,000 bytes" in str(spec_error(path))
    path.write_bytes(b"name: t\nsae: {architecture: relu}\nseed: \xff\xfe\n")
    assert str(spec_error(path)) == (
        f"error: {path}:3: the spec is not UTF-8 text (byte 0xff cannot be decoded) (save the "
        "file as UTF-8)"
    )
    assert "cannot read the spec" in str(spec_error(tmp_path))  # a folder, not a file


def test_cli_prints_one_line_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(f'name: t\nsae: !!python/object/apply:os.system ["touch {tmp_path}/pwned"]\n')
    assert cli_main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}:2: invalid YAML")
    assert not (tmp_path / "pwned").exists()
    path.write_text('name: t\nsae: {architecture: relu, "\\e[2J\\nx": 1}\n')  # ESC, newline
    assert cli_main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:2: sae.\\x1b[2J\\nx: unknown key '\\x1b[2J\\nx' " + (
        "(valid keys: architecture, b_dec_init, compute_matched_to, d_in, d_out, d_sae, "
        "decoder_init_norm, decoder_mode, expansion_factor, ghost_grads, "
        "init_encoder_as_decoder_transpose, skip_connection, sparsity)\n"
    )


# ---------------------------------------------------------------------------------------------
# Names cannot escape the registry folder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../../x", "/abs", "a/b", "..", ".", "", "a\\b", "~", "-rf", "a\x00b", "x\ny", "a b",
     "é", "n" * 201, "n" * 10_000],
)
def test_names_that_could_be_paths_are_refused(tmp_path, name):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": name, "sae": {"architecture": "relu"}}))
    err = spec_error(path)
    assert err.field == "name", err
    assert len(str(err)) < 300  # a 10k-character name is not echoed in full


@FUZZ
@given(name=st.text(max_size=250))
def test_every_accepted_name_is_one_plain_path_component(workdir, name):
    text = yaml.safe_dump({"name": name, "sae": {"architecture": "relu"}})
    if outcome(workdir, text) == "valid":
        assert 0 < len(name) <= 200
        assert Path(name).name == name and name not in (".", "..")
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name)


def test_run_folders_stay_in_the_registry(tmp_path):
    """Folders are named by run id (hex), never by anything the spec spells."""
    from saerun.registry import Registry

    path = tmp_path / "s.yaml"
    path.write_text(VALID)
    plan = prepare(path).plan
    with Registry(tmp_path / "reg" / "saerun.db") as reg:
        runs = (tmp_path / "reg" / "runs").resolve()
        for job in plan.jobs:
            assert reg.artifacts_dir(job.run_id).resolve().parent == runs
        with pytest.raises(SaerunError):
            reg.artifacts_dir("../../etc")


# ---------------------------------------------------------------------------------------------
# The long run: 1,000 + 1,000 examples, with a tally
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_thousands_of_fuzzed_specs(workdir):
    tally: dict[str, Counter] = {"plausible": Counter(), "text": Counter()}

    @FUZZ_SLOW
    @given(text=plausible_specs())
    def plausible(text):
        tally["plausible"][outcome(workdir, text)] += 1

    @FUZZ_SLOW
    @given(content=TEXTS)
    def text(content):
        tally["text"][outcome(workdir, _with_pwn_dir(content, workdir))] += 1
        _no_code_ran(workdir)

    start = time.perf_counter()
    plausible()
    text()
    for family, counts in tally.items():
        print(f"\n{family}: {sum(counts.values())} runs of the property, "
              f"{counts['valid']} valid plans, {counts['error']} saerun errors, 0 tracebacks")
    print(f"{time.perf_counter() - start:.1f} s")
    assert all(sum(c.values()) >= 1000 for c in tally.values())
