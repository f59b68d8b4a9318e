"""The report maths on hand-computed examples: frontiers, interpolation, comparisons, LR
flatness, tables in three formats."""

from __future__ import annotations

import csv
import json
import math

import pytest

from saerun.report.common import (
    Table,
    compare,
    frontier_points,
    frontier_value,
    interpolate,
    remedy_of,
    write_tables,
)
from saerun.report.lr import flat_range, lr_sweeps

POINTS = [(5, 0.35), (8, 0.30), (12, 0.15), (30, 0.16), (35, 0.20), (40, 0.08), (80, 0.05)]


def test_frontier_points_hand_example():
    # (30, .16) and (35, .20) are beaten by (12, .15): fewer latents AND lower FVU.
    assert frontier_points(POINTS) == [(5, 0.35), (8, 0.30), (12, 0.15), (40, 0.08), (80, 0.05)]
    # same L0: only the better value survives; NaN and None are never on it
    assert frontier_points([(10, 0.2), (10, 0.1), (20, math.nan), (None, 0.0)]) == [(10, 0.1)]
    # higher is better (CE loss recovered): (20, .9) is beaten by (10, .95)
    ce = [(10, 0.95), (20, 0.90), (40, 0.99)]
    assert frontier_points(ce, higher_is_better=True) == [(10, 0.95), (40, 0.99)]


def test_frontier_value_is_the_step_line():
    front = frontier_points(POINTS)
    assert frontier_value(front, 20) == 0.15  # best reachable with L0 <= 20
    assert frontier_value(front, 40) == 0.08
    assert math.isnan(frontier_value(front, 4))  # nothing that sparse


def test_interpolate_log_log_and_no_extrapolation():
    front = [(10, 0.4), (40, 0.1)]
    # halfway in log L0 between 10 and 40 is 20: geometric mean of the values, sqrt(0.04)
    assert interpolate(front, 20) == pytest.approx(0.2, rel=1e-12)
    assert interpolate(front, 10) == pytest.approx(0.4)
    assert math.isnan(interpolate(front, 9.9)) and math.isnan(interpolate(front, 41))


def test_compare_two_frontiers_on_their_overlap():
    a = [(10, 0.4), (40, 0.1)]
    b = [(20, 0.3), (80, 0.05)]
    cmp = compare(a, b, n=3)
    assert cmp.l0_range == (20, 40)
    assert cmp.grid == pytest.approx([20, 20 * 2**0.5, 40])
    # a: sqrt(.4*.1)=.2, .4^.25*.1^.75, .1 ; b: .3, .3^.75*.05^.25, sqrt(.3*.05)
    assert cmp.a == pytest.approx([0.2, 0.4**0.25 * 0.1**0.75, 0.1])
    assert cmp.b == pytest.approx([0.3, 0.3**0.75 * 0.05**0.25, (0.3 * 0.05) ** 0.5])
    assert (cmp.a_better, cmp.b_better, cmp.verdict) == (3, 0, "A better everywhere")
    assert compare(a, [(50, 0.1), (60, 0.05)]).verdict == "no overlap"
    # higher is better flips the verdict
    assert compare(a, b, higher_is_better=True, n=3).verdict == "B better everywhere"


def test_flat_range_hand_computed():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    # best 0.20 at 1e-3; within 5%: <= 0.21, so 3e-4 (0.21) and 3e-3 (0.209), not 1e-2 (0.25)
    pts = list(zip(lrs, [0.30, 0.21, 0.20, 0.209, 0.25], strict=True))
    assert flat_range(pts) == (1e-3, 3e-4, 3e-3, False, False)
    # the best at the edge: the range is open there
    assert flat_range([(1e-4, 0.2), (1e-3, 0.205), (1e-2, 0.3)]) == (1e-4, 1e-4, 1e-3, True, False)
    # contiguous only: 1e-2 is within 5% but 1e-3 between them is not
    assert flat_range([(1e-4, 0.2), (1e-3, 0.5), (1e-2, 0.201)]) == (1e-4, 1e-4, 1e-4, True, False)
    # input order does not matter; a tie picks the lower LR
    assert flat_range([(1e-2, 0.1), (1e-3, 0.1)])[0] == 1e-3
    with pytest.raises(ValueError):
        flat_range([(1e-3, math.nan)])


def _row(run_id, lr, coef, seed=0):
    return {"run_id": run_id, "series": "relu/l1", "knob": f"λ={coef}", "seed": seed,
            "lr": lr, "train.lr": lr, "sae.sparsity.coefficient": coef, "sae.d_sae": 64}


def test_lr_sweeps_group_runs_differing_only_in_lr():
    rows = [_row("a", 1e-3, 1), _row("b", 3e-3, 1), _row("c", 1e-3, 3), _row("d", 1e-3, 1, seed=1),
            _row("e", 1e-2, 1, seed=1)]
    sweeps = lr_sweeps(rows)
    assert [[r["run_id"] for r in s] for s in sweeps] == [["a", "b"], ["d", "e"]]  # not "c"


def test_remedy_names():
    assert remedy_of({}) == "none"
    assert remedy_of({"train.resample.every_tokens": 1000}) == "resampling"
    assert remedy_of({"sae.aux_coefficient": 0.03125}) == "AuxK"
    assert remedy_of({"sae.aux_coefficient": 0.0}) == "none"
    assert remedy_of({"sae.pre_act_coefficient": 0.1, "sae.ghost_grads": True}) == \
        "pre-act loss+ghost grads"


def test_table_markdown_json_csv(tmp_path):
    t = Table("demo", [("name", "name", ""), ("v", "value", ".2f")],
              [{"name": "a|b", "v": 1.234}, {"name": "c", "v": math.nan}])
    assert t.markdown() == ["| name | value |", "|---|---:|", "| a\\|b | 1.23 |", "| c | - |"]
    (path,) = write_tables([t], tmp_path, "rep", "json")
    assert json.loads(path.read_text()) == {"demo": [{"name": "a|b", "v": 1.234},
                                                     {"name": "c", "v": None}]}
    (path,) = write_tables([t], tmp_path, "rep", "csv")
    assert path.name == "rep__demo.csv"
    assert list(csv.reader(path.open())) == [["name", "v"], ["a|b", "1.234"], ["c", ""]]
