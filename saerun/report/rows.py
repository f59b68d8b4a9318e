"""The result rows every report reads: one flat dict per finished run, from plain registry reads.

`results(registry, filters)`: the config as dotted keys (`sae.d_sae`), the convenience keys
the reports group by (model, hook_name ("IN -> OUT" for a transcoder), architecture, penalty,
sparsity_coefficient, d_sae, lr, seed, train_tokens), timings, `step_flops_per_token` and
every metric by name. This projection knows the schema's vocabulary (relu and gated name a
`penalty`, jumprelu a `sparsity_mode`); the registry itself stores configs and metrics and
knows nothing of architectures.
"""

from __future__ import annotations

import difflib
from typing import Any

from saerun.errors import SaerunError
from saerun.registry import Registry


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'sae': {'d_sae': 8}} -> {'sae.d_sae': 8}; lists stay values."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def result_row(run: dict[str, Any]) -> dict[str, Any]:
    """The flat row of one `Registry.finished_runs` entry."""
    config = run["config"]
    sae = config["sae"]
    sparsity = sae.get("sparsity") or {}
    row: dict[str, Any] = {"run_id": run["run_id"], "name": run["name"],
                           "spec_name": run["spec_name"], "status": "done", **flatten(config)}
    row.update(
        model=config["model"]["name"],
        # A transcoder's site reads "IN -> OUT": the reports' panels group by (model, hook_name),
        # so transcoders get a panel of their own beside the SAEs at IN.
        hook_name=site_label(config["site"]),
        hook_name_out=config["site"].get("hook_name_out"),
        architecture=sae["architecture"],
        # relu/gated name a penalty, jumprelu a sparsity mode: one column for both.
        penalty=sparsity.get("penalty") or sae.get("sparsity_mode"),
        sparsity_coefficient=sparsity.get("coefficient", sae.get("coefficient")),
        d_sae=sae["d_sae"],
        # An imported SAE was not trained here: no learning rate to plot it at.
        lr=None if sae["architecture"] == "imported" else config["train"]["lr"],
        seed=config["seed"],
        train_tokens=config["data"]["train_tokens"],
        train_seconds=run["train_seconds"],
        eval_seconds=run["eval_seconds"],
        tokens_trained=run["tokens_trained"],
        finished_at=run["finished_at"],
        step_flops_per_token=run["step_flops_per_token"],
    )
    row.update(run["metrics"])
    return row


def site_label(site: dict[str, Any]) -> str:
    """The site as the reports name it: the hook, or "IN -> OUT" for a transcoder."""
    out = site.get("hook_name_out")
    return site["hook_name"] if out is None else f"{site['hook_name']} -> {out}"


def results(reg: Registry, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One flat row per done run, sorted by run_id (see the module docstring).

    filters: {key: value} kept when str(row[key]) == value, or numerically equal when both
    parse as numbers. A key no row has is an error that suggests the closest one.
    """
    return filter_rows([result_row(run) for run in reg.finished_runs()], filters)


def filter_rows(rows: list[dict[str, Any]],
                filters: dict[str, str] | None) -> list[dict[str, Any]]:
    """The rows matching every KEY=VALUE filter (`matches`); a key no row has is an error that
    suggests the closest one. `report` and `ls` filter through this one function."""
    for key in filters or {}:
        known = sorted({k for row in rows for k in row})
        if rows and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise SaerunError(
                f"no run has a result key {key!r}",
                hint=f"did you mean {close[0]!r}?" if close else "see `saerun show RUN --json`",
            )
    return [r for r in rows if all(matches(r.get(k), v) for k, v in (filters or {}).items())]


def matches(value: Any, wanted: str) -> bool:
    """A filter test: None matches 'none'/'null'/'', bools 'true'/'false', numbers numerically."""
    if value is None:
        return wanted.strip().lower() in ("none", "null", "")
    if isinstance(value, bool):
        return str(value).lower() == wanted.strip().lower()
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == wanted
