"""What every report shares: formatting, grouping of result rows, tables, the frontier maths.

Pure functions on the registry's flat result rows (one dict per finished run, see
`report.rows.results`). Nothing here draws or touches the disk except `write_tables`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saerun.errors import SaerunError
from saerun.pareto import finite as ok
from saerun.pareto import frontier_points as frontier_points  # the reports read it here

STAR = "★"
DEFAULT_PENALTY = {"gated": "l1", "jumprelu": "tanh"}  # named in a series only when different
# Config prefixes of the flattened result row: what makes two runs the same recipe.
CONFIG_PREFIXES = ("model.", "site.", "data.", "sae.", "train.", "eval.")


def fmt(value: Any, spec: str) -> str:
    """Fixed formatting; missing or NaN shows as "-"."""
    return format(value, spec) if ok(value) else "-"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|")  # a "|" inside a cell would split the table


def slug(text: str) -> str:
    """A file-name-safe version of a model name or hook name (paths and dots kept readable)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "_"


def series_of(row: dict[str, Any]) -> str:
    """A recipe's name in tables and legends: `architecture/penalty` (ReLU always; Gated and
    JumpReLU only away from their usual l1 / tanh), or the architecture alone; a transcoder's
    adds "transcoder" (or "skip transcoder")."""
    penalty, arch = row.get("penalty"), str(row["architecture"])
    name = arch if not penalty or DEFAULT_PENALTY.get(arch) == penalty else f"{arch}/{penalty}"
    if row.get("hook_name_out") is not None:  # transcoders are series of their own
        skip = row.get("sae.skip_connection")
        return f"{name} {'skip transcoder' if skip else 'transcoder'}"
    return name


def remedy_of(row: dict[str, Any]) -> str:
    """The dead-latent remedy a run trained with: resampling, AuxK, pre-act loss, ghost grads
    or none (several joined by '+')."""
    found = []
    if row.get("train.resample.every_tokens") is not None:
        found.append("resampling")
    if (row.get("sae.aux_coefficient") or 0) > 0:
        found.append("AuxK")
    if (row.get("sae.pre_act_coefficient") or 0) > 0:
        found.append("pre-act loss")
    if row.get("sae.ghost_grads"):
        found.append("ghost grads")
    return "+".join(found) or "none"


def knob_of(row: dict[str, Any]) -> str:
    """The sparsity knob of a run as text: `k=32` for the TopK family, `λ=3` otherwise."""
    if ok(row.get("sae.k")):
        return f"k={row['sae.k']:g}"
    if ok(row.get("sparsity_coefficient")):
        return f"λ={row['sparsity_coefficient']:g}"
    return "-"


def recipe_key(row: dict[str, Any], drop: Iterable[str] = ()) -> tuple:
    """Every resolved config value of a run except the keys in `drop` (and the seed unless kept):
    two runs with the same key differ only in what was dropped."""
    dropped = set(drop)
    items = [(k, repr(v)) for k, v in row.items()
             if (k.startswith(CONFIG_PREFIXES) or k == "seed") and k not in dropped]
    return tuple(sorted(items))


def prepare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `series`, `remedy` and `knob` added, sorted by run id (input order is free)."""
    if not rows:
        raise SaerunError(
            "no finished runs match the filters",
            hint="`saerun ls` lists the registry's runs; loosen the KEY=VALUE filters",
        )
    out = [dict(r, series=series_of(r), recipe=series_of(r), remedy=remedy_of(r), knob=knob_of(r))
           for r in rows]
    # A recipe trained at several widths at one site is one series per width: a frontier mixes
    # runs of one dictionary size (gated at 512 latents and at its compute-matched 279 differ).
    widths: dict[tuple, set] = {}
    for r in out:
        widths.setdefault((r["model"], r["hook_name"], r["series"]), set()).add(r.get("d_sae"))
    for r in out:
        if len(widths[(r["model"], r["hook_name"], r["series"])]) > 1:
            r["series"] = f"{r['series']} d={r.get('d_sae')}"
    return sorted(out, key=lambda r: str(r["run_id"]))


def by_site(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """[(model, hook_name, rows)] sorted; rows within a site by (series, L0, run id)."""
    sites = sorted({(str(r["model"]), str(r["hook_name"])) for r in rows})
    out = []
    for model, hook in sites:
        site_rows = sorted(
            (r for r in rows if (str(r["model"]), str(r["hook_name"])) == (model, hook)),
            key=lambda r: (r["series"], r["l0"] if ok(r.get("l0")) else math.inf,
                           str(r["run_id"])),
        )
        out.append((model, hook, site_rows))
    return out


def mean(values: Iterable[Any]) -> float:
    vals = [float(v) for v in values if ok(v)]
    return sum(vals) / len(vals) if vals else math.nan


# -- the frontier --------------------------------------------------------------------------------


def series_front(rows: list[dict[str, Any]], series: str, metric: str = "fvu",
                 higher: bool = False) -> list[tuple[float, float]]:
    """The (L0, metric) Pareto frontier of one series' rows."""
    return frontier_points([(r.get("l0"), r.get(metric)) for r in rows if r["series"] == series],
                           higher)


