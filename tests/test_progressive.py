"""A progressive code for TopK (`sae.multi_k`, `sae.k_schedule`): the multi-k loss against a
naive loop over the k's, sparse against dense, the schedule's k at hand-computed steps, and a
resume mid-schedule against the uninterrupted run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_config
from pydantic import ValidationError

from saerun import artifacts
from saerun.sae import build_sae
from saerun.sae.base import StepInfo
from saerun.spec import RunConfig, TopKSAEConfig
from saerun.spec.derive import v1_identity
from saerun.train import Trainer, k_at, train_group

D_IN, D_SAE = 6, 24


def sae_with(**kw):
    torch.manual_seed(0)
    cfg = TopKSAEConfig(architecture="topk", d_in=D_IN, d_sae=D_SAE, aux_k=3, **{"k": 4, **kw})
    sae = build_sae(cfg, seed=1)
    with torch.no_grad():  # a non-trivial b_dec and b_enc, so centring and biases count
        sae.b_dec.copy_(torch.randn(D_IN) * 0.3)
        sae.b_enc.copy_(torch.randn(D_SAE) * 0.1)
    return sae


def batch(n: int = 16) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(3)) * 2


def naive_multi_k(sae, x: torch.Tensor, ks: list[int], dead: torch.Tensor) -> torch.Tensor:
    """The loss written out token by token: mean over k' of ||x - x_hat_k'||^2 (x_hat_k' from the
    k' largest pre-activations, ReLU'd), plus AuxK on the residual at k."""
    w_dec = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    terms = []
    x_hat_k = None
    for kk in ks:
        per_token = []
        recon = []
        for b in range(x.shape[0]):
            pre = (x[b] - sae.b_dec) @ sae.W_enc + sae.b_enc
            idx = sorted(range(D_SAE), key=lambda j: -float(pre[j].detach()))[:kk]
            x_hat = sae.b_dec + sum(torch.relu(pre[j]) * w_dec[j] for j in idx)
            per_token.append(((x[b] - x_hat) ** 2).sum())
            recon.append(x_hat)
        terms.append(torch.stack(per_token).mean())
        if kk == sae.cfg.k:
            x_hat_k = torch.stack(recon)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    from saerun.sae.auxk import auxk_loss  # the AuxK reference, tested in test_sae_topk

    aux = auxk_loss(pre, x - x_hat_k, w_dec, dead, 3)
    return torch.stack(terms).mean() + sae.cfg.aux_coefficient * aux


@pytest.mark.parametrize("sparse", [False, True])
def test_the_multi_k_loss_equals_a_naive_loop_over_the_ks_with_its_gradients(sparse):
    ks = [2, 4, 12]
    x = batch()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[1, 5, 7, 20]] = True
    sae = sae_with(multi_k=ks)
    sae.sparse_kernels = sparse
    out = sae.loss(x, StepInfo(1.0, dead))
    ref_sae = sae_with(multi_k=ks)
    ref = naive_multi_k(ref_sae, x, ks, dead)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.l0.item() == 4.0  # the code at k
    out.loss.backward()
    ref.backward()
    for (name, p), q in zip(sae.named_parameters(), ref_sae.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_multi_k_at_k_alone_is_the_plain_topk_loss():
    x = batch()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    plain, multi = sae_with(), sae_with(multi_k=[4])
    assert torch.equal(plain.loss(x, StepInfo(1.0, dead)).loss,
                       multi.loss(x, StepInfo(1.0, dead)).loss)


def test_a_scheduled_k_trains_at_the_steps_k_and_encodes_at_k():
    x = batch()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    sae = sae_with(k_schedule={"start": 12})
    for sparse in (True, False):
        sae.sparse_kernels = sparse
        out = sae.loss(x, StepInfo(1.0, dead, k=9))
        assert 8.0 < out.l0.item() <= 9.0  # 9 chosen per token (a few ReLU'd to 0)
        assert out.loss.item() == pytest.approx(
            naive_multi_k(sae_with(k=9, multi_k=[9]), x, [9], dead).item(), rel=1e-5)
    assert (sae.encode(x) > 0).sum(1).max().item() == 4


def test_the_schedules_k_at_hand_computed_steps():
    linear = TopKSAEConfig(architecture="topk", d_sae=64, k=8,
                           k_schedule={"start": 40, "until_fraction": 0.5})
    # 100 steps: anneal over the first 50; k = 40 - 32 * step / 50, rounded.
    assert [k_at(s, 100, linear) for s in (0, 1, 10, 25, 49, 50, 99)] == \
        [40, 39, 34, 24, 9, 8, 8]
    expo = TopKSAEConfig(architecture="topk", d_sae=64, k=8,
                         k_schedule={"start": 32, "until_fraction": 0.5, "shape": "exponential"})
    # k = 32 * (1/4)^(step/50): 32, 16 at step 25, 8 from step 50; 32 * 4^-0.2 = 24.25 at 10.
    assert [k_at(s, 100, expo) for s in (0, 10, 25, 50)] == [32, 24, 16, 8]
    assert k_at(5, 100, TopKSAEConfig(architecture="topk", d_sae=64, k=8)) is None


def test_the_options_are_validated():
    with pytest.raises(ValidationError, match="must contain k"):
        TopKSAEConfig(architecture="topk", k=8, multi_k=[4, 16])
    with pytest.raises(ValidationError, match="strictly increasing"):
        TopKSAEConfig(architecture="topk", k=8, multi_k=[8, 8, 16])
    with pytest.raises(ValidationError, match="at most d_sae"):
        TopKSAEConfig(architecture="topk", k=8, d_sae=16, multi_k=[8, 32])
    with pytest.raises(ValidationError, match="not both"):
        TopKSAEConfig(architecture="topk", k=8, multi_k=[8, 32], k_schedule={"start": 32})
    with pytest.raises(ValidationError, match="k_schedule.start"):
        TopKSAEConfig(architecture="topk", k=8, d_sae=16, k_schedule={"start": 32})


def topk_config(**sae) -> RunConfig:
    data = unit_config(dead_window_tokens=128, log_every_steps=1).model_dump(mode="json")
    data["sae"] = {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 4, **sae}
    return RunConfig.model_validate(data)


def test_the_defaults_leave_the_run_identity_unchanged():
    sae = v1_identity(topk_config().model_dump(mode="json"))["sae"]
    assert "multi_k" not in sae and "k_schedule" not in sae
    on = topk_config(multi_k=[4, 16])
    assert v1_identity(on.model_dump(mode="json"))["sae"]["multi_k"] == [4, 16]


def schedule_config() -> RunConfig:
    return topk_config(k_schedule={"start": 16, "until_fraction": 0.6})


def batches(n: int = 20):
    g = torch.Generator().manual_seed(0)
    return [{"h": torch.randn(64, 8, generator=g) * 3} for _ in range(n)]


def test_a_resume_mid_schedule_equals_the_uninterrupted_run(tmp_path):
    full = Trainer.create("a" * 16, schedule_config(), "cpu")
    train_group([full], batches(), 0, {"h": 1.0}, lambda tr: None)
    l0s = [p["l0"] for p in full.curve]
    assert l0s[0] > l0s[-1] == 4.0  # annealed: 20 steps, k = 16 -> 4 over the first 12

    first = Trainer.create("a" * 16, schedule_config(), "cpu")
    train_group([first], batches()[:9], 0, {"h": 1.0},
                lambda tr: artifacts.save_checkpoint(tmp_path, *tr.state()))
    tensors, meta = artifacts.load_checkpoint(tmp_path)
    assert meta["step"] == 7 and k_at(7, 20, first.config.sae) == 9  # mid-schedule
    resumed = Trainer.create("a" * 16, schedule_config(), "cpu")
    resumed.load_state(tensors, meta)
    train_group([resumed], batches()[7:], 7, {"h": 1.0}, lambda tr: None)
    for (name, p), q in zip(full.sae.named_parameters(), resumed.sae.parameters(), strict=True):
        assert torch.equal(p, q), name


# -- the findings section, on synthetic rows -----------------------------------------------------


def _row(run_id: str, architecture: str, posthoc: list[dict], **cfg) -> dict:
    return {"run_id": run_id * 8, "architecture": architecture, "sae.multi_k": None,
            "sae.k_schedule.start": None, "posthoc": [{"run_id": run_id * 8, **x} for x in posthoc],
            **cfg}


def _ks(fvus: dict[int, float]) -> list[dict]:
    return [{"kind": "k", "param": k, "fvu": v} for k, v in fvus.items()]


def test_the_section_compares_each_k_with_the_sae_trained_there():
    from saerun.report.ideas_progressive import section

    rows = [_row(f"{k:02d}", "topk", _ks({k: fvu}), **{"sae.k": k})
            for k, fvu in ((8, 0.30), (16, 0.20), (32, 0.10))]
    rows[1]["posthoc"] += _ks({8: 0.60, 32: 0.30})  # the control, read at other k'
    rows.append(_row("aa", "topk", _ks({8: 0.33, 16: 0.21, 32: 0.104}),
                     **{"sae.k": 16, "sae.multi_k": [8, 16, 32]}))
    rows.append(_row("bb", "topk", _ks({8: 0.9, 16: 0.25, 32: 0.5}),
                     **{"sae.k": 16, "sae.k_schedule.start": 64, "sae.k_schedule.shape": "linear",
                        "sae.k_schedule.until_fraction": 0.5}))
    md = "\n".join(section(rows, {}, {}, None))
    assert "| k' | trained at k = k' | plain k=16 | k 64→16 (linear, first 50%) | multi_k " \
        "8/16/32 |" in md
    assert "| 8 | 0.3000 | 0.6000 (+100%) | 0.9000 (+200%) | 0.3300 (+10%) |" in md
    assert ("multi_k 8/16/32: within 5% of the FVU of the SAE trained at k' at 1 of the 2 "
            "other k', +7% on average (worst +10% at k'=8); at its own k=16, +5%.") in md
    assert "better than the plain k=16 SAE read there at every one of them" in md
    assert "k 64→16 (linear, first 50%): within 5% of the FVU of the SAE trained at k' at 0 of " \
        "the 2 other k'" in md
    assert "better than the plain k=16 SAE read there at 0 of" not in md
    assert "no better than the plain k=16 SAE read at those k' (the effect is nil or negative)" \
        in md
    assert "`aaaaaaaaaa`" in md and "`bbbbbbbbbb`" in md


def test_the_section_says_plainly_when_top_n_loses():
    from saerun.report.ideas_progressive import section

    def own(l0, fvu):
        return {"kind": "threshold", "param": 0.0, "l0": l0, "fvu": fvu}

    rows = [_row("j1", "jumprelu", [own(50.0, 0.10), {"kind": "topn", "param": 8, "l0": 8.0,
                                                      "fvu": 0.50},
                                    {"kind": "topn", "param": 16, "l0": 16.0, "fvu": 0.40}],
                 sparsity_coefficient=1.0),
            _row("j2", "jumprelu", [own(20.0, 0.30)], sparsity_coefficient=2.0),
            _row("j3", "jumprelu", [own(5.0, 0.45)], sparsity_coefficient=4.0),
            _row("08", "topk", _ks({8: 0.3}), **{"sae.k": 8})]
    md = "\n".join(section(rows, {}, {}, None))
    # the frontier (5, 0.45), (20, 0.30), (50, 0.10): at L0 8, 0.45 * (0.30/0.45)^(log 1.6/log 4)
    ref8 = 0.45 * (0.30 / 0.45) ** (math.log(8 / 5) / math.log(4))
    assert f"| 8 | 8.0 | 0.5000 | {ref8:.4f} | 0.3000 |" in md
    assert "worse than the JumpReLU trained at the same L0 at all 2 n compared: the claim does " \
        "not hold here (a negative result)" in md
    assert "Against TopK trained at k = n it is better at 0 of 1 n." in md
    assert "Not trained yet" in "\n".join(section([], {}, {}, None))


def test_the_planner_refuses_a_compiled_k_schedule(tmp_path):
    from saerun.errors import SaerunError
    from saerun.runner import prepare

    path = tmp_path / "s.yaml"
    path.write_text("name: t\nmodel: {name: saerun/tiny-stdlib}\nsite: {hook_name: "
                    "blocks.0.hook_resid_post}\nsae: {architecture: topk, k: 8, k_schedule: "
                    "{start: 32}}\ntrain: {compile: true}\n")
    with pytest.raises(SaerunError, match="recompile the loss at every new k"):
        prepare(path)


def test_findings_analyse_the_progressive_runs_too(tmp_path):
    import sys
    from pathlib import Path

    from saerun.registry import Registry
    from saerun.report.findings import posthoc_run_ids
    from saerun.report.rows import results

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.synthetic import synthetic_registry

    path = tmp_path / "saerun.db"
    synthetic_registry(path, 8)
    with Registry(path) as reg:
        ids = [r["run_id"] for r in results(reg)]
    plans = {"frontier.yaml": ids[:4], "ideas-progressive.yaml": ids[2:6]}
    assert posthoc_run_ids(path, plans) == ids[:6]  # the frontier's, then the idea's others
