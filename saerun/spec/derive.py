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
  prefix_weights: 1/n each, or `uniform` with prefix_widths `every`.
- kde_decay (jumprelu with kde_half_life_tokens): 0.5 ** (train.batch_tokens / half life).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from saerun.spec.schema import (
    DEFAULT_COEFFICIENTS,
    GATED_DEFAULT_COEFFICIENT,
    V1_METRIC_NAMES,
    V1_RENAMED,
    MatryoshkaSAEConfig,
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


def default_every_prefix_weights(d_sae: int) -> tuple[str, str]:
    return "uniform", f"every prefix width 1..{d_sae}: 1/{d_sae} each"


def default_kde_decay(half_life_tokens: float, batch_tokens: int) -> tuple[float, str]:
    if half_life_tokens == 0:
        return 0.0, "a half life of 0: the single-batch estimator"
    decay = 0.5 ** (batch_tokens / half_life_tokens)
    return decay, (f"0.5 ** (train.batch_tokens / kde_half_life_tokens) = 0.5 ** "
                   f"({batch_tokens} / {half_life_tokens:g})")


def sae_derivations(sae: SAEConfig, batch_tokens: int | None = None) -> Derived:
    """What the rules give for the `None` fields of an SAE config whose d_in and d_sae are
    set, keyed by their path in a RunConfig (("sae", "aux_k"), ...). `batch_tokens` (the
    planner's train.batch_tokens) resolves the JumpReLU memory's per-step decay; without it
    that value is left to a RunConfig (the SAE refuses to train with it unresolved)."""
    if sae.d_in is None or sae.d_sae is None:
        raise ValueError("derived SAE values need d_in and d_sae")
    out: Derived = {}
    half_life = getattr(sae, "kde_half_life_tokens", None)
    if half_life is not None and sae.kde_decay is None and batch_tokens is not None:  # type: ignore[union-attr]
        out[("sae", "kde_decay")] = default_kde_decay(half_life, batch_tokens)
    if sae.decoder_init_norm is None:
        out[("sae", "decoder_init_norm")] = default_decoder_init_norm(sae.decoder_mode)
    sparsity = getattr(sae, "sparsity", None)
    if sparsity is not None and sparsity.coefficient is None:
        out[("sae", "sparsity", "coefficient")] = default_coefficient(
            sae.architecture, sparsity.penalty)
    if hasattr(sae, "aux_k") and sae.aux_k is None:
        out[("sae", "aux_k")] = default_aux_k(sae.d_in, sae.d_sae)
    if isinstance(sae, MatryoshkaSAEConfig):
        widths = sae.prefix_widths
        if widths is None:
            widths, how = default_prefix_widths(sae.d_sae)
            out[("sae", "prefix_widths")] = (widths, how)
        if sae.prefix_weights is None and widths == "every":
            out[("sae", "prefix_weights")] = default_every_prefix_weights(sae.d_sae)
        elif sae.prefix_weights is None:
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


def resolved_sae(sae: SAEConfig) -> SAEConfig:
    """The SAE config with every derived value filled in (validated again, so the schema's
    checks see the resolved values). A resolved config comes back as it is."""
    derived = sae_derivations(sae)
    if not derived:
        return sae
    values = {path[1:]: value for path, (value, _) in derived.items()}
    data = with_values(sae.model_dump(), values)
    return TypeAdapter(SAEConfig).validate_python(data)


# -- the v1 identity view: what a run id hashes ---------------------------------------------------

_V1_LM = {"ce_loss_recovered", "delta_lm_loss", "kl"}
# Fields saerun v1 did not have, by key path, with the default at which each leaves the view
# (so every v1 id stays valid; any other value enters it). A new RunConfig field goes HERE, or
# `tests/test_run_ids.py` fails: every committed spec's run ids are pinned.
V1_ABSENT: dict[KeyPath, Any] = {
    ("train", "precision"): "fp32",
    ("train", "compile"): False,
    ("train", "tf32"): True,
    ("train", "device"): None,
    ("site", "hook_name_out"): None,
    ("sae", "d_out"): None,
    ("sae", "skip_connection"): False,
    ("sae", "multi_k"): None,
    ("sae", "k_schedule"): None,
    ("data", "boundaries"): "row_bos+bos_eos",
    ("data", "exclude_outlier_norm"): 10.0,
    ("sae", "b_mag"): "free",  # gated
    ("sae", "aux_loss"): True,  # gated
    ("sae", "kde_half_life_tokens"): None,  # jumprelu
    ("sae", "kde_decay"): None,  # jumprelu
}
# Fields that never change a result (how fast, not what): never in the view.
NEVER_IN_ID: tuple[KeyPath, ...] = (("train", "overlap"), ("train", "curve_flush_seconds"),
                                   ("train", "keep_checkpoints"))


def v1_metrics(metrics: list[str]) -> list[str]:
    """eval.metrics in saerun v1's form: its twelve names in its order, less the language-model
    metrics not switched on (all twelve for the default)."""
    return [n for n in V1_METRIC_NAMES if n not in _V1_LM or V1_RENAMED.get(n, n) in metrics]


def v1_identity(config: dict) -> dict:
    """A resolved config (`RunConfig.model_dump(mode="json")`) in the form saerun v1 resolved
    it to: what a run id hashes, so that the ids of v1's registries stay valid. It is also
    what `export_spec` writes, so an exported run plans to its own id.

    - aux_k and the Matryoshka prefixes, which v1 left null for the SAE module to derive, are
      null when they equal what their rule gives (prefix_widths only with prefix_weights, which
      need them): a value a rule derived and the same value written by hand train the same SAE
      and share an id. (A v1 spec that wrote the rule's value by hand had another id then.)
    - eval.metrics in v1's names, `v1_metrics`. (A v1 spec whose list was not in that form,
      e.g. `[l0, mse]`, had another id then: its list switched nothing v1's form does not.)
    Every other derived value (coefficients, decoder_init_norm) v1 wrote in as resolved.
    """
    sae = config["sae"]
    rules: dict[KeyPath, Any] = {}
    if sae.get("aux_k") is not None:
        rules[("sae", "aux_k")] = default_aux_k(sae["d_in"], sae["d_sae"])[0]
    if isinstance(sae.get("prefix_widths"), list):  # `every` (not in v1) stays in the id
        rules[("sae", "prefix_widths")] = default_prefix_widths(sae["d_sae"])[0]
    if isinstance(sae.get("prefix_weights"), list):
        rules[("sae", "prefix_weights")] = default_prefix_weights(len(sae["prefix_weights"]))[0]
    derived = {path for path, rule in rules.items() if sae.get(path[1]) == rule}
    if ("sae", "prefix_weights") in rules and ("sae", "prefix_weights") not in derived:
        derived.discard(("sae", "prefix_widths"))  # weights given by hand need their widths
    out = with_values(config, {path: None for path in derived})
    for path in NEVER_IN_ID:
        _drop(out, path)
    for path, default in V1_ABSENT.items():
        _drop(out, path, default)
    out["eval"] = {**out["eval"], "metrics": v1_metrics(config["eval"]["metrics"])}
    return out


_MISSING = object()


def _drop(tree: dict, path: KeyPath, default: Any = _MISSING) -> None:
    """Remove `path` from the (copied) tree: always, or only where it equals `default`."""
    *parents, leaf = path
    node = tree
    for key in parents:
        if not isinstance(node.get(key), dict):
            return
        node[key] = node = dict(node[key])
    if leaf in node and (default is _MISSING or node[leaf] == default):
        del node[leaf]
