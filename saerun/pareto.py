"""The one Pareto rule of saerun (pure Python, no torch): sparsity against a quality metric.

A point (l0, value) is on the frontier unless another point is at least as good in both
coordinates and strictly better in one (lower L0; lower value, or higher with
`higher_is_better`). Equal duplicates do not dominate each other: both stay. A point with a
missing or non-finite coordinate is never on the frontier and dominates nothing.

- `pareto_mask(l0, values)`: one bool per point, in the input order (tables star runs).
- `frontier_points(points)`: the distinct frontier points sorted by L0 (step lines, the
  frontier maths of report/common.py); duplicates appear once, as one point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard


def finite(v: object) -> TypeGuard[float]:
    """A finite number (bools excluded): what a frontier may use."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def pareto_mask(l0: Sequence[object], values: Sequence[object],
                higher_is_better: bool = False) -> list[bool]:
    """True for each point no other point dominates (the rule in the module docstring).

    O(n log n): sorted by L0, a point is on the frontier when its value beats every point of
    strictly lower L0 and is the best among the points of its own L0.
    """
    sign = -1.0 if higher_is_better else 1.0  # turn "higher is better" into "lower is better"
    pts: dict[int, tuple[float, float]] = {}
    for i, (a, b) in enumerate(zip(l0, values, strict=True)):
        if finite(a) and finite(b):
            pts[i] = (float(a), sign * float(b))
    out = [False] * len(l0)
    order = sorted(pts, key=lambda i: pts[i])
    best_before = math.inf  # the best value among points of strictly lower L0
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and pts[order[end]][0] == pts[order[start]][0]:
            end += 1
        group_best = pts[order[start]][1]  # sorted by (L0, value): the first is the best
        for i in order[start:end]:
            out[i] = pts[i][1] == group_best and pts[i][1] < best_before
        best_before = min(best_before, group_best)
        start = end
    return out


def frontier_points(points: Sequence[tuple[object, object]],
                    higher_is_better: bool = False) -> list[tuple[float, float]]:
    """The distinct Pareto-optimal (l0, value) points, sorted by L0 (`pareto_mask`'s rule)."""
    pts = [(float(a), float(b)) for a, b in points if finite(a) and finite(b)]
    mask = pareto_mask([a for a, _ in pts], [b for _, b in pts], higher_is_better)
    return sorted({p for p, on in zip(pts, mask, strict=True) if on})
