"""The real-LM tier (saerun/smollm2-135m): skipped with a reason where it is not built."""

from __future__ import annotations

import pytest

from saerun import realmodel
from saerun.errors import SpecError
from saerun.runner import prepare

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
