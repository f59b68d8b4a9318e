"""The benchmark harness's own logic (bench/), without peers, models or timing: medians and
ratios, the JSON line, skipping a missing peer venv, deterministic activations, the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# bench/ is not an installed package: import it from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, data, report, step, sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LINE_KEYS = {"workload", "architecture", "saerun_tokens_per_s", "peer", "peer_tokens_per_s",
             "ratio", "saerun_peak_rss_mb", "peer_peak_rss_mb"}


def test_median_tokens_per_s_and_ratio():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert common.tokens_per_s([2.0, 1.0, 4.0], 4096) == 2048.0
    assert common.ratio(3000.0, 2000.0) == 1.5
    assert common.ratio(1.0, 0.0) == math.inf
    with pytest.raises(ValueError):
        common.median([])


def test_comparison_json_line_has_the_issue_fields():
    c = common.Comparison("step", "topk", 6000.0, "sparsify", 4000.0, 700.0, 900.0)
    line = json.loads(c.json_line())
    assert set(line) == LINE_KEYS
    assert line["ratio"] == 1.5 and line["peer"] == "sparsify" and line["workload"] == "step"


def test_step_compare_pools_rounds_and_skips_peers_without_results():
    def run(times, rss):
        return {"step_s": times, "batch": 4096, "peak_rss_mb": rss}

    results = {
        "saerun": [run([1.0, 1.0], 700.0), run([2.0, 2.0, 2.0], 720.0)],  # pooled median 2.0
        "sae_lens": [run([4.0], 1100.0), run([4.0], 1200.0)],
        "sparsify": [],
    }
    (c,) = step.compare("topk", results)
    assert c.peer == "sae_lens" and c.saerun_tokens_per_s == 2048.0
    assert c.peer_tokens_per_s == 1024.0 and c.ratio == 2.0
    assert (c.saerun_peak_rss_mb, c.peer_peak_rss_mb) == (720.0, 1200.0)
    assert step.compare("topk", {"saerun": [], "sae_lens": [run([1.0], 1.0)]}) == []


def test_missing_peer_venv_is_skipped_with_a_message(tmp_path, capsys):
    assert common.venv_python("sae_lens", tmp_path) is None
    err = capsys.readouterr().err
    assert "skipping sae_lens" in err and "python -m bench --setup" in err
    (tmp_path / "sparsify" / "bin").mkdir(parents=True)
    (tmp_path / "sparsify" / "bin" / "python").touch()
    assert common.venv_python("sparsify", tmp_path) == tmp_path / "sparsify" / "bin" / "python"


def test_sweep_without_peer_venvs_runs_no_peer(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(common, "run_measured", lambda cmd, timeout: calls.append(cmd) or {})
    monkeypatch.setattr(sweep, "saerun_job", lambda tmp, tokens, ev: (["saerun", ev], lambda r: {
        "wall_s": 10.0, "peak_rss_mb": 500.0, "train_s": 6.0, "eval_s": 3.0}))
    comparisons, raw = sweep.run(["sae_lens", "dictionary_learning"], 10_000, venvs=tmp_path)
    assert comparisons == [] and raw["tokens_per_sae"] == 8192
    assert calls == [["saerun", "eval: {metrics: []}"], ["saerun", "eval: {}"]]
    assert "skipping dictionary_learning" in capsys.readouterr().err


def test_activations_are_deterministic_and_normalised():
    a = data.make_batches(2, 64, 16, seed=3)
    b = data.make_batches(2, 64, 16, seed=3)
    assert a.shape == (2, 64, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, data.make_batches(2, 64, 16, seed=4))
    assert a.reshape(-1, 16).norm(dim=1).mean().item() == pytest.approx(4.0, rel=1e-4)


def test_saved_activations_load_with_weights_only(tmp_path):
    path = data.save_batches(tmp_path / "acts.pt", 1, 8, 4)
    assert torch.equal(torch.load(path, weights_only=True), data.make_batches(1, 8, 4))


def test_run_measured_reports_wall_rss_and_the_last_json_line():
    cmd = [sys.executable, "-c", "print('noise'); print('{\"a\": 1}'); print('{\"b\": 2}')"]
    out = common.run_measured(cmd, timeout=60)
    assert out["json"] == {"b": 2} and out["wall_s"] > 0 and out["peak_rss_mb"] > 1
    with pytest.raises(common.DriverError, match="exit 3"):
        common.run_measured([sys.executable, "-c", "raise SystemExit(3)"], timeout=60)


def test_sweep_compare_counts_every_sae_and_separates_saerun_phases():
    results = {
        "saerun": [{"wall_s": 20.0, "peak_rss_mb": 600.0, "train_s": 10.0, "eval_s": 5.0}],
        "saerun_full_eval": [{"wall_s": 40.0, "peak_rss_mb": 800.0, "train_s": 10.0,
                              "eval_s": 25.0}],
        "sae_lens": [{"wall_s": 80.0, "peak_rss_mb": 900.0}],
    }
    same, full = sweep.compare(results, 4096)
    assert same.workload == "sweep" and full.workload == "sweep_full_eval"
    assert same.saerun_tokens_per_s == 8 * 4096 / 20.0 and same.ratio == 4.0
    assert full.ratio == 2.0 and full.saerun_peak_rss_mb == 800.0
    line = same.as_dict()
    assert line["saerun_wall_without_eval_s"] == 15.0 and line["saerun_eval_s"] == 5.0
    assert line["saerun_train_only_tokens_per_s"] == round(8 * 4096 / 10.0, 1)
    assert sweep.compare({"saerun": [], "sae_lens": results["sae_lens"]}, 4096) == []


def test_report_marks_targets_and_keeps_the_notes():
    results = {
        "command": "python -m bench --quick", "machine": report.machine(), "settings": {},
        "versions": {"torch": "2.13.0"}, "load_before": [1.0], "load_after": [1.0],
        "comparisons": [
            common.Comparison("step", "topk", 6000, "sae_lens", 3000, 700, 1100).as_dict(),
            common.Comparison("step", "topk", 6000, "sparsify", 5000, 700, 900).as_dict(),
            common.Comparison("sweep", "relu", 40000, "sae_lens", 8000, 800, 1500).as_dict(),
        ],
        "raw": {"sweep": {"description": ["8 SAEs"], "errors": []}},
    }
    old = "# old\n<!-- notes -->\nhand-written analysis\n<!-- /notes -->\ntrailer"
    text = report.render(results, old)
    assert "<!-- notes -->\nhand-written analysis\n<!-- /notes -->" in text
    topk = next(ln for ln in text.splitlines() if ln.startswith("| topk | sparsify | 1.20x"))
    assert "**missed**" in topk and "700 vs 900 MB | met" in topk
    assert "4.0x: met" in text and "800 vs 1500 MB: met" in text
    fresh = report.render(results, "")
    assert fresh.count(report.NOTES_OPEN) == 1 and fresh.count(report.NOTES_CLOSE) == 1


def test_saved_runs_merge_into_one_report():
    from bench.__main__ import merge

    step_run = {"command": "python -m bench --workload step", "comparisons": [{"a": 1}],
                "raw": {"step": {}}, "settings": {"steps": 3}, "seconds": 10}
    sweep_run = {"command": "python -m bench --workload sweep", "comparisons": [{"b": 2}],
                 "raw": {"sweep": {}}, "settings": {"sweep_rounds": 1}, "seconds": 5,
                 "load_after": [2.0]}
    step_run["versions"] = {"saerun": "aaa", "torch": "2.13"}
    sweep_run["versions"] = {"saerun": "bbb", "torch": "2.13"}
    merged = merge([step_run, sweep_run, {**sweep_run, "command": "c"}])
    assert merged["versions"] == {"saerun": "aaa, then bbb", "torch": "2.13"}
    merged = merge([step_run, sweep_run])
    assert merged["comparisons"] == [{"a": 1}, {"b": 2}] and set(merged["raw"]) == {"step", "sweep"}
    assert merged["seconds"] == 15 and merged["settings"] == {"steps": 3, "sweep_rounds": 1}
    assert merged["command"].endswith("; python -m bench --workload sweep")


def _peer_drivers():
    """The step drivers are scripts beside _driver.py, imported the way they import it."""
    peers = str(common.PEERS_DIR)
    if peers not in sys.path:
        sys.path.insert(0, peers)
    import _driver
    import dictlearn_step
    import saelens_step

    return _driver, saelens_step, dictlearn_step


def _saerun_weights(d_in=3, d_sae=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
             "r_mag": (d_sae,), "b_mag": (d_sae,), "log_threshold": (d_sae,)}
    return {k: torch.randn(shape, generator=g) for k, shape in names.items()}


def _module(**shapes):
    """A stand-in for a peer's SAE: parameters of the peer's names and shapes, all zeros."""
    m = torch.nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        owner = m
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape)))
    return m


def test_init_weights_map_onto_each_peers_names(tmp_path, monkeypatch):
    """--init (bench/trained.py's state, saerun's names) lands on SAELens's and
    dictionary_learning's parameters with their layouts: transposed nn.Linear weights,
    b_gate / gate_bias for Gated's b_enc, threshold = exp(log_threshold)."""
    from safetensors.torch import save_file

    _driver, saelens_step, dictlearn_step = _peer_drivers()
    w = _saerun_weights()
    path = tmp_path / "w.safetensors"
    state = {f"sae.{k}": v for k, v in w.items()}  # bench/trained.py's file: a trainer state
    state["adam.0.exp_avg"] = torch.zeros(3, 5)
    save_file(state, str(path), metadata={"trainer": json.dumps({"step": 300})})

    def give(arch):
        monkeypatch.setitem(_driver.INIT, arch, str(path))

    give("gated")
    sl = _module(W_enc=(3, 5), b_gate=(5,), r_mag=(5,), b_mag=(5,), W_dec=(5, 3), b_dec=(3,))
    saelens_step.load_init(sl, "gated")
    assert torch.equal(sl.b_gate, w["b_enc"]) and torch.equal(sl.W_dec, w["W_dec"])
    assert "gated" not in _driver.INIT  # consumed: main() checks every --init was used

    give("jumprelu")
    sl = _module(W_enc=(3, 5), b_enc=(5,), W_dec=(5, 3), b_dec=(3,), threshold=(5,))
    saelens_step.load_init(sl, "jumprelu")
    assert torch.allclose(sl.threshold, w["log_threshold"].exp())

    give("relu")
    dl = _module(**{"encoder.weight": (5, 3), "encoder.bias": (5,), "decoder.weight": (3, 5),
                    "bias": (3,)})
    dictlearn_step.load_init(dl, "relu")
    assert torch.equal(dl.encoder.weight, w["W_enc"].T)
    assert torch.equal(dl.decoder.weight, w["W_dec"].T) and torch.equal(dl.bias, w["b_dec"])

    give("gated")
    dl = _module(**{"encoder.weight": (5, 3), "gate_bias": (5,), "r_mag": (5,), "mag_bias": (5,),
                    "decoder.weight": (3, 5), "decoder_bias": (3,)})
    dictlearn_step.load_init(dl, "gated")
    assert torch.equal(dl.gate_bias, w["b_enc"]) and torch.equal(dl.mag_bias, w["b_mag"])

    give("relu")  # a peer whose parameters disagree is refused, never half-loaded silently
    with pytest.raises(ValueError, match="shape"):
        saelens_step.load_init(_module(W_enc=(5, 3), b_enc=(5,), W_dec=(5, 3), b_dec=(3,)),
                               "relu")
    give("relu")
    with pytest.raises(ValueError, match="no initial value"):
        saelens_step.load_init(_module(W_enc=(3, 5), b_enc=(5,), W_dec=(5, 3), b_dec=(3,),
                                       extra=(2,)), "relu")


