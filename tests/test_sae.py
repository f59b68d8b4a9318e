"""SAE architectures: hand-set weights with hand-computed outputs, losses and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter

from saerun import artifacts
from saerun.sae import SAE_CLASSES, build_sae
from saerun.sae.base import StepInfo, geometric_median
from saerun.spec import ReluSAEConfig, SAEConfig, SparsityConfig
from saerun.spec.derive import resolved_sae


def step(scale: float, d_sae: int = 3) -> StepInfo:
    return StepInfo(scale, torch.zeros(d_sae, dtype=torch.bool))


def arch_cfg(architecture: str, **kw):
    """Each architecture's own config class, with its defaults, picked by the tag."""
    return TypeAdapter(SAEConfig).validate_python({"architecture": architecture, **kw})


def relu_cfg(penalty: str = "l1", coefficient: float = 0.5, **kw) -> ReluSAEConfig:
    return ReluSAEConfig(
        architecture="relu", d_in=2, d_sae=3,
        sparsity=SparsityConfig(penalty=penalty, coefficient=coefficient), **kw,
    )


def hand_set(sae) -> None:
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))  # norms 1, 2, sqrt 2
        sae.b_dec.zero_()


X = torch.tensor([[1.0, 2.0]])  # pre = [1, 1.5, -1] -> f = [1, 1.5, 0] -> x_hat = [1, 3]


def test_relu_forward_and_l1_loss_by_hand():
    sae = build_sae(relu_cfg(), seed=0)
    hand_set(sae)
    f = sae.encode(X)
    assert f.tolist() == [[1.0, 1.5, 0.0]]
    assert sae.decode(f).tolist() == [[1.0, 3.0]]
    assert torch.equal(sae(X), sae.decode(sae.encode(X)))
    out = sae.loss(X, step(1.0))
    assert out.mse.item() == pytest.approx(1.0)  # (1-1)^2 + (3-2)^2
    assert out.sparsity.item() == pytest.approx(4.0)  # 1*1 + 1.5*2
    assert out.loss.item() == pytest.approx(1.0 + 0.5 * 4.0)
    assert out.l0.item() == 2.0
    assert sae.loss(X, step(0.5)).loss.item() == pytest.approx(1.0 + 0.25 * 4.0)


def test_relu_gradients_equal_the_formulas():
    sae = build_sae(relu_cfg(), seed=0)
    hand_set(sae)
    sae.loss(X, step(1.0)).loss.backward()
    # dL/dx_hat = 2 (x_hat - x) = [0, 2]; dL/df = W_dec dL/dx_hat + lambda ||W_dec,i||
    #           = [0, 4, 2] + 0.5 [1, 2, sqrt2]; ReLU passes latents 0 and 1 only.
    assert sae.b_enc.grad.tolist() == pytest.approx([0.5, 5.0, 0.0])
    # dL/db_dec = dL/dx_hat - W_enc dL/dpre  (b_dec is subtracted before encoding)
    dpre = torch.tensor([0.5, 5.0, 0.0])
    expected_b_dec = torch.tensor([0.0, 2.0]) - sae.W_enc.detach() @ dpre
    assert sae.b_dec.grad.tolist() == pytest.approx(expected_b_dec.tolist())
    # Decoder row i: f_i dL/dx_hat + lambda f_i W_dec,i / ||W_dec,i||
    w = sae.W_dec.detach()
    expected_w_dec = torch.stack([
        1.0 * torch.tensor([0.0, 2.0]) + 0.5 * 1.0 * w[0] / w[0].norm(),
        1.5 * torch.tensor([0.0, 2.0]) + 0.5 * 1.5 * w[1] / w[1].norm(),
        torch.zeros(2),
    ])
    assert torch.allclose(sae.W_dec.grad, expected_w_dec)


