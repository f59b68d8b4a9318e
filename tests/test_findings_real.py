"""The real-model section of docs/FINDINGS.md, from synthetic rows (no model, no registry)."""

from __future__ import annotations

from saerun.report.common import prepare
from saerun.report.findings_real import real_sections


def _row(run_id: str, arch: str, l0: float, fvu: float, lr: float = 5e-4, **extra: object
         ) -> dict:
    sae = {"architecture": arch, "d_sae": 2304}
    if arch in ("topk", "batchtopk"):
        sae["k"] = int(l0)
    return {"run_id": run_id, "architecture": arch, "d_sae": 2304, "l0": l0, "fvu": fvu,
            "penalty": "l1" if arch == "relu" else None, "sae.k": sae.get("k"),
            "sparsity_coefficient": None if "k" in sae else 1.0, "train.lr": lr,
            "model": "saerun/smollm2-135m", "hook_name": "blocks.15.hook_resid_post",
            "train_tokens": 2_000_000, "train.batch_tokens": 4096, "ce_loss_recovered": 0.9,
            "delta_lm_loss": 0.2, "dead_fraction": 0.01, "outlier_norm_limit": 1800.0,
            "excluded_outlier_positions": 3.0, "excluded_outlier_positions_train": 40.0,
            "seed": 0, **extra}


def test_the_claims_table_reads_both_models_and_says_where_they_agree():
    # Real: TopK below ReLU-L1 everywhere; toy: ReLU-L1 below TopK everywhere.
    real = [_row("r1", "relu", 20, 0.40), _row("r2", "relu", 80, 0.20),
            _row("t1", "topk", 16, 0.30), _row("t2", "topk", 64, 0.10),
            _row("l1", "relu", 30, 0.5, lr=1.5e-4), _row("l2", "relu", 40, 0.45, lr=1.5e-3)]
    toy = [_row("a", "relu", 20, 0.10), _row("b", "relu", 80, 0.05),
           _row("c", "topk", 16, 0.30), _row("d", "topk", 64, 0.20)]
    plans = {"real-frontier.yaml": ["r1", "r2", "t1", "t2"], "real-lr.yaml": ["l1", "l2"]}
    md = "\n".join(real_sections(prepare(real), prepare(toy), plans, 9))
    assert md.startswith("## 9. The same claims on a real model (SmolLM2-135M)")
    line = next(x for x in md.splitlines() if x.startswith("| TopK beats ReLU-L1"))
    assert line == ("| TopK beats ReLU-L1 | Gao et al. 2024 | no (0/9) | yes (9/9) | no | "
                    "**yes** |")
    assert "| Gated beats ReLU-L1 (equal width) | Rajamanoharan et al. 2024 | no common L0 |" \
        in md
    assert "norm above 1800" in md and "| 40 / 3 |" in md
    # The LR table: the relu recipe at 1.5e-4, 1.5e-3 and the frontier's base rate 5e-4.
    lr_line = next(x for x in md.splitlines() if x.startswith("| relu/l1 | FVU"))
    assert lr_line.count("FVU") == 3
    assert "relu/l1: lowest FVU at lr 0.0005" in md


def test_a_series_of_one_run_reads_no_claim():
    """One BatchTopK run inside TopK's L0 range is a point: the claim is shown at that one L0
    and agrees or disagrees with nothing (it said "yes (1/1)" and agreed with the paper)."""
    real = [_row("t1", "topk", 16, 0.30), _row("t2", "topk", 64, 0.10),
            _row("b1", "batchtopk", 32, 0.15)]
    md = "\n".join(real_sections(prepare(real), [], {"real-frontier.yaml": ["t1", "t2", "b1"]},
                                 9))
    line = next(x for x in md.splitlines() if x.startswith("| BatchTopK beats TopK"))
    assert line == "| BatchTopK beats TopK | Bussmann et al. 2024 | - | one L0 only (1/1) | - | - |"


def test_no_real_run_says_how_to_get_them():
    md = "\n".join(real_sections([], [], {}, 9))
    assert "bash scripts/setup.sh --real-model" in md and "saerun findings --real" in md


def test_the_real_ideas_section_sets_each_variant_beside_its_baseline():
    from saerun.report.ideas_real import section, verdict

    assert verdict({"l0": 31.0, "fvu": 0.18}, {"l0": 31.5, "fvu": 0.20}).startswith("**better**")
    assert verdict({"l0": 40.0, "fvu": 0.25}, {"l0": 31.0, "fvu": 0.20}).startswith("**worse**")
    assert verdict({"l0": 40.0, "fvu": 0.15}, {"l0": 31.0, "fvu": 0.20}).startswith("a trade-off")
    assert verdict({"l0": 31.0, "fvu": 0.2001}, {"l0": 31.0, "fvu": 0.20}).startswith("nil")
    rows = [_row("m4", "matryoshka", 31.0, 0.20, **{"sae.k": 32}),
            _row("me", "matryoshka", 31.0, 0.16, **{"sae.k": 32, "sae.prefix_widths": "every"}),
            _row("g", "gated", 80.0, 0.10, sparsity_coefficient=3.0),
            _row("gt", "gated", 90.0, 0.14, sparsity_coefficient=3.0, **{"sae.b_mag": "tied"})]
    md = "\n".join(section(prepare(rows)))
    assert md.startswith("## 14. The research ideas on the real model (SmolLM2-135M)")
    lines = md.splitlines()
    every = next(x for x in lines if "every prefix (uniform)" in x)
    assert "`me`" in every and "**better** (L0 +0%, FVU -20%)" in every
    tied = next(x for x in lines if "b_mag tied" in x and "`gt`" in x)
    assert "**worse** (L0 +12%, FVU +40%)" in tied
    # Ideas without runs say so, each row once.
    assert sum("not trained yet" in x for x in lines) == 5  # 2 pairs and the no-aux variant
    assert "### 14a. One TopK SAE read at every k (real model)" in md
    assert "Not trained yet (`specs/findings/real/real-ideas.yaml`)" in md
    assert section([])[-2].startswith("Not trained yet")
