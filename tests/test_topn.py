"""Top-n latents per token (`saerun.posthoc.TopN`): against a naive per-token loop, for SAEs of
every architecture; the n grid; and the variant's records in the post-hoc report."""

from __future__ import annotations

import pytest
import torch
from conftest import unit_config
from pydantic import TypeAdapter

from saerun.posthoc import TopN, _variants, reconstruction_sweep, top_ns
from saerun.report.posthoc import build_posthoc
from saerun.sae import build_sae
from saerun.spec import SAEConfig

EXTRA = {"relu": {"sparsity": {"coefficient": 0.1}}, "gated": {}, "topk": {"k": 5},
         "jumprelu": {"init_threshold": 0.05}, "batchtopk": {"k": 5}, "matryoshka": {"k": 5}}


def random_sae(architecture: str, d_in: int = 6, d_sae: int = 16):
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, **EXTRA[architecture]})
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.2, 0.3, d_sae))
    return sae.eval()


def naive_topn(f: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros_like(f)
    for b in range(f.shape[0]):
        order = sorted(range(f.shape[1]), key=lambda j: -float(f[b, j]))
        for j in order[:n]:
            out[b, j] = f[b, j]
    return out


@pytest.mark.parametrize("architecture", sorted(EXTRA))
def test_topn_equals_a_naive_per_token_loop(architecture):
    sae = random_sae(architecture)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        f = sae.encode(x)
        for n in (1, 3, 16):
            got = TopN(sae, n).encode(x)
            assert torch.equal(got, naive_topn(f, n)), n
            assert torch.equal(TopN(sae, n).decode(got), sae.decode(got))
    assert torch.equal(TopN(sae, 16).encode(x), f)  # n = d_sae keeps the whole code


def test_topn_by_hand():
    sae = random_sae("relu", 3, 3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.5, -1.0]])
    assert torch.equal(TopN(sae, 2).encode(x), torch.tensor([[3.0, 0.0, 2.0], [0.0, 0.5, 0.0]]))
    got = reconstruction_sweep([TopN(sae, n) for n in (1, 2, 3)], x)
    assert [g["l0"] for g in got] == [1.0, 1.5, 2.0]
    # errors: n=1 drops 1 and 2 (SSE 5), n=2 drops 1 (SSE 1), n=3 only the ReLU'd -1 (SSE 1)
    denom = float(((x - x.mean(0)) ** 2).sum())
    assert [g["fvu"] for g in got] == pytest.approx([6 / denom, 2 / denom, 1 / denom])


def test_the_n_grid_is_below_the_l0():
    assert top_ns(50.0) == [4, 8, 16, 32]
    assert top_ns(16.0) == [4, 8]
    assert top_ns(3.0) == []


def test_topn_variants_for_every_architecture_but_topk():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2)) * 3
    relu = unit_config()
    sae = build_sae(relu.sae, relu.seed).eval()
    l0 = float((sae.encode(x) > 0).sum()) / 64
    got = {v: kind for v, (kind, _) in _variants(relu, sae, x).items() if kind == "topn"}
    assert got == {f"n={n}": "topn" for n in top_ns(l0)} and got
    data = relu.model_dump(mode="json")
    data["sae"] = {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 20}
    topk = type(relu).model_validate(data)
    kinds = {kind for kind, _ in _variants(topk, build_sae(topk.sae, 0).eval(), x).values()}
    assert kinds == {"threshold", "k"}  # topk's top-n is its k' = n


def test_the_report_shows_topn_records():
    rows = [{"run_id": "cd" * 8, "model": "m", "hook_name": "h", "architecture": "jumprelu",
             "penalty": None, "d_sae": 64, "coefficient": 1.0, "l0": 50.0, "fvu": 0.2}]
    records = [
        {"run_id": "cd" * 8, "kind": "threshold", "param": 0.0, "l0": 50.0, "fvu": 0.2,
         "ce_loss_recovered": 0.9},
        {"run_id": "cd" * 8, "kind": "topn", "param": 8, "l0": 8.0, "fvu": 0.5,
         "ce_loss_recovered": 0.7},
        {"run_id": "cd" * 8, "kind": "topn", "param": 4, "l0": 4.0, "fvu": 0.7,
         "ce_loss_recovered": 0.6},
    ]
    md, tables = build_posthoc(rows, records, None)
    assert "### Top-n latents per token" in md
    assert "(L0 50.0 as trained): top-n per token gives FVU 0.7000 at n=4, 0.5000 at n=8." in md
    topn = next(t for t in tables if t.name == "topn")
    assert [r["param"] for r in topn.rows] == [4, 8] and topn.rows[0]["trained_l0"] == 50.0
