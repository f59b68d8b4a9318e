"""The language model behind TransformerBridge: hooks, splicing, tokens, the shuffled stream."""

from __future__ import annotations

import pytest
import torch

from saerun.activations import (
    ActivationStream,
    LanguageModel,
    estimate_norm_scale,
    token_batches,
)
from saerun.models import hook_names, model_info
from saerun.spec import DataConfig

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
