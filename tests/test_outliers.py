"""Outlier positions (data.exclude_outlier_norm), document boundaries (data.boundaries),
pretokenized datasets and the norm estimate from the stream head, on the embedded model."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from pydantic import TypeAdapter

from saerun import activations
from saerun.activations import (
    LanguageModel,
    estimate_norm_scale,
    outlier_limits,
    token_batches,
    train_activations,
)
from saerun.errors import SaerunError
from saerun.evaluate import evaluate_group
from saerun.models import hook_names, known_dims
from saerun.sae import build_sae
from saerun.spec import DataConfig, SAEConfig

DATA = DataConfig(context_size=32, train_tokens=4096, eval_tokens=512, shuffle_buffer_tokens=2048,
                  lm_batch_sequences=8)
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return LanguageModel.load("saerun/tiny-stdlib")


def test_the_default_boundaries_are_what_encode_gave_before(lm):
    """Before data.boundaries, rows were [BOS] + the documents as `encode` returned them (this
    tokenizer prepends BOS) joined by EOS; the default packing reproduces those rows exactly."""
    n = DATA.context_size - 1
    stream: list[int] = []
    rows: list[list[int]] = []
    from saerun.data import iter_documents

    for text in iter_documents(DATA, "train"):
        stream += lm.tokenizer.encode(text) + [lm.eos_id]
        while len(stream) >= n and len(rows) < DATA.lm_batch_sequences:
            rows.append([lm.bos_id] + stream[:n])
            stream = stream[n:]
        if len(rows) == DATA.lm_batch_sequences:
            break
    assert lm.tokenizer.encode("x")[0] == lm.bos_id  # the premise: encode prepends BOS here
    assert torch.equal(next(token_batches(lm, DATA, "train")), torch.tensor(rows))


def test_boundaries_none_and_eos_insert_exactly_what_they_say(lm):
    from saerun.data import iter_documents

    docs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"]
            for t, _ in zip(iter_documents(DATA, "train"), range(40), strict=False)]
    for boundaries, wrap, head in (("none", lambda d: d, []),
                                   ("eos", lambda d: d + [lm.eos_id], []),
                                   ("row_bos+bos", lambda d: [lm.bos_id] + d, [lm.bos_id])):
        data = DATA.model_copy(update={"boundaries": boundaries})
        flat = [t for d in docs for t in wrap(d)]
        n = DATA.context_size - len(head)
        expected = [head + flat[i * n:(i + 1) * n] for i in range(DATA.lm_batch_sequences)]
        assert torch.equal(next(token_batches(lm, data, "train")), torch.tensor(expected))


def test_pretokenized_rows_are_read_as_ids_and_checked_against_the_vocabulary(lm, tmp_path):
    path = tmp_path / "ids.jsonl"
    rows = [[5 + (i * 7 + j) % 4000 for j in range(40)] for i in range(60)]
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    data = DATA.model_copy(update={"dataset": str(path), "boundaries": "none",
                                   "eval_fraction": 0.01})
    from saerun.data import fingerprint, iter_documents

    train = [d for d in iter_documents(data, "train")]
    flat = [t for d in train for t in d]
    got = next(token_batches(lm, data, "train"))
    assert torch.equal(got, torch.tensor(flat[:8 * 32]).reshape(8, 32))
    before = fingerprint(data)
    rows[0][0] = 6
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    assert fingerprint(data) != before  # the fingerprint covers the ids
    rows[1][3] = 4096  # the vocabulary is 0..4095
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    with pytest.raises(SaerunError, match="token id 4096, outside the vocabulary"):
        next(token_batches(lm, data, "train"))
    path.write_text(json.dumps({"input_ids": [1, -2]}) + "\n")
    with pytest.raises(SaerunError, match="ids.jsonl:1: input_ids must be a list"):
        next(token_batches(lm, data, "train"))


def test_the_embedded_model_has_no_outlier_and_the_limit_is_ten_medians(lm):
    """The limit is 10 x the median norm of the sample; the embedded model's stream has no
    position above it, so the default changes nothing there (quickstart weights unchanged)."""
    limits = outlier_limits(lm, DATA, [HOOK])
    assert limits is not None
    head = activations.stream_head(lm, DATA, [HOOK])
    assert limits[HOOK] > 0
    kept = torch.cat([a[HOOK] for a in itertools.islice(train_activations(lm, DATA, [HOOK]), 20)])
    plain = DATA.model_copy(update={"exclude_outlier_norm": None})
    every = torch.cat([a[HOOK] for a in itertools.islice(train_activations(lm, plain, [HOOK]), 20)])
    assert torch.equal(kept, every)
    assert head.scales == estimate_norm_scale(lm, plain, [HOOK])


def test_outliers_leave_training_the_estimate_and_every_metric(lm, monkeypatch):
    """A limit below some norms drops exactly the positions above it: from the training
    stream, the norm estimate (hand-computed), and evaluation, which counts them."""
    data = DATA.model_copy(update={"exclude_outlier_norm": 1.05})
    head = activations.stream_head(lm, data, [HOOK])
    assert head.limits is not None
    limit = head.limits[HOOK]
    plain = DATA.model_copy(update={"exclude_outlier_norm": None})
    every = [a[HOOK] for a in itertools.islice(train_activations(lm, plain, [HOOK]), 4)]
    seen: dict[str, int] = {}
    kept = [a[HOOK] for a in itertools.islice(train_activations(lm, data, [HOOK], seen), 4)]
    dropped = sum(len(e) - len(k) for e, k in zip(every, kept, strict=True))
    assert seen["outlier_positions"] == dropped > 0
    for e, k in zip(every, kept, strict=True):
        assert torch.equal(k, e[e.float().norm(dim=-1) <= limit]) and len(k) < len(e)
    fresh = activations.stream_head(lm, plain.model_copy(update={"shuffle_seed": 9}), [HOOK])
    sample = torch.cat([a[HOOK][~sp] for a, sp in fresh.batches])
    norms = sample.float().norm(dim=-1)
    assert limit == pytest.approx(1.05 * norms.median().item())

    batches = list(token_batches(lm, DATA, "eval"))
    cfg = TypeAdapter(SAEConfig).validate_python({"architecture": "relu", "d_in": 128,
                                                  "d_sae": 256})
    sae = build_sae(cfg, seed=0).eval()
    out = evaluate_group(lm, batches, {"r": (sae, HOOK)}, {"l0"}, True, {HOOK: limit})["r"]
    acts = torch.cat([lm.capture(t, [HOOK])[HOOK][~lm.special_mask(t)] for t in batches])
    outliers = int((acts.norm(dim=-1) > limit).sum())
    assert out.metrics["excluded_outlier_positions"] == outliers > 0
    x = acts[acts.norm(dim=-1) <= limit]
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    fvu = ((x - x_hat).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum()).item()
    assert out.metrics["fvu"] == pytest.approx(fvu, rel=1e-5)


def test_the_head_is_replayed_not_recomputed(lm, monkeypatch):
    data = DATA.model_copy(update={"shuffle_seed": 5})
    estimate_norm_scale(lm, data, [HOOK])
    n_head = len(activations.stream_head(lm, data, [HOOK]).batches)
    calls = []
    real = lm.capture
    monkeypatch.setattr(lm, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    stream = train_activations(lm, data, [HOOK])
    for _ in range(n_head):
        next(stream)
    assert calls == []  # the head's batches came back without a forward
    next(stream)
    assert calls == [1]


def test_rotary_models_have_no_hook_pos_embed():
    assert "hook_pos_embed" not in hook_names(known_dims("EleutherAI/pythia-70m-deduped"))
    assert "hook_pos_embed" in hook_names(known_dims("gpt2"))