def test_sqrt_l1_penalty_by_hand():
    eps = 1e-4
    sae = build_sae(ReluSAEConfig(
        architecture="relu", d_in=2, d_sae=3,
        sparsity=SparsityConfig(penalty="sqrt_l1", coefficient=0.5, epsilon=eps)), seed=0)
    hand_set(sae)
    out = sae.loss(X, step(1.0))
    expected = (math.sqrt(1.0 + eps) - math.sqrt(eps)) + (math.sqrt(3.0 + eps) - math.sqrt(eps))
    assert out.sparsity.item() == pytest.approx(expected, rel=1e-6)
    # Zero latents cost exactly nothing.
    assert sae.penalty(torch.zeros(1, 3), sae.W_dec).item() == 0.0


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_init_shapes_and_encoder_transpose(architecture):
    cfg = arch_cfg(architecture, d_in=8, d_sae=32, decoder_mode="norm_weighted",
                   decoder_init_norm=0.1)
    sae = build_sae(cfg, seed=1)
    assert sae.W_enc.shape == (8, 32) and sae.W_dec.shape == (32, 8)
    assert sae.b_enc.shape == (32,) and sae.b_dec.shape == (8,)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.full((32,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert torch.equal(build_sae(cfg, seed=1).W_dec, sae.W_dec)  # seeded
    assert not torch.equal(build_sae(cfg, seed=2).W_dec, sae.W_dec)


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_unit_norm_decoder_projects_the_gradient_and_renormalises(architecture):
    cfg = arch_cfg(architecture, d_in=8, d_sae=32, k=4, decoder_mode="unit_norm") if (
        architecture in ("topk", "batchtopk", "matryoshka")
    ) else arch_cfg(architecture, d_in=8, d_sae=32, decoder_mode="unit_norm")
    sae = build_sae(cfg, seed=0)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)) * 3.0
    sae.loss(x, step(1.0, 32)).loss.backward()
    grad = sae.W_dec.grad
    assert grad.abs().sum() > 0
    # No gradient component along any decoder row: the step cannot change the rows' norms
    # to first order.
    along = (grad * sae.W_dec).sum(dim=1)
    assert along.abs().max() < 1e-5 * grad.norm(dim=1).max()
    with torch.no_grad():
        sae.W_dec.add_(torch.randn(32, 8, generator=torch.Generator().manual_seed(2)) * 0.1)
    sae.after_step()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))


def test_unit_norm_admits_only_norm_one():
    with pytest.raises(ValueError, match="decoder_init_norm must be 1"):
        arch_cfg("relu", decoder_mode="unit_norm", decoder_init_norm=0.1)
    # Left out, the init norm is derived (`spec.derive`) from the decoder mode.
    assert arch_cfg("relu").decoder_init_norm is None
    widths = {"d_in": 8, "d_sae": 32}
    assert resolved_sae(arch_cfg("relu", **widths)).decoder_init_norm == 0.1
    assert resolved_sae(arch_cfg("relu", decoder_mode="unit_norm", **widths)
                        ).decoder_init_norm == 1.0
    assert arch_cfg("gated").decoder_mode == "unit_norm"


def test_norm_weighted_decoder_is_left_alone_after_a_step():
    sae = build_sae(relu_cfg(), seed=0)
    hand_set(sae)
    before = sae.W_dec.detach().clone()
    sae.after_step()
    assert torch.equal(sae.W_dec, before)


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_folding_the_scale_leaves_outputs_unchanged(architecture):
    cfg = arch_cfg(architecture, d_in=8, d_sae=32)
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)) * 7.0
    scale = 0.37
    f_before, x_hat_before = sae.encode(scale * x), sae(scale * x)
    sae.fold_scale(scale)
    assert torch.allclose(sae.encode(x), f_before, atol=1e-5)
    assert torch.allclose(sae(x), x_hat_before / scale, atol=1e-4)


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_save_and_reload_is_exact(tmp_path, architecture):
    cfg = arch_cfg(architecture, d_in=8, d_sae=32)
    sae = build_sae(cfg, seed=0)
    artifacts.write_sae(tmp_path, sae, {"hook_name": "h"}, torch.rand(32))
    weights = artifacts.read_weights(tmp_path)
    other = build_sae(cfg, seed=5)
    other.load_state_dict(weights)
    for name, p in sae.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[name])
    assert (tmp_path / "cfg.json").exists() and (tmp_path / "sparsity.safetensors").exists()


def test_geometric_median_resists_outliers():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    median = geometric_median(points)
    assert median.norm() < 1.5 < points.mean(0).norm()
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert torch.allclose(geometric_median(square), torch.tensor([1.0, 1.0]), atol=1e-4)


def test_one_table_links_every_config_to_its_sae_class():
    from saerun.sae import ARCHITECTURES
    from saerun.spec import SAE_CONFIG_BY_TAG

    assert set(ARCHITECTURES) == set(SAE_CONFIG_BY_TAG) == set(SAE_CLASSES)
    for tag, (config, sae) in ARCHITECTURES.items():
        assert config is SAE_CONFIG_BY_TAG[tag] and sae.architecture == tag


def test_an_sae_is_never_built_from_unresolved_values():
    from saerun.sae.relu import ReluSAE

    cfg = arch_cfg("relu", d_in=8, d_sae=32)  # coefficient and init norm left to their rules
    with pytest.raises(ValueError, match="leaves decoder_init_norm, sparsity.coefficient "
                       "unresolved"):
        ReluSAE(cfg, torch.Generator().manual_seed(0))
    assert build_sae(cfg, seed=0).cfg.sparsity.coefficient == 3.0  # build_sae resolves
