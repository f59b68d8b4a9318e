"""Metric formulas, exactly as DESIGN.md §5 defines them. Pure: tensors in, numbers out.

Evaluation streams over batches, so `MetricAccumulator` keeps float64 sufficient statistics and
`result()` applies the formulas once at the end; `tests/test_metrics.py` checks it against the
one-shot formulas on hand-made data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def per_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy (nats) at every position but the last: [b, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logp.device)).squeeze(-1)


def per_token_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(P || Q) per position for next-token distributions: [b, T-1] (last position dropped to
    align with per_token_ce)."""
    logp = torch.log_softmax(logits_p[:, :-1].float(), dim=-1)
    logq = torch.log_softmax(logits_q[:, :-1].float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is 0 (e.g. ablating the site changes nothing)."""
    return num / den if den != 0 else math.nan


def pareto_mask(l0: list[float], loss: list[float], higher_is_better: bool = False) -> list[bool]:
    """True for points no other point dominates (L0 <= and loss at least as good, one strict)."""
    sign = -1.0 if higher_is_better else 1.0
    pts = [(a, sign * b) for a, b in zip(l0, loss, strict=True)]
    out = []
    for i, (a, b) in enumerate(pts):
        dominated = any(
            (c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(pts) if j != i
        )
        out.append(not dominated)
    return out


class MetricAccumulator:
    """Sufficient statistics over eval batches; `result()` gives every metric by name."""

    def __init__(self) -> None:
        self.n = 0
        self.sse = 0.0  # sum_n ||x - x_hat||^2
        self.sum_x: Tensor | None = None  # sum_n x (for the eval-set mean x_bar)
        self.sum_x2 = 0.0  # sum_n ||x||^2
        self.sum_xhat2 = 0.0  # sum_n ||x_hat||^2
        self.sum_dot = 0.0  # sum_n x . x_hat
        self.sum_cos = 0.0
        self.sum_l2_ratio = 0.0
        self.sum_l0 = 0.0
        self.fires: Tensor | None = None  # [d_sae] tokens on which each latent was > 0
        self.lm: dict[str, float] = {}
        self.n_lm = 0

    def update_reconstruction(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sse += (x - x_hat).pow(2).sum().item()
        s = x.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        x_norm, xh_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        self.sum_x2 += x_norm.pow(2).sum().item()
        self.sum_xhat2 += xh_norm.pow(2).sum().item()
        dot = (x * x_hat).sum(-1)
        self.sum_dot += dot.sum().item()
        self.sum_cos += (dot / (x_norm * xh_norm).clamp_min(1e-12)).sum().item()
        self.sum_l2_ratio += (xh_norm / x_norm.clamp_min(1e-12)).sum().item()
        active = f != 0
        self.sum_l0 += active.sum().item()
        fires = (f > 0).sum(0).double()
        self.fires = fires if self.fires is None else self.fires + fires

    def update_lm(self, *, ce_orig: Tensor, ce_sae: Tensor, ce_zero: Tensor, ce_mean: Tensor,
                  kl_sae: Tensor, kl_zero: Tensor) -> None:
        """Per-token values at the counted positions (all 1-D tensors of one length)."""
        self.n_lm += ce_orig.numel()
        for name, value in (("ce_orig", ce_orig), ("ce_sae", ce_sae), ("ce_zero", ce_zero),
                            ("ce_mean", ce_mean), ("kl_sae", kl_sae), ("kl_zero", kl_zero)):
            self.lm[name] = self.lm.get(name, 0.0) + value.double().sum().item()

    def feature_density(self) -> Tensor:
        """Fraction of tokens on which each latent fired: [d_sae]."""
        assert self.fires is not None, "no reconstruction batches were added"
        return (self.fires / max(self.n, 1)).float()

    def result(self) -> dict[str, float]:
        n = self.n
        assert n > 0 and self.sum_x is not None, "no reconstruction batches were added"
        x_bar = self.sum_x / n
        total_var = self.sum_x2 - n * x_bar.pow(2).sum().item()  # sum_n ||x_n - x_bar||^2
        fvu = _ratio(self.sse, total_var)
        density = self.feature_density()
        out = {
            "n_tokens": float(n),
            "l0": self.sum_l0 / n,
            "mse": self.sse / n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "cosine_similarity": self.sum_cos / n,
            "l2_ratio": self.sum_l2_ratio / n,
            "shrinkage": _ratio(self.sum_xhat2, self.sum_dot),
            "dead_fraction": (density == 0).float().mean().item(),
            "dense_fraction": (density > 0.01).float().mean().item(),
            "dense_fraction_10pct": (density > 0.10).float().mean().item(),
        }
        if self.n_lm:
            m = {k: v / self.n_lm for k, v in self.lm.items()}
            out.update(m)
            out["ce_loss_recovered"] = _ratio(
                m["ce_zero"] - m["ce_sae"], m["ce_zero"] - m["ce_orig"]
            )
            out["ce_loss_recovered_mean_ablation"] = _ratio(
                m["ce_mean"] - m["ce_sae"], m["ce_mean"] - m["ce_orig"]
            )
            out["delta_lm_loss"] = m["ce_sae"] - m["ce_orig"]
            out["kl_score"] = _ratio(m["kl_zero"] - m["kl_sae"], m["kl_zero"])
        return out