def frontier_value(front: list[tuple[float, float]], l0: float) -> float:
    """The best value reachable at or below `l0` on a frontier (the step line); NaN below it."""
    best = math.nan
    for a, b in front:
        if a <= l0:
            best = b
    return best


def interpolate(front: list[tuple[float, float]], l0: float) -> float:
    """The frontier's value at `l0`, linear in log L0 and log value between its points (values
    must be positive); NaN outside the frontier's L0 range: no extrapolation."""
    if not front or not front[0][0] <= l0 <= front[-1][0]:
        return math.nan
    for (a0, b0), (a1, b1) in zip(front, front[1:], strict=False):
        if a0 <= l0 <= a1:
            if a1 == a0:
                return b0
            w = (math.log(l0) - math.log(a0)) / (math.log(a1) - math.log(a0))
            if b0 > 0 and b1 > 0:
                return math.exp((1 - w) * math.log(b0) + w * math.log(b1))
            return (1 - w) * b0 + w * b1
    return front[-1][1] if l0 == front[-1][0] else math.nan


@dataclass
class Comparison:
    """Series A against series B along L0, on the overlap of their frontiers' L0 ranges."""

    l0_range: tuple[float, float] | None  # None: the frontiers do not overlap
    grid: list[float] = field(default_factory=list)
    a: list[float] = field(default_factory=list)  # interpolated values of A on the grid
    b: list[float] = field(default_factory=list)
    a_better: int = 0  # grid points where A is strictly better
    b_better: int = 0

    @property
    def verdict(self) -> str:
        if self.l0_range is None:
            return "no overlap"
        if self.a_better == len(self.grid):
            return "A better everywhere"
        if self.b_better == len(self.grid):
            return "B better everywhere"
        return "mixed"


def compare(front_a: list[tuple[float, float]], front_b: list[tuple[float, float]],
            higher_is_better: bool = False, n: int = 9) -> Comparison:
    """Compare two frontiers at `n` L0 values spaced evenly in log L0 over their overlap."""
    if not front_a or not front_b:
        return Comparison(None)
    lo = max(front_a[0][0], front_b[0][0])
    hi = min(front_a[-1][0], front_b[-1][0])
    if not (lo > 0 and hi >= lo) or (hi == lo and n > 1 and front_a[0][0] != front_a[-1][0]):
        return Comparison(None)
    grid = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)] if hi > lo else [lo]
    grid[-1] = hi  # exactly: a rounding error past the end would read as "no value"
    a = [interpolate(front_a, x) for x in grid]
    b = [interpolate(front_b, x) for x in grid]
    sign = -1.0 if higher_is_better else 1.0
    a_better = sum(1 for x, y in zip(a, b, strict=True) if sign * x < sign * y)
    b_better = sum(1 for x, y in zip(a, b, strict=True) if sign * y < sign * x)
    return Comparison((lo, hi), grid, a, b, a_better, b_better)


# -- tables -----------------------------------------------------------------------------------


@dataclass
class Table:
    """One table of a report: raw values in `rows`, rendered as Markdown, JSON or CSV."""

    name: str  # file-name part, e.g. "death_by_group"
    columns: list[tuple[str, str, str]]  # (key, header, format spec or "" for text)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def markdown(self) -> list[str]:
        head = "| " + " | ".join(h for _, h, _ in self.columns) + " |"
        align = "|" + "|".join("---:" if f else "---" for _, _, f in self.columns) + "|"
        lines = [head, align]
        for r in self.rows:
            cells = [fmt(r.get(k), f) if f else cell(r.get(k, "-")) for k, _, f in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return lines


def _plain(v: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no NaN)."""
    return v if not isinstance(v, float) or math.isfinite(v) else None


def write_tables(tables: list[Table], out_dir: Path, report: str, form: str) -> list[Path]:
    """`report`.json (every table by name) or one `report`__`table`.csv per table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if form == "json":
        obj = {t.name: [{k: _plain(r.get(k)) for k, _, _ in t.columns} for r in t.rows]
               for t in tables}
        path = out_dir / f"{report}.json"
        path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return [path]
    paths = []
    for t in tables:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([k for k, _, _ in t.columns])
        for r in t.rows:
            writer.writerow(["" if _plain(r.get(k)) is None else r.get(k) for k, _, _ in t.columns])
        path = out_dir / f"{report}__{t.name}.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        paths.append(path)
    return paths
