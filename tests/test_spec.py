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


# -- eval.metrics names, and exported specs planning to the same run id ------------------------


def test_eval_metrics_lists_what_it_switches_and_reads_v1_names(tmp_path):
    from saerun.spec import EvalConfig

    assert EvalConfig().metrics == ["ce_loss_recovered", "delta_lm_loss", "kl_score"]
    v1 = ["l0", "mse", "fvu", "explained_variance", "cosine_similarity", "l2_ratio", "shrinkage",
          "ce_loss_recovered", "delta_lm_loss", "kl", "dead", "dense"]
    assert EvalConfig(metrics=v1).metrics == ["ce_loss_recovered", "delta_lm_loss", "kl_score"]
    assert EvalConfig(metrics=["l0", "kl", "kl_score"]).metrics == ["kl_score"]
    with pytest.raises(ValidationError):
        EvalConfig(metrics=["dead_fraction"])  # always computed: nothing to switch


V1_TOPK = """\
name: v1
sae: {architecture: topk}
eval: {metrics: [l0, fvu, kl]}
sweep: {grid: {sae.aux_k: [null, 16, 8]}}
"""


@pytest.mark.parametrize("source", [
    "specs/quickstart.yaml", "specs/architectures.yaml", "specs/matryoshka_batchtopk.yaml",
    "specs/gemma2_2b_jumprelu.yaml", V1_TOPK,
])
def test_an_exported_run_plans_to_its_own_run_id(tmp_path, source):
    """export_spec of every planned job (derived aux_k and prefixes, v1 and new metric names)
    plans back to that job's id."""
    from saerun.runner import prepare
    from saerun.spec import export_spec

    if not source.startswith("specs/"):
        source = str(write(tmp_path, source))
    jobs = prepare(source).plan.jobs
    for job in jobs:
        run = {"run_id": job.run_id, "name": job.name, "spec_name": "x",
               "config": job.config.model_dump(mode="json")}
        exported = tmp_path / f"{job.run_id}.yaml"
        exported.write_text(export_spec(run))
        assert [j.run_id for j in prepare(exported).plan.jobs] == [job.run_id], job.name
