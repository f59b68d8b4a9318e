"""Gated and JumpReLU SAEs (and relu's tanh penalty): hand-set weights, hand-computed latents,
losses and gradients, including the JumpReLU straight-through pseudo-derivatives."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from saerun import artifacts
from saerun.sae import build_sae
from saerun.sae.base import StepInfo
from saerun.sae.jumprelu import JumpReLUFn, StepFn
from saerun.spec import GatedSAEConfig, JumpReLUSAEConfig, ReluSAEConfig, SparsityConfig

W_ENC = [[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]


def step(scale: float = 1.0) -> StepInfo:
    return StepInfo(scale, torch.zeros(3, dtype=torch.bool))


def close(tensor: torch.Tensor, values) -> bool:
    return torch.allclose(tensor.detach(), torch.tensor(values), rtol=1e-5, atol=1e-6)


# -- gated -------------------------------------------------------------------------------------


def gated(coefficient: float = 0.5):
    # A free decoder, so the hand-set norms 1, 2, sqrt2 weight the penalty (default: unit_norm).
    cfg = GatedSAEConfig(architecture="gated", d_in=2, d_sae=3, decoder_mode="norm_weighted",
                         sparsity=SparsityConfig(coefficient=coefficient))
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_ENC))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))  # b_gate
        sae.r_mag.copy_(torch.tensor([0.0, math.log(2.0), 0.0]))  # exp(r_mag) = [1, 2, 1]
        sae.b_mag.copy_(torch.tensor([-2.0, 0.0, 3.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))  # norms 1, 2, sqrt2
        sae.b_dec.zero_()
    return sae


X = torch.tensor([[1.0, 2.0]])
# x W_gate = [1, 2, -1]: pi_gate = [1, 1.5, -1]; pi_mag = [1, 4, -1] + b_mag = [-1, 4, 2].
# Latent 0: gate open, magnitude negative; latent 2: magnitude positive, gate shut. f = [0, 4, 0].


def test_gated_forward_and_loss_by_hand():
    sae = gated()
    pi_gate, pi_mag = sae.pre_acts(X)
    assert close(pi_gate, [[1.0, 1.5, -1.0]])
    assert close(pi_mag, [[-1.0, 4.0, 2.0]])
    assert close(sae.encode(X), [[0.0, 4.0, 0.0]])
    assert close(sae(X), [[0.0, 8.0]])
    out = sae.loss(X, step())
    assert out.mse.item() == pytest.approx(37.0)  # (0-1)^2 + (8-2)^2
    assert out.sparsity.item() == pytest.approx(4.0)  # 1*1 + 1.5*2
    # aux: x_hat_frozen = [1, 1.5, 0] W_dec = [1, 3]: (1-1)^2 + (3-2)^2 = 1
    assert out.loss.item() == pytest.approx(37.0 + 0.5 * 4.0 + 1.0)
    assert out.l0.item() == 1.0
    assert sae.loss(X, step(0.5)).loss.item() == pytest.approx(37.0 + 0.25 * 4.0 + 1.0)


def test_gated_gradients_equal_the_formulas():
    sae = gated()
    sae.loss(X, step()).loss.backward()
    # dL/dx_hat = 2 (x_hat - x) = [-2, 12]; dL/df = W_dec [-2, 12] = [-2, 24, 10]; only latent 1
    # passes (gate and ReLU(pi_mag) both open): dL/dpi_mag = [0, 24, 0].
    assert close(sae.b_mag.grad, [0.0, 24.0, 0.0])
    # d pi_mag_1 / d r_mag_1 = (x W_gate)_1 exp(r_mag_1) = 2 * 2.
    assert close(sae.r_mag.grad, [0.0, 96.0, 0.0])
    # dL/dpi_gate = sparsity lambda ||W_dec,i|| 1[pi_gate > 0] = [0.5, 1, 0]
    #             + aux W_dec,i . 2 (x_hat_frozen - x) 1[pi_gate > 0] = [0, 4, 0] (none via f).
    assert close(sae.b_enc.grad, [0.5, 5.0, 0.0])
    # W_gate gets both paths: outer(x - b_dec, dL/dpi_gate + exp(r_mag) dL/dpi_mag).
    assert close(sae.W_enc.grad, [[0.5, 53.0, 0.0], [1.0, 106.0, 0.0]])
    # Decoder: f_i [-2, 12] + lambda ReLU(pi_gate)_i W_dec,i / ||W_dec,i|| and NOTHING from aux.
    assert close(sae.W_dec.grad, [[0.5, 0.0], [-8.0, 48.75], [0.0, 0.0]])
    # b_dec: [-2, 12] directly (not via aux) minus W_gate dL/dpi_gate + W_mag dL/dpi_mag.
    assert close(sae.b_dec.grad, [-2.5, -41.0])


def test_gated_aux_trains_the_gate_but_not_the_decoder():
    sae = gated(coefficient=0.0)  # loss = mse + aux
    sae.loss(X, step()).loss.backward()
    assert close(sae.b_enc.grad, [0.0, 4.0, 0.0])  # the gate learns from aux alone
    assert close(sae.W_dec.grad, [[0.0, 0.0], [-8.0, 48.0], [0.0, 0.0]])  # mse only


def test_gated_heaviside_passes_no_gradient():
    sae = gated()
    x_hat = sae(X)
    (x_hat - X).pow(2).sum().backward()  # reconstruction only: the gate enters via 1[pi_gate > 0]
    assert sae.b_enc.grad is None or torch.count_nonzero(sae.b_enc.grad) == 0
    assert torch.count_nonzero(sae.b_mag.grad) == 1


def test_gated_accepts_only_the_l1_penalty():
    with pytest.raises(ValidationError, match="only sparsity.penalty 'l1'"):
        GatedSAEConfig(architecture="gated", sparsity=SparsityConfig(penalty="tanh"))


# -- jumprelu ----------------------------------------------------------------------------------

THETA = [0.9, 1.6, 0.5]
XJ = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
# pre = [[1, 1.5, -1], [3, 0.5, 2]]; with eps = 0.5 the kernel window is |pre - theta| < 0.25:
# inside: (token 0, latent 0) fires, (token 0, latent 1) does not; every other pair is outside.
# f = [[1, 0, 0], [3, 0, 2]]; x_hat = [[1, 1], [5, 3]]; mse = (1 + 8) / 2; L0 = 1.5.


def jumprelu(**kw):
    cfg = JumpReLUSAEConfig(architecture="jumprelu", d_in=2, d_sae=3, bandwidth=0.5, **kw)
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_ENC))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0], [1.0, 0.0]]))  # norms sqrt2, 2, 1
        sae.b_dec.zero_()
        sae.log_threshold.copy_(torch.tensor(THETA).log())
    return sae


def test_jumprelu_forward_and_l0_loss_by_hand():
    sae = jumprelu(sparsity_mode="l0", coefficient=0.5)
    assert close(sae.pre_acts(XJ), [[1.0, 1.5, -1.0], [3.0, 0.5, 2.0]])
    assert close(sae.encode(XJ), [[1.0, 0.0, 0.0], [3.0, 0.0, 2.0]])
    assert close(sae(XJ), [[1.0, 1.0], [5.0, 3.0]])
    out = sae.loss(XJ, step())
    assert out.mse.item() == pytest.approx(4.5)
    assert out.sparsity.item() == pytest.approx(1.5)
    assert out.l0.item() == pytest.approx(1.5)
    assert out.loss.item() == pytest.approx(4.5 + 0.5 * 1.5)


def test_straight_through_pseudo_derivatives():
    pre = torch.tensor([[1.0, 1.5, -1.0], [3.0, 0.5, 2.0]], requires_grad=True)
    theta = torch.tensor(THETA, requires_grad=True)
    JumpReLUFn.apply(pre, theta, 0.5).sum().backward()
    # d/dtheta = -(theta / eps) K: -1.8 and -3.2 inside the window, 0 outside.
    assert close(theta.grad, [-1.8, -3.2, 0.0])
    assert pre.grad.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]  # exact H(pre - theta)
    pre.grad, theta.grad = None, None
    StepFn.apply(pre, theta, 0.5).sum().backward()
    assert close(theta.grad, [-2.0, -2.0, 0.0])  # -(1 / eps) K
    assert pre.grad is None  # the step gives the encoder nothing (not even a zero tensor)


def test_jumprelu_l0_mode_threshold_gradient_by_hand():
    sae = jumprelu(sparsity_mode="l0", coefficient=0.5)
    sae.loss(XJ, step()).loss.backward()
    # Through the output: dL/df = W_dec (x_hat - x) (2 / batch): token 0 [-1, -2, 0]; times
    # -(theta/eps) inside the window: latent 0: -1 * -1.8 = 1.8; latent 1: -2 * -3.2 = 6.4.
    # Through the L0: lambda / batch * -(1/eps) = -0.5 for latents 0 and 1.
    # d/dlog_threshold = theta d/dtheta = [0.9 * 1.3, 1.6 * 5.9, 0].
    assert close(sae.log_threshold.grad, [1.17, 9.44, 0.0])
    # The encoder sees only the reconstruction, through H: dL/dpre = [[-1,0,0],[4,0,2]].
    assert close(sae.b_enc.grad, [3.0, 0.0, 2.0])


def test_jumprelu_tanh_mode_by_hand():
    sae = jumprelu(sparsity_mode="tanh", coefficient=0.5, tanh_scale=0.5)
    out = sae.loss(XJ, step())
    # (tanh(0.5 * 1 * sqrt2) + tanh(0.5 * 3 * sqrt2) + tanh(0.5 * 2 * 1)) / 2
    assert out.sparsity.item() == pytest.approx(1.171060725, rel=1e-6)
    assert out.loss.item() == pytest.approx(4.5 + 0.5 * 1.171060725, rel=1e-6)
    out.loss.backward()
    # Latent 1 never fires, yet tanh's slope at f = 0 (lambda c ||W_dec,1|| / batch = 0.25)
    # reaches theta through the output's window (-3.2): 6.4 - 0.8, pushing theta up.
    assert sae.log_threshold.grad[1].item() == pytest.approx(1.6 * 5.6, rel=1e-5)
    # Latent 0 (token 0, inside the window): mse 1.8 plus lambda c sqrt2 sech^2(c sqrt2) * -1.8.
    tanh_grad = 0.5 * 0.5 * math.sqrt(2) * (1 - math.tanh(0.5 * math.sqrt(2)) ** 2) / 2
    expected = 0.9 * (1.8 + tanh_grad * -1.8)
    assert sae.log_threshold.grad[0].item() == pytest.approx(expected, rel=1e-5)


def test_jumprelu_target_l0_mode_by_hand():
    sae = jumprelu(sparsity_mode="target_l0", target_l0=3.0, coefficient=1.0)
    out = sae.loss(XJ, step())
    assert out.sparsity.item() == pytest.approx(0.25)  # (1.5 / 3 - 1)^2
    # Too few latents fire: the penalty lowers theta. d/dtheta = 2 (0.5 - 1) / 3 * [-1, -1, 0].
    sae.log_threshold.grad = None
    sae.penalty(sae.pre_acts(XJ), sae.encode(XJ), sae.threshold, torch.ones(3)).backward()
    assert close(sae.log_threshold.grad, [0.9 / 3, 1.6 / 3, 0.0])
    with pytest.raises(ValidationError, match="needs target_l0"):
        JumpReLUSAEConfig(architecture="jumprelu", sparsity_mode="target_l0")


def test_jumprelu_pre_activation_loss_by_hand():
    base = jumprelu(sparsity_mode="l0", coefficient=0.5).loss(XJ, step()).loss.item()
    with_pre = jumprelu(sparsity_mode="l0", coefficient=0.5, pre_act_coefficient=0.1)
    # Only dead latents pay: with none dead the term is 0.
    assert with_pre.loss(XJ, step()).loss.item() == pytest.approx(base, rel=1e-6)
    # Latents 1 and 2 dead. ReLU(theta - pre) ||W_dec||: token 0 [0, 0.1, 1.5] . [0, 2, 1] =
    # 1.7; token 1 [0, 1.1, 0] . [0, 2, 1] = 2.2; mean 1.95.
    dead = StepInfo(1.0, torch.tensor([False, True, True]))
    assert with_pre.loss(XJ, dead).loss.item() == pytest.approx(base + 0.1 * 1.95, rel=1e-6)


# -- shared: folding, saving -------------------------------------------------------------------


@pytest.mark.parametrize("make", [gated, jumprelu], ids=["gated", "jumprelu"])
def test_fold_scale_keeps_latents_and_raw_outputs(make):
    sae = make()
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor([0.3, -0.1]))  # no pre lands on a threshold
    extras = {n: p.detach().clone() for n, p in sae.named_parameters()
              if n in ("b_enc", "r_mag", "b_mag", "log_threshold")}
    scale = 0.5
    f, x_hat = sae.encode(scale * XJ), sae(scale * XJ)
    sae.fold_scale(scale)
    assert torch.allclose(sae.encode(XJ), f) and torch.count_nonzero(f) > 0
    assert torch.allclose(sae(XJ), x_hat / scale)
    for name, before in extras.items():  # b_gate, r_mag, b_mag and theta are scale-free
        assert torch.equal(dict(sae.named_parameters())[name], before)


@pytest.mark.parametrize("make", [gated, jumprelu], ids=["gated", "jumprelu"])
def test_state_dict_and_export_round_trip(tmp_path, make):
    sae = make()
    other = build_sae(sae.cfg, seed=3)
    other.load_state_dict(sae.state_dict())
    for name, p in sae.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[name])
    artifacts.write_sae(tmp_path, sae, {"hook_name": "h"}, None)
    exported = artifacts.read_weights(tmp_path)
    fresh = build_sae(sae.cfg, seed=4)
    fresh.load_state_dict(exported)
    assert torch.allclose(fresh(XJ), sae(XJ))
    if sae.architecture == "gated":  # SAELens GatedSAE names
        assert sorted(exported) == ["W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"]
    else:  # SAELens JumpReLUSAE names: the threshold itself, not its log
        assert sorted(exported) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
        assert close(exported["threshold"], THETA)
    assert sae.saelens_cfg()["architecture"] == sae.architecture


# -- relu: tanh penalty ------------------------------------------------------------------------


def test_relu_tanh_penalty_by_hand():
    cfg = ReluSAEConfig(architecture="relu", d_in=2, d_sae=3, sparsity=SparsityConfig(
        penalty="tanh", coefficient=0.5, tanh_scale=0.5))
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_ENC))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        sae.b_dec.zero_()
    out = sae.loss(X, step())  # f = [1, 1.5, 0]; f ||W_dec|| = [1, 3, 0]
    assert out.sparsity.item() == pytest.approx(1.367265411, rel=1e-6)  # tanh(.5) + tanh(1.5)
    assert out.loss.item() == pytest.approx(1.0 + 0.5 * 1.367265411, rel=1e-6)
    out.loss.backward()
    # dL/df_i = [0, 4, 2] + lambda c ||W_dec,i|| sech^2(c f_i ||W_dec,i||) on the open latents.
    sech2 = [1 - math.tanh(0.5) ** 2, 1 - math.tanh(1.5) ** 2]
    expected = [0.25 * 1 * sech2[0], 4.0 + 0.25 * 2 * sech2[1], 0.0]
    assert close(sae.b_enc.grad, expected)
