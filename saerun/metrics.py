"""Metric formulas, exactly as DESIGN.md §5 defines them. Pure: tensors in, numbers out.

Evaluation streams over batches, so `MetricAccumulator` keeps float64 sufficient statistics and
`result()` applies the formulas once at the end; `tests/test_metrics.py` checks it against the
one-shot formulas on hand-made data.

Degenerate ratios (0/0, e.g. CE_zero == CE_orig when ablating the site changes nothing, or an
eval set whose tokens are all identical so FVU has no variance to explain) are NaN, never an
exception and never a made-up 0 or 1: a report shows them as "-".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Keys of MetricAccumulator.update_lm, in the order result() reports them.
LM_KEYS = ("ce_orig", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero")


def next_token_logprobs(logits: Tensor) -> Tensor:
    """log P(next token) at every position but the last: [b, T, V] -> [b, T-1, V] (or, from
    logits already cut to the scored positions, [n, V] -> [n, V] with `cut=False` callers).
    log_softmax in float32 is stable (it subtracts the max), and float64 would double the
    memory of the largest tensor in evaluation."""
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


def ce_from_logprobs(logp: Tensor, targets: Tensor) -> Tensor:
    """-log P(target): logp [..., V], targets [...] -> [...]."""
    return -logp.gather(-1, targets[..., None].to(logp.device)).squeeze(-1)


def kl_from_logprobs(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(P || Q) over the last axis. Terms with P = 0 count 0 (the 0 log 0 convention): logits
    masked to -inf give 0, not NaN."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


class NextTokenScorer:
    """CE and KL(P_clean || Q) of many patched forwards against one clean forward, fast.

    The clean logits give P and sum P log P once. A patched forward's logits z then cost one
    logsumexp, one gather and one P.z dot per position, never a log_softmax:
    CE = lse(z) - z[target] and KL = sum P log P - P.z + lse(z) sum P. Everything stays on the
    [b, T-1] grid of positions with a next token; `pred` [b, T-1] picks the scored positions
    at the end. The per-position reductions run over a few sequences at a time, so no
    temporary is as large as the logits (evaluation's peak memory). Equal to `per_token_ce` /
    `per_token_kl` within float32 rounding (tests/test_metrics.py); a position whose dot is not
    finite (-inf logits where P = 0) is recomputed with the exact formula.
    """

    CHUNK_ELEMENTS = 1 << 22  # logits entries per reduction chunk (16 MB of float32)

    def __init__(self, clean_logits: Tensor, tokens: Tensor, pred: Tensor) -> None:
        b, t, v = clean_logits.shape
        device = clean_logits.device
        self.pred = pred.to(device)
        self.targets = tokens[:, 1:, None].to(device)
        self.rows = max(1, self.CHUNK_ELEMENTS // (t * v))  # sequences per chunk
        self.p = torch.empty(b, t - 1, v, device=device)
        self.neg_entropy = torch.empty(b, t - 1, device=device)
        ce = torch.empty(b, t - 1, device=device)
        for i in range(0, b, self.rows):
            logp = next_token_logprobs(clean_logits[i:i + self.rows])
            p = torch.exp(logp, out=self.p[i:i + self.rows])
            self.neg_entropy[i:i + self.rows] = torch.where(p > 0, p * logp, 0.0).sum(-1)
            ce[i:i + self.rows] = -logp.gather(-1, self.targets[i:i + self.rows]).squeeze(-1)
        self.p_sum = self.p.sum(-1)
        self.ce_clean = ce[self.pred]

    def _scores(self, logits: Tensor, with_kl: bool) -> tuple[Tensor, Tensor | None]:
        z = logits[:, :-1]
        ce = torch.empty(self.neg_entropy.shape, device=z.device)
        kl = torch.empty_like(ce) if with_kl else None
        for i in range(0, z.shape[0], self.rows):
            s = slice(i, i + self.rows)
            zc = z[s].float()
            lse = torch.logsumexp(zc, dim=-1)
            ce[s] = lse - zc.gather(-1, self.targets[s]).squeeze(-1)
            if kl is not None:
                kl[s] = self.neg_entropy[s] - torch.linalg.vecdot(self.p[s], zc) \
                    + lse * self.p_sum[s]
        if kl is not None:
            bad = ~torch.isfinite(kl)
            if bad.any():  # log P from P: -inf where P = 0, which the formula counts as 0
                kl[bad] = kl_from_logprobs(self.p[bad].log(),
                                           torch.log_softmax(z[bad].float(), -1))
        return ce, kl

    def ce(self, logits: Tensor) -> Tensor:
        """CE (nats) of patched logits [b, T, V] at each scored position."""
        return self._scores(logits, with_kl=False)[0][self.pred]

    def ce_kl(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(CE, KL(P_clean || Q_patched)) at each scored position."""
        ce, kl = self._scores(logits, with_kl=True)
        assert kl is not None
        return ce[self.pred], kl[self.pred]


def per_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy (nats) at every position but the last.

    logits [b, T, V], tokens [b, T] -> [b, T-1]; position t scores tokens[:, t+1]. Same numbers as
    `F.cross_entropy(..., reduction="none")`.
    """
    return ce_from_logprobs(next_token_logprobs(logits), tokens[:, 1:])


def per_token_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(P || Q) in nats of the next-token distributions: [b, T, V] x2 -> [b, T-1].

    The last position is dropped, like per_token_ce, so one mask indexes both.
    """
    return kl_from_logprobs(next_token_logprobs(logits_p), next_token_logprobs(logits_q))


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is 0 (see the module docstring)."""
    return num / den if den != 0 else math.nan


def _counts(f: Tensor) -> tuple[Tensor, Tensor]:
    """(#entries != 0, #entries > 0 per column) of f [n, d], exact, float64. Row chunks of at
    most 2^20 entries: a float32 sum of that many ones is exact, and no temporary is larger
    than a few MB (a [n, d] float64 copy of the mask was most of evaluation's peak memory;
    count_nonzero, which copies nothing, is 4x slower on the CPU)."""
    rows = max(1, (1 << 20) // max(f.shape[1], 1))
    nonzero = torch.zeros((), dtype=torch.float64, device=f.device)
    fires = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
    for chunk in f.split(rows):
        nonzero += chunk.ne(0).sum(dtype=torch.float32)
        fires += chunk.gt(0).sum(0, dtype=torch.float32)
    return nonzero, fires


class MetricAccumulator:
    """Sufficient statistics over eval batches; `result()` gives every metric by name.

    Statistics stay float64 tensors on the batches' device, so `update_*` never syncs with the
    GPU (no `.item()` per batch); `result()` reads them once.
    """

    def __init__(self) -> None:
        self.n = 0  # tokens seen by update_reconstruction
        self.sse: Tensor | float = 0.0  # sum_n ||x - x_hat||^2
        # FVU denominator sum_n ||x_n - x_bar||^2 by Chan's parallel update (running mean + M2)
        # rather than sum||x||^2 - N||x_bar||^2: residual streams have a large mean, and the
        # subtraction of two big numbers would lose the digits we want.
        self.mean: Tensor | None = None  # [d] running mean of x
        self.m2: Tensor | float = 0.0  # sum_n ||x_n - mean||^2 so far
        self.sum_xhat2: Tensor | float = 0.0  # sum_n ||x_hat||^2 (shrinkage numerator)
        self.sum_dot: Tensor | float = 0.0  # sum_n x . x_hat (shrinkage denominator)
        self.sum_cos: Tensor | float = 0.0
        self.sum_l2_ratio: Tensor | float = 0.0
        self.sum_l0: Tensor | float = 0.0  # sum_n #{i: f_i != 0}
        self.fires: Tensor | None = None  # [d_sae] tokens on which each latent was > 0
        self.lm: dict[str, Tensor | float] = {}
        self.n_lm = 0  # positions seen by update_lm (may differ from n: no target at the end)

    def update_reconstruction(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        """One batch: x, x_hat [n, d_in] in the original activation space, f [n, d_sae]."""
        if x.shape != x_hat.shape or x.shape[0] != f.shape[0]:
            raise ValueError(f"shapes disagree: x {tuple(x.shape)}, x_hat {tuple(x_hat.shape)}, "
                             f"f {tuple(f.shape)}")
        n_b = x.shape[0]
        if n_b == 0:
            return
        x, x_hat = x.double(), x_hat.double()
        self.sse = self.sse + (x - x_hat).pow(2).sum()
        mean_b = x.mean(0)
        m2_b = (x - mean_b).pow(2).sum()
        if self.mean is None:
            self.mean, self.m2 = mean_b, m2_b
        else:
            n_a, n = self.n, self.n + n_b
            delta = mean_b - self.mean
            self.m2 = self.m2 + m2_b + delta.pow(2).sum() * (n_a * n_b / n)
            self.mean = self.mean + delta * (n_b / n)
        self.n += n_b
        x_norm, xh_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        dot = (x * x_hat).sum(-1)
        self.sum_xhat2 = self.sum_xhat2 + x_hat.pow(2).sum()  # not norm^2: exact
        self.sum_dot = self.sum_dot + dot.sum()
        # A zero vector has no direction: its cosine counts as 0 (the clamp avoids 0/0).
        self.sum_cos = self.sum_cos + (dot / (x_norm * xh_norm).clamp_min(1e-12)).sum()
        self.sum_l2_ratio = self.sum_l2_ratio + (xh_norm / x_norm.clamp_min(1e-12)).sum()
        nonzero, fires = _counts(f)
        self.sum_l0 = self.sum_l0 + nonzero
        self.fires = fires if self.fires is None else self.fires + fires

    def update_lm(self, ce_orig: Tensor, ce_sae: Tensor, ce_zero: Tensor, ce_mean: Tensor,
                  kl_sae: Tensor, kl_zero: Tensor) -> None:
        """Per-token values (nats) at the counted positions, all 1-D tensors of one length.

        ce_*: next-token CE with the clean model, the SAE spliced in, the site zero-ablated and
        mean-ablated; kl_*: KL(P_clean || P_patched) with the SAE spliced in / zero-ablated.
        """
        values = dict(zip(LM_KEYS, (ce_orig, ce_sae, ce_zero, ce_mean, kl_sae, kl_zero),
                          strict=True))
        n_b = ce_orig.numel()
        if any(v.numel() != n_b for v in values.values()):
            raise ValueError("update_lm: all per-token tensors must have the same length")
        self.n_lm += n_b
        for name, value in values.items():
            self.lm[name] = self.lm.get(name, 0.0) + value.double().sum()

    def feature_density(self) -> Tensor:
        """Fraction of eval tokens on which each latent fired (f_i > 0): [d_sae], float32."""
        if self.fires is None:
            raise ValueError("no reconstruction batches were added")
        return (self.fires / self.n).float().cpu()

    def result(self) -> dict[str, float]:
        """Every metric of DESIGN.md §5 by name; LM keys only when update_lm was called."""
        n = self.n
        if n == 0 or self.fires is None:
            raise ValueError("no reconstruction batches were added")

        def v(t: Tensor | float) -> float:  # the one CPU-GPU sync per statistic
            return float(t)

        fvu = _ratio(v(self.sse), v(self.m2))
        density = self.fires / n
        out = {
            "n_tokens": float(n),
            "l0": v(self.sum_l0) / n,
            "mse": v(self.sse) / n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "cosine_similarity": v(self.sum_cos) / n,
            "l2_ratio": v(self.sum_l2_ratio) / n,
            "shrinkage": _ratio(v(self.sum_xhat2), v(self.sum_dot)),
            # Dead: fired on none of the N eval tokens; dense: fired on more than 1% / 10%.
            "dead_fraction": v((density == 0).double().mean()),
            "dense_fraction": v((density > 0.01).double().mean()),
            "dense_fraction_10pct": v((density > 0.10).double().mean()),
        }
        if self.n_lm:
            m = {k: v(self.lm[k]) / self.n_lm for k in LM_KEYS}
            out.update(m)
            out["ce_loss_recovered"] = _ratio(m["ce_zero"] - m["ce_sae"],
                                              m["ce_zero"] - m["ce_orig"])
            out["ce_loss_recovered_mean_ablation"] = _ratio(m["ce_mean"] - m["ce_sae"],
                                                            m["ce_mean"] - m["ce_orig"])
            out["delta_lm_loss"] = m["ce_sae"] - m["ce_orig"]
            out["kl_score"] = _ratio(m["kl_zero"] - m["kl_sae"], m["kl_zero"])
        return out
