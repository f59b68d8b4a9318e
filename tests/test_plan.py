"""The planner: sweep expansion, provenance, stable run ids, grouping, errors at sweep lines."""

from __future__ import annotations

import textwrap

import pytest

from saerun.errors import SpecError
from saerun.plan import ModelDims, build_plan
from saerun.spec import load_spec, locate

HOOKS = {f"blocks.{i}.hook_resid_post": 64 for i in range(2)} | {"blocks.0.mlp.hook_post": 256}


def dims(name: str) -> ModelDims:
    return ModelDims(n_layers=2, hook_widths=HOOKS, source="test")


SPEC = """\
name: sweep
seed: 3
site: {hook_name: [blocks.0.hook_resid_post, blocks.1.hook_resid_post]}
sae:
  architecture: relu
  expansion_factor: 4
  sparsity: {penalty: l1}
sweep:
  grid:
    sae.sparsity.coefficient: [1, 2]
    sae.sparsity.penalty: [l1, sqrt_l1]
  seeds: [0, 1]
"""


def plan_of(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    spec, raw, lines, _ = load_spec(path)
    try:
        return build_plan(spec, raw, dims)
    except SpecError as err:  # the planner names key paths; the file's lines locate them
        raise locate(err, lines, str(path), spec) from None


def test_expansion_provenance_and_groups(tmp_path):
    plan = plan_of(tmp_path, SPEC)
    assert len(plan.jobs) == 2 * 2 * 2 * 2  # sites x coefficients x penalties x seeds
    assert len(plan.groups) == 1  # same model, data and batch size: one shared stream
    job = plan.jobs[0]
    assert job.config.sae.d_in == 64 and job.config.sae.d_sae == 256
    assert job.provenance["sae.d_sae"] == "derived: expansion_factor 4 x d_in 64"
    assert job.provenance["sae.d_in"] == "derived: width of blocks.0.hook_resid_post (test)"
    assert job.provenance["sae.sparsity.coefficient"] == "sweep"
    assert job.provenance["seed"] == "sweep"
    assert job.provenance["train.lr"] == "default"
    assert job.provenance["sae.architecture"] == "spec"
    assert {j.config.sae.sparsity.penalty for j in plan.jobs} == {"l1", "sqrt_l1"}
    assert len({j.run_id for j in plan.jobs}) == len(plan.jobs)


def test_run_id_depends_only_on_resolved_config(tmp_path):
    a = plan_of(tmp_path, SPEC, "a.yaml")
    # Renamed spec, another file, d_sae spelled out instead of the expansion factor: same runs.
    b = plan_of(tmp_path, SPEC.replace("name: sweep", "name: other").replace(
        "expansion_factor: 4", "d_sae: 256"), "b.yaml")
    assert [j.run_id for j in a.jobs] == [j.run_id for j in b.jobs]
    c = plan_of(tmp_path, SPEC.replace("seed: 3", "seed: 3\ntrain: {lr: 1e-3}"), "c.yaml")
    assert not {j.run_id for j in a.jobs} & {j.run_id for j in c.jobs}


def test_batch_size_splits_groups(tmp_path):
    text = SPEC.replace(
        "    sae.sparsity.penalty: [l1, sqrt_l1]", "    train.batch_tokens: [64, 128]"
    )
    assert len(plan_of(tmp_path, text).groups) == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        (SPEC.replace("sae.sparsity.coefficient: [1, 2]", "sae.sparsity.coefficent: [1, 2]"),
         "error: s.yaml:10: sae.sparsity.coefficent: unknown key 'coefficent' (from the sweep) "
         "(did you mean 'coefficient'?)"),
        (SPEC.replace("sae.sparsity.coefficient: [1, 2]", "sae.sparsity.coefficient: [1, -2]"),
         "error: s.yaml:10: sae.sparsity.coefficient: Input should be greater than or equal to 0 "
         "(got -2) (from the sweep)"),
        (SPEC.replace("blocks.1.hook_resid_post]", "blocks.7.hook_resid_post]"),
         "error: s.yaml:3: site.hook_name: unknown hook name 'blocks.7.hook_resid_post' for model "
         "'saerun/tiny-stdlib' (2 layers) (e.g. blocks.0.hook_resid_post ... "
         "blocks.1.hook_resid_post, blocks.N.hook_mlp_out, blocks.N.hook_attn_out)"),
        (SPEC.replace("expansion_factor: 4", "expansion_factor: 4\n  d_in: 32"),
         "error: s.yaml:7: sae.d_in: d_in 32 does not match the model's width 64 at "
         "'blocks.0.hook_resid_post' (omit d_in to take it from the model)"),
        (SPEC.replace("  seeds: [0, 1]", "  seeds: [0, 0]"),
         "error: s.yaml:8: sweep: the sweep produces the same run twice: sweep[site.hook_name="
         "blocks.0.hook_resid_post,sparsity.coefficient=1,sparsity.penalty=l1,seed=0] and "
         "sweep[site.hook_name=blocks.0.hook_resid_post,sparsity.coefficient=1,sparsity.penalty=l1,"
         "seed=0] (remove the repeated value)"),
    ],
)
def test_plan_errors_point_at_the_right_line(tmp_path, text, expected):
    with pytest.raises(SpecError) as info:
        plan_of(tmp_path, text)
    assert str(info.value).replace(str(tmp_path / "s.yaml"), "s.yaml") == expected


