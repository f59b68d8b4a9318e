"""`saerun report` end to end on a synthetic registry: every report, byte-identical
regeneration, JSON / CSV tables, and clear messages for an empty registry or a filter that
matches nothing (no crash, no empty file)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from saerun.cli import main
from saerun.errors import SaerunError
from saerun.registry import Registry
from saerun.report.rows import results

# bench/ is not an installed package: import its synthetic registry from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.synthetic import synthetic_registry  # noqa: E402

N_RUNS = 36  # relu/l1 (6 coefficients x 3 LRs) and relu/sqrt_l1 (the same), one site, one seed


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("reg") / "saerun.db"
    synthetic_registry(path, N_RUNS)
    return path


def report(registry, out, *args):
    return main(["report", *args, "--registry", str(registry), "--out", str(out)])


def test_every_report_regenerates_byte_identical(registry, tmp_path, capsys):
    kinds = ["--frontier", "--death", "--lr", "--curves"]
    assert report(registry, tmp_path / "a", *kinds) == 0
    assert report(registry, tmp_path / "b", *kinds) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    mds = [str(p) for p in files if p.suffix == ".md"]
    assert mds == ["curves.md", "death.md", "frontier.md", "lr.md"]
    assert sum(p.suffix == ".png" for p in files) >= 8
    for rel in files:
        a, b = (tmp_path / "a" / rel).read_bytes(), (tmp_path / "b" / rel).read_bytes()
        assert a == b, rel
    # every image a report links exists
    for md in mds:
        text = (tmp_path / "a" / md).read_text()
        for link in (part.split(")")[0] for part in text.split("](")[1:]):
            assert (tmp_path / "a" / link).is_file(), link
    lr = (tmp_path / "a" / "lr.md").read_text()
    assert "relu/l1 λ=0.1: best FVU" in lr
    death = (tmp_path / "a" / "death.md").read_text()
    assert "| relu/l1 | 512 | none | 18 |" in death
    assert "wrote" in capsys.readouterr().out


def test_filters_select_runs(registry, tmp_path):
    assert report(registry, tmp_path, "--frontier", "penalty=sqrt_l1", "train.lr=0.001") == 0
    text = (tmp_path / "frontier.md").read_text()
    assert text.count("| `") == 6 and "relu/l1 |" not in text


def test_json_and_csv_tables(registry, tmp_path):
    assert report(registry, tmp_path, "--frontier", "--lr", "--format", "json") == 0
    data = json.loads((tmp_path / "frontier.json").read_text())
    assert len(data["runs"]) == N_RUNS and {"run_id", "l0", "fvu"} <= set(data["runs"][0])
    lr = json.loads((tmp_path / "lr.json").read_text())
    assert {r["metric"] for r in lr["flatness"]} == {"final_loss", "fvu", "dead_pct",
                                                     "frontier_gap"}
    assert len(lr["flatness"]) == 12 * 4  # 12 LR sweeps x 4 metrics
    assert not (tmp_path / "frontier.md").exists()  # tables only
    assert report(registry, tmp_path, "--death", "--format", "csv") == 0
    rows = list(csv.DictReader((tmp_path / "death__by_group.csv").open()))
    assert [(r["recipe"], r["n"]) for r in rows] == [("relu/l1", "18"), ("relu/sqrt_l1", "18")]


def test_empty_registry_and_no_match_say_so(tmp_path, registry, capsys):
    empty = tmp_path / "empty.db"
    Registry(empty).close()
    assert report(empty, tmp_path / "out", "--all") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the registry {empty} has no finished runs to report on")
    assert report(registry, tmp_path / "out", "--frontier", "architecture=gated") == 2
    err = capsys.readouterr().err
    assert "no finished runs match the filters architecture=gated (36 finished runs" in err
    assert report(registry, tmp_path / "out", "--frontier", "archtecture=relu") == 2
    assert "did you mean 'architecture'?" in capsys.readouterr().err
    assert report(registry, tmp_path / "out") == 2
    assert "say which report to write" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written, not even an empty file


def test_findings_page_answers_from_the_rows(registry):
    from saerun.report.common import prepare
    from saerun.report.findings import findings_page

    with Registry(registry) as reg:
        rows = results(reg)
        curves = reg.curves([r["run_id"] for r in rows])
    front = [r for r in rows if r["lr"] == 0.001]
    plans = {"frontier.yaml": [r["run_id"] for r in front]}
    page = findings_page(prepare(rows), prepare(front), plans, curves, {})
    assert page == findings_page(prepare(rows[::-1]), prepare(front), plans, curves, {})
    for title in ("## 1. Does Gated Pareto-dominate ReLU-L1?",
                  "## 2. Does sqrt-L1 improve on the L1 frontier?",
                  "## 5. How sensitive to the learning rate is each architecture?"):
        assert title in page
    assert "No Gated or no ReLU-L1 runs in the frontier spec." in page
    # the synthetic sqrt-L1 recipe is better than L1 at every L0 (quality 1.05 against 1.25)
    assert "**Yes**: sqrt-L1's frontier is below L1's across the whole shared L0 range." in page
    assert "(6 relu/sqrt_l1 runs against 6 relu/l1 runs)" in page
    assert "| relu/l1 λ=0.1 | 3 | 0.001 |" in page  # 3 LRs, best in the middle


def test_findings_reports_are_written_from_the_registry_alone(registry, tmp_path):
    from saerun.report.findings import posthoc_run_ids, write_findings

    with Registry(registry) as reg:
        ids = [r["run_id"] for r in results(reg)]
    plans = {"frontier.yaml": ids[:12], "lr.yaml": ids}
    assert posthoc_run_ids(registry, plans) == ids[:12]  # the frontier spec's runs
    page = write_findings(registry, plans, {ids[0]: "boom"}, tmp_path)
    assert page == tmp_path / "FINDINGS.md"
    text = page.read_text(encoding="utf-8")
    assert f"**1 runs failed** and are left out: `{ids[0][:10]}` boom" in text
    written = sorted(p.name for p in (tmp_path / "findings").glob("*.md"))
    assert written == ["curves.md", "death.md", "frontier.md", "lr.md", "posthoc.md"]
    assert "0 of 12 runs analysed" in (tmp_path / "findings" / "posthoc.md").read_text()
    with pytest.raises(SaerunError, match="no finished findings run"):
        write_findings(registry, {"frontier.yaml": ["ffff0000"]}, {}, tmp_path / "none")
