"""The language model behind TransformerBridge: hooks, splicing, tokens, the shuffled stream."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import TypeAdapter

from saerun.activations import (
    LanguageModel,
    estimate_norm_scale,
    token_batches,
    train_activations,
)
from saerun.evaluate import evaluate_group
from saerun.metrics import per_token_ce, per_token_kl
from saerun.models import hook_names, model_info
from saerun.sae import build_sae
from saerun.spec import METRIC_NAMES, DataConfig, SAEConfig
from saerun.stream import ActivationStream

DATA = DataConfig(context_size=32, train_tokens=4096, eval_tokens=512, shuffle_buffer_tokens=2048,
                  lm_batch_sequences=8)


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return LanguageModel.load("saerun/tiny-stdlib")


def test_every_listed_hook_captures(lm):
    tokens = next(token_batches(lm, DATA, "train"))
    names = hook_names(model_info("saerun/tiny-stdlib"))
    acts = lm.capture(tokens, names)
    info = model_info("saerun/tiny-stdlib")
    for name in names:
        width = info.d_mlp if name.endswith("mlp.hook_post") else info.d_model
        assert acts[name].shape == (*tokens.shape, width), name


def test_partial_forward_equals_full_forward(lm):
    tokens = next(token_batches(lm, DATA, "train"))
    early = lm.capture(tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    _, full = lm.forward_with_capture(tokens, ["blocks.1.hook_resid_post"])
    assert torch.allclose(early, full["blocks.1.hook_resid_post"], atol=1e-5)


def test_splicing(lm):
    tokens = next(token_batches(lm, DATA, "train"))
    clean, _ = lm.forward_with_capture(tokens, ["blocks.1.hook_resid_post"])
    same = lm.logits_patched(tokens, "blocks.1.hook_resid_post", lambda a: a)
    assert torch.allclose(clean, same, atol=1e-5)
    zero = lm.logits_patched(tokens, "blocks.1.hook_resid_post", torch.zeros_like)
    assert (zero - clean).abs().max() > 1.0
    z = lm.logits_patched(tokens, "blocks.1.attn.hook_z", lambda a: a)  # [b,T,h,d] flattened
    assert torch.allclose(clean, z, atol=1e-5)


def test_token_rows_start_with_bos_and_eval_stops(lm):
    rows = torch.cat(list(token_batches(lm, DATA, "eval")))
    assert rows.shape[1] == 32 and (rows[:, 0] == lm.bos_id).all()
    assert 512 <= rows.shape[0] * 31 < 512 + 31 * 8 + 31


def test_stream_shapes_alignment_determinism_and_skip(lm):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]  # the same tensor
    stream = ActivationStream(lm, DATA, hooks, batch_tokens=256)
    batches = list(stream)
    assert len(batches) == 4096 // 256
    for b in batches:
        assert b[hooks[0]].shape == (256, 128)
        assert torch.equal(b[hooks[0]], b[hooks[1]])  # one permutation for every hook
    again = list(ActivationStream(lm, DATA, hooks, batch_tokens=256))
    assert all(torch.equal(a[hooks[0]], b[hooks[0]]) for a, b in zip(batches, again, strict=True))
    resumed = ActivationStream(lm, DATA, hooks, batch_tokens=256)
    resumed.skip(5)
    assert torch.equal(next(iter(resumed))[hooks[0]], batches[5][hooks[0]])
    # shuffled: consecutive vectors of one batch do not come from one sequence in order
    other = DataConfig(**{**DATA.model_dump(), "shuffle_seed": 1})
    assert not torch.equal(next(iter(ActivationStream(lm, other, hooks, 256)))[hooks[0]],
                           batches[0][hooks[0]])


def test_stream_excludes_special_tokens(lm):
    # BOS activations have a huge norm in GPT-2-style models: none may reach the SAE.
    tokens = next(token_batches(lm, DATA, "train"))
    acts = lm.capture(tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    bos_norm = acts[:, 0].norm(dim=-1).mean()
    batch = next(iter(ActivationStream(lm, DATA, ["blocks.1.hook_resid_post"], 256)))
    norms = batch["blocks.1.hook_resid_post"].norm(dim=-1)
    assert not torch.isclose(norms[:, None], acts[:, 0].norm(dim=-1)[None], rtol=1e-6).any()
    assert bos_norm > 0


def test_norm_scale_makes_expected_norm_sqrt_d(lm):
    hook = "blocks.1.hook_resid_post"
    scale = estimate_norm_scale(lm, DATA, [hook], n_tokens=2048)[hook]
    batch = next(iter(ActivationStream(lm, DATA, [hook], 1024)))[hook]
    assert (batch * scale).norm(dim=-1).mean().item() == pytest.approx(128**0.5, rel=0.1)


def test_evaluate_group_lm_metrics_equal_the_plain_formulas(lm):
    """evaluate_group's CE/KL (shared clean pass, NextTokenScorer) against a direct
    computation: per_token_ce / per_token_kl of full forwards, BOS positions excluded, means
    over the scored positions."""
    hook = "blocks.1.hook_resid_post"
    batches = list(token_batches(lm, DATA, "eval"))
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": "relu", "d_in": 128, "d_sae": 256})
    sae = build_sae(cfg, seed=0).eval()
    out = evaluate_group(lm, batches, {"r": (sae, hook)}, set(METRIC_NAMES))["r"].metrics

    keep = [~lm.special_mask(t) for t in batches]
    acts = [lm.capture(t, [hook])[hook] for t in batches]
    mean = torch.cat([a[k] for a, k in zip(acts, keep, strict=True)]).double().mean(0).float()
    sums: dict[str, float] = {}
    n = 0
    for tokens, k, a in zip(batches, keep, acts, strict=True):
        pred = k[:, :-1]
        clean, _ = lm.forward_with_capture(tokens, [hook])
        with torch.no_grad():
            x_hat = sae.decode(sae.encode(a))
        variants = {
            "sae": torch.where(k[..., None], x_hat, a),
            "zero": torch.where(k[..., None], 0.0, a),
            "mean": torch.where(k[..., None], mean, a),
        }
        logits = {name: lm.logits_patched(tokens, hook, lambda _a, v=v: v)
                  for name, v in variants.items()}
        per = {"ce_orig": per_token_ce(clean, tokens)}
        per.update({f"ce_{name}": per_token_ce(z, tokens) for name, z in logits.items()})
        per.update({f"kl_{name}": per_token_kl(clean, logits[name]) for name in ("sae", "zero")})
        for key, value in per.items():
            sums[key] = sums.get(key, 0.0) + value[pred].double().sum().item()
        n += int(pred.sum())
    m = {key: value / n for key, value in sums.items()}
    for key in ("ce_orig", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero"):
        assert out[key] == pytest.approx(m[key], rel=1e-5, abs=1e-6), key
    assert out["ce_loss_recovered"] == pytest.approx(
        (m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_orig"]), rel=1e-4)
    assert out["kl_score"] == pytest.approx((m["kl_zero"] - m["kl_sae"]) / m["kl_zero"], rel=1e-4)


def test_activation_cache_is_bit_identical_reused_and_keyed(lm, tmp_path, monkeypatch):
    """--activation-cache: the stream read back from the cache equals the computed one bit
    for bit, a second stream (another batch size and shuffle seed: shuffling happens after the
    cache) never runs the model, and another context size or hook is another key."""
    from saerun import actcache

    hooks = ["blocks.1.hook_resid_post"]
    plain = list(ActivationStream(lm, DATA, hooks, batch_tokens=256))
    other = DataConfig(**{**DATA.model_dump(), "shuffle_seed": 3})
    plain_other = list(ActivationStream(lm, other, hooks, batch_tokens=512))
    scale = estimate_norm_scale(lm, DATA, hooks, n_tokens=2048)
    monkeypatch.setenv(actcache.ENV, str(tmp_path / "cache"))
    filled = list(ActivationStream(lm, DATA, hooks, batch_tokens=256))
    (folder,) = (tmp_path / "cache").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["hook"] == hooks[0] and meta["context_size"] == 32
    assert meta["model"].startswith("sha256:")  # the embedded model's folder, by content
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) >= 2 and all(torch.equal(a[hooks[0]], b[hooks[0]])
                                   for a, b in zip(plain, filled, strict=True))

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the cache holds every batch")

    monkeypatch.setattr(lm, "capture", no_model)
    again = list(ActivationStream(lm, other, hooks, batch_tokens=512))
    assert all(torch.equal(a[hooks[0]], b[hooks[0]]) for a, b in zip(again, plain_other,
                                                                        strict=True))
    assert estimate_norm_scale(lm, DATA, hooks, n_tokens=2048) == scale
    assert sorted(folder.glob("*.safetensors")) == files  # nothing written twice

    # a truncated file is recomputed, not trusted; another context size is another key
    monkeypatch.undo()
    monkeypatch.setenv(actcache.ENV, str(tmp_path / "cache"))
    files[0].write_bytes(files[0].read_bytes()[:50])
    first = next(iter(ActivationStream(lm, DATA, hooks, batch_tokens=256)))
    assert torch.equal(first[hooks[0]], plain[0][hooks[0]])
    short = DataConfig(**{**DATA.model_dump(), "context_size": 16})
    next(iter(ActivationStream(lm, short, hooks, batch_tokens=256)))
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_no_shuffling_streams_the_model_order_and_resumes(lm):
    """shuffle_buffer_tokens 0: the batches are train_activations' vectors in order, cut into
    batch_tokens rows, IN and OUT of a transcoder aligned row by row; skip resumes exactly."""
    hooks = ["blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"]
    data = DataConfig(**{**DATA.model_dump(), "shuffle_buffer_tokens": 0})
    batches = list(ActivationStream(lm, data, hooks, batch_tokens=256))
    assert len(batches) == 4096 // 256
    ordered: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    n = 0
    for acts in train_activations(lm, data, hooks):
        for h in hooks:
            ordered[h].append(acts[h].float())
        n += acts[hooks[0]].shape[0]
        if n >= 4096:
            break
    for h in hooks:
        flat = torch.cat(ordered[h])[:4096]
        assert torch.equal(torch.cat([b[h] for b in batches]), flat)
    resumed = ActivationStream(lm, data, hooks, batch_tokens=256)
    resumed.skip(3)
    assert torch.equal(next(iter(resumed))[hooks[1]], batches[3][hooks[1]])