def test_width_follows_the_hook(tmp_path):
    text = SPEC.replace("blocks.1.hook_resid_post]", "blocks.0.mlp.hook_post]")
    widths = {j.config.site.hook_name: j.config.sae.d_in for j in plan_of(tmp_path, text).jobs}
    assert widths == {"blocks.0.hook_resid_post": 64, "blocks.0.mlp.hook_post": 256}


def test_the_planner_names_key_paths_and_the_boundary_their_lines(tmp_path):
    """build_plan needs no file and no line map: its errors carry the key path alone, and
    spec.locate gives them the file and line (a swept value: the sweep axis's line)."""
    path = tmp_path / "s.yaml"
    path.write_text(SPEC.replace("expansion_factor: 4", "expansion_factor: 4\n  d_in: 32"))
    spec, raw, lines, _ = load_spec(path)
    with pytest.raises(SpecError) as info:
        build_plan(spec, raw, dims)
    err = info.value
    assert (err.path, err.field, err.file, err.line) == (("sae", "d_in"), "sae.d_in", None, None)
    assert locate(err, lines, "s.yaml", spec).line == 7 and err.file == "s.yaml"
    swept = SpecError("bad", path=("sae", "sparsity", "coefficient"))
    grid_line = lines[("sweep", "grid", "sae.sparsity.coefficient")]
    assert locate(swept, lines, "s.yaml", spec).line == grid_line == 11  # not the sae line


def test_derived_values_are_resolved_with_how(tmp_path):
    text = """\
        name: t
        site: {hook_name: blocks.0.mlp.hook_post}
        sae: {architecture: matryoshka, d_sae: 1024}
        """
    job = plan_of(tmp_path, text).jobs[0]
    sae, prov = job.config.sae, job.provenance
    assert (sae.aux_k, prov["sae.aux_k"]) == (128, "derived: d_in // 2 = 256 // 2")
    assert sae.prefix_widths == [16, 64, 256, 1024] and sae.prefix_weights == [0.25] * 4
    assert sae.decoder_init_norm == 1.0 and prov["sae.decoder_init_norm"].startswith("derived:")
    assert job.step_flops_per_token == 18 * 256 * 1024  # saerun.flops: 9 products
    relu = plan_of(tmp_path, "name: r\nsae: {architecture: relu, sparsity: {penalty: tanh}}\n")
    assert relu.jobs[0].config.sae.sparsity.coefficient == 0.3
    assert relu.jobs[0].provenance["sae.sparsity.coefficient"] == "derived: default of penalty tanh"


def test_run_ids_hash_the_v1_identity_view(tmp_path):
    """A value written by hand that its rule would give is the same run as the derived one;
    v1's twelve metric names are the default; metrics switched off are another run."""
    def run_id(sae: str, extra: str = "") -> str:
        return plan_of(tmp_path, f"name: t\nsae: {sae}\n{extra}").jobs[0].run_id

    topk = run_id("{architecture: topk}")
    assert run_id("{architecture: topk, aux_k: 32}") == topk  # d_in 64 // 2
    assert run_id("{architecture: topk, aux_k: 31}") != topk
    v1 = ("eval: {metrics: [l0, mse, fvu, explained_variance, cosine_similarity, l2_ratio, "
          "shrinkage, ce_loss_recovered, delta_lm_loss, kl, dead, dense]}\n")
    assert run_id("{architecture: topk}", v1) == topk
    assert run_id("{architecture: topk}", "eval: {metrics: [kl_score, delta_lm_loss, "
                  "ce_loss_recovered]}\n") == topk
    assert run_id("{architecture: topk}", "eval: {metrics: []}\n") != topk


# -- imported SAEs (sae: {from_pretrained: FOLDER}) ------------------------------------------


