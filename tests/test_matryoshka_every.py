"""Matryoshka with every prefix (prefix_widths every, `sae.prefix`): the sparse kernel and the
dense reference against a naive loop over every width, values and gradients; the SAE against
the same SAE with every width listed by hand; the spec's rules."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from saerun.sae import build_sae, prefix, sparse
from saerun.sae.base import StepInfo
from saerun.sae.prefix import dense_every_prefix_loss, every_prefix_loss, prefix_cdf
from saerun.sae.sparse import Codes, where
from saerun.spec import SAEConfig, derive

B, D, S = 9, 6, 20
F64 = torch.float64


def naive(e0: torch.Tensor, f: torch.Tensor, w_dec: torch.Tensor, cdf: torch.Tensor):
    """sum_m w_m mean_b ||e0 - f[:, :m] W[:m]||^2, one width at a time."""
    weights = (cdf[1:] - cdf[:-1]).to(f.dtype)
    total = f.new_zeros(())
    for m in range(1, f.shape[1] + 1):
        total = total + weights[m - 1] * (e0 - f[:, :m] @ w_dec[:m]).square().sum(1).mean()
    return total


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = torch.relu(torch.randn(B, S, generator=g, dtype=F64))
    f = f * (torch.rand(B, S, generator=g) < 0.35)
    f[2] = 0.0  # a token with no latent
    f[5, :] = torch.rand(S, generator=g, dtype=F64) + 0.1  # one with every latent
    w_dec = torch.randn(S, D, generator=g, dtype=F64)
    e0 = torch.randn(B, D, generator=g, dtype=F64)
    return f, w_dec, e0


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("distribution", ["uniform", "log_uniform"])
@pytest.mark.parametrize("block_floats", [1 << 21, 40])  # one block; many, of varied n
def test_sparse_kernel_equals_the_naive_loop(distribution, block_floats, monkeypatch):
    monkeypatch.setattr(prefix, "BLOCK_FLOATS", block_floats)
    f, w_dec, e0 = problem()
    cdf = prefix_cdf(S, distribution)
    ref_f, ref_w, ref_e0 = (t.clone().requires_grad_(True) for t in (f, w_dec, e0))
    ref = naive(ref_e0, ref_f, ref_w, cdf)
    g_f, g_w, g_e0 = grads(ref, [ref_f, ref_w, ref_e0])

    rows, cols, offsets = where(f > 0)
    vals = f[rows, cols].clone().requires_grad_(True)
    w, e = w_dec.clone().requires_grad_(True), e0.clone().requires_grad_(True)
    loss, decoded = every_prefix_loss(e, Codes(cols, vals, rows, offsets, S), w, cdf)
    s_vals, s_w, s_e0 = grads(loss, [vals, w, e])
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_vals, g_f[rows, cols], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s_w, g_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s_e0, g_e0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(decoded, f @ w_dec, rtol=1e-12, atol=1e-12)
    assert not decoded.requires_grad


def test_sparse_kernel_sorts_entries_and_runs_without_grad():
    f, w_dec, e0 = problem(1)
    cdf = prefix_cdf(S, "uniform")
    rows, cols, offsets = where(f > 0)
    perm = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(3))
    # shuffled within tokens: the bag layout keeps rows sorted, latents in any order
    order = torch.argsort(rows[perm] * S + torch.randperm(S)[cols[perm]], stable=True)
    idx = perm[order]
    codes = Codes(cols[idx], f[rows, cols][idx], rows[idx], offsets, S)
    with torch.no_grad():
        loss, decoded = every_prefix_loss(e0, codes, w_dec, cdf)
    torch.testing.assert_close(loss, naive(e0, f, w_dec, cdf), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decoded, f @ w_dec, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("distribution", ["uniform", "log_uniform"])
def test_dense_reference_equals_the_naive_loop(distribution):
    f, w_dec, e0 = problem(2)
    cdf = prefix_cdf(S, distribution)
    a = [t.clone().requires_grad_(True) for t in (f, w_dec, e0)]
    b = [t.clone().requires_grad_(True) for t in (f, w_dec, e0)]
    ref = naive(a[2], a[0], a[1], cdf)
    got = dense_every_prefix_loss(b[2], b[0], b[1], cdf)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for x, y in zip(grads(got, b), grads(ref, a), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_prefix_distributions():
    uniform = prefix_cdf(128, "uniform")
    torch.testing.assert_close(uniform[1:] - uniform[:-1], torch.full((128,), 1 / 128, dtype=F64))
    log = prefix_cdf(128, "log_uniform")
    w = log[1:] - log[:-1]
    assert log[0] == 0 and abs(float(log[-1]) - 1.0) < 1e-12
    assert (w[:1] == 0).all() and (w[1:] > 0).all()  # d_sae // 64 = 2: widths 1 get nothing
    torch.testing.assert_close(w[1] / w[127], torch.tensor(128 / 2, dtype=F64))
    with pytest.raises(ValueError):
        prefix_cdf(8, "zipf")


def cfg(**kw) -> SAEConfig:
    return TypeAdapter(SAEConfig).validate_python(
        {"architecture": "matryoshka", "d_in": D, "d_sae": S, "k": 4, **kw})


def sae_step(sae_cfg: SAEConfig, sparse_kernels: bool):
    sae = build_sae(sae_cfg, seed=0).double()
    sae.sparse_kernels = sparse_kernels
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D, generator=g, dtype=F64) * 0.5)
        sae.b_enc.copy_(torch.randn(S, generator=g, dtype=F64) * 0.3)
    x = torch.randn(32, D, generator=g, dtype=F64)
    dead = torch.rand(S, generator=g) < 0.3
    out = sae.loss(x, StepInfo(1.0, dead))
    out.loss.backward()
    return out, {n: p.grad for n, p in sae.named_parameters()}


@pytest.mark.parametrize("sparse_kernels", [True, False])
def test_every_equals_every_width_listed_by_hand(sparse_kernels, monkeypatch):
    """`every` with uniform weights is the list implementation given all d_sae widths, each
    weighted 1/d_sae: same loss, same reported numbers, same gradients of every parameter."""
    monkeypatch.setattr(sparse, "MAX_DENSITY", float("inf"))
    every, every_grads = sae_step(cfg(prefix_widths="every"), sparse_kernels)
    listed, listed_grads = sae_step(
        cfg(prefix_widths=list(range(1, S + 1)), prefix_weights=[1 / S] * S), sparse_kernels)
    for name in ("loss", "mse", "sparsity", "l0"):
        torch.testing.assert_close(getattr(every, name), getattr(listed, name),
                                   rtol=1e-10, atol=1e-12)
    assert every_grads.keys() == listed_grads.keys()
    for name, grad in every_grads.items():
        torch.testing.assert_close(grad, listed_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def test_spec_rules():
    assert derive.resolved_sae(cfg(prefix_widths="every")).prefix_weights == "uniform"
    derived = derive.sae_derivations(cfg(prefix_widths="every"))
    assert derived[("sae", "prefix_weights")][0] == "uniform"
    assert derive.resolved_sae(cfg(prefix_widths="every", prefix_weights="log_uniform")
                               ).prefix_weights == "log_uniform"
    for bad in ({"prefix_widths": "every", "prefix_weights": [1.0]},
                {"prefix_weights": "uniform"},
                {"prefix_widths": [5, 20], "prefix_weights": "uniform"},
                {"prefix_widths": "all"}):
        with pytest.raises(ValidationError):
            cfg(**bad)
    # The state dict (checkpoints, SAELens export) is batchtopk's: the weights are no tensor.
    sae = build_sae(derive.resolved_sae(cfg(prefix_widths="every")), seed=0)
    assert "prefix_cdf" not in sae.state_dict()


def test_sparse_kernel_is_bit_reproducible():
    f, w_dec, e0 = problem(5)
    f, w_dec, e0 = f.float(), w_dec.float(), e0.float()
    rows, cols, offsets = where(f > 0)
    results = []
    for _ in range(2):
        vals = f[rows, cols].clone().requires_grad_(True)
        w, e = w_dec.clone().requires_grad_(True), e0.clone().requires_grad_(True)
        loss, _ = every_prefix_loss(e, Codes(cols, vals, rows, offsets, S), w,
                                    prefix_cdf(S, "uniform"))
        results.append((loss, *grads(loss, [vals, w, e])))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
