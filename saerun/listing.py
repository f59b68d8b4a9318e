"""What `saerun ls` shows: registry rows -> listing rows (pure, torch-free).

A sweep's runs share a name ("quickstart"), so a row says what sets a run apart instead: the
config values that differ between the runs of its spec (`sae.k=32 train.lr=0.0003`), computed
per spec over every run the registry holds for it, whatever the filters keep. Filters are the
reports' (`report.rows.filter_rows`, KEY=VALUE on the same flat keys, plus `status`), so
`saerun ls architecture=relu` and `saerun report --frontier architecture=relu` agree.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from saerun.errors import SaerunError
from saerun.report.rows import filter_rows, flatten, result_row

# Columns of the text table after the identifying ones: (header, metric, scale).
TABLE_METRICS: tuple[tuple[str, str, float], ...] = (
    ("L0", "l0", 1.0), ("FVU", "fvu", 1.0), ("CE rec.", "ce_loss_recovered", 1.0),
    ("dead %", "dead_fraction", 100.0),
)


def differing_keys(configs: Iterable[dict[str, Any]]) -> list[str]:
    """The dotted key paths whose values are not the same in every config (a key missing from
    some counts as differing), sorted. One config (or none): nothing differs."""
    flat = [flatten(c) for c in configs]
    if len(flat) < 2:
        return []
    keys = sorted({k for f in flat for k in f})
    missing = object()
    return [k for k in keys
            if len({json.dumps(f.get(k, missing), sort_keys=True, default=repr)
                    for f in flat}) > 1]


def show_value(value: Any) -> str:
    """A config value as `ls` prints it: 0.0003 as 3e-4, lists and None as YAML would."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        text = f"{value:.6g}"
        if "e" not in text and value != 0 and abs(value) < 1e-2:
            text = f"{value:.6e}"
        if "e" in text:  # 3.000000e-04 -> 3e-4
            mantissa, _, exponent = text.partition("e")
            if "." in mantissa:
                mantissa = mantissa.rstrip("0").rstrip(".")
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return str(value)


def values_text(values: dict[str, Any]) -> str:
    """`sae.k=32 train.lr=3e-4`: a run's differing values, one KEY=VALUE per key."""
    return " ".join(f"{k}={show_value(v)}" for k, v in values.items())


def site_of(config: dict[str, Any]) -> str:
    """The hook an SAE reads; a transcoder's (with `site.hook_name_out`) as "IN -> OUT"."""
    site = config.get("site") or {}
    out = site.get("hook_name_out")
    return f"{site.get('hook_name')} -> {out}" if out else str(site.get("hook_name"))


def is_imported(config: dict[str, Any]) -> bool:
    """An SAE evaluated from a folder (`sae.from_pretrained`), not trained by saerun."""
    return bool((config.get("sae") or {}).get("from_pretrained"))


def listing(runs: list[dict[str, Any]], status: str | None = None,
            filters: dict[str, str] | None = None, sort: str | None = None,
            ) -> list[dict[str, Any]]:
    """`Registry.list_runs(details=True)` -> the rows `ls` shows, each the registry's fields
    plus `values` (differing config values, by dotted key), `site` and `imported`.

    status: keep one status. filters: KEY=VALUE on the flat keys of `report.rows.result_row`
    (and `values` keys), as `report` filters. sort: a flat key (a metric: `fvu`), ascending,
    `-fvu` descending; runs without the key last; else the registry's order (oldest first).
    """
    by_spec: dict[str | None, list[dict[str, Any]]] = {}
    for run in runs:
        by_spec.setdefault(run.get("spec_name"), []).append(run)
    differ = {spec: differing_keys(r["config"] for r in group) for spec, group in by_spec.items()}
    rows = []
    for run in runs:
        flat_config = flatten(run["config"])
        values = {k: flat_config[k] for k in differ[run.get("spec_name")] if k in flat_config}
        row = {**run, "values": values, "site": site_of(run["config"]),
               "imported": is_imported(run["config"])}
        try:
            flat = result_row(run)  # the reports' keys: architecture, lr, d_sae, metrics ...
        except (KeyError, TypeError):  # a config without an SAE's usual keys
            flat = {**flat_config, **run["metrics"]}
        flat.update(status=run["status"], site=row["site"], imported=row["imported"])
        rows.append((flat, row))
    if status is not None:
        rows = [pair for pair in rows if pair[1]["status"] == status]
    if filters:
        kept = {id(f) for f in filter_rows([f for f, _ in rows], filters)}
        rows = [pair for pair in rows if id(pair[0]) in kept]
    if sort:
        rows = _sorted(rows, sort)
    return [row for _, row in rows]


def _sorted(rows: list[tuple[dict[str, Any], dict[str, Any]]],
            sort: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    key, reverse = (sort[1:], True) if sort.startswith("-") else (sort, False)
    known = sorted({k for flat, _ in rows for k in flat})
    if rows and key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        raise SaerunError(f"no run has a key {key!r} to sort by",
                          hint=f"did you mean {close[0]!r}?" if close else
                          "a metric name, e.g. --sort fvu (or --sort=-fvu, descending)")
    present = [p for p in rows if _sortable(p[0].get(key))]
    absent = [p for p in rows if not _sortable(p[0].get(key))]
    present.sort(key=lambda p: p[0][key], reverse=reverse)  # stable: ties keep their order
    return present + absent


def _sortable(value: Any) -> bool:
    return isinstance(value, int | float | str) and value == value  # NaN sorts last too


def table_cells(row: dict[str, Any]) -> list[str]:
    """The text table's cells of one row (after `table_header`)."""
    values = values_text(row["values"])
    if row["imported"]:
        values = f"imported {values}".strip()
    metrics = row.get("metrics") or {}
    cells = [row["run_id"][:12], row.get("spec_name") or "", values, row["site"],
             row["status"]]
    for _, name, scale in TABLE_METRICS:
        value = metrics.get(name)
        cells.append("-" if value is None else f"{scale * value:.4g}")
    return cells


def table_header() -> list[str]:
    return ["run", "spec", "values", "site", "status"] + [h for h, _, _ in TABLE_METRICS]
