"""Dead-latent remedies shared by architectures: neuron resampling (every architecture) and ghost
grads (relu): hand-set cases, the Adam-state reset, the LR re-warm-up and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_config
from pydantic import TypeAdapter

from saerun import artifacts
from saerun.resample import resample_dead_latents
from saerun.sae import SAE_CLASSES, build_sae
from saerun.sae.base import StepInfo
from saerun.sae.ghost import ghost_grads_loss
from saerun.spec import ReluSAEConfig, RunConfig, SAEConfig, TrainConfig
from saerun.train import Trainer, lr_at, train_group


def arch_cfg(architecture: str, **kw):
    extra = {"k": 4} if architecture in ("topk", "batchtopk", "matryoshka") else {}
    return TypeAdapter(SAEConfig).validate_python(
        {"architecture": architecture, "d_in": 8, "d_sae": 32, **extra, **kw}
    )


def adam_steps(sae, x, n: int = 3) -> torch.optim.Adam:
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(n):
        opt.zero_grad()
        sae.loss(x, StepInfo(1.0, torch.zeros(32, dtype=torch.bool))).loss.backward()
        opt.step()
        sae.after_step()
    return opt


# -- resampling --------------------------------------------------------------------------------


def test_resampling_by_hand():
    # Only token 1 is badly reconstructed, so the dead latent must take its direction.
    cfg = ReluSAEConfig(architecture="relu", d_in=2, d_sae=3)
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, 5.0]]))  # alive norms 1, 2
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -7.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5], [3.0, 4.0]]))  # alive norms 1, .5
        sae.b_dec.copy_(torch.tensor([0.0, -1.0]))
    # token 0: x = [1, -1] is reconstructed exactly (pre = [1, 0, -7] -> x_hat = [1, -1]);
    # token 1: x = [-3, 3] has pre = [-3, 8, ...] -> x_hat = [0, 3]: error 9.
    x = torch.tensor([[1.0, -1.0], [-3.0, 3.0]])
    opt = torch.optim.Adam(sae.parameters())
    dead = torch.tensor([False, False, True])
    idx = resample_dead_latents(sae, opt, x, dead, 0.2, torch.Generator().manual_seed(0))
    assert idx.tolist() == [2]
    u = torch.tensor([-3.0, 4.0]) / 5.0  # x_1 - b_dec = [-3, 4]
    assert torch.allclose(sae.W_dec[2], u * 0.75)  # mean alive decoder norm (1 + 0.5) / 2
    assert torch.allclose(sae.W_enc[:, 2], u * 0.2 * 1.5)  # 0.2 x mean alive encoder norm
    assert sae.b_enc[2].item() == 0.0
    assert torch.equal(sae.W_dec[:2], torch.tensor([[1.0, 0.0], [0.0, 0.5]]))  # others kept
    # Nothing dead: nothing touched.
    before = sae.W_dec.detach().clone()
    none = resample_dead_latents(sae, opt, x, torch.zeros(3, dtype=torch.bool), 0.2,
                                 torch.Generator().manual_seed(0))
    assert none.numel() == 0 and torch.equal(sae.W_dec, before)


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_resampling_resets_every_per_latent_parameter_and_its_adam_state(architecture):
    sae = build_sae(arch_cfg(architecture), seed=0)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 3
    opt = adam_steps(sae, x)
    params = dict(sae.named_parameters())
    assert set(sae.LATENT_AXES) <= set(params)
    snapshot = {n: p.detach().clone() for n, p in params.items()}
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 17]] = True
    idx = resample_dead_latents(sae, opt, x, dead, 0.2, torch.Generator().manual_seed(0))
    assert idx.tolist() == [3, 17]
    for name, axis in sae.LATENT_AXES.items():
        p, state = params[name], opt.state[params[name]]
        keep = torch.ones(32, dtype=torch.bool)
        keep[idx] = False
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].index_select(axis, idx).abs().sum() == 0, (name, key)
            kept = state[key].index_select(axis, keep.nonzero().flatten())
            assert kept.abs().sum() > 0, (name, key)
        # Latents not resampled are untouched.
        assert torch.equal(p.index_select(axis, keep.nonzero().flatten()),
                           snapshot[name].index_select(axis, keep.nonzero().flatten())), name
    # A revived latent's decoder row is a centred input of the batch, in direction.
    centred = x - sae.b_dec
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[idx][:, None], centred[None], dim=-1)
    assert torch.allclose(cos.max(dim=1).values, torch.ones(2), atol=1e-5)
    if sae.cfg.decoder_mode == "unit_norm":
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)


def test_lr_warms_up_again_after_resampling():
    t = TrainConfig(lr=1.0, lr_decay="none",
                    resample={"every_tokens": 100, "lr_rewarmup_steps": 4})
    assert [lr_at(s, 100, t, resampled_at=10) for s in (9, 10, 11, 13, 14)] == pytest.approx(
        [1.0, 0.25, 0.5, 1.0, 1.0])
    assert lr_at(10, 100, t) == 1.0


def config(**train) -> RunConfig:
    return unit_config(**{"dead_window_tokens": 128, **train})


def batches(n: int = 20):
    g = torch.Generator().manual_seed(0)
    return [{"h": torch.randn(64, 8, generator=g) * 3} for _ in range(n)]


def test_trainer_resamples_dead_latents_on_schedule_and_resumes_exactly(tmp_path):
    resample = {"every_tokens": 64 * 4, "stop_fraction": 0.5}

    def make():
        tr = Trainer.create("a" * 16, config(resample=resample), "cpu")
        with torch.no_grad():
            tr.sae.b_enc[:4] = -50.0  # dead from the start
        return tr

    full = make()
    train_group([full], batches(), 0, {"h": 1.0}, lambda tr: None)
    assert full.resampled_total >= 4  # revived at the first resampling point (step 4)
    assert full.resampled_at is not None and full.resampled_at <= 10  # none after half-way
    assert full.sae.b_enc[:4].gt(-50.0).all()

    first = make()
    train_group([first], batches()[:9], 0, {"h": 1.0},
                lambda tr: artifacts.save_checkpoint(tmp_path, *tr.state()))
    tensors, meta = artifacts.load_checkpoint(tmp_path)
    assert meta["step"] == 7 and meta["resampled_at"] == 4
    resumed = make()
    resumed.load_state(tensors, meta)
    train_group([resumed], batches()[7:], 7, {"h": 1.0}, lambda tr: None)
    for (name, p), q in zip(full.sae.named_parameters(), resumed.sae.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert resumed.resampled_total == full.resampled_total


# -- ghost grads -------------------------------------------------------------------------------


def test_a_resampling_point_with_no_dead_latent_leaves_the_run_untouched():
    """No dead latent: nothing revived, no LR re-warm-up, the same weights as without resampling."""
    runs = []
    for resample in (None, {"every_tokens": 64 * 4, "stop_fraction": 0.5,
                            "lr_rewarmup_steps": 4}):
        tr = Trainer.create("a" * 16, config(resample=resample, dead_window_tokens=10**9), "cpu")
        train_group([tr], batches(), 0, {"h": 1.0}, lambda tr: None)
        runs.append(tr)
    assert runs[1].resampled_at is None and runs[1].resampled_total == 0
    for p, q in zip(runs[0].sae.parameters(), runs[1].sae.parameters(), strict=True):
        assert torch.equal(p, q)


def test_ghost_grads_by_hand():
    # x = [1, 2], x_hat = [1, 3]: e = [0, -1]. Dead latent 2: pre -1, W_dec row [1, 1]:
    # g = e^-1 [1, 1] rescaled to ||e|| / 2 = 0.5 in norm -> [1, 1] / (2 sqrt 2).
    # ||g - e||^2 = 1/8 + (1 + 1/(2 sqrt 2))^2; the term's value is ||x - x_hat||^2 = 1 and its
    # gradient w.r.t. pre_2 = r * 2 (g - e) . g, r = 1 / ||g - e||^2 (the scale is detached).
    pre = torch.tensor([[1.0, 1.5, -1.0]], requires_grad=True)
    w_dec = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    x, x_hat = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 3.0]])
    dead = torch.tensor([False, False, True])
    loss = ghost_grads_loss(pre, x, x_hat, w_dec, dead)
    assert loss.item() == pytest.approx(1.0, rel=1e-5)
    loss.backward()
    g = torch.tensor([1.0, 1.0]) / (2 * math.sqrt(2))
    e = torch.tensor([0.0, -1.0])
    r = 1.0 / (g - e).pow(2).sum()
    assert pre.grad[0, 2].item() == pytest.approx((r * 2 * ((g - e) * g).sum()).item(), rel=1e-5)
    assert pre.grad[0, :2].abs().sum() == 0 and w_dec.grad[:2].abs().sum() == 0  # live: none
    # No dead latent: exactly zero, no NaN.
    zero = ghost_grads_loss(pre, x, x_hat, w_dec, torch.zeros(3, dtype=torch.bool))
    assert zero.item() == 0.0


def test_relu_with_ghost_grads_gives_dead_latents_a_gradient():
    cfg = ReluSAEConfig(architecture="relu", d_in=8, d_sae=32, ghost_grads=True)
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc[:4] = -50.0
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:4] = True
    sae.loss(x, StepInfo(1.0, dead)).loss.backward()
    assert sae.W_dec.grad[:4].abs().sum() > 0 and sae.W_enc.grad[:, :4].abs().sum() > 0
    plain = build_sae(ReluSAEConfig(architecture="relu", d_in=8, d_sae=32), seed=0)
    with torch.no_grad():
        plain.b_enc[:4] = -50.0
    plain.loss(x, StepInfo(1.0, dead)).loss.backward()
    assert plain.W_enc.grad[:, :4].abs().sum() == 0
