"""The frontier report on hand-made registry rows: table, stars, determinism, plots, errors."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from saerun.errors import SaerunError
from saerun.report.frontier import build_frontier

MODEL, HOOK = "gpt2", "blocks.6.hook_resid_post"


def row(run_id, penalty, coef, l0, fvu, ce, lr=3e-4, hook=HOOK):
    return {
        "run_id": run_id, "spec_name": "test", "model": MODEL, "hook_name": hook,
        "architecture": "relu", "penalty": penalty, "sparsity_coefficient": coef, "d_sae": 64,
        "lr": lr, "seed": 0, "train_tokens": 10_000, "l0": l0, "fvu": fvu, "mse": fvu,
        "ce_loss_recovered": ce, "delta_lm_loss": 1.0 - ce, "kl_score": ce,
        "dead_fraction": 0.125, "dense_fraction": 0.0, "shrinkage": 0.9,
    }


# Overall L0-vs-FVU frontier: (5, .35) (8, .30) (12, .15) (40, .08) (80, .05).
# Off it: l1's (30, .16), beaten by sqrt_l1's (12, .15) though on l1's own frontier, and
# sqrt_l1's (35, .20), beaten by (12, .15) within its own series.
ROWS = [
    row("aaaa01ffffff", "l1", 1.0, 80.0, 0.05, 0.99),
    row("aaaa02ffffff", "l1", 3.0, 30.0, 0.16, 0.90),
    row("aaaa03ffffff", "l1", 10.0, 8.0, 0.30, 0.80),
    row("bbbb01ffffff", "sqrt_l1", 1.0, 40.0, 0.08, 0.97),
    row("bbbb02ffffff", "sqrt_l1", 3.0, 12.0, 0.15, 0.93),
    row("bbbb03ffffff", "sqrt_l1", 10.0, 5.0, 0.35, 0.70),
    row("bbbb04ffffff", "sqrt_l1", 3.0, 35.0, 0.20, 0.85, lr=1e-3),
]
STARRED = {"aaaa01ffffff", "aaaa03ffffff", "bbbb01ffffff", "bbbb02ffffff", "bbbb03ffffff"}


def write_frontier_report(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """`out_dir/frontier.md` and its PNGs under `out_dir/frontier/`; nothing on an error."""
    text, _ = build_frontier(rows, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "frontier.md"
    path.write_text(text, encoding="utf-8")
    return path


def table_line(md: str, run_id: str) -> str:
    (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| `{run_id[:10]}`")]
    return line


def test_table_stars_and_summary(tmp_path):
    md = write_frontier_report(ROWS, tmp_path).read_text(encoding="utf-8")
    assert f"## {MODEL} · `{HOOK}`" in md
    assert ("| run | series | d_sae | coefficient | lr | L0 | FVU | CE loss recovered "
            "| delta LM loss | dead % | shrinkage | L0-FVU frontier | L0-CE frontier |") in md
    assert table_line(md, "aaaa02ffffff") == (
        "| `aaaa02ffff` | relu/l1 | 64 | 3 | 0.0003 | 30.0 | 0.1600 | 0.9000 | 0.1000 "
        "| 12.5 | 0.900 |  |  |"
    )
    for r in ROWS:
        fvu_star = table_line(md, r["run_id"]).split("|")[-3].strip()
        assert (fvu_star == "★") == (r["run_id"] in STARRED), r["run_id"]
    # sorted by series, then L0
    order = [ln.split("`")[1][:4] for ln in md.splitlines() if ln.startswith("| `")]
    assert order == ["aaaa"] * 3 + ["bbbb"] * 4
    assert "| 5.0 |" in table_line(md, "bbbb03ffffff")
    assert ("The L0-vs-FVU frontier, from sparse to dense: **relu/sqrt_l1** at L0 5.0; "
            "**relu/l1** at L0 8.0; **relu/sqrt_l1** at L0 12.0-40.0 (2 runs); "
            "**relu/l1** at L0 80.0.") in md
    assert ("relu/l1: as the coefficient grows from 1 to 10, L0 goes 80.0 -> 8.0 and FVU rises "
            "steadily, 0.0500 -> 0.3000.") in md
    # two sqrt_l1 runs share coefficient 3: the trend says it averages them
    assert "relu/sqrt_l1: as the coefficient grows from 1 to 10" in md
    assert "(means over runs sharing a coefficient)" in md


def test_same_rows_in_any_order_give_identical_bytes(tmp_path):
    first = write_frontier_report(ROWS, tmp_path / "a").read_bytes()
    shuffled = list(ROWS)
    random.Random(0).shuffle(shuffled)
    second = write_frontier_report(shuffled, tmp_path / "b").read_bytes()
    assert first == second and b"\r" not in first
    pngs = sorted(p.name for p in (tmp_path / "a" / "frontier").iterdir())
    assert pngs == [f"gpt2__blocks.6.hook_resid_post__{s}.png"
                    for s in ("l0_ce", "l0_delta_lm", "l0_fvu")]
    for name in pngs:
        a = (tmp_path / "a" / "frontier" / name).read_bytes()
        assert a[:8] == b"\x89PNG\r\n\x1a\n" and len(a) > 5000
        assert a == (tmp_path / "b" / "frontier" / name).read_bytes(), name
        assert f"](frontier/{name})".encode() in first


def test_missing_metrics_show_as_dash_and_are_never_starred(tmp_path):
    odd = row("cccc01ffffff", None, None, 10.0, math.nan, math.nan, hook="blocks.0.hook_mlp_out")
    del odd["delta_lm_loss"], odd["shrinkage"]
    odd["architecture"] = "topk"
    md = write_frontier_report([odd], tmp_path).read_text(encoding="utf-8")
    assert table_line(md, "cccc01ffffff") == (
        "| `cccc01ffff` | topk | 64 | - | 0.0003 | 10.0 | - | - | - | 12.5 | - |  |"
    )
    assert "- No run here has both L0 and FVU." in md
    assert not (tmp_path / "frontier").exists()  # nothing to plot


def test_no_rows_raises_and_writes_nothing(tmp_path):
    with pytest.raises(SaerunError, match="no finished runs match"):
        write_frontier_report([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compute_classes_read_the_stored_step_flops(tmp_path):
    counted = [dict(r, step_flops_per_token=1e6 if r["penalty"] == "l1" else 1.05e6)
               for r in ROWS]
    counted[-1]["step_flops_per_token"] = None  # registered by an older saerun
    md = write_frontier_report(counted, tmp_path).read_text(encoding="utf-8")
    assert "| relu/l1 | 0.01 |" in md and "| relu/sqrt_l1 | 0.0105 |" in md  # 1e6 * 10,000
    assert ("- 1 of these 7 runs have no step FLOPs in the registry (registered by an older "
            "saerun): they are left out of the compute classes.") in md
    assert "6 runs at 0.01 TFLOP (+10%)" in md
    assert ("- The training cost of these runs is unknown (no step FLOPs in the registry: "
            "registered by an older saerun).") in write_frontier_report(
        ROWS, tmp_path / "b").read_text(encoding="utf-8")
