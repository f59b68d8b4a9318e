"""Spec loading: YAML quirks, and errors that name file, line and field (asserted verbatim)."""

from __future__ import annotations

import json
import textwrap

import pytest
from pydantic import ValidationError

from saerun.errors import SpecError
from saerun.spec import Spec, load_spec

GOOD = """\
name: t
sae:
  architecture: relu
  d_sae: 512
  sparsity: {penalty: sqrt_l1, coefficient: 5}
train:
  lr: 1e-4
"""


def write(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value).replace(str(path), "s.yaml")


def test_good_spec_and_yaml11_exponent(tmp_path):
    spec, raw, lines, _ = load_spec(write(tmp_path, GOOD))
    assert spec.train.lr == pytest.approx(1e-4) and isinstance(spec.train.lr, float)
    assert spec.sae.sparsity.penalty == "sqrt_l1"
    assert lines[("train", "lr")] == 7
    with pytest.raises(ValidationError):  # frozen: configs never mutate
        spec.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("  lr: 1e-4", "  lrr: 1e-4"),
         "error: s.yaml:7: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"),
        (GOOD.replace("  lr: 1e-4", "  lr: fast"),
         "error: s.yaml:7: train.lr: Input should be a valid number, unable to parse string as a"
         " number (got 'fast')"),
        (GOOD.replace("  lr: 1e-4", "  lr: -1e-4"),
         "error: s.yaml:7: train.lr: Input should be greater than 0 (got -0.0001)"),
        (GOOD.replace("architecture: relu", "architecture: gatd"),
         "error: s.yaml:2: sae: unknown architecture 'gatd' (allowed: batchtopk, gated, jumprelu, "
         "matryoshka, relu, topk)"),
        (GOOD.replace("penalty: sqrt_l1", "penalty: l2"),
         "error: s.yaml:5: sae.sparsity.penalty: Input should be 'l1', 'sqrt_l1' or 'tanh' (got "
         "'l2')"),
        (GOOD.replace("  d_sae: 512", "  d_sae: 512\n  expansion_factor: 4"),
         "error: s.yaml:2: sae: give one of d_sae, expansion_factor, compute_matched_to"),
        ("name: t\n", "error: s.yaml:1: sae: required field is missing"),
        ("name: t\nsae: {architecture: relu}\nsae: {architecture: relu}\n",
         "error: s.yaml:3: sae: duplicate key"),
        ("name: t\nsae: [unclosed\n", "error: s.yaml:3: invalid YAML: expected ',' or ']', but "
         "got '<stream end>'"),
        ("- a\n- b\n", "error: s.yaml:1: the spec must be a mapping of sections, got list "
         "(see `saerun schema`)"),
        ("name: t\nx: !!python/object/apply:os.system ['echo pwned']\n",
         "error: s.yaml:2: invalid YAML: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'"),
        ("name: t\nsae: {architecture: relu}\nsweep: {zip: {train.lr: [1, 2], seed: [1]}}\n",
         "error: s.yaml:3: sweep: every zip list must have the same length, got [1, 2]"),
    ],
)
def test_errors_name_file_line_field(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_every_field_has_a_description():
    schema = json.dumps(Spec.model_json_schema())
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, prop in node.get("properties", {}).items():
                if "description" not in prop:
                    missing.append(f"{path}.{key}")
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(json.loads(schema), "")
    assert missing == []
