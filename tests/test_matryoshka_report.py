"""The findings section of Matryoshka with every prefix (`report.ideas_matryoshka`) on
synthetic rows: its table names every run, and its verdict follows the numbers."""

from __future__ import annotations

from saerun.report import ideas_matryoshka
from saerun.report.findings import _cmp_words
from saerun.report.findings_ideas import IDEAS


def row(run_id: str, k: int, fvu: float, every: bool, weights: str | None = None,
        dead: float = 0.02) -> dict:
    return {"run_id": run_id, "series": "matryoshka", "sae.k": k, "l0": float(k), "d_sae": 512,
            "fvu": fvu, "ce_loss_recovered": 1.0 - fvu / 4, "dead_fraction": dead,
            "sae.prefix_widths": "every" if every else [8, 32, 128, 512],
            "sae.prefix_weights": weights if every else [0.25] * 4}


def rows(every_fvu: list[float]) -> list[dict]:
    base = [row(f"base{k:02d}aaaaaaaa", k, fvu, False) for k, fvu in
            zip((16, 32, 64), (0.20, 0.15, 0.10), strict=True)]
    every = [row(f"every{k:02d}bbbbbbb", k, fvu, True, "uniform", dead=0.05) for k, fvu in
             zip((16, 32, 64), every_fvu, strict=True)]
    return base + every + [row("logu32cccccccc", 32, 0.17, True, "log_uniform")]


def test_section_is_registered():
    assert (ideas_matryoshka.SPECS, ideas_matryoshka.section) in IDEAS


def test_section_table_and_a_better_verdict():
    md = "\n".join(ideas_matryoshka.section(rows([0.18, 0.13, 0.09]), {}, {}, _cmp_words))
    assert md.startswith("## ") and "Matryoshka with every prefix" in md
    for run_id in ("base16aaaa", "every64bbb", "logu32cccc"):
        assert f"`{run_id}`" in md
    assert "lower (better) at every k" in md
    assert "Dead latents: 5.0% against 2.0%" in md
    assert ("Log-uniform weights at k 32: FVU 0.1700 against uniform's 0.1300 and the four "
            "prefixes' 0.1500.") in md
    # d_sae/16 = 32 latents: the default's widths 8 and 32 (half its weight), 32/512 uniform,
    # and log-uniform's sum of 1/m over 8..32 against 8..512
    share = sum(1 / m for m in range(8, 33)) / sum(1 / m for m in range(8, 513))
    assert (f"matryoshka (4 prefixes) 50%, matryoshka (every prefix, log_uniform) "
            f"{100 * share:.0f}%, matryoshka (every prefix, uniform) 6%") in md


def test_section_says_worse_and_nil_plainly():
    worse = "\n".join(ideas_matryoshka.section(rows([0.22, 0.17, 0.12]), {}, {}, _cmp_words))
    assert "higher (worse) at every k" in worse
    nil = "\n".join(ideas_matryoshka.section(rows([0.2001, 0.1499, 0.1000]), {}, {},
                                             _cmp_words))
    assert "a nil effect" in nil


def test_section_without_runs():
    md = ideas_matryoshka.section([], {}, {}, _cmp_words)
    assert any("Not trained yet" in line for line in md)
