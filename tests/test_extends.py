"""Spec composition: `extends: base.yaml` with overrides; merge rules, chains, cycles, errors that
name the file and line a value came from, what the registry keeps, and hostile `extends` values.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saerun.errors import SaerunError, SpecError
from saerun.runner import prepare
from saerun.spec import MAX_EXTENDS, MAX_SPEC_BYTES, load_spec

BASE = """\
name: base
model: {name: saerun/tiny-stdlib}
site: {hook_name: [blocks.0.hook_resid_post, blocks.1.hook_resid_post]}
data:
  context_size: 64
  train_tokens: 8192
sae:
  architecture: relu
  expansion_factor: 4
  sparsity: {penalty: sqrt_l1, coefficient: 0.5}
train:
  lr: 1e-3
  adam_betas: [0.9, 0.99]
  grad_clip_norm: 0.5
sweep:
  seeds: [0, 1]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path, plan: bool = False) -> SpecError:
    with pytest.raises(SpecError) as info:
        prepare(path) if plan else load_spec(path)
    text = str(info.value)
    assert text.isprintable() and "\n" not in text, text
    return info.value


def short(err: SaerunError, folder: Path) -> str:
    return str(err).replace(f"{folder}{os.sep}", "")


def run_ids(path: Path) -> list[str]:
    return [job.run_id for job in prepare(path).plan.jobs]


# ---------------------------------------------------------------------------------------------
# Merge rules
# ---------------------------------------------------------------------------------------------


