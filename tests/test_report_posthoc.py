"""Post-hoc analyses on tiny hand-built SAEs with hand-computed results."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from saerun.posthoc import (
    Thresholded,
    TopKAt,
    k_primes,
    opposing_pairs,
    reconstruction_sweep,
    thresholds_for,
)
from saerun.report.posthoc import build_posthoc
from saerun.sae import build_sae
from saerun.spec import SAEConfig


def identity_sae(architecture: str, d: int, **extra):
    """An SAE with W_enc = W_dec = I and zero biases: f = its activation of x, x_hat = f."""
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": architecture, "d_in": d, "d_sae": d, **extra})
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_threshold_ablation_exact():
    sae = identity_sae("relu", 2)
    x = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    # t=1 keeps f >= 1: [[3, 1], [0, 2]], L0 1.5, error only 0.5 -> SSE 0.25.
    # t=2: [[3, 0], [0, 2]], L0 1, SSE 1 + 0.25. FVU denominator: x_bar = (1.75, 1.5),
    # sum ||x - x_bar||^2 = 2 * (1.25^2 + 0.5^2) = 3.625.
    assert torch.equal(Thresholded(sae, 1.0).encode(x), torch.tensor([[3.0, 1.0], [0.0, 2.0]]))
    got = reconstruction_sweep([Thresholded(sae, t) for t in (0.0, 1.0, 2.0)], x)
    assert [g["l0"] for g in got] == [2.0, 1.5, 1.0]
    assert [g["fvu"] for g in got] == pytest.approx([0.0, 0.25 / 3.625, 1.25 / 3.625])


def test_thresholds_are_quantiles_of_nonzero_activations():
    f = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 4.0]])  # non-zero: 1, 2, 3, 4
    assert thresholds_for(f, (0.5,)) == [0.0, 2.5]
    assert thresholds_for(torch.zeros(2, 2)) == [0.0]


def test_topk_at_other_k_exact():
    sae = identity_sae("topk", 4, k=2)
    x = torch.tensor([[4.0, 3.0, 2.0, -1.0], [1.0, -2.0, 5.0, 0.5]])
    assert torch.equal(sae.encode(x), torch.tensor([[4.0, 3.0, 0, 0], [1.0, 0, 5.0, 0]]))
    assert torch.equal(TopKAt(sae, 1).encode(x), torch.tensor([[4.0, 0, 0, 0], [0, 0, 5.0, 0]]))
    # k' = 4 keeps everything, and the ReLU still zeroes the negative pre-activations
    assert torch.equal(TopKAt(sae, 4).encode(x), torch.relu(x))
    got = reconstruction_sweep([TopKAt(sae, k) for k in (1, 2, 3, 4)], x)
    assert [g["l0"] for g in got] == [1.0, 2.0, 3.0, 3.0]
    # k' = 4: the only errors are the negative entries -1 and -2: SSE 5
    x_bar = x.mean(0)
    assert got[3]["fvu"] == pytest.approx(5.0 / float(((x - x_bar) ** 2).sum()))
    # k' = 3 already keeps every positive entry (row 2: 5, 1, 0.5), so it equals k' = 4
    assert got[0]["fvu"] > got[1]["fvu"] > got[2]["fvu"] == got[3]["fvu"]
    assert k_primes(32, 512) == [8, 16, 32, 64, 128]
    assert k_primes(32, 40) == [8, 16, 32, 40]


def test_opposing_decoder_directions():
    w = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [4.0, 3.0], [-0.6, -0.8]])
    # cosines: (0,1) -1, (2,3) -0.96, (1,2) -0.8, (0,3) -0.6, (0,2) 0.8, (1,3) 0.6
    assert opposing_pairs(w) == {-0.9: 2, -0.7: 3}
    assert opposing_pairs(torch.eye(3)) == {-0.9: 0, -0.7: 0}


def test_build_posthoc_from_records(tmp_path):
    rows = [{"run_id": "ab" * 8, "model": "m", "hook_name": "h", "architecture": "topk",
             "penalty": None, "d_sae": 64, "sae.k": 8, "l0": 8.0, "fvu": 0.2}]
    records = [
        {"run_id": "ab" * 8, "kind": "opposing", "param": None, "pairs_below_0.9": 1,
         "pairs_below_0.7": 4},
        {"run_id": "ab" * 8, "kind": "threshold", "param": 0.0, "l0": 8.0, "fvu": 0.2,
         "ce_loss_recovered": 0.9},
        {"run_id": "ab" * 8, "kind": "threshold", "param": 0.5, "l0": 5.0, "fvu": 0.3,
         "ce_loss_recovered": 0.8},
        {"run_id": "ab" * 8, "kind": "k", "param": 8, "l0": 8.0, "fvu": 0.2,
         "ce_loss_recovered": 0.9},
        {"run_id": "ab" * 8, "kind": "k", "param": 16, "l0": 16.0, "fvu": 0.15,
         "ce_loss_recovered": 0.95},
    ]
    md, tables = build_posthoc(rows, records, tmp_path)
    assert "thresholding at t = 0.5 takes L0 8.0 -> 5.0 and FVU 0.2000 -> 0.3000" in md
    assert "FVU 0.2000 at k'=8, 0.1500 at k'=16; lowest at k'=16" in md
    assert "1 pairs with cosine < -0.9 and 4 with cosine < -0.7" in md
    assert [t.name for t in tables] == ["threshold", "progressive", "topn", "opposing"]
    assert len(tables[0].rows) == 2 and len(tables[1].rows) == 2
    assert (tmp_path / "posthoc" / "m__h__threshold.png").stat().st_size > 5000
    assert (tmp_path / "posthoc" / "m__h__progressive.png").exists()


def _registry_with_two_done_runs(path):
    from saerun.registry import Registry

    reg = Registry(path)
    h = reg.add_spec("s", "s.yaml", "x")
    cfg = {"seed": 0, "model": {"name": "m"}, "site": {"hook_name": "h"}, "data": {},
           "sae": {"architecture": "relu", "d_sae": 4}, "train": {"lr": 1e-3}}
    reg.ensure_runs(h, [{"run_id": i, "name": i, "group_key": "g", "config": cfg}
                        for i in ("aaaa0001", "bbbb0002", "cccc0003")])
    for i in ("aaaa0001", "bbbb0002"):
        reg.mark_running(i, {}, "fp")
        reg.mark_done(i, {"fvu": 0.2}, 1.0, 1.0, 100)
    return reg


def test_only_missing_or_stale_records_are_pending(tmp_path):
    from saerun.posthoc import POSTHOC_TOKENS, pending

    with _registry_with_two_done_runs(tmp_path / "saerun.db") as reg:
        ids = ["aaaa0001", "bbbb0002", "cccc0003"]
        assert pending(reg, ids) == ["aaaa0001", "bbbb0002"]  # cccc0003 is not done
        done_at = reg.get_run("aaaa0001")["finished_at"]
        reg.set_posthoc("aaaa0001", POSTHOC_TOKENS, done_at, {"opposing": {"kind": "opposing"}})
        reg.set_posthoc("bbbb0002", POSTHOC_TOKENS // 2, reg.get_run("bbbb0002")["finished_at"],
                        {"opposing": {"kind": "opposing"}})
        assert pending(reg, ids) == ["bbbb0002"]  # computed on other tokens: stale
        assert pending(reg, ids, POSTHOC_TOKENS // 2) == ["aaaa0001"]
        # trained again since: its records describe the old weights
        reg.set_posthoc("aaaa0001", POSTHOC_TOKENS, "2000-01-01T00:00:00.000000Z",
                        {"opposing": {"kind": "opposing"}})
        assert pending(reg, ["aaaa0001"]) == ["aaaa0001"]


def test_compute_skips_runs_without_weights_and_stores_nothing(tmp_path):
    from saerun.posthoc import compute

    _registry_with_two_done_runs(tmp_path / "saerun.db").close()
    assert compute(tmp_path / "saerun.db", ["aaaa0001", "bbbb0002"]) == []  # no model loaded
    from saerun.registry import Registry

    with Registry(tmp_path / "saerun.db") as reg:
        assert reg.posthoc(["aaaa0001", "bbbb0002"]) == []


def test_the_page_names_the_tokens_of_the_stored_records(tmp_path):
    rows = [{"run_id": "ab" * 8, "model": "m", "hook_name": "h", "architecture": "relu",
             "penalty": "l1", "d_sae": 64, "l0": 8.0, "fvu": 0.2}]
    records = [{"run_id": "ab" * 8, "kind": "threshold", "param": 0.0, "l0": 8.0, "fvu": 0.2,
                "ce_loss_recovered": 0.9, "tokens": 4096}]
    md, _ = build_posthoc(rows, records, None)
    assert ("1 of 1 runs analysed (the others have no weights on disk), on the first 4,096 "
            "held-out tokens, with the registry's metric code.") in md
