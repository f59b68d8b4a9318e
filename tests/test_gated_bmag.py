"""The gated SAE's ablations (issue 20 item 5): b_mag tied to the gate (b_mag = exp(r_mag) *
b_gate, no parameter) and no auxiliary loss. Hand-set weights, hand-computed losses and
gradients, the exported b_mag, dense = sparse, resampling."""

from __future__ import annotations

import math

import pytest
import torch

from saerun import artifacts
from saerun.resample import resample_dead_latents
from saerun.sae import build_sae
from saerun.sae import sparse as sparse_kernels
from saerun.sae.base import StepInfo
from saerun.sae.gated import GatedSAE
from saerun.sae.sparse import Codes
from saerun.spec import GatedSAEConfig, SparsityConfig
from saerun.spec.derive import v1_identity

X = torch.tensor([[1.0, 2.0]])


def step() -> StepInfo:
    return StepInfo(1.0, torch.zeros(3, dtype=torch.bool))


def close(tensor: torch.Tensor, values) -> bool:
    return torch.allclose(tensor.detach(), torch.tensor(values), rtol=1e-5, atol=1e-6)


def gated(**kw) -> GatedSAE:
    """tests/test_sae_gated_jumprelu.py's hand-set SAE: x W_gate = [1, 2, -1], b_gate =
    [0, -0.5, 0], exp(r_mag) = [1, 2, 1], W_dec rows of norm 1, 2, sqrt 2, lambda 0.5."""
    cfg = GatedSAEConfig(architecture="gated", d_in=2, d_sae=3, decoder_mode="norm_weighted",
                         sparsity=SparsityConfig(coefficient=0.5), **kw)
    sae = build_sae(cfg, seed=0)
    assert isinstance(sae, GatedSAE)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.r_mag.copy_(torch.tensor([0.0, math.log(2.0), 0.0]))
        if sae.b_mag is not None:
            sae.b_mag.copy_(torch.tensor([-2.0, 0.0, 3.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        sae.b_dec.zero_()
    return sae


def test_tied_b_mag_by_hand():
    sae = gated(b_mag="tied")
    assert "b_mag" not in dict(sae.named_parameters())
    assert close(sae.mag_bias(), [0.0, -1.0, 0.0])  # exp(r_mag) * b_gate
    pi_gate, pi_mag = sae.pre_acts(X)
    assert close(pi_gate, [[1.0, 1.5, -1.0]])
    assert close(pi_mag, [[1.0, 3.0, -1.0]])  # exp(r_mag) pi_gate
    assert close(sae.encode(X), [[1.0, 3.0, 0.0]])
    out = sae.loss(X, step())
    # x_hat = [1, 6]: mse (1-1)^2 + (6-2)^2 = 16; sparsity 1*1 + 1.5*2 = 4; aux: [1, 3] -> 1
    assert out.mse.item() == pytest.approx(16.0)
    assert out.loss.item() == pytest.approx(16.0 + 0.5 * 4.0 + 1.0)
    out.loss.backward()
    # dL/dx_hat = [0, 8], dL/df = W_dec [0, 8] = [0, 16, 8]; latents 0, 1 pass: dL/dpi_mag =
    # [0, 16, 0]; d pi_mag / d r_mag = exp(r_mag) pi_gate = [1, 3, -1].
    assert close(sae.r_mag.grad, [0.0, 48.0, 0.0])
    # b_gate: through pi_mag (d pi_mag / d b_gate = exp(r_mag) = 2) 32, sparsity [0.5, 1, 0],
    # aux W_dec . 2 ([1, 3] - x) = [0, 4, 2] where the gate is open.
    assert close(sae.b_enc.grad, [0.5, 37.0, 0.0])


def test_no_aux_loss_by_hand():
    sae = gated(aux_loss=False)
    out = sae.loss(X, step())
    assert out.loss.item() == pytest.approx(37.0 + 0.5 * 4.0)  # the paper's, less aux's 1
    out.loss.backward()
    assert close(sae.b_enc.grad, [0.5, 1.0, 0.0])  # the gate: the sparsity penalty alone
    assert close(sae.b_mag.grad, [0.0, 24.0, 0.0])  # as with aux (test_sae_gated_jumprelu)
    assert close(sae.W_dec.grad, [[0.5, 0.0], [-8.0, 48.75], [0.0, 0.0]])


def test_tied_export_holds_b_mag_and_matches_saelens_gated_formula(tmp_path):
    sae = gated(b_mag="tied")
    artifacts.write_sae(tmp_path, sae, {"hook_name": "h"}, None)
    exported = artifacts.read_weights(tmp_path)
    assert sorted(exported) == ["W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"]
    assert close(exported["b_mag"], [0.0, -1.0, 0.0])
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.7], [0.3, 0.1]])
    # SAELens GatedSAE.encode: 1[x_c W_enc + b_gate > 0] * ReLU(x_c (W_enc exp(r_mag)) + b_mag)
    x_c = x - exported["b_dec"]
    gate = (x_c @ exported["W_enc"] + exported["b_gate"] > 0).float()
    mag = torch.relu(x_c @ (exported["W_enc"] * exported["r_mag"].exp()) + exported["b_mag"])
    assert torch.allclose(gate * mag, sae.encode(x), atol=1e-6)
    fresh = build_sae(sae.cfg, seed=4)  # an exported file loads back (its b_mag is derived)
    fresh.load_state_dict(exported)
    assert torch.equal(fresh(x), sae(x))