def test_report_has_the_trained_state_section():
    results = {
        "command": "python -m bench --workload trained", "machine": report.machine(),
        "settings": {}, "versions": {}, "load_before": [1.0], "load_after": [1.0],
        "comparisons": [common.Comparison("step_trained", "relu", 12000, "dictionary_learning",
                                          5000, 700, 710, {"saerun_density": 0.03}).as_dict()],
        "raw": {"step_trained": {"trained": {"relu": {"density": 0.032, "l0": 131.1,
                                                         "d_sae": 4096}},
                                 "trained_steps": 300, "errors": []}},
    }
    text = report.render(results, "")
    section = text.split("## (a') ")[1].split("## (b)")[0]
    assert "300 steps" in section and "relu 131.1 latents of 4096 (3.2%)" in section
    assert "| relu | dictionary_learning | 12.00k | 5.00k | 2.40x |" in section
    assert "| 3.0% |" in section and "| relu | dictionary_learning | 2.40x | met |" in section


@pytest.mark.parametrize("variant", list(sweep.SAERUN_VARIANTS))
def test_sweep_specs_validate_and_compile_to_one_group_of_eight(tmp_path, variant):
    from saerun.plan import build_plan
    from saerun.runner import model_dims
    from saerun.spec import load_spec

    cmd, _ = sweep.saerun_job(tmp_path, 8192, sweep.SAERUN_VARIANTS[variant][0])
    spec, raw, _, _ = load_spec(cmd[1])
    jobs = build_plan(spec, raw, model_dims).jobs
    assert len(jobs) == 8 and len({j.config.site.hook_name for j in jobs}) == 1
    metrics = set(jobs[0].config.eval.metrics)
    assert ("ce_loss_recovered" in metrics) == (variant == "saerun_full_eval")


