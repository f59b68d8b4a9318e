"""The paper recipes in specs/: every one plans offline (conftest.py sets HF_HUB_OFFLINE) through
`runner.prepare`, the function `saerun plan` calls, without loading a model or touching a dataset,
and resolves to the papers' widths and learning rates; d_in comes from the built-in table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from saerun import models
from saerun.errors import SpecError
from saerun.runner import prepare

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
TABLE = "built-in table of well-known models"


def jobs_of(name: str) -> list:
    return prepare(ROOT / "specs" / name).plan.jobs


def site_kind(hook: str) -> str:
    return hook.split(".", 2)[2]  # blocks.6.attn.hook_z -> attn.hook_z


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_recipe_plans_offline_and_names_the_source_of_d_in(path):
    plan = prepare(path).plan
    assert plan.jobs
    for job in plan.jobs:
        source = job.provenance["sae.d_in"]
        if job.config.model.name in models.EMBEDDED_MODELS:
            assert source.startswith("derived: width of") and TABLE not in source
        else:
            assert source == f"derived: width of {job.config.site.hook_name} ({TABLE})"


def test_gemma7b_gated_vs_baseline_widths_and_learning_rates():
    jobs = jobs_of("gemma7b_gated.yaml")
    assert len(jobs) == 2 * 12 * 5  # architectures x (4 layers x 3 sites) x coefficients
    seen = Counter()
    for job in jobs:
        sae, train, hook = job.config.sae, job.config.train, job.config.site.hook_name
        kind = site_kind(hook)
        assert job.config.model.name == "google/gemma-7b"
        assert job.config.data.context_size == 1024
        assert sae.d_in == (4096 if kind == "attn.hook_z" else 3072)  # 16 heads x 256
        assert sae.decoder_mode == "unit_norm" and sae.sparsity.penalty == "l1"
        if sae.architecture == "gated":
            assert (sae.d_sae, train.lr) == (2**17, 3e-4)
        else:
            assert sae.architecture == "relu" and sae.d_sae == 3 * 2**16 == 196608
            assert train.lr == (7.5e-4 if kind == "attn.hook_z" else 1e-3)
        seen[sae.architecture, hook] += 1
    hooks = {f"blocks.{layer}.{kind}" for layer in (6, 13, 20, 27)
             for kind in ("hook_resid_post", "hook_mlp_out", "attn.hook_z")}
    assert seen == {(arch, hook): 5 for arch in ("gated", "relu") for hook in hooks}
    coefficients = {(j.config.sae.architecture, j.config.sae.sparsity.coefficient) for j in jobs}
    assert coefficients == {(a, c) for a in ("gated", "relu") for c in (0.75, 1.5, 3, 6, 12)}
    assert len({j.group_key for j in jobs}) == 1  # one Gemma-7B pass per batch feeds them all


def test_pythia_gated_vs_baseline():
    jobs = jobs_of("pythia2.8b_gated.yaml")
    assert len(jobs) == 4 * 2 * 5
    for job in jobs:
        sae, train = job.config.sae, job.config.train
        assert job.config.model.name == "EleutherAI/pythia-2.8b"
        assert site_kind(job.config.site.hook_name) == "hook_resid_post" and sae.d_in == 2560
        expected = {"gated": (2**15, 3e-4), "relu": (3 * 2**14, 1e-3)}[sae.architecture]
        assert (sae.d_sae, train.lr) == expected


def test_gelu1l_both_at_3e_4_on_the_neurons():
    jobs = jobs_of("gelu1l_gated.yaml")
    assert len(jobs) == 2 * 5
    for job in jobs:
        assert job.config.site.hook_name == "blocks.0.mlp.hook_post"
        assert job.config.sae.d_in == 2048 and job.config.train.lr == 3e-4
    widths = {(j.config.sae.architecture, j.config.sae.d_sae) for j in jobs}
    assert widths == {("gated", 16384), ("relu", 24576)}  # the paper's 1.5x ratio


def test_gpt2_topk():
    (job,) = jobs_of("gpt2_topk.yaml")
    sae, train, data = job.config.sae, job.config.train, job.config.data
    assert job.config.site.hook_name == "blocks.8.hook_resid_post" and sae.d_in == 768
    assert (sae.architecture, sae.d_sae, sae.k, sae.aux_k) == ("topk", 32768, 32, 512)
    assert sae.aux_coefficient == 1 / 32 and sae.decoder_mode == "unit_norm"
    assert (train.lr, train.batch_tokens, train.lr_decay, train.grad_clip_norm) == (
        1e-4, 131072, "none", None)
    assert train.dead_window_tokens == 10_000_000 and data.context_size == 64


def test_gemma2_2b_jumprelu_gemma_scope_style():
    jobs = jobs_of("gemma2_2b_jumprelu.yaml")
    assert len(jobs) == 6
    for job in jobs:
        sae, train, data = job.config.sae, job.config.train, job.config.data
        assert job.config.site.hook_name == "blocks.12.hook_resid_post" and sae.d_in == 2304
        assert (sae.architecture, sae.d_sae, sae.sparsity_mode) == ("jumprelu", 2**14, "l0")
        assert sae.pre_act_coefficient == 0
        # The papers' 0.001 (E||x||^2 = 1) in saerun's units (E||x|| = sqrt(d_in)).
        assert sae.bandwidth == sae.init_threshold == pytest.approx(0.001 * math.sqrt(2304))
        assert (train.lr, train.batch_tokens, tuple(train.adam_betas)) == (7e-5, 4096, (0.0, 0.999))
        assert train.sparsity_warmup_fraction == pytest.approx(10_000 / (4e9 // 4096), rel=1e-3)
        assert (data.context_size, data.train_tokens) == (1024, 4_000_000_000)
    assert sorted(j.config.sae.coefficient for j in jobs) == [0.5, 1, 2, 4, 8, 16]


def test_matryoshka_next_to_batchtopk():
    jobs = jobs_of("matryoshka_batchtopk.yaml")
    saes = sorted((j.config.sae.architecture, j.config.sae.d_sae, j.config.sae.k) for j in jobs)
    widths_and_k = ((1, 22), (2, 25), (4, 27), (8, 29), (16, 32))  # main.py
    batchtopk = [("batchtopk", 2304 * m, k) for m, k in widths_and_k]
    assert saes == [*batchtopk, ("matryoshka", 36864, 32)]
    for job in jobs:
        assert job.config.site.hook_name == "blocks.8.hook_resid_pre"
        assert job.config.sae.d_in == 2304
        assert job.config.train.lr == 3e-4 and job.config.data.normalize == "none"
        assert job.config.sae.aux_coefficient == 1 / 32
    (mat,) = [j.config.sae for j in jobs if j.config.sae.architecture == "matryoshka"]
    assert mat.prefix_widths == [2304, 4608, 9216, 18432, 36864]
    assert mat.prefix_weights == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("model, hook, gated, matched", [
    ("google/gemma-7b", "blocks.20.hook_resid_post", 131072, 240299),
    ("EleutherAI/pythia-2.8b", "blocks.7.hook_resid_post", 32768, 60075),
    ("gelu-1l", "blocks.0.mlp.hook_post", 16384, 30037),
])
def test_the_compute_matched_widths_quoted_in_the_recipes(tmp_path, model, hook, gated, matched):
    """The recipes keep the paper's 1.5x widths and quote what `compute_matched_to` would give
    (saerun's FLOP count: a gated step is 11/6 of a ReLU step per latent); keep the quotes true."""
    spec = tmp_path / "m.yaml"
    spec.write_text(f"name: m\nmodel: {{name: {model}}}\nsite: {{hook_name: {hook}}}\n"
                    "data: {dataset: monology/pile-uncopyrighted, context_size: 128}\n"
                    f"sae: {{architecture: relu, compute_matched_to: {{architecture: gated, "
                    f"d_sae: {gated}}}}}\n")
    (job,) = prepare(spec).plan.jobs
    assert job.config.sae.d_sae == matched
    assert f"{matched:,}" in "".join(p.read_text() for p in SPECS)


def test_attention_z_width_is_heads_times_head_dim():
    for name, width in (("google/gemma-7b", 4096), ("google/gemma-2-2b", 2048), ("gpt2", 768)):
        info = models.known_dims(name)
        assert models.hook_width(info, "blocks.0.attn.hook_z") == width
        assert models.hook_width(info, "blocks.0.hook_resid_post") == info.d_model
    # From a config.json: Gemma states head_dim; GPT-2 does not (heads split d_model).
    gemma = {"hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
             "max_position_embeddings": 8192, "num_attention_heads": 16, "head_dim": 256}
    info = models._from_config("g", "g", gemma, False)
    assert models.hook_width(info, "blocks.3.attn.hook_z") == 4096
    gpt2 = {"n_embd": 768, "n_layer": 12, "n_positions": 1024, "n_head": 12}
    info = models._from_config("g", "g", gpt2, False)
    assert models.hook_width(info, "blocks.0.attn.hook_z") == 768


def test_running_still_needs_the_model_itself():
    """`saerun SPEC` (run_spec) plans with offline_dims=False: no table, a reachable model."""
    with pytest.raises(SpecError, match="not available offline"):
        prepare(ROOT / "specs" / "gemma7b_gated.yaml", offline_dims=False)


def test_cli_plan_prints_the_widths_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"}
    result = subprocess.run(
        [sys.executable, "-m", "saerun.cli", "plan", "specs/gemma7b_gated.yaml"], cwd=ROOT,
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("gemma7b-gated-vs-relu: 120 runs in 1 activation group(s)")
    assert "d_sae=131072" in out and "d_sae=196608" in out and "lr=0.00075" in out
    assert f"derived: width of blocks.6.hook_resid_post ({TABLE})" in out  # sae.d_in's source
    # The paper's widths and learning rates, with the source the recipe states for them.
    assert "sweep gemma7b_gated.yaml:141 (paper, Fig. 1 caption: Gated 2^17" in out
    assert "sweep gemma7b_gated.yaml:144 (authors' LessWrong note: Gated 3e-4" in out
    as_json = subprocess.run(
        [sys.executable, "-m", "saerun.cli", "plan", "specs/gemma7b_gated.yaml", "--json"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
    )
    runs = json.loads(as_json.stdout)["runs"]
    assert {j["config"]["sae"]["d_sae"] for j in runs} == {131072, 196608}


def test_planning_a_recipe_loads_no_model_code():
    """Nothing of torch, transformers or datasets is imported: no weights, no hub, no data."""
    code = ("import sys, contextlib, io, saerun.cli as c\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    rc = c.main(['plan', 'specs/gemma7b_gated.yaml', '--json'])\n"
            "print(rc, [m for m in ('torch', 'transformers', 'datasets', 'transformer_lens')"
            " if m in sys.modules])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.stdout.split() == ["0", "[]"], out.stderr
