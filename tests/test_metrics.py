"""Metric formulas on hand-made tensors, against hand-computed numbers (DESIGN.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from saerun.metrics import (
    MetricAccumulator,
    NextTokenScorer,
    per_token_ce,
    per_token_kl,
)
from saerun.pareto import frontier_points, pareto_mask

# 3 tokens x 2 dims.
#   x_bar = [1, 1]; sum ||x - x_bar||^2 = 1 + 1 + 2 = 4
#   errors x - x_hat: [0,0], [0,1], [0,1] -> SSE = 2
#   ||x_hat||^2 = 1, 0, 5 (sum 6);  x . x_hat = 1, 0, 6 (sum 7)
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
X_HAT = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
# 3 latents: latent 0 fires on tokens 0 and 2, latent 1 on token 2, latent 2 never.
F = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 3.0, 0.0]])


def result(x=X, x_hat=X_HAT, f=F):
    acc = MetricAccumulator()
    acc.update_reconstruction(x, x_hat, f)
    return acc.result()


def test_reconstruction_metrics_by_hand():
    r = result()
    assert r["n_tokens"] == 3.0
    assert r["l0"] == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    assert r["mse"] == pytest.approx(0.6666666667)  # 2 / 3
    assert r["fvu"] == pytest.approx(0.5)  # 2 / 4
    assert r["explained_variance"] == pytest.approx(0.5)
    assert r["shrinkage"] == pytest.approx(0.8571428571)  # 6 / 7
    # cosines 1, 0 (x_hat = 0 counts as 0), 6 / sqrt(8 * 5) = 0.9486833
    assert r["cosine_similarity"] == pytest.approx(0.6495610994)
    # norm ratios 1, 0, sqrt(5 / 8) = 0.7905694
    assert r["l2_ratio"] == pytest.approx(0.5968564717)
    assert r["dead_fraction"] == pytest.approx(0.3333333333)  # latent 2
    assert r["dense_fraction"] == pytest.approx(0.6666666667)  # densities 2/3, 1/3 > 1%
    assert r["dense_fraction_10pct"] == pytest.approx(0.6666666667)
    assert not any(k.startswith(("ce_", "kl_")) or k == "delta_lm_loss" for k in r)


def test_feature_density_by_hand():
    acc = MetricAccumulator()
    acc.update_reconstruction(X, X_HAT, F)
    assert acc.feature_density().tolist() == pytest.approx([0.6666667, 0.3333333, 0.0])


def test_result_keys_with_lm():
    acc = MetricAccumulator()
    acc.update_reconstruction(X, X_HAT, F)
    one = torch.ones(2)
    acc.update_lm(one, one, 2 * one, 2 * one, 0 * one, one)
    assert set(acc.result()) == {
        "l0", "mse", "fvu", "explained_variance", "cosine_similarity", "l2_ratio", "shrinkage",
        "ce_orig", "ce_sae", "ce_zero", "ce_mean", "ce_loss_recovered",
        "ce_loss_recovered_mean_ablation", "delta_lm_loss", "kl_sae", "kl_zero", "kl_score",
        "dead_fraction", "dense_fraction", "dense_fraction_10pct", "n_tokens",
    }


def test_predicting_the_mean_gives_fvu_one():
    mean = X.mean(0, keepdim=True).expand_as(X)
    assert result(x_hat=mean)["fvu"] == pytest.approx(1.0)


def test_perfect_reconstruction_and_splice():
    acc = MetricAccumulator()
    acc.update_reconstruction(X, X, F)
    ce = torch.tensor([2.0, 3.0])
    acc.update_lm(ce_orig=ce, ce_sae=ce, ce_zero=ce + 1, ce_mean=ce + 0.5,
                  kl_sae=torch.zeros(2), kl_zero=torch.ones(2))
    r = acc.result()
    assert r["fvu"] == 0.0 and r["mse"] == 0.0 and r["explained_variance"] == 1.0
    assert r["shrinkage"] == 1.0 and r["l2_ratio"] == pytest.approx(1.0)
    assert r["ce_loss_recovered"] == 1.0 and r["ce_loss_recovered_mean_ablation"] == 1.0
    assert r["kl_score"] == 1.0 and r["delta_lm_loss"] == 0.0


def test_half_scale_reconstruction_has_shrinkage_one_half():
    assert result(x_hat=0.5 * X)["shrinkage"] == pytest.approx(0.5)


def test_lm_metrics_by_hand():
    acc = MetricAccumulator()
    acc.update_reconstruction(X, X, F)
    t = torch.tensor
    acc.update_lm(ce_orig=t([2.0, 2.0]), ce_sae=t([2.5, 2.5]), ce_zero=t([4.0, 4.0]),
                  ce_mean=t([3.0, 3.0]), kl_sae=t([0.1, 0.3]), kl_zero=t([1.0, 1.0]))
    r = acc.result()
    assert r["ce_orig"] == 2.0 and r["ce_sae"] == 2.5 and r["ce_zero"] == 4.0
    assert r["ce_loss_recovered"] == pytest.approx(0.75)  # (4 - 2.5) / (4 - 2)
    assert r["ce_loss_recovered_mean_ablation"] == pytest.approx(0.5)  # (3 - 2.5) / (3 - 2)
    assert r["delta_lm_loss"] == pytest.approx(0.5)
    assert r["kl_sae"] == pytest.approx(0.2)
    assert r["kl_score"] == pytest.approx(0.8)  # (1 - 0.2) / 1


def test_degenerate_ratios_are_nan():
    acc = MetricAccumulator()
    same = torch.ones(3, 2)  # no variance to explain: FVU is 0/0
    acc.update_reconstruction(same, same, F)
    ce = torch.tensor([2.0, 3.0])  # ablating changes nothing: CE recovered is 0/0
    acc.update_lm(ce, ce, ce, ce, torch.zeros(2), torch.zeros(2))
    r = acc.result()
    for key in ("fvu", "explained_variance", "ce_loss_recovered",
                "ce_loss_recovered_mean_ablation", "kl_score"):
        assert math.isnan(r[key]), key


def test_streaming_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(50, 4, generator=g) + 100.0, torch.randn(50, 4, generator=g) + 100.0
    f = torch.relu(torch.randn(50, 6, generator=g))
    one = result(x, x_hat, f)
    acc = MetricAccumulator()
    for i in range(0, 50, 7):  # uneven batches: 7, 7, ..., 1
        acc.update_reconstruction(x[i:i + 7], x_hat[i:i + 7], f[i:i + 7])
    streamed = acc.result()
    for key, value in one.items():
        assert streamed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # and both equal the textbook formulas on the concatenation (a large mean, x_bar ~ 100,
    # is where sum||x||^2 - N||x_bar||^2 would lose digits)
    xd, xhd = x.double(), x_hat.double()
    fvu = ((xd - xhd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert streamed["fvu"] == pytest.approx(fvu.item(), rel=1e-12)
    assert streamed["l0"] == pytest.approx((f != 0).sum().item() / 50)
    assert acc.feature_density().tolist() == pytest.approx((f > 0).float().mean(0).tolist())


def test_per_token_ce_matches_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1), reduction="none"
    ).reshape(2, 4)
    assert torch.allclose(per_token_ce(logits, tokens), expected, atol=1e-6)
    # by hand: uniform over 4 tokens costs log 4 whatever the target
    assert per_token_ce(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])).item() == pytest.approx(
        1.3862944
    )


def test_per_token_kl():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    kl = per_token_kl(logits, logits)
    assert kl.shape == (2, 4) and kl.abs().max() < 1e-6
    # P = (1/2, 1/2), Q = (1/4, 3/4): 0.5 ln 2 + 0.5 ln(2/3) = 0.1438410; last position dropped
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    q = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]))
    assert per_token_kl(p, q).item() == pytest.approx(0.1438410362, rel=1e-5)
    # a token P gives probability 0 adds nothing (0 log 0 = 0), even where Q is 0 too
    masked = torch.tensor([[[0.0, -math.inf], [0.0, 0.0]]])
    assert per_token_kl(masked, masked).item() == 0.0


@pytest.mark.parametrize("chunk", [None, 2 * 6 * 50])  # one chunk; 2 sequences (uneven: 2+1)
def test_next_token_scorer_equals_the_formulas(monkeypatch, chunk):
    """The evaluation's fast CE/KL (logsumexp + dot, no log_softmax of the patched logits)
    against per_token_ce / per_token_kl, at the scored positions only, with large logits (the
    cancellation in sum P log P - P.z + lse is where float32 could lose digits) and a -inf
    logit where P = 0 (the exact-formula fallback)."""
    if chunk:
        monkeypatch.setattr(NextTokenScorer, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(3)
    b, t, v = 3, 6, 50
    tokens = torch.randint(0, v, (b, t), generator=g)
    clean = 8 * torch.randn(b, t, v, generator=g)
    patched = clean + 0.5 * torch.randn(b, t, v, generator=g)
    clean[0, 1, 7] = patched[0, 1, 7] = -math.inf  # P = Q = 0 for token 7 at one position
    pred = torch.ones(b, t - 1, dtype=torch.bool)
    pred[1, 0] = pred[2, 3] = False  # excluded positions (BOS inputs)
    scorer = NextTokenScorer(clean, tokens, pred)
    assert min(scorer.rows, b) == (2 if chunk else b)
    ce, kl = scorer.ce_kl(patched)
    assert torch.allclose(ce, per_token_ce(patched, tokens)[pred], rtol=1e-5, atol=1e-5)
    assert torch.allclose(kl, per_token_kl(clean, patched)[pred], rtol=1e-4, atol=2e-5)
    assert torch.isfinite(kl).all() and (kl > 0).all()
    assert torch.equal(scorer.ce(patched), ce)
    assert torch.allclose(scorer.ce_clean, per_token_ce(clean, tokens)[pred], atol=1e-5)
    assert ce.shape == (b * (t - 1) - 2,)
    # identical distributions: KL 0 (to rounding)
    assert scorer.ce_kl(clean)[1].abs().max() < 1e-4
    # Q = 0 where P > 0: KL is +inf, as the formula says
    hole = patched.clone()
    hole[2, 0, tokens[2, 1]] = -math.inf
    assert math.isinf(scorer.ce_kl(hole)[1][pred[:2].sum() + 0].item())


def test_pareto_mask_by_hand():
    l0 = [10, 20, 30, 25, 10]
    fvu = [0.5, 0.3, 0.1, 0.35, 0.6]  # (25, .35) dominated by (20, .3); (10, .6) by (10, .5)
    assert pareto_mask(l0, fvu) == [True, True, True, False, False]
    ce = [0.8, 0.9, 0.95, 0.85, 0.7]
    assert pareto_mask(l0, ce, higher_is_better=True) == [True, True, True, False, False]
    # duplicates both stay; NaN is never on the frontier and dominates nothing
    assert pareto_mask([1, 1, 2], [0.5, 0.5, 0.4]) == [True, True, True]
    assert pareto_mask([1, 2, 3], [math.nan, 0.5, 0.6]) == [False, True, False]
    assert pareto_mask([], []) == []


def test_pareto_mask_is_the_frontier_points_rule():
    # same L0: only the strictly better value is on; a bool is not a number
    assert pareto_mask([10, 10, 20], [0.2, 0.1, 0.05]) == [False, True, True]
    assert pareto_mask([True, 2], [0.1, 0.2]) == [False, True]
    # the points of the mask, deduplicated and sorted, are frontier_points
    l0 = [12, 5, 30, 5, 40, 8, 12]
    fvu = [0.15, 0.35, 0.16, 0.35, 0.08, 0.30, 0.15]
    on = sorted({(a, b) for a, b, m in zip(l0, fvu, pareto_mask(l0, fvu), strict=True) if m})
    assert frontier_points(list(zip(l0, fvu, strict=True))) == on
    assert on == [(5, 0.35), (8, 0.30), (12, 0.15), (40, 0.08)]


def test_counts_are_exact_across_row_chunks():
    from saerun.metrics import _counts

    d = (1 << 19) + 1  # one row per chunk: 3 chunks
    f = torch.zeros(3, d)
    f[0, :5], f[1, 3:9], f[2, -1] = 1.0, -2.0, 0.5  # negatives count in L0, not as firing
    nonzero, fires = _counts(f)
    assert nonzero.item() == 12 and fires.dtype == torch.float64
    assert fires[:5].tolist() == [1, 1, 1, 1, 1] and fires[-1] == 1 and fires.sum() == 6