def test_saerun_driver_resumes_the_trained_state(tmp_path, monkeypatch):
    """saerun's step driver with --init resumes bench/trained.py's whole training state
    (weights, Adam's moments, step) with the sparsity coefficient at full strength."""
    from safetensors.torch import save_file

    _driver, _, _ = _peer_drivers()
    import saerun_step

    source = saerun_step.make_trainer("relu", train_steps=8)
    x = data.make_batches(1, 64, _driver.D_IN, seed=5)[0]
    for _ in range(2):
        source.train_step(x)
    tensors, meta = source.state()
    path = tmp_path / "relu.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"trainer": json.dumps(meta)})
    monkeypatch.setitem(_driver.INIT, "relu", str(path))
    saerun_step.make_step("relu")
    resumed = saerun_step.TRAINERS["relu"]
    assert resumed.step == 2 and "relu" not in _driver.INIT
    assert torch.equal(resumed.sae.W_enc, source.sae.W_enc)
    moments = [st["exp_avg_sq"] for st in resumed.optimizer.state.values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)
    assert resumed.config.train.sparsity_warmup_fraction == 0.0


def test_the_gpu_check_runs_its_paths_on_the_cpu(tmp_path):
    """bench/gpu.py --smoke: the GPU check's own code (a planned spec, the model, the stream,
    fp32 / bf16 / compiled SAE steps, the planner's estimate) end to end on the CPU, so the
    first lent GPU runs code that has run before."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out",
                           str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["n_saes"], r["precision"], r["compile_step"]) for r in results] == [
        (1, "fp32", False), (2, "bf16", False), (1, "bf16", True)]
    for r in results:
        assert r["tokens_per_s"] > 0 and 0 <= r["lm_fraction"] < 1
        assert r["planner_estimate_gb"] > 0 and r["sae_tflops"] > 0


def test_the_matryoshka_bench_runs_every_variant_at_a_tiny_size(capsys):
    from bench import matryoshka

    threads = torch.get_num_threads()
    try:
        matryoshka.main(["--steps", "2", "--threads", "1", "--d-in", "8", "--d-sae", "64",
                         "--k", "4", "--batch", "32"])
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("variant") for line in lines[:3]] == list(matryoshka.VARIANTS)
    assert lines[0]["ratio_to_default"] == 1.0 and all(line["step_s"] > 0 for line in lines[:3])
