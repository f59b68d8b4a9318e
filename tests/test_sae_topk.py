"""TopK family (topk, batchtopk, matryoshka) and AuxK: hand-set weights, hand-computed numbers.

The hand case: d_in 2, d_sae 4, unit decoder rows, zero biases, so pre = x W_enc.
    W_enc = [[1, 0, 1, -1], [0, 1, 1, 0]]
    W_dec rows: [1, 0], [0, 1], [0.6, 0.8], [-0.6, 0.8]
    x1 = [2, 1]     -> pre1 = [2, 1, 3, -2]
    x2 = [0.4, 0.2] -> pre2 = [0.4, 0.2, 0.6, -0.4]
"""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from saerun import artifacts
from saerun.sae import build_sae
from saerun.sae.auxk import auxk_loss
from saerun.sae.base import StepInfo
from saerun.spec import BatchTopKSAEConfig, MatryoshkaSAEConfig, RunConfig, TopKSAEConfig
from saerun.spec.derive import resolved_sae
from saerun.train import Trainer

X = torch.tensor([[2.0, 1.0], [0.4, 0.2]])
W_ENC = torch.tensor([[1.0, 0.0, 1.0, -1.0], [0.0, 1.0, 1.0, 0.0]])
W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.6, 0.8]])
CONFIGS = {"topk": TopKSAEConfig, "batchtopk": BatchTopKSAEConfig,
           "matryoshka": MatryoshkaSAEConfig}


def cfg(architecture: str = "topk", **kw):
    kw = {"d_in": 2, "d_sae": 4, "k": 2, **kw}
    return CONFIGS[architecture](architecture=architecture, **kw)