def test_child_merges_over_base(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", """\
        extends: base.yaml
        name: child
        data: {train_tokens: 4096}
        site: {hook_name: blocks.1.hook_resid_post}
        sae: {sparsity: {coefficient: 0.25}}
        train: {adam_betas: [0.8, 0.9]}
        """)
    spec, raw, lines, _ = load_spec(child)
    assert "extends" not in raw and ("extends",) not in lines
    assert spec.name == "child"
    assert spec.data.train_tokens == 4096 and spec.data.context_size == 64  # merged key by key
    assert spec.site.hook_name == "blocks.1.hook_resid_post"  # a list is replaced, not extended
    assert spec.train.adam_betas == (0.8, 0.9)
    assert spec.train.lr == pytest.approx(1e-3) and spec.train.grad_clip_norm == 0.5
    assert spec.sae.architecture == "relu" and spec.sae.expansion_factor == 4  # same arch: merged
    assert spec.sae.sparsity.penalty == "sqrt_l1" and spec.sae.sparsity.coefficient == 0.25
    assert spec.sweep.seeds == [0, 1]  # inherited
    # Each key path knows its file: inherited lines are the base's, overridden ones the child's.
    lr, tokens = lines[("train", "lr")], lines[("data", "train_tokens")]
    assert (lr, lr.file) == (12, str(tmp_path / "base.yaml"))
    assert (tokens, tokens.file) == (3, str(child))
    assert lines[("data", "context_size")].file == str(tmp_path / "base.yaml")
    assert lines[("site", "hook_name")].file == str(child)
    assert ("site", "hook_name", 1) not in lines  # the base's list items went with the list


def test_architecture_switch_replaces_sae(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nsae: {architecture: topk, k: 8}\n")
    spec, _, lines, _ = load_spec(child)
    # relu's sparsity and expansion_factor do not leak into the topk section
    assert spec.sae.model_dump(exclude_defaults=True, exclude={"decoder_init_norm"}) == {
        "architecture": "topk", "k": 8}
    assert ("sae", "sparsity") not in lines and ("sae", "expansion_factor") not in lines
    # Without an architecture the child's sae merges into the base's (same architecture).
    same = write(tmp_path, "same.yaml", "extends: base.yaml\nsae: {architecture: relu, d_sae: 64,"
                 " expansion_factor: null}\n")
    spec, _, _, _ = load_spec(same)
    assert spec.sae.d_sae == 64 and spec.sae.sparsity.penalty == "sqrt_l1"


def test_null_is_a_value_not_a_deletion(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", """\
        extends: base.yaml
        train: {grad_clip_norm: null}
        sae: {expansion_factor: null, d_sae: 96}
        """)
    spec, raw, _, _ = load_spec(child)
    assert spec.train.grad_clip_norm is None  # null turns clipping off, as in a single file
    assert raw["sae"]["expansion_factor"] is None and spec.sae.d_sae == 96
    # null where the schema allows none is an error at the child's line
    bad = write(tmp_path, "bad.yaml", "extends: base.yaml\ntrain: {lr: null}\n")
    assert short(error_of(bad), tmp_path).startswith("error: bad.yaml:2: train.lr: Input should be")


def test_sweep_inherited_replaced_or_dropped(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    inherit = write(tmp_path, "inherit.yaml", "extends: base.yaml\nname: inherit\n")
    assert len(prepare(inherit).plan.jobs) == 2 * 2  # sites x the base's seeds
    # A child sweep replaces the base's whole: here over a field the base defines.
    swept = write(tmp_path, "swept.yaml", """\
        extends: base.yaml
        name: swept
        sweep:
          grid: {train.lr: [1e-4, 3e-4, 1e-3]}
        """)
    jobs = prepare(swept).plan.jobs
    assert len(jobs) == 2 * 3
    assert sorted({j.config.train.lr for j in jobs}) == pytest.approx([1e-4, 3e-4, 1e-3])
    assert {j.config.seed for j in jobs} == {0}
    assert jobs[0].provenance["train.lr"] == "sweep"
    assert jobs[0].provenance["data.context_size"] == "spec"  # inherited values are the spec's
    dropped = write(tmp_path, "dropped.yaml", "extends: base.yaml\nsweep: {}\n")
    assert len(prepare(dropped).plan.jobs) == 2


def test_chain_of_three_and_relative_paths(tmp_path):
    write(tmp_path, "team/base.yaml", BASE)
    write(tmp_path, "team/variants/mid.yaml", """\
        extends: ../base.yaml
        name: mid
        train: {lr: 2e-3}
        data: {context_size: 32}
        """)
    leaf = write(tmp_path, "me/leaf.yaml", """\
        extends: ../team/variants/mid.yaml
        name: leaf
        train: {batch_tokens: 512}
        """)
    spec, _, lines, text = load_spec(leaf)
    assert (spec.name, spec.train.lr, spec.train.batch_tokens) == ("leaf", 2e-3, 512)
    assert spec.data.context_size == 32 and spec.data.train_tokens == 8192
    assert spec.train.adam_betas == (0.9, 0.99)
    assert lines[("train", "lr")].file == str(tmp_path / "me/../team/variants/mid.yaml")
    assert lines[("train", "adam_betas")].file == str(
        tmp_path / "me/../team/variants/../base.yaml")
    assert text.splitlines()[0] == (
        f"# Composed by saerun from {leaf} extends {tmp_path}/me/../team/variants/mid.yaml "
        f"extends {tmp_path}/me/../team/variants/../base.yaml:"
    )
    # An absolute path is taken as it is, from any folder.
    absolute = write(tmp_path, "elsewhere/abs.yaml", f"extends: {tmp_path / 'team/base.yaml'}\n")
    assert load_spec(absolute)[0].name == "base"


def test_relative_to_the_file_not_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, "specs/base.yaml", BASE)
    write(tmp_path, "base.yaml", "name: decoy\nsae: {architecture: topk}\n")
    child = write(tmp_path, "specs/sub/child.yaml", "extends: ../base.yaml\n")
    monkeypatch.chdir(tmp_path / "specs")  # ../base.yaml from here would be the decoy
    assert load_spec(Path("sub/child.yaml"))[0].name == "base"
    assert load_spec(child)[0].sae.architecture == "relu"


def test_a_child_that_overrides_nothing_has_the_base_run_ids(tmp_path):
    base = write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "sub/child.yaml", "extends: ../base.yaml\nname: renamed\n")
    assert run_ids(child) == run_ids(base)
    assert len(run_ids(base)) == 4


# ---------------------------------------------------------------------------------------------
# What the registry keeps
# ---------------------------------------------------------------------------------------------


def test_stored_text_is_the_composed_spec(tmp_path):
    base = write(tmp_path, "base.yaml", BASE.replace("name: base", "name: '1e5'"))
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nsae: {architecture: topk, k: 4}\n")
    assert prepare(base).text == base.read_text()  # no extends: the file, byte for byte
    prepared = prepare(child)
    assert prepared.text.startswith(f"# Composed by saerun from {child} extends {base}:\n")
    assert "extends" not in yaml.safe_load(prepared.text)
    # Standalone: loading the stored text again gives the same data and the same run ids.
    again = write(tmp_path, "elsewhere/again.yaml", prepared.text)
    assert load_spec(again)[1] == prepared.raw
    assert run_ids(again) == [j.run_id for j in prepared.plan.jobs]
    assert prepared.spec.name == "1e5"  # a name that reads as a number stays a string


# ---------------------------------------------------------------------------------------------
# Errors name the file and line the value came from
# ---------------------------------------------------------------------------------------------


def test_validation_errors_point_at_the_defining_file(tmp_path):
    write(tmp_path, "base.yaml", BASE.replace("  lr: 1e-3", "  lr: fast"))
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: c\n")
    assert short(error_of(child), tmp_path) == (
        "error: base.yaml:12: train.lr: Input should be a valid number, unable to parse string "
        "as a number (got 'fast')")
    # Overridden in the child: the child's line.
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "name: c\nextends: base.yaml\ntrain:\n  lr: -1\n")
    assert short(error_of(child), tmp_path) == (
        "error: child.yaml:4: train.lr: Input should be greater than 0 (got -1)")
    # An unknown key in the base, a missing architecture in the child's merged sae.
    write(tmp_path, "base.yaml", BASE.replace("  context_size: 64", "  context_sise: 64"))
    assert short(error_of(child), tmp_path) == (
        "error: base.yaml:5: data.context_sise: unknown key 'context_sise' (did you mean "
        "'context_size'?)")
    write(tmp_path, "base.yaml", "model: {name: saerun/tiny-stdlib}\n")  # a partial base
    assert short(error_of(child), tmp_path) == "error: child.yaml:1: sae: required field is missing"


def test_plan_errors_point_at_the_defining_file(tmp_path):
    write(tmp_path, "base.yaml",
          BASE.replace("blocks.1.hook_resid_post]", "blocks.9.hook_resid_post]"))
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: c\n")
    assert short(error_of(child, plan=True), tmp_path).startswith(
        "error: base.yaml:3: site.hook_name: unknown hook name 'blocks.9.hook_resid_post'")
    fixed = write(tmp_path, "fixed.yaml", "extends: base.yaml\nname: c\n"
                  "site: {hook_name: blocks.1.hook_resid_post}\n")
    assert len(prepare(fixed).plan.jobs) == 2
    write(tmp_path, "base.yaml", BASE)
    # A sweep in the child over a field the base defines: the child's sweep line.
    swept = write(tmp_path, "swept.yaml", """\
        extends: base.yaml
        sweep:
          grid: {train.lr: [1e-3, -1]}
        """)
    assert short(error_of(swept, plan=True), tmp_path) == (
        "error: swept.yaml:3: train.lr: Input should be greater than 0 (got -1) (from the sweep)")
    # The same run twice: the sweep's line, in the base where the sweep is inherited.
    write(tmp_path, "base.yaml", BASE.replace("seeds: [0, 1]", "seeds: [1, 1]"))
    assert short(error_of(child, plan=True), tmp_path).startswith(
        "error: base.yaml:15: sweep: the sweep produces the same run twice")
    write(tmp_path, "base.yaml", BASE.replace("  context_size: 64", "  context_size: 100000"))
    assert short(error_of(child, plan=True), tmp_path).startswith(
        "error: base.yaml:5: data.context_size: context_size 100000 is longer than")
    write(tmp_path, "base.yaml", BASE.replace("  train_tokens: 8192", "  dataset: nope.txt"))
    assert short(error_of(child, plan=True), tmp_path).startswith(
        "error: base.yaml:6: data.dataset:")


def test_missing_base_names_the_extends_line(tmp_path):
    child = write(tmp_path, "child.yaml", "name: c\nextends: nope/base.yaml\n")
    err = error_of(child)
    assert (err.file, err.line, err.field) == (str(child), 2, "extends")
    assert short(err, tmp_path) == (
        "error: child.yaml:2: extends: base spec 'nope/base.yaml' not found")
    # A missing base further down the chain names the file that asked for it.
    write(tmp_path, "mid.yaml", "\n\nextends: gone.yaml\n")
    child = write(tmp_path, "child.yaml", "extends: mid.yaml\n")
    assert short(error_of(child), tmp_path) == (
        "error: mid.yaml:3: extends: base spec 'gone.yaml' not found")


def test_cycles_and_depth(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nextends: b.yaml\n")
    write(tmp_path, "b.yaml", "sae: {architecture: relu}\nextends: ./a.yaml\n")
    assert short(error_of(tmp_path / "a.yaml"), tmp_path) == (
        "error: b.yaml:2: extends: extends makes a cycle: a.yaml extends b.yaml extends a.yaml")
    me = write(tmp_path, "me.yaml", "extends: me.yaml\n")
    assert short(error_of(me), tmp_path) == (
        "error: me.yaml:1: extends: extends makes a cycle: me.yaml extends me.yaml")
    write(tmp_path, f"d{MAX_EXTENDS}.yaml", "name: deep\nsae: {architecture: relu}\n")
    for i in range(MAX_EXTENDS):
        write(tmp_path, f"d{i}.yaml", f"extends: d{i + 1}.yaml\n")
    assert load_spec(tmp_path / "d0.yaml")[0].name == "deep"  # MAX_EXTENDS bases: fine
    write(tmp_path, "d-1.yaml", "extends: d0.yaml\n")
    err = error_of(tmp_path / "d-1.yaml")
    assert f"extends chains more than {MAX_EXTENDS} base specs" in str(err)


# ---------------------------------------------------------------------------------------------
# Hostile `extends` values: a SpecError each, never a traceback or a hang
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3", "extends: extends must be the path of a spec file, got 3"),
        ("[a.yaml]", "extends: extends must be the path of a spec file, got ['a.yaml']"),
        ("{a: 1}", "extends: extends must be the path of a spec file, got {'a': 1}"),
        ("", "extends: extends must be the path of a spec file, got None"),
        ("''", "extends: extends must be the path of a spec file, got ''"),
        ("true", "extends: extends must be the path of a spec file, got True"),
        ('"a\\0b"', "extends: cannot read the base spec"),
        ("x" * 5000, "extends: cannot read the base spec"),
        ("/dev/zero", "extends: the base spec '/dev/zero' is not a regular file"),
        ("/", "extends: the base spec '/' is a directory"),
        (".", "is a directory"),
        ("'~/base.yaml'", "extends: base spec '~/base.yaml' not found"),
    ],
)
def test_bad_extends_values(tmp_path, value, expected):
    child = write(tmp_path, "child.yaml", f"name: c\nextends: {value}\n")
    err = error_of(child)
    assert err.file == str(child) and err.line == 2 and err.field == "extends"
    assert expected in short(err, tmp_path)


def test_fifo_and_big_bases_do_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")  # opening it for reading would block without a writer
    child = write(tmp_path, "child.yaml", "extends: pipe.yaml\n")
    assert "is not a regular file" in str(error_of(child))
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "#" * MAX_SPEC_BYTES)
    child = write(tmp_path, "child.yaml", "extends: big.yaml\n")
    assert short(error_of(child), tmp_path) == (
        "error: child.yaml:1: extends: the base spec 'big.yaml' is larger than 1,000,000 bytes")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\xff\xfe\x00garbage", "error: base.yaml:1: the spec is not UTF-8 text"),
        (b"name: [unclosed\n", "error: base.yaml:2: invalid YAML:"),
        (b"- a\n- b\n", "error: base.yaml:1: the spec must be a mapping of sections, got list"),
        (b"", "error: base.yaml: the spec is empty"),
        (b"a: &a [*a]\n", "error: base.yaml:1: alias *a refers to a mapping or list"),
        (b"x: !!python/object/apply:os.system ['touch pwned']\n",
         "error: base.yaml:1: invalid YAML"),
        (b"train: {lr: .inf}\n", "error: base.yaml:1: train.lr: inf is not a finite number"),
        (b"extends: 7\n", "error: base.yaml:1: extends: extends must be the path of a spec file"),
    ],
)
def test_a_base_that_is_not_a_spec(tmp_path, content, expected):
    (tmp_path / "base.yaml").write_bytes(content)
    child = write(tmp_path, "child.yaml", "name: c\nextends: base.yaml\n")
    assert short(error_of(child), tmp_path).startswith(expected)
    assert not list(tmp_path.glob("pwned*"))


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=30), st.text(alphabet="./~ab\\", max_size=12),
    st.sampled_from(["base.yaml", "child.yaml", "./child.yaml", "sub", "sub/", "/dev/null",
                     "/dev/zero", "/", "../" * 40, "x" * 300, "base.yaml\n", "\ufeffbase.yaml",
                     "self-ref/../child.yaml", "*a", "!!int 3", "%TAG"]),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=VALUES)
def test_fuzz_extends_values(tmp_path, value):
    (tmp_path / "sub").mkdir(exist_ok=True)
    write(tmp_path, "base.yaml", "name: b\nsae: {architecture: relu}\n")
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"name": "c", "extends": value}), encoding="utf-8")
    try:
        prepared = prepare(child)
    except SaerunError as err:
        text = str(err)
        assert text.isprintable(), repr(text)
        assert err.file in (str(child), str(tmp_path / "base.yaml")), text
        return
    assert prepared.plan.jobs and prepared.spec.name == "c"
