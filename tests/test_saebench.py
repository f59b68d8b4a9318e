"""`saerun export --format saebench`: SAEBench 0.6.0's core-eval file from a registered run, each
value mapped to saerun's metric, per-latent values from hand-set weights; validated with
sae-bench's own output class where the SAELens virtualenv has it."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from saerun.errors import SaerunError
from saerun.registry import Registry
from saerun.saebench import file_name, latent_details, nan_to_minus_one, write_saebench

ROOT = Path(__file__).resolve().parents[1]
# The bench's SAELens virtualenv (python -m bench.venvs); $SAERUN_SAELENS_PYTHON points at
# another one (a git worktree shares the main checkout's).
SAELENS_PYTHON = Path(os.environ.get("SAERUN_SAELENS_PYTHON",
                                     ROOT / "bench" / ".venvs" / "sae_lens" / "bin" / "python"))

CONFIG = {"seed": 0, "model": {"name": "tiny", "dtype": "float32"},
          "site": {"hook_name": "blocks.0.hook_resid_post"},
          "data": {"dataset": "saerun/stdlib", "train_tokens": 4096, "eval_tokens": 2048,
                   "context_size": 64, "lm_batch_sequences": 16, "exclude_special_tokens": True},
          "sae": {"architecture": "relu", "d_sae": 3},
          "train": {"lr": 3e-4, "batch_tokens": 128},
          "eval": {"metrics": ["l0", "fvu", "ce_loss_recovered", "kl"]}}
METRICS = {"l0": 1.5, "fvu": 0.25, "explained_variance": 0.75, "mse": 2.0,
           "cosine_similarity": 0.9, "l2_ratio": 0.8, "shrinkage": 0.95, "kl_score": 0.7,
           "kl_zero": 2.0, "kl_sae": 0.6, "ce_loss_recovered": 0.8, "ce_zero": 9.0,
           "ce_sae": 4.0, "ce_orig": 3.0, "n_tokens": 1900.0, "delta_lm_loss": 1.0,
           "dead_fraction": 1 / 3, "dense_fraction": 1 / 3}
# W_enc [d_in 2, d_sae 3], W_dec [3, 2]: latents 0 and 1 point the same way, 2 the opposite.
W_ENC = torch.tensor([[2.0, 1.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
W_DEC = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
B_ENC = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)
DENSITY = torch.tensor([0.5, 0.005, 0.0], dtype=torch.float64)


def test_nan_is_minus_one_everywhere():
    assert nan_to_minus_one({"a": [math.nan, 1.0], "b": {"c": math.nan}, "d": "x"}) == {
        "a": [-1, 1.0], "b": {"c": -1}, "d": "x"}
    assert file_name("my/release", "blocks.0.hook_resid_post__ab") == (
        "my_release_blocks.0.hook_resid_post__ab_eval_results.json")


def test_latent_details_by_hand():
    details, misc = latent_details({"W_enc": W_ENC, "W_dec": W_DEC, "b_enc": B_ENC}, DENSITY)
    assert [d["encoder_norm"] for d in details] == [2.0, 1.0, 1.0]
    assert [d["encoder_bias"] for d in details] == [0.5, -0.25, 0.0]
    # encoder directions: +x, +x, -x; decoder: +x, (0.6, 0.8), -x.
    assert [d["encoder_decoder_cosine_sim"] for d in details] == [1.0, 0.6, 1.0]
    assert [d["max_encoder_cosine_sim"] for d in details] == [1.0, 1.0, -1.0]
    assert [d["max_decoder_cosine_sim"] for d in details] == [0.6, 0.6, -0.6]
    assert [d["feature_density"] for d in details] == [0.5, 0.005, 0.0]
    assert all(math.isnan(d["consistent_activation_heuristic"]) for d in details)
    assert misc["frac_alive"] == pytest.approx(2 / 3)
    assert misc["freq_over_1_percent"] == pytest.approx(1 / 3)
    assert misc["freq_over_10_percent"] == pytest.approx(1 / 3)
    assert misc["normalized_freq_over_1_percent"] == pytest.approx(0.5 / 0.505)
    assert misc["average_max_encoder_cosine_sim"] == pytest.approx(1 / 3)
    assert misc["average_max_decoder_cosine_sim"] == pytest.approx(0.6 / 3)


def registered_run(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "registry" / "saerun.db"
    run_id = "ab" * 8
    with Registry(db) as reg:
        spec = reg.add_spec("tiny", "tiny.yaml", "name: tiny")
        reg.ensure_runs(spec, [{"run_id": run_id, "name": "tiny", "group_key": "g",
                                "config": CONFIG}])
        reg.mark_running(run_id, {"device": "cpu"}, "fp")
        reg.mark_done(run_id, METRICS, 1.0, 1.0, 4096)
        folder = reg.artifacts_dir(run_id)
    folder.mkdir(parents=True)
    cfg = {"d_in": 2, "d_sae": 3, "architecture": "standard",
           "metadata": {"hook_name": "blocks.0.hook_resid_post", "sae_lens_version": "6.0.0"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({"W_enc": W_ENC, "W_dec": W_DEC, "b_enc": B_ENC, "b_dec": torch.zeros(2)},
              str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": DENSITY.float().clamp_min(1e-10).log10()},
              str(folder / "sparsity.safetensors"))
    return db, run_id


def test_export_maps_every_value(tmp_path):
    db, run_id = registered_run(tmp_path)
    path = write_saebench(db, run_id[:6], tmp_path / "out")
    assert path.name == f"tiny_blocks.0.hook_resid_post__{run_id[:10]}_eval_results.json"
    out = json.loads(path.read_text())
    m = out["eval_result_metrics"]
    assert m["model_performance_preservation"] == {
        "ce_loss_score": 0.8, "ce_loss_with_ablation": 9.0, "ce_loss_with_sae": 4.0,
        "ce_loss_without_sae": 3.0}
    assert m["model_behavior_preservation"] == {
        "kl_div_score": 0.7, "kl_div_with_ablation": 2.0, "kl_div_with_sae": 0.6}
    assert m["reconstruction_quality"] == {"explained_variance": 0.75,
                                           "explained_variance_legacy": -1, "mse": 2.0,
                                           "cossim": 0.9}
    assert m["shrinkage"] == {"l2_norm_in": -1, "l2_norm_out": -1, "l2_ratio": 0.8,
                              "relative_reconstruction_bias": 0.95}
    assert m["sparsity"] == {"l0": 1.5, "l1": -1}
    assert m["token_stats"] == {"total_tokens_eval_reconstruction": 2048,
                                "total_tokens_eval_sparsity_variance": 2048}
    assert m["misc_metrics"]["frac_alive"] == pytest.approx(2 / 3)
    # The dead latent's density survives the log10 file (clamped at 1e-10) as 0.
    assert [d["feature_density"] for d in out["eval_result_details"]] == pytest.approx(
        [0.5, 0.005, 0.0])
    assert out["eval_type_id"] == "core" and out["sae_lens_version"] == "6.0.0"
    assert out["sae_lens_release_id"] == "tiny" and out["sae_cfg_dict"]["d_sae"] == 3
    assert out["eval_config"]["n_eval_reconstruction_batches"] == 2  # 2048 / (64 * 16)
    assert out["eval_config"]["exclude_special_tokens_from_reconstruction"] is True
    # The same run exported twice is the same file.
    again = write_saebench(db, run_id, tmp_path / "out2")
    assert again.read_text() == path.read_text()


def test_export_refuses_a_run_that_is_not_done(tmp_path):
    db, run_id = registered_run(tmp_path)
    with Registry(db) as reg:
        reg.reset_to_planned(run_id)
    with pytest.raises(SaerunError, match="is planned, not done"):
        write_saebench(db, run_id, tmp_path)


@pytest.mark.slow
def test_export_validates_with_sae_bench(tmp_path):
    """sae-bench 0.6.0's own output class reads the file (installed with --no-deps into the
    SAELens virtualenv: bench/.venvs/sae_lens/bin/pip install --no-deps sae-bench==0.6.0)."""
    if not SAELENS_PYTHON.exists():
        pytest.skip("no SAELens virtualenv at bench/.venvs/sae_lens (python -m bench.venvs)")
    check = "import sae_bench.evals.core.eval_output"
    if subprocess.run([str(SAELENS_PYTHON), "-c", check], capture_output=True).returncode:
        pytest.skip("sae-bench is not installed in bench/.venvs/sae_lens "
                    "(pip install --no-deps sae-bench==0.6.0 there)")
    db, run_id = registered_run(tmp_path)
    path = write_saebench(db, run_id, tmp_path)
    code = ("import json, sys; from sae_bench.evals.core.eval_output import CoreEvalOutput; "
            "o = CoreEvalOutput(**json.load(open(sys.argv[1]))); "
            "print(o.eval_result_metrics.sparsity.l0, len(o.eval_result_details), "
            "o.eval_result_metrics.model_performance_preservation.ce_loss_score)")
    out = subprocess.run([str(SAELENS_PYTHON), "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.5", "3", "0.8"]
