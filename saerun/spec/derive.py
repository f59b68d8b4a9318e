"""Values derived from other values by a rule: one home for every rule.

A schema field left `None` means "derive it". The planner calls `sae_derivations` once the
widths are known and writes the values into the `RunConfig` with how each was found, which
`saerun plan` shows (`sae.aux_k: 64  derived: d_in // 2 = 128 // 2`). `resolved_sae` applies
the same rules to an SAE config built outside the planner (a test, the compute matcher's
reference SAE): a config is resolved once, and nothing downstream derives anything.

The rules:
- sparsity coefficient (relu, gated): the penalty's default (`DEFAULT_COEFFICIENTS`; gated
  `GATED_DEFAULT_COEFFICIENT`), measured on the embedded model.
- decoder_init_norm: 1 with decoder_mode unit_norm (the only norm it admits), else 0.1.
- aux_k (topk, batchtopk, matryoshka): d_in // 2 (Gao et al. 2024), at least 1, capped at d_sae.
- prefix_widths (matryoshka): d_sae/64, d_sae/16, d_sae/4, d_sae (widths < 1 dropped);
  prefix_weights: 1/n each.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from saerun.spec.schema import (
    DEFAULT_COEFFICIENTS,
    GATED_DEFAULT_COEFFICIENT,
    V1_METRIC_NAMES,
    V1_RENAMED,
    SAEConfig,
)

KeyPath = tuple[str, ...]
Derived = dict[KeyPath, tuple[Any, str]]  # key path -> (value, how it was derived)


def default_coefficient(architecture: str, penalty: str) -> tuple[float, str]:
    if architecture == "gated":
        return GATED_DEFAULT_COEFFICIENT, "the gated SAE's default"
    return DEFAULT_COEFFICIENTS[penalty], f"default of penalty {penalty}"


def default_decoder_init_norm(decoder_mode: str) -> tuple[float, str]:
    if decoder_mode == "unit_norm":
        return 1.0, "decoder_mode unit_norm holds rows at norm 1"
    return 0.1, f"default with decoder_mode {decoder_mode}"


def default_aux_k(d_in: int, d_sae: int) -> tuple[int, str]:
    aux_k = max(1, d_in // 2)
    how = f"d_in // 2 = {d_in} // 2"
    if aux_k > d_sae:
        return d_sae, f"{how}, capped at d_sae {d_sae}"
    return aux_k, how


def default_prefix_widths(d_sae: int) -> tuple[list[int], str]:
    widths = sorted({w for w in (d_sae // 64, d_sae // 16, d_sae // 4) if w >= 1})
    widths = [w for w in widths if w < d_sae] + [d_sae]
    return widths, f"d_sae/64, d_sae/16, d_sae/4, d_sae of {d_sae}"


def default_prefix_weights(n: int) -> tuple[list[float], str]:
    return [1.0 / n] * n, f"1/{n} for each of the {n} prefixes"


def sae_derivations(sae: Any) -> Derived:
    """What the rules give for the `None` fields of an SAE config whose d_in and d_sae are
    set, keyed by their path in a RunConfig (("sae", "aux_k"), ...)."""
    if sae.d_in is None or sae.d_sae is None:
        raise ValueError("derived SAE values need d_in and d_sae")
    out: Derived = {}
    if sae.decoder_init_norm is None:
        out[("sae", "decoder_init_norm")] = default_decoder_init_norm(sae.decoder_mode)
    sparsity = getattr(sae, "sparsity", None)
    if sparsity is not None and sparsity.coefficient is None:
        out[("sae", "sparsity", "coefficient")] = default_coefficient(
            sae.architecture, sparsity.penalty)
    if hasattr(sae, "aux_k") and sae.aux_k is None:
        out[("sae", "aux_k")] = default_aux_k(sae.d_in, sae.d_sae)
    if hasattr(sae, "prefix_widths"):
        widths = sae.prefix_widths
        if widths is None:
            widths, how = default_prefix_widths(sae.d_sae)
            out[("sae", "prefix_widths")] = (widths, how)
        if sae.prefix_weights is None:
            out[("sae", "prefix_weights")] = default_prefix_weights(len(widths))
    return out


def with_values(tree: dict, values: dict[KeyPath, Any]) -> dict:
    """A copy of a nested mapping with each path's value set (the mappings on the way copied)."""
    out = dict(tree)
    for path, value in values.items():
        node = out
        for part in path[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[path[-1]] = value
    return out


def resolved_sae(sae: Any) -> Any:
    """The SAE config with every derived value filled in (validated again, so the schema's
    checks see the resolved values). A resolved config comes back as it is."""
    derived = sae_derivations(sae)
    if not derived:
        return sae
    values = {path[1:]: value for path, (value, _) in derived.items()}
    data = with_values(sae.model_dump(), values)
    return TypeAdapter(SAEConfig).validate_python(data)


# -- the v1 identity view: what a run id hashes ---------------------------------------------------

# saerun v1 left these null in a resolved config (the SAE module derived them), so a run id
# hashes them as null when a rule derived them; every other derived value v1 already wrote in.
V1_NULL_WHEN_DERIVED: frozenset[KeyPath] = frozenset(
    {("sae", "aux_k"), ("sae", "prefix_widths"), ("sae", "prefix_weights")}
)
_V1_LM = {"ce_loss_recovered", "delta_lm_loss", "kl"}


def v1_metrics(metrics: list[str], written: Any = None) -> list[str]:
    """eval.metrics as saerun v1 held it. A list written with v1's names only is kept as
    written (v1 kept its order and repeats); otherwise v1's twelve names in v1's order, less
    the language-model metrics not switched on (all twelve for the default)."""
    if isinstance(written, list) and all(
        isinstance(n, str) and n in V1_METRIC_NAMES for n in written
    ):
        return list(written)
    return [n for n in V1_METRIC_NAMES if n not in _V1_LM or V1_RENAMED.get(n, n) in metrics]


def v1_identity(
    config: dict, derived: frozenset[KeyPath] | set[KeyPath] = frozenset(), written: Any = None
) -> dict:
    """A resolved config (`RunConfig.model_dump(mode="json")`) in the form saerun v1 resolved
    it to, which is what a run id hashes, so that ids never change: the values of
    `V1_NULL_WHEN_DERIVED` that a rule derived (`derived`, the planner's) back to null, and
    eval.metrics in v1's names (`v1_metrics`; `written`: the list the spec wrote, if any)."""
    out = with_values(config, {p: None for p in V1_NULL_WHEN_DERIVED & set(derived)})
    out["eval"] = {**out["eval"], "metrics": v1_metrics(config["eval"]["metrics"], written)}
    return out


def v1_export(config: dict) -> dict:
    """A stored resolved config as a spec that plans to the same run id: like `v1_identity`,
    but the planner's record of what was derived is gone, so a value equal to what its rule
    gives counts as derived (and a spec that wrote such a value by hand exports to another
    id), and a stored metrics list is read as the list written."""
    sae = config["sae"]
    rules: dict[KeyPath, Any] = {}
    if sae.get("aux_k") is not None:
        rules[("sae", "aux_k")] = default_aux_k(sae["d_in"], sae["d_sae"])[0]
    if sae.get("prefix_widths") is not None:
        rules[("sae", "prefix_widths")] = default_prefix_widths(sae["d_sae"])[0]
        rules[("sae", "prefix_weights")] = default_prefix_weights(len(sae["prefix_widths"]))[0]
    derived = {path for path, rule in rules.items() if sae.get(path[1]) == rule}
    if ("sae", "prefix_weights") not in derived:
        derived.discard(("sae", "prefix_widths"))  # given weights need their widths given
    metrics = config["eval"]["metrics"]
    return v1_identity(config, frozenset(derived), written=metrics)
