"""End to end through the real CLI on the embedded model, and every bad input's one-line error."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import saerun

TINY = """\
name: tiny
model: {name: saerun/tiny-stdlib}
site: {hook_name: blocks.1.hook_resid_post}
data: {context_size: 64, train_tokens: 16384, eval_tokens: 2048, shuffle_buffer_tokens: 4096,
       lm_batch_sequences: 16}
sae: {architecture: relu, d_sae: 256, sparsity: {penalty: l1, coefficient: 1}}
train: {lr: 5e-3, batch_tokens: 512, checkpoint_every_tokens: 4096, log_every_steps: 4}
sweep:
  zip: {sae.sparsity.penalty: [l1, l1, sqrt_l1], sae.sparsity.coefficient: [0.3, 3, 0.1]}
"""


def dump(db: Path) -> list:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()) for t in tables]


def test_run_rerun_ls_show_report(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    first = saerun("tiny.yaml", "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    db = tmp_path / "registry" / "saerun.db"
    runs = json.loads(saerun("ls", "--json", cwd=tmp_path).stdout)
    assert len(runs) == 3 and {r["status"] for r in runs} == {"done"}

    by_coef = {}
    for run in runs:
        shown = json.loads(saerun("show", run["run_id"][:8], "--json", cwd=tmp_path).stdout)
        m = shown["metrics"]
        assert 0 < m["fvu"] < 1 and 0 < m["ce_loss_recovered"] <= 1 and m["l0"] > 0
        assert shown["environment"]["numerics_mode"] == "transformer_bridge/raw_hf"
        folder = Path(shown["artifacts"])
        for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "run.yaml"):
            assert (folder / name).exists(), name
        sparsity = shown["config"]["sae"]["sparsity"]
        by_coef[(sparsity["penalty"], sparsity["coefficient"])] = m
    # The real trade-off: a larger coefficient gives a lower L0 and a higher FVU.
    low, high = by_coef[("l1", 0.3)], by_coef[("l1", 3)]
    assert high["l0"] < low["l0"] and high["fvu"] > low["fvu"]

    before = dump(db)
    again = saerun("tiny.yaml", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and "already done; nothing to train" in again.stdout
    assert dump(db) == before

    report = saerun("report", "--frontier", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "reports" / "frontier.md").read_text()
    assert "blocks.1.hook_resid_post" in text and "relu/sqrt_l1" in text
    assert list((tmp_path / "reports" / "frontier").glob("*.png"))
    empty = saerun("report", "--frontier", "architecture=gated", cwd=tmp_path)
    assert empty.returncode == 2 and "no finished runs match" in empty.stderr


def test_activation_cache_changes_no_result(tmp_path):
    """The same spec with and without --activation-cache: the same runs, bit-identical
    weights; the cache holds the stream's batches afterwards."""
    weights = {}
    for name, flags in (("plain", []), ("cached", ["--activation-cache", "acts"])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tiny.yaml").write_text(TINY)
        out = saerun("tiny.yaml", "--quiet", *flags, cwd=folder)
        assert out.returncode == 0, out.stderr
        weights[name] = {p.parent.name: p.read_bytes()
                         for p in (folder / "registry" / "runs").glob("*/sae_weights.safetensors")}
    assert len(weights["plain"]) == 3 and weights["plain"] == weights["cached"]
    assert len(list((tmp_path / "cached" / "acts").glob("*/*.safetensors"))) > 0


BAD = [
    ("train: {lr: 5e-3, batch_tokens: 512,", "train: {lrr: 5e-3, batch_tokens: 512,",
     "error: bad.yaml:7: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"),
    ("d_sae: 256", "d_sae: many",
     "error: bad.yaml:6: sae.d_sae: Input should be a valid integer, unable to parse string as "
     "an integer (got 'many')"),
    ("lr: 5e-3", "lr: -5e-3",
     "error: bad.yaml:7: train.lr: Input should be greater than 0 (got -0.005)"),
    ("blocks.1.hook_resid_post", "blocks.9.hook_resid_post",
     "error: bad.yaml:3: site.hook_name: unknown hook name 'blocks.9.hook_resid_post' for model "
     "'saerun/tiny-stdlib' (4 layers) (e.g. blocks.0.hook_resid_post ... "
     "blocks.3.hook_resid_post, blocks.N.hook_mlp_out, blocks.N.hook_attn_out)"),
    ("data: {context_size: 64,", "data: {dataset: ./missing.jsonl, context_size: 64,",
     "error: bad.yaml:4: data.dataset: dataset file not found: ./missing.jsonl"),
    ("saerun/tiny-stdlib", "gpt2",
     "error: bad.yaml:2: model.name: model 'gpt2' is not available offline (no network and not "
     "in the local Hugging Face cache) (use the embedded default 'saerun/tiny-stdlib' or a local "
     "model directory)"),
    ("data: {context_size: 64,", "data: {dataset: NeelNanda/pile-10k, context_size: 64,",
     "error: bad.yaml:4: data.dataset: dataset 'NeelNanda/pile-10k' is not available offline "
     "(HF_HUB_OFFLINE is set and not in the local Hugging Face cache) (use the embedded default "
     "'saerun/stdlib' or a local .txt/.jsonl/.parquet file)"),
]


@pytest.mark.parametrize("old, new, expected", BAD, ids=[b[1][:24] for b in BAD])
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(tmp_path, old, new, expected):
    assert old in TINY
    (tmp_path / "bad.yaml").write_text(TINY.replace(old, new))
    result = saerun("bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == expected
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "registry").exists()


def test_plan_shows_provenance(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = json.loads(saerun("plan", "tiny.yaml", "--json", cwd=tmp_path).stdout)["runs"]
    assert len(out) == 3 and len({job["group"] for job in out}) == 1
    prov = out[0]["provenance"]
    assert prov["sae.d_in"].startswith("derived: width of blocks.1.hook_resid_post")
    assert prov["sae.sparsity.coefficient"] == "sweep"
    assert prov["train.lr"] == "spec" and prov["train.adam_betas"] == "default"
    assert not (tmp_path / "registry").exists()


def test_schema_and_help_are_instant_and_light(tmp_path):
    code = ("import sys, saerun.cli as c; c.main(['schema']) if False else None; "
            "print('torch' in sys.modules, 'transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False"
    schema = json.loads(saerun("schema", cwd=tmp_path).stdout)
    assert "sae" in schema["properties"]




def test_every_command_has_one_entry_a_parser_and_a_function():
    from saerun import cli

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)
    for name, parser in sub.choices.items():
        assert parser.get_default("func") is getattr(cli, "cmd_" + name.replace("-", "_"))
        assert f"saerun {name}" in cli._usage() or name == "run"


# -- what a run prints: the log line without a terminal, the summary at any width ---------------


def test_log_line_without_a_terminal_has_the_honest_average_rate():
    """A resumed group (step 20 of 100, 100 tokens a step) on a fake clock: a line only once
    `log_every` seconds have passed, its rate this process's tokens over its wall time."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from saerun.progress import Progress

    now = [0.0]
    out = io.StringIO()
    progress = Progress(Console(file=out, width=200), log_every=10, clock=lambda: now[0])
    assert progress.log_lines  # a StringIO is no terminal
    job = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(batch_tokens=100)))
    trainers = [SimpleNamespace(curve=[{"loss": 2.0, "mse": 1.5, "l0": 30.0,
                                        "dead_fraction": 0.1}]),
                SimpleNamespace(curve=[{"loss": 3.0, "mse": 2.5, "l0": 40.0,
                                        "dead_fraction": 0.1}])]
    task = progress.start_group([job], total_steps=100, start=20)
    now[0] = 5.0
    progress.advance(task, 30, trainers)  # 5 s: no line yet
    now[0] = 10.0
    progress.advance(task, 40, trainers)  # 2,000 tokens in 10 s here: 200 tok/s, 6,000 to go
    now[0] = 40.0
    progress.finish(task)
    assert out.getvalue().splitlines() == [
        "training 1 SAE(s): step 20 of 100, 10,000 tokens",
        "tokens 4,000/10,000 (40%)  0.2k tok/s  loss 2-3  L0 30-40  mse 1.5-2.5  dead 10.0%  "
        "ETA 0m30s",
        "trained 8,000 tokens in 0m40s (0.2k tok/s)",
    ]


def test_summary_fits_a_narrow_terminal_and_shows_delta_lm_loss(tmp_path):
    import io

    from conftest import unit_config
    from rich.console import Console

    from saerun.execute import Summary
    from saerun.plan import Job
    from saerun.registry import Registry
    from saerun.views import print_summary, retry_helps

    jobs = [Job(f"{i:02d}" * 8, "a-very-long-spec-name[train.lr=0.001,sae.d_sae=32]",
                unit_config(lr=lr), "g", {}) for i, lr in enumerate((1e-3, 3e-4))]
    db = tmp_path / "saerun.db"
    with Registry(db) as reg:
        spec = reg.add_spec("s", "s.yaml", "name: s")
        reg.ensure_runs(spec, [{"run_id": j.run_id, "name": j.name, "group_key": "g",
                                "config": j.config.model_dump(mode="json")} for j in jobs])
        reg.mark_running(jobs[0].run_id, {}, "fp")
        reg.mark_done(jobs[0].run_id, {"l0": 31.5, "fvu": 0.125, "ce_loss_recovered": 0.875,
                                       "delta_lm_loss": 0.2345, "dead_fraction": 0.5}, 1, 1, 64)
    failed = {jobs[1].run_id: "KeyError: 'hook_pos_embed'"}
    for width in (40, 60, 100, 200):
        out = io.StringIO()
        print_summary(Console(file=out, width=width), Summary(jobs, failed=failed), db)
        text = out.getvalue()
        assert "…" not in text, (width, text)
        flat = " ".join(text.split())
        assert "train.lr=1e-3" in flat and "train.lr=3e-4" in flat, (width, text)
        assert "0.2345" in flat and "0.875" in flat and "50" in flat
        assert "--retry-failed (they resume" not in flat  # a KeyError repeats on a retry
        assert "a retry repeats the other failures" in flat
    assert retry_helps("disk full while writing (...)")
    assert retry_helps("Slurm job 12 ended TIMEOUT (...) without a result; log x")
    assert not retry_helps("non-finite loss at step 3 (no checkpoint yet)")


def test_curves_reach_the_registry_between_checkpoints(tmp_path, monkeypatch):
    """No checkpoint before the end, curves flushed every batch: a run killed mid-step 13 has
    its curve points up to step 12 in the registry (before, only a checkpoint wrote them)."""
    spec = (TINY.split("sweep:")[0]
            .replace("train_tokens: 16384", "train_tokens: 8192")
            .replace("checkpoint_every_tokens: 4096, log_every_steps: 4",
                     "checkpoint_every_tokens: 1000000, log_every_steps: 2, "
                     "curve_flush_seconds: 0.001"))
    (tmp_path / "one.yaml").write_text(spec)
    monkeypatch.setenv("SAERUN_FAULT_DELAY", "train_step:0.005")
    killed = saerun("one.yaml", "--quiet", cwd=tmp_path, fault="train_step:13")
    assert killed.returncode == -9, killed.stderr
    with sqlite3.connect(tmp_path / "registry" / "saerun.db") as conn:
        steps = [r[0] for r in conn.execute("SELECT step FROM curves ORDER BY step")]
    assert steps == [2, 4, 6, 8, 10, 12]
