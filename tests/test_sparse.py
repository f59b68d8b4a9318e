"""The sparse training kernels (`sae.sparse`) against the plain dense reference
(`sparse_kernels = False`): same loss, same reported numbers, same gradients, for every
architecture that uses them, with and without dead latents (AuxK), on both decoder modes."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from saerun.sae import build_sae, sparse
from saerun.sae.base import StepInfo
from saerun.sae.sparse import Codes, flat_topk, where
from saerun.spec import SAEConfig

D_IN, D_SAE, BATCH = 24, 160, 96


def make(architecture: str, sparse_kernels: bool, **kw):
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, **kw})
    sae = build_sae(cfg, seed=0)
    sae.sparse_kernels = sparse_kernels
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # biases away from 0, so b_dec's and b_enc's gradients are exercised
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.5)
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.3 - 0.6)
    return sae


def step(sae, dead_fraction: float):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, D_IN, generator=g)
    dead = torch.rand(D_SAE, generator=g) < dead_fraction
    out = sae.loss(x, StepInfo(0.7, dead))
    out.loss.backward()
    return out, {name: p.grad for name, p in sae.named_parameters()}


def dense_f(f):
    return f.dense() if isinstance(f, Codes) else f


CASES = [
    ("topk", {"k": 6}),
    ("topk", {"k": 6, "decoder_mode": "norm_weighted"}),
    ("batchtopk", {"k": 6}),
    ("matryoshka", {"k": 6, "prefix_widths": [10, 40, 160]}),
    ("matryoshka", {"k": 6, "prefix_widths": "every"}),
    ("matryoshka", {"k": 6, "prefix_widths": "every", "prefix_weights": "log_uniform"}),
    ("matryoshka", {"k": 6, "prefix_widths": "every", "decoder_mode": "norm_weighted"}),
    ("relu", {}),
    ("relu", {"decoder_mode": "unit_norm"}),
    ("relu", {"sparsity": {"penalty": "sqrt_l1"}}),
    ("relu", {"sparsity": {"penalty": "tanh"}}),
    ("gated", {}),
    ("gated", {"decoder_mode": "norm_weighted"}),
    ("gated", {"b_mag": "tied"}),
    ("gated", {"aux_loss": False}),
    ("jumprelu", {"init_threshold": 0.3, "bandwidth": 0.2}),
    ("jumprelu", {"init_threshold": 0.3, "sparsity_mode": "l0"}),
    ("jumprelu", {"init_threshold": 0.3, "sparsity_mode": "target_l0", "target_l0": 20}),
    ("jumprelu", {"init_threshold": 0.3, "kde_half_life_tokens": 64.0, "kde_decay": 0.5}),
]


@pytest.mark.parametrize("dead_fraction", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("architecture", "kw"), CASES)
def test_sparse_step_equals_the_dense_reference(architecture, kw, dead_fraction, monkeypatch):
    monkeypatch.setattr(sparse, "MAX_DENSITY", float("inf"))  # always the sparse path
    ref_out, ref_grads = step(make(architecture, False, **kw), dead_fraction)
    out, grads = step(make(architecture, True, **kw), dead_fraction)
    assert isinstance(out.f, Codes)  # the sparse path really ran
    for name in ("loss", "mse", "sparsity", "l0"):
        assert torch.allclose(getattr(out, name), getattr(ref_out, name), rtol=1e-5, atol=1e-5)
    assert torch.allclose(dense_f(out.f), dense_f(ref_out.f), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.fired(), ref_out.fired())
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max().clamp_min(1e-6)
        assert (grad - ref_grads[name]).abs().max() / scale < 1e-5, name


@pytest.mark.parametrize("architecture", ["relu", "gated", "jumprelu"])
def test_dense_fallback_when_latents_are_dense(architecture, monkeypatch):
    monkeypatch.setattr(sparse, "MAX_DENSITY", 0.0)
    ref_out, ref_grads = step(make(architecture, False), 0.3)
    out, grads = step(make(architecture, True), 0.3)
    assert not isinstance(out.f, Codes)
    assert torch.allclose(out.loss, ref_out.loss, rtol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-5, atol=1e-6), name


def test_batchtopk_threshold_moves_the_same_on_both_paths(monkeypatch):
    saes = [make("batchtopk", flag, k=6) for flag in (False, True)]
    for sae in saes:
        step(sae, 0.0)
    assert torch.equal(saes[0].threshold, saes[1].threshold)
    assert saes[0].threshold[0] > 0


def test_flat_topk_is_the_exact_top_n():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(300, 700, generator=g)
    for n in (1, 50, 2_000, 21_000, 210_000):
        rows, cols = flat_topk(scores, n)
        assert rows.numel() == n and bool((rows[1:] >= rows[:-1]).all())
        expected = scores.flatten().topk(n).indices.sort().values
        assert torch.equal(rows * 700 + cols, expected)


def test_codes_layout_hand_example():
    mask = torch.tensor([[False, True, True], [False, False, False], [True, False, True]])
    rows, cols, offsets = where(mask)
    assert rows.tolist() == [0, 0, 2, 2] and cols.tolist() == [1, 2, 0, 2]
    assert offsets.tolist() == [0, 2, 2]
    codes = Codes(cols, torch.tensor([1.0, 0.0, 2.0, 0.0]), rows, offsets, 3)
    assert codes.dense().tolist() == [[0, 1, 0], [0, 0, 0], [2, 0, 0]]
    assert codes.fired().tolist() == [True, True, False]  # latent 2's entries hold 0
    assert codes.l0().item() == pytest.approx(2 / 3)  # 2 non-zero values over 3 tokens
    w_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert sparse.decode(codes, w_dec).tolist() == [[0, 1], [0, 0], [2, 0]]


@pytest.mark.parametrize("architecture", ["relu", "gated", "jumprelu"])
def test_a_dense_batch_skips_the_full_mask(architecture, monkeypatch):
    """probably_dense sends a clearly dense batch to the dense products (with gradients)."""
    monkeypatch.setattr(sparse, "MAX_DENSITY", 1e-6)
    calls = []
    real = sparse.where
    monkeypatch.setattr(sparse, "where", lambda mask: calls.append(1) or real(mask))
    kw = {"init_threshold": 0.001} if architecture == "jumprelu" else {}
    out, grads = step(make(architecture, True, **kw), 0.3)
    assert not isinstance(out.f, Codes) and not calls
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


REPRO = """
import hashlib, sys, torch
from pydantic import TypeAdapter
from saerun.sae import build_sae
from saerun.sae.base import StepInfo
from saerun.spec import SAEConfig
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
x = torch.randn(4096, 128, generator=g)
h = hashlib.sha1()
for arch in ("relu", "gated", "jumprelu"):
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": arch, "d_in": 128, "d_sae": 1024})
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():  # about 3 % of the latents fire: the sparse path
        q = float(torch.quantile((x @ sae.W_enc).flatten()[::7], 0.97))
        if arch == "jumprelu":
            sae.log_threshold.fill_(torch.tensor(q).log().item())
        else:
            sae.b_enc.fill_(-q)
    out = sae.loss(x, StepInfo(1.0, torch.rand(1024, generator=g) < 0.01))
    out.loss.backward()
    assert type(out.f).__name__ == "Codes", arch
    for p in sae.parameters():
        h.update(p.grad.numpy().tobytes())
print(h.hexdigest())
"""


def test_sparse_gradients_are_bit_identical_across_processes_and_thread_counts():
    """Every scatter-sum of the sparse kernels runs in a fixed order (stable argsort, bincount),
    so a run's weights do not depend on the process or the thread count (a Slurm job's weights
    must equal the local launcher's)."""
    import subprocess
    import sys

    digests = {
        subprocess.run([sys.executable, "-c", REPRO, str(threads)], capture_output=True,
                       text=True, check=True).stdout.strip()
        for threads in (1, 2, 2)
    }
    assert len(digests) == 1