def saelens_folder(folder, d_in: int = 64, d_sae: int = 96, seed: int = 0, **cfg):
    """A folder in SAELens 6.x's layout, written by hand (tests/test_saelens_real.py uses the
    real package)."""
    import json

    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.zeros(d_in)},
              str(folder / "sae_weights.safetensors"))
    meta = {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"}
    (folder / "cfg.json").write_text(json.dumps(
        {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 8, "metadata": meta,
         "normalize_activations": "none", **cfg}))
    return folder


IMPORTED = """\
name: outside
site: {hook_name: blocks.1.hook_resid_post}
sae: {from_pretrained: published/a}
"""


def test_an_imported_sae_is_planned_from_its_folder(tmp_path):
    saelens_folder(tmp_path / "specs" / "published" / "a")
    plan = plan_of(tmp_path / "specs", IMPORTED)
    job = plan.jobs[0]
    sae = job.config.sae
    folder = str(tmp_path / "specs" / "published" / "a")  # relative to the spec file's folder
    assert sae.from_pretrained == folder
    assert (sae.architecture, sae.saelens_architecture, sae.d_in, sae.d_sae, sae.k) == (
        "imported", "topk", 64, 96, 8)
    assert job.provenance["sae.d_sae"] == f"derived: {folder}/cfg.json"
    assert job.provenance["sae.content_sha256"] == f"derived: {folder}/cfg.json and its weights"
    assert job.step_flops_per_token is None  # nothing is trained


def test_an_imported_run_id_is_its_content_and_evaluation_not_its_path(tmp_path):
    import shutil

    saelens_folder(tmp_path / "one" / "published" / "a")
    shutil.copytree(tmp_path / "one" / "published", tmp_path / "two" / "published")
    first = plan_of(tmp_path / "one", IMPORTED).jobs[0]
    moved = plan_of(tmp_path / "two", IMPORTED).jobs[0]
    assert first.run_id == moved.run_id
    # ...the seed and train section change nothing of it; the evaluation data does.
    assert plan_of(tmp_path / "one", IMPORTED + "seed: 4\ntrain: {lr: 0.1}\n",
                   "s2.yaml").jobs[0].run_id == first.run_id
    assert plan_of(tmp_path / "one", IMPORTED + "data: {eval_tokens: 4096}\n",
                   "s3.yaml").jobs[0].run_id != first.run_id
    saelens_folder(tmp_path / "two" / "published" / "a", seed=1)  # new weights
    assert plan_of(tmp_path / "two", IMPORTED).jobs[0].run_id != first.run_id
    # Imported runs never share a group (a training stream) with runs that train.
    assert first.group_key != plan_of(tmp_path / "one", SPEC, "t.yaml").jobs[0].group_key


def test_a_sweep_over_folders_plans_one_run_each(tmp_path):
    saelens_folder(tmp_path / "published" / "a")
    saelens_folder(tmp_path / "published" / "b", d_sae=128, seed=2)
    plan = plan_of(tmp_path, IMPORTED + "sweep: {grid: {sae.from_pretrained: [published/a, "
                   "published/b]}}\n")
    assert [j.config.sae.d_sae for j in plan.jobs] == [96, 128]
    assert plan.jobs[1].config.sae.from_pretrained == str(tmp_path / "published" / "b")


@pytest.mark.parametrize(("change", "expected"), [
    ({"d_in": 32}, "s.yaml:3: sae.from_pretrained: the SAE in {folder} takes d_in 32, the model's "
     "width at 'blocks.1.hook_resid_post' is 64"),
    ({"metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.0.hook_resid_post"}},
     "s.yaml:2: site.hook_name: the SAE in {folder} was trained at 'blocks.0.hook_resid_post'"),
    ({"reshape_activations": "hook_z"}, "s.yaml:2: site.hook_name: the SAE in {folder} reshapes "
     "attn.hook_z activations"),
    ({"normalize_activations": "layer_norm"},
     "s.yaml:3: sae.from_pretrained: {folder}/cfg.json: normalize_activations: 'layer_norm' is "
     "not honoured"),
])
def test_what_an_imported_sae_cannot_be_is_a_spec_error(tmp_path, change, expected):
    folder = saelens_folder(tmp_path / "published" / "a", **change)
    with pytest.raises(SpecError) as err:
        plan_of(tmp_path, IMPORTED)
    assert str(err.value).startswith(f"error: {tmp_path}/" + expected.format(folder=folder)), \
        str(err.value)


def test_a_value_the_spec_gives_must_agree_with_the_folder(tmp_path):
    saelens_folder(tmp_path / "published" / "a")
    with pytest.raises(SpecError, match=r"sae.d_sae: d_sae 95 does not match .*cfg.json \(96\)"):
        plan_of(tmp_path, IMPORTED.replace("published/a}", "published/a, d_sae: 95}"))


def test_a_spec_extending_a_training_spec_can_evaluate_an_imported_sae(tmp_path):
    saelens_folder(tmp_path / "published" / "a")
    (tmp_path / "base.yaml").write_text(SPEC)
    plan = plan_of(tmp_path, "extends: base.yaml\nname: outside\nsweep: {}\n"
                   "site: {hook_name: blocks.1.hook_resid_post}\n"
                   "sae: {from_pretrained: published/a}\n")
    assert [j.config.sae.architecture for j in plan.jobs] == ["imported"]
    assert plan.jobs[0].config.seed == 3  # the rest is inherited
