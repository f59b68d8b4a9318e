"""The real-LM tier (saerun/smollm2-135m): skipped with a reason where it is not built."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from saerun import realmodel
from saerun.errors import SpecError
from saerun.runner import prepare

if TYPE_CHECKING:
    import torch

NAME = "saerun/smollm2-135m"
needs_model = pytest.mark.skipif(
    realmodel.build_info(NAME) is None,
    reason=f"{NAME} is not built (bash scripts/setup.sh --real-model)")


@needs_model
def test_plan_refuses_hook_pos_embed_on_the_rotary_model(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nmodel: {{name: {NAME}}}\nsite: {{hook_name: hook_pos_embed}}\n"
                    "sae: {architecture: relu, d_sae: 64}\n")
    with pytest.raises(SpecError) as err:
        prepare(spec)
    assert "s.yaml:3" in str(err.value) and "site.hook_name" in str(err.value)
    assert "has no learned position embedding" in str(err.value)


@needs_model
@pytest.mark.slow
def test_every_planned_hook_of_the_real_model_carries_an_activation():
    import torch

    from saerun.activations import LanguageModel
    from saerun.models import hook_names, hook_width, model_info

    info = model_info(NAME)
    lm = LanguageModel.load(NAME)
    names = [n for n in hook_names(info) if not n.startswith("blocks.") or
             n.startswith(("blocks.0.", "blocks.29."))]
    acts = lm.capture(torch.tensor([[1, 28120, 905, 2]]), names)
    for n in names:
        assert acts[n].shape == (1, 4, hook_width(info, n)), n


REAL_SPEC = f"""name: real-fvu
seed: 0
model: {{name: {NAME}}}
site: {{hook_name: blocks.15.hook_resid_post}}
data: {{dataset: saerun/stdlib, context_size: 128, train_tokens: 16_384, eval_tokens: 16_384}}
sae: {{architecture: topk, d_sae: 1152, k: 32}}
train: {{lr: 3e-4, batch_tokens: 2048}}
eval: {{metrics: []}}
"""


def _eval_rows_by_hand(tokenizer, context_size: int, eval_tokens: int) -> torch.Tensor:
    """data.boundaries' default (row_bos+bos_eos) written out: each document BOS ids EOS, packed
    into rows that each start with BOS, until eval_tokens non-head tokens."""
    import torch

    from saerun import data as data_mod
    from saerun.spec import DataConfig

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    rows: list[list[int]] = []
    for doc in data_mod.iter_documents(DataConfig(), "eval"):
        stream += [bos, *tokenizer(doc, add_special_tokens=False)["input_ids"], eos]
        while len(stream) >= context_size - 1:
            rows.append([bos, *stream[:context_size - 1]])
            stream = stream[context_size - 1:]
            if len(rows) * (context_size - 1) >= eval_tokens:
                return torch.tensor(rows)
    return torch.tensor(rows)


@needs_model
@pytest.mark.slow
def test_a_real_model_sae_fvu_equals_a_recomputation_by_hand(tmp_path):
    """Train a TopK SAE on blocks.15.hook_resid_post of the real model through the CLI, then
    recompute its FVU without saerun: transformers' own forward (hidden_states[16] is block
    15's output), the exported SAELens weights, the positions that are neither special tokens
    nor above the recorded outlier limit; the outlier positions are reported as excluded."""
    import json as json_mod

    import torch
    from conftest import saerun
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from saerun.registry import Registry

    (tmp_path / "real.yaml").write_text(REAL_SPEC)
    db = tmp_path / "saerun.db"
    done = saerun("real.yaml", "--registry", str(db), "--quiet", cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stderr
    with Registry(db, must_exist=True) as reg:
        (run,) = reg.finished_runs()
        metrics = run["metrics"]
        folder = reg.artifacts_dir(run["run_id"])
    limit = metrics["outlier_norm_limit"]
    # The massive activations (a few first-text positions per hundred rows) are dropped from
    # the training stream (which reads the 32k-token norm sample first) and from evaluation.
    assert metrics["excluded_outlier_positions_train"] >= 1

    path = realmodel.folder(NAME)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = _eval_rows_by_hand(tokenizer, 128, 16_384)
    with torch.no_grad():
        x = torch.cat([model(r[None], output_hidden_states=True).hidden_states[16][0]
                       for r in rows])
    special = torch.isin(rows.flatten(), torch.tensor(tokenizer.all_special_ids))
    norms = x.norm(dim=-1)
    counted = ~special & (norms <= limit)
    assert int((~special & (norms > limit)).sum()) == metrics["excluded_outlier_positions"] >= 1
    x = x[counted].double()

    w = {k: v.double() for k, v in load_file(folder / "sae_weights.safetensors").items()}
    cfg = json_mod.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["apply_b_dec_to_input"] is True
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(cfg["k"], dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    x_hat = f @ w["W_dec"] + w["b_dec"]
    fvu = ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-3)