@pytest.mark.parametrize("kw", [{"b_mag": "tied"}, {"aux_loss": False},
                                {"b_mag": "tied", "aux_loss": False}])
def test_sparse_and_dense_paths_agree(kw, monkeypatch):
    monkeypatch.setattr(sparse_kernels, "MAX_DENSITY", float("inf"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    results = []
    for flag in (False, True):
        cfg = GatedSAEConfig(architecture="gated", d_in=8, d_sae=32, **kw)
        sae = build_sae(cfg, seed=0)
        with torch.no_grad():
            sae.b_enc.fill_(-0.3)  # a few gates open
            sae.r_mag.normal_(generator=torch.Generator().manual_seed(1))
        sae.sparse_kernels = flag
        out = sae.loss(x, step32())
        out.loss.backward()
        assert isinstance(out.f, Codes) == flag
        results.append((out.loss.detach(), {n: p.grad for n, p in sae.named_parameters()}))
    (ref_loss, ref), (loss, grads) = results
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert grads.keys() == ref.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, ref[name], rtol=1e-4, atol=1e-5), name


def step32() -> StepInfo:
    return StepInfo(1.0, torch.zeros(32, dtype=torch.bool))


def test_resampling_a_tied_sae():
    cfg = GatedSAEConfig(architecture="gated", d_in=8, d_sae=32, b_mag="tied")
    sae = build_sae(cfg, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    sae.loss(x, step32()).loss.backward()
    opt.step()
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:4] = True
    idx = resample_dead_latents(sae, opt, x, dead, 0.2, torch.Generator().manual_seed(0))
    assert idx.tolist() == [0, 1, 2, 3]
    assert torch.equal(sae.r_mag[:4], torch.zeros(4))
    assert close(sae.mag_bias()[:4], [0.0] * 4)  # b_gate 0 after resampling: tied b_mag 0


def test_defaults_leave_the_run_id_view():
    cfg = {"sae": GatedSAEConfig(architecture="gated", d_in=8, d_sae=32).model_dump(mode="json"),
           "eval": {"metrics": []}}
    assert "b_mag" not in v1_identity(cfg)["sae"] and "aux_loss" not in v1_identity(cfg)["sae"]
    tied = GatedSAEConfig(architecture="gated", d_in=8, d_sae=32, b_mag="tied", aux_loss=False)
    view = v1_identity({**cfg, "sae": tied.model_dump(mode="json")})["sae"]
    assert view["b_mag"] == "tied" and view["aux_loss"] is False


# -- the findings section, on synthetic rows ---------------------------------------------------


def _rows(tied_fvu: float, no_aux_fvu: float) -> list[dict]:
    rows = []
    for i, coef in enumerate((2, 4, 8)):
        for b_mag, aux, fvu in (("free", True, 0.10), ("tied", True, tied_fvu),
                                ("free", False, no_aux_fvu)):
            rows.append({"run_id": f"{i}{b_mag[0]}{int(aux)}" + "0" * 13,
                         "sae.sparsity.coefficient": coef, "sae.b_mag": b_mag,
                         "sae.aux_loss": aux, "l0": 40.0 / (i + 1), "fvu": fvu * (i + 1),
                         "ce_loss_recovered": 0.9 - 0.02 * i, "dead_fraction": 0.05})
    return rows


def test_section_says_what_the_numbers_say():
    from saerun.report.findings import _cmp_words
    from saerun.report.ideas_gated import SPECS, section

    rows = _rows(tied_fvu=0.12, no_aux_fvu=0.09)
    plans = {SPECS[0]: [r["run_id"] for r in rows]}
    md = "\n".join(section(rows, plans, {}, _cmp_words))
    assert md.startswith("## 13. What do the gated SAE's b_mag and auxiliary loss buy?")
    assert "**It buys quality**: with b_mag, the frontier is lower at every shared L0." in md
    assert "**Negative**: without the auxiliary loss (gated, no aux loss)" in md
    assert "Weak evidence" not in md  # they share L0 13.3-40
    narrow = [dict(r, l0=r["l0"] * (1 if r["sae.aux_loss"] else 2.8)) for r in rows]
    md = "\n".join(section(narrow, plans, {}, _cmp_words))
    assert "Weak evidence: the two share only L0" in md
    assert "| 2 | gated, b_mag tied | 40.0 | 0.1200 |" in md and "`0t10000000`" in md
    same = "\n".join(section(_rows(0.10, 0.10), plans, {}, _cmp_words))
    assert same.count("**Nil**") == 2
    assert "Not trained yet" in "\n".join(section([], plans, {}, _cmp_words))


@pytest.mark.parametrize("b_mag", ["free", "tied"])
def test_the_memory_model_counts_the_parameters_a_gated_sae_has(b_mag):
    from conftest import unit_config

    from saerun import memory
    from saerun.plan import _sae_shape

    cfg = unit_config({"architecture": "gated", "d_in": 6, "d_sae": 24, "b_mag": b_mag})
    sae = build_sae(cfg.sae, seed=0)
    assert memory.sae_params(_sae_shape(cfg)) == sum(p.numel() for p in sae.parameters())
