"""Run the metrics of `metrics.py` for every SAE of a group on the held-out tokens.

One clean forward per eval batch gives the logits and the activations at every site of the
group; the zero- and mean-ablation forwards are shared by all SAEs at a site; each SAE then
costs one patched forward. Special-token positions (BOS) and outlier positions (a norm above
the limit of activations.outlier_limits at any site of the group) are excluded consistently:
they are neither reconstructed, nor patched (they keep their clean activation when an SAE or an
ablation is spliced in), nor counted in any metric.

A transcoder (an entry with a target hook OUT) reads IN and is scored against OUT: every
reconstruction metric compares its output with OUT's activations, and the language-model
metrics splice its output in at OUT, against zero- and mean-ablation of OUT as the baselines.
An SAE is the case OUT = IN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from saerun import faults
from saerun.activations import LanguageModel
from saerun.metrics import MetricAccumulator, NextTokenScorer

LM_METRICS = {"ce_loss_recovered", "delta_lm_loss", "kl_score"}  # = spec.METRIC_NAMES


class Encoder(Protocol):
    """What evaluation reads of an SAE taking raw activations: an `sae.SAE`, or a variant of
    one with another encode (`posthoc`)."""

    @property
    def W_dec(self) -> Tensor: ...  # [d_sae, d_in]; its device is where the SAE runs

    def encode(self, x: Tensor) -> Tensor: ...  # [n, d_in] -> [n, d_sae]

    def decode(self, f: Tensor) -> Tensor: ...  # [n, d_sae] -> [n, d_out]


Entry = tuple[Encoder, str] | tuple[Encoder, str, str | None]  # (SAE, IN[, OUT])


def output(sae: Encoder, x: Tensor, f: Tensor) -> Tensor:
    """The reconstruction of the target from input x and latents f: decode(f), plus the skip
    x W_skip of a skip transcoder."""
    out = sae.decode(f)
    w_skip = getattr(sae, "W_skip", None)
    return out if w_skip is None else out + x @ w_skip.t()


@dataclass
class EvalResult:
    metrics: dict[str, float]
    density: Tensor  # [d_sae] fraction of eval tokens on which each latent fired


Patch = Callable[[Tensor], Tensor]  # a site's activation [b, T, d] -> its replacement


def _zero_at(mask: Tensor) -> Patch:
    """Zero ablation at the counted positions (mask [b, T, 1])."""
    return lambda a: torch.where(mask, 0.0, a)


def _mean_at(mask: Tensor, mu: Tensor) -> Patch:
    """Mean ablation: the eval-set mean mu [d] at the counted positions."""
    return lambda a: torch.where(mask, mu.to(a), a)


def _replaced_by(patch: Tensor) -> Patch:
    """The activation replaced whole (the SAE's reconstruction spliced in)."""
    return lambda a: patch


@torch.no_grad()
def evaluate_group(
    lm: LanguageModel, eval_batches: list[Tensor], saes: Mapping[str, Entry],
    metric_names: AbstractSet[str], exclude_special_tokens: bool = True,
    outlier_limits: Mapping[str, float] | None = None,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[str, EvalResult]:
    """`saes`: run_id -> (SAE taking raw activations, hook name[, target hook or None]).
    Returns run_id -> result. `outlier_limits`: hook -> norm above which a position is
    excluded (None: none is); the excluded count is reported as the metric
    `excluded_outlier_positions`. `on_batch` is called before each batch (a stop request
    raises from it: evaluation keeps no partial state, a restart evaluates again)."""
    runs = {run_id: (e[0], e[1], e[2] if len(e) > 2 and e[2] is not None else e[1])
            for run_id, e in saes.items()}
    targets = sorted({out for _, _, out in runs.values()})  # where outputs are spliced in
    hooks = sorted({h for _, hook, out in runs.values() for h in (hook, out)})
    with_lm = bool(metric_names & LM_METRICS)
    device = next(iter(runs.values()))[0].W_dec.device
    excluded = 0

    def not_special(tokens: Tensor) -> Tensor:  # [b, T] True where no special token excluded
        if not exclude_special_tokens:
            return torch.ones_like(tokens, dtype=torch.bool)
        return ~lm.special_mask(tokens)

    def positions(tokens: Tensor, acts: Mapping[str, Tensor]) -> Tensor:
        """[b, T] True where a position counts: not special (when excluded), not an outlier."""
        keep = not_special(tokens).to(acts[hooks[0]].device)
        for h, limit in (outlier_limits or {}).items():
            if h in acts:
                keep &= acts[h].float().norm(dim=-1) <= limit
        return keep

    means: dict[str, Tensor] = {}
    if with_lm:
        # Mean ablation needs the eval-set mean first: one cheap pass that stops at the site.
        sums = {h: torch.zeros((), dtype=torch.float64) for h in targets}
        count = 0
        for tokens in eval_batches:
            on_batch()
            acts = lm.capture(tokens, hooks)
            keep = positions(tokens, acts)
            count += int(keep.sum())
            for h in targets:
                sums[h] = sums[h] + acts[h][keep].double().sum(0)
        means = {h: (sums[h] / max(count, 1)).float() for h in targets}

    accs = {run_id: MetricAccumulator() for run_id in saes}
    for tokens in eval_batches:
        on_batch()
        faults.point("eval")
        if with_lm:
            # The clean distribution once per batch; each patched forward is then scored with a
            # logsumexp, a gather and a dot per position (metrics.NextTokenScorer).
            logits, acts = lm.forward_with_capture(tokens, hooks)
            keep = positions(tokens, acts)
            # CE/KL at the positions whose input token counts
            scorer = NextTokenScorer(logits, tokens, keep[:, :-1])
            del logits
            ablated = {}
            for h in targets:
                mask = keep[..., None]
                ce_zero, kl_zero = scorer.ce_kl(lm.logits_patched(tokens, h, _zero_at(mask)))
                ce_mean = scorer.ce(lm.logits_patched(tokens, h, _mean_at(mask, means[h])))
                ablated[h] = (ce_zero, ce_mean, kl_zero)
        else:
            acts = lm.capture(tokens, hooks)
            keep = positions(tokens, acts)
        if outlier_limits is not None:
            excluded += int(not_special(tokens).sum()) - int(keep.sum())
        for run_id, (sae, hook, out) in runs.items():
            x = acts[hook][keep].to(device=device, dtype=torch.float32)  # counted positions
            y = x if out == hook else acts[out][keep].to(device=device, dtype=torch.float32)
            f = sae.encode(x)
            x_hat = output(sae, x, f)
            accs[run_id].update_reconstruction(y, x_hat, f)
            del f
            if with_lm:
                patch = acts[out].clone()
                patch[keep] = x_hat.to(patch.dtype)
                ce_sae, kl_sae = scorer.ce_kl(
                    lm.logits_patched(tokens, out, _replaced_by(patch)))
                ce_zero, ce_mean, kl_zero = ablated[out]
                accs[run_id].update_lm(ce_orig=scorer.ce_clean, ce_sae=ce_sae, ce_zero=ce_zero,
                                       ce_mean=ce_mean, kl_sae=kl_sae, kl_zero=kl_zero)
    extra = {} if outlier_limits is None else {"excluded_outlier_positions": float(excluded)}
    return {run_id: EvalResult({**acc.result(), **extra}, acc.feature_density())
            for run_id, acc in accs.items()}