def hand_sae(architecture: str = "topk", **kw):
    sae = build_sae(cfg(architecture, **kw), seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(W_ENC)
        sae.W_dec.copy_(W_DEC)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def dead(*latents: int) -> StepInfo:
    mask = torch.zeros(4, dtype=torch.bool)
    mask[list(latents)] = True
    return StepInfo(1.0, mask)


def close(t: torch.Tensor, expected) -> bool:
    return torch.allclose(t.detach(), torch.as_tensor(expected, dtype=t.dtype), atol=1e-5)


# -- topk ----------------------------------------------------------------------------------------


def test_topk_latents_outputs_and_loss_by_hand():
    sae = hand_sae()
    f = sae.encode(X)  # keeps latents {2, 0} of each token
    assert close(f, torch.tensor([[2.0, 0.0, 3.0, 0.0], [0.4, 0.0, 0.6, 0.0]]))
    # x_hat1 = 2 [1, 0] + 3 [0.6, 0.8] = [3.8, 2.4]; x_hat2 = [0.76, 0.48]
    assert close(sae(X), torch.tensor([[3.8, 2.4], [0.76, 0.48]]))
    out = sae.loss(X, dead())
    # ||e1||^2 = 1.8^2 + 1.4^2 = 5.2, ||e2||^2 = 0.36^2 + 0.28^2 = 0.208
    assert out.mse.item() == pytest.approx(2.704)
    assert out.loss.item() == pytest.approx(2.704)  # no dead latent: AuxK is 0
    assert out.sparsity.item() == 0.0 and out.l0.item() == 2.0


def test_topk_keeps_exactly_k_per_token():
    sae = build_sae(cfg(d_in=8, d_sae=16, k=3), seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every pre-activation positive: ReLU removes none of the k
    f = sae.encode(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
    assert ((f > 0).sum(-1) == 3).all()


def test_topk_loss_gradients_equal_the_formulas():
    sae = hand_sae()
    sae.loss(X[:1], dead()).loss.backward()
    # g = dL/dx_hat = 2 (x_hat - x) = [3.6, 2.8]; dL/db_enc_i = W_dec,i . g on kept latents
    assert close(sae.b_enc.grad, torch.tensor([3.6, 0.0, 4.4, 0.0]))
    # dL/dW_dec,i = f_i g with its component along the (unit) row removed:
    # row 0: [7.2, 5.6] - 7.2 [1, 0]; row 2: [10.8, 8.4] - 13.2 [0.6, 0.8]
    assert close(sae.W_dec.grad, 
        torch.tensor([[0.0, 5.6], [0.0, 0.0], [2.88, -2.16], [0.0, 0.0]]))


def test_after_step_renormalises_decoder_rows():
    sae = hand_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([[2.0], [0.5], [1.0], [3.0]]))
    sae.after_step()
    assert close(sae.W_dec.norm(dim=1), torch.ones(4))
    assert close(sae.W_dec, W_DEC)  # directions kept
    # The family's default is a unit-norm decoder from the start.
    assert torch.allclose(build_sae(cfg(), seed=3).W_dec.norm(dim=1), torch.ones(4))


# -- AuxK ----------------------------------------------------------------------------------------


def test_auxk_by_hand_with_two_dead_latents():
    # Dead {1, 3}; aux_k = d_in // 2 = 1 -> the larger of ReLU(pre_1), ReLU(pre_3) per token:
    # token 1: latent 1 (1.0) -> e_hat = [0, 1]; e1 - e_hat = [-1.8, -2.4] -> 9.0
    # token 2: latent 1 (0.2) -> e_hat = [0, 0.2]; e2 - e_hat = [-0.36, -0.48] -> 0.36
    sae = hand_sae()
    assert sae.cfg.aux_k == 1  # derived when the SAE was built
    out = sae.loss(X, dead(1, 3))
    assert out.sparsity.item() == pytest.approx(4.68)  # scale min(2 / 1, 1) = 1
    assert out.loss.item() == pytest.approx(2.704 + 4.68 / 32)
    # aux_k 4: both dead latents used (latent 3 is 0 after ReLU), scaled by 2 / 4.
    assert hand_sae(aux_k=4).loss(X, dead(1, 3)).sparsity.item() == pytest.approx(2.34)


def test_auxk_is_zero_without_dead_latents_and_trains_only_dead_ones():
    pre = torch.tensor([[2.0, 1.0, 3.0, -2.0]], requires_grad=True)
    residual = torch.tensor([[1.0, 1.0]])
    none_dead = auxk_loss(pre, residual, W_DEC, torch.zeros(4, dtype=torch.bool), 2)
    assert none_dead.item() == 0.0
    one_dead = auxk_loss(pre, residual, W_DEC, torch.tensor([False, True, False, False]), 2)
    # one dead latent (1.0 [0, 1]), scale 1 / 2: 0.5 * ||[1, 0]||^2
    assert one_dead.item() == pytest.approx(0.5)
    one_dead.backward()
    assert pre.grad[0, [0, 2, 3]].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(pre.grad).all()


# -- batchtopk -----------------------------------------------------------------------------------


def test_batchtopk_train_mode_keeps_k_times_batch_by_hand():
    # ReLU(pre) over the batch: {3, 2, 1, 0.6} are the top 4 = k * B: token 1 keeps three
    # latents, token 2 one.
    sae = hand_sae("batchtopk").train()
    f = sae.encode(X)
    assert close(f, torch.tensor([[2.0, 1.0, 3.0, 0.0], [0.0, 0.0, 0.6, 0.0]]))
    out = sae.loss(X, dead())
    # x_hat1 = [3.8, 3.4] -> 9.0; x_hat2 = [0.36, 0.48] -> 0.08
    assert out.mse.item() == pytest.approx(4.54) and out.l0.item() == 2.0


def test_batchtopk_keeps_exactly_k_b_over_a_random_batch():
    sae = build_sae(cfg("batchtopk", d_in=8, d_sae=32, k=4), seed=0).train()
    f = sae.encode(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    assert int((f > 0).sum()) == 4 * 8


def test_batchtopk_threshold_ema_by_hand_and_eval_mode():
    sae = hand_sae("batchtopk", threshold_ema=0.9).train()
    assert sae.threshold.tolist() == [-1.0] * 4  # unset: eval mode is plain ReLU
    assert close(sae.eval().encode(X), torch.relu(X @ W_ENC))
    sae.train()
    sae.loss(X, dead())  # smallest kept: 0.6, the first update takes it as it is
    assert close(sae.threshold, torch.full((4,), 0.6))
    sae.loss(2 * X, dead())  # smallest kept: 1.2 -> 0.9 * 0.6 + 0.1 * 1.2
    assert close(sae.threshold, torch.full((4,), 0.66))
    sae.eval()
    sae.loss(4 * X, dead())  # a loss in eval mode leaves theta alone
    assert close(sae.threshold, torch.full((4,), 0.66))
    # Eval: f = ReLU(pre) 1[pre > 0.66], per token, whatever the batch.
    f = sae.encode(X)
    assert close(f, torch.tensor([[2.0, 1.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(sae.encode(X[1:]), f[1:])


# -- matryoshka ----------------------------------------------------------------------------------


def test_matryoshka_loss_is_the_weighted_sum_of_prefix_losses():
    # Latents as batchtopk: f1 = [2, 1, 3, 0], f2 = [0, 0, 0.6, 0]. Prefix losses (mean):
    # m=1: x_hat = [2, 0], [0, 0] -> (1 + 0.2) / 2 = 0.6;  m=2: [2, 1], [0, 0] -> (0 + 0.2) / 2
    # = 0.1;  m=4: 4.54 (the batchtopk case).
    sae = hand_sae("matryoshka", prefix_widths=[1, 2, 4]).train()
    out = sae.loss(X, dead())
    assert out.loss.item() == pytest.approx((0.6 + 0.1 + 4.54) / 3)
    assert out.mse.item() == pytest.approx(4.54)
    weighted = hand_sae("matryoshka", prefix_widths=[1, 2, 4], prefix_weights=[1, 2, 0.5])
    assert weighted.train().loss(X, dead()).loss.item() == pytest.approx(0.6 + 0.2 + 2.27)
    assert close(sae.threshold, torch.full((4,), 0.6))


def test_matryoshka_default_prefixes_and_validation():
    resolved = resolved_sae(cfg("matryoshka", d_sae=512))
    assert (resolved.prefix_widths, resolved.prefix_weights) == ([8, 32, 128, 512], [0.25] * 4)
    assert resolved_sae(cfg("matryoshka", d_sae=4)).prefix_widths == [1, 4]
    for bad in ({"prefix_widths": [2, 2, 4]}, {"prefix_widths": [1, 3]},
                {"prefix_widths": [0, 4]}, {"prefix_weights": [1.0]},
                {"prefix_widths": [2, 4], "prefix_weights": [1.0]}):
        with pytest.raises(ValidationError):
            cfg("matryoshka", **bad)


def test_k_and_aux_k_must_fit_d_sae():
    with pytest.raises(ValidationError, match="at most d_sae"):
        cfg(k=5)
    with pytest.raises(ValidationError, match="at most d_sae"):
        cfg(aux_k=5)
    cfg(d_sae=None, expansion_factor=2.0, k=100)  # d_sae unknown yet: checked once resolved
    assert resolved_sae(cfg(d_in=64, d_sae=16)).aux_k == 16  # d_in // 2 = 32, capped at d_sae


# -- folding, export, checkpoints ----------------------------------------------------------------


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_fold_scale_leaves_eval_outputs_and_threshold_unchanged(architecture):
    sae = build_sae(cfg(architecture, d_in=8, d_sae=16, k=3), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
        if architecture != "topk":
            sae.threshold.fill_(0.05)
    sae.eval()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)) * 7.0
    scale = 0.37
    f_before, x_hat_before = sae.encode(scale * x), sae(scale * x)
    folded = copy.deepcopy(sae)
    folded.fold_scale(scale)
    assert torch.allclose(folded.encode(x), f_before, atol=1e-5)
    assert torch.allclose(folded(x), x_hat_before / scale, atol=1e-4)
    if architecture != "topk":
        assert torch.equal(folded.threshold, sae.threshold)


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_export_and_state_dict_round_trips_are_exact(tmp_path, architecture):
    sae = hand_sae(architecture, threshold_ema=0.5) if architecture != "topk" else hand_sae()
    sae.train().loss(X, dead())  # sets the threshold of the batch kinds
    artifacts.write_sae(tmp_path, sae, {"hook_name": "h"}, None)
    for state in (artifacts.read_weights(tmp_path), sae.state_dict()):
        other = build_sae(sae.cfg, seed=5)
        other.load_state_dict(state)  # strict: every tensor, the threshold buffer included
        for name, tensor in sae.state_dict().items():
            assert torch.equal(tensor, other.state_dict()[name]), name
    saelens = (tmp_path / "cfg.json").read_text()
    if architecture == "topk":
        assert '"architecture": "topk"' in saelens and '"k": 2' in saelens
    else:
        assert '"architecture": "jumprelu"' in saelens
        assert close(artifacts.read_weights(tmp_path)["threshold"], 
            torch.full((4,), 0.6))


def test_trainer_checkpoint_carries_the_threshold():
    run = RunConfig.model_validate({
        "seed": 0, "model": {}, "site": {"hook_name": "h"}, "data": {"train_tokens": 64 * 4},
        "sae": {"architecture": "batchtopk", "d_in": 8, "d_sae": 32, "k": 4},
        "train": {"batch_tokens": 64, "lr": 1e-2}, "eval": {},
    })
    tr = Trainer.create("b" * 16, run, "cpu")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        tr.train_step(torch.randn(64, 8, generator=g))
    assert (tr.sae.threshold > 0).all()
    assert torch.allclose(tr.sae.W_dec.norm(dim=1), torch.ones(32))
    fresh = Trainer.create("b" * 16, run, "cpu")
    fresh.load_state(*tr.state())
    assert torch.equal(fresh.sae.threshold, tr.sae.threshold)
