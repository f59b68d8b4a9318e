"""Transcoders: an SAE is a transcoder whose target is its input; both normalisation scales fold
exactly; the planner derives d_out and refuses what a transcoder cannot mean."""

from __future__ import annotations

import textwrap

import pytest
import torch

from saerun.errors import SpecError
from saerun.plan import ModelDims, build_plan
from saerun.sae import SAE_CLASSES, StepInfo, build_sae
from saerun.spec import SAE_CONFIG_BY_TAG, load_spec, locate

D_IN, D_OUT, D_SAE = 6, 4, 16
OPTIONS = {"topk": {"k": 3}, "batchtopk": {"k": 3}, "matryoshka": {"k": 3}}


def transcoder(architecture: str, skip: bool = True, seed: int = 0):
    cfg = SAE_CONFIG_BY_TAG[architecture](
        architecture=architecture, d_in=D_IN, d_out=D_OUT, d_sae=D_SAE, skip_connection=skip,
        init_encoder_as_decoder_transpose=False, **OPTIONS.get(architecture, {}))
    return build_sae(cfg, seed)


def step() -> StepInfo:
    return StepInfo(1.0, torch.zeros(D_SAE, dtype=torch.bool))


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_an_sae_is_a_transcoder_whose_target_is_its_input(architecture):
    cfg = SAE_CONFIG_BY_TAG[architecture](architecture=architecture, d_in=D_IN, d_sae=D_SAE,
                                          **OPTIONS.get(architecture, {}))
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    a, b = build_sae(cfg, 0), build_sae(cfg, 0)
    assert not a.transcoder and a.W_skip is None and a.d_out == D_IN
    la, lb = a.loss(x, step()), b.loss(x, step(), x)
    assert torch.equal(la.loss, lb.loss)  # bit-identical, not close
    la.loss.backward()
    lb.loss.backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad), name


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_transcoder_loss_is_against_the_target(architecture):
    """The loss's MSE is ||y - (f W_dec + b_dec + x W_skip)||^2 computed by hand, from the
    dense encode of x with no b_dec centring (b_dec is d_out wide)."""
    sae = transcoder(architecture).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.W_skip.copy_(torch.randn(D_OUT, D_IN, generator=g))
        sae.b_dec.copy_(torch.randn(D_OUT, generator=g))
    x, y = torch.randn(32, D_IN, generator=g), torch.randn(32, D_OUT, generator=g)
    sae.sparse_kernels = False
    out = sae.loss(x, step(), y)
    f = sae.encode(x) if architecture not in ("batchtopk", "matryoshka") else out.f
    y_hat = f @ sae.W_dec + sae.b_dec + x @ sae.W_skip.t()
    assert out.mse.item() == pytest.approx((y - y_hat).pow(2).sum(-1).mean().item(), rel=1e-5)
    assert sae.W_dec.shape == (D_SAE, D_OUT) and sae.b_dec.shape == (D_OUT,)


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk", "gated"])
def test_both_scales_fold_into_the_weights(architecture):
    """Trained on s x against t y, folded: the same latents and y_hat / t from raw x."""
    s, t = 3.0, 0.25
    sae = transcoder(architecture).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_skip.copy_(torch.randn(D_OUT, D_IN, generator=g))
        sae.b_dec.copy_(torch.randn(D_OUT, generator=g))
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1)
    x = torch.randn(32, D_IN, generator=g)
    with torch.no_grad():
        f_scaled, y_scaled = sae.encode(s * x), sae(s * x)
        sae.fold_scale(s, t)
        f_raw, y_raw = sae.encode(x), sae(x)
    torch.testing.assert_close(f_raw, f_scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_raw, y_scaled / t, rtol=1e-5, atol=1e-5)


def test_saelens_names_of_transcoders():
    assert transcoder("relu", skip=False).saelens_cfg()["architecture"] == "transcoder"
    assert transcoder("relu").saelens_cfg()["architecture"] == "skip_transcoder"
    assert transcoder("jumprelu", skip=False).saelens_cfg()["architecture"] == \
        "jumprelu_transcoder"
    cfg = transcoder("topk").saelens_cfg()
    assert cfg["architecture"] == "jumprelu_skip_transcoder" and cfg["k"] == 3
    assert "saerun_not_representable" in cfg and cfg["apply_b_dec_to_input"] is False
    assert transcoder("batchtopk", skip=False).saelens_cfg()["d_out"] == D_OUT
    sae = transcoder("topk")  # the exported threshold (zeros) loads back into saerun
    fresh = transcoder("topk", seed=1)
    fresh.load_state_dict(sae.export_tensors())
    assert torch.equal(fresh.W_skip, sae.W_skip)


HOOKS = {"blocks.0.hook_mlp_in": 64, "blocks.0.hook_mlp_out": 64, "blocks.0.mlp.hook_post": 256}


def dims(name: str) -> ModelDims:
    return ModelDims(n_layers=1, hook_widths=HOOKS, source="test")


def plan_of(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    spec, raw, lines, _ = load_spec(path)
    try:
        return build_plan(spec, raw, dims)
    except SpecError as err:
        raise locate(err, lines, str(path), spec) from None


def test_plan_derives_d_out_with_provenance_and_mixes_saes(tmp_path):
    plan = plan_of(tmp_path, """\
        name: t
        site: {hook_name: blocks.0.hook_mlp_in}
        sae: {architecture: topk, k: 8, skip_connection: true}
        sweep: {zip: {site.hook_name_out: [blocks.0.hook_mlp_out, null],
                      sae.skip_connection: [true, false]}}
        """)
    tc, sae = (job.config for job in plan.jobs)
    assert (tc.sae.d_in, tc.sae.d_out, tc.site.hook_name_out) == (64, 64,
                                                                  "blocks.0.hook_mlp_out")
    assert plan.jobs[0].provenance["sae.d_out"].startswith("derived: width of "
                                                           "blocks.0.hook_mlp_out")
    assert sae.sae.d_out is None and sae.site.hook_name_out is None
    assert len(plan.groups) == 1  # one LM pass feeds the SAE and the transcoder


@pytest.mark.parametrize("text, field", [
    ("site: {hook_name: blocks.0.mlp.hook_post, hook_name_out: blocks.0.hook_mlp_out}\n"
     "sae: {architecture: relu}", "sae.init_encoder_as_decoder_transpose"),
    ("site: {hook_name: blocks.0.hook_mlp_in}\nsae: {architecture: relu, skip_connection: true}",
     "sae.skip_connection"),
    ("site: {hook_name: blocks.0.hook_mlp_in}\nsae: {architecture: relu, d_out: 64}",
     "sae.d_out"),
    ("site: {hook_name: blocks.0.hook_mlp_in, hook_name_out: blocks.0.hook_mlp_out}\n"
     "sae: {architecture: relu, d_out: 32}", "sae.d_out"),
    ("site: {hook_name: blocks.0.hook_mlp_in, hook_name_out: blocks.9.hook_mlp_out}\n"
     "sae: {architecture: relu}", "site.hook_name_out"),
])
def test_plan_refuses_what_a_transcoder_cannot_mean(tmp_path, text, field):
    with pytest.raises(SpecError) as err:
        plan_of(tmp_path, "name: t\n" + text + "\n")
    assert err.value.field == field


def test_different_widths_train_with_the_transpose_off(tmp_path):
    plan = plan_of(tmp_path, """\
        name: t
        site: {hook_name: blocks.0.mlp.hook_post, hook_name_out: blocks.0.hook_mlp_out}
        sae: {architecture: relu, init_encoder_as_decoder_transpose: false}
        """)
    cfg = plan.jobs[0].config.sae
    assert (cfg.d_in, cfg.d_out) == (256, 64)
    assert build_sae(cfg, 0).W_dec.shape == (cfg.d_sae, 64)


def test_reports_give_transcoders_their_own_panel_and_series():
    from saerun.report.common import series_of
    from saerun.report.rows import result_row

    def run(site: dict, sae: dict) -> dict:
        config = {"site": site, "model": {"name": "m"}, "data": {"train_tokens": 1},
                  "train": {"lr": 1e-3}, "seed": 0, "sae": {"d_sae": 8, **sae}}
        return {"run_id": "r", "name": "n", "spec_name": "s", "config": config,
                "train_seconds": 1.0, "eval_seconds": 1.0, "tokens_trained": 1,
                "finished_at": "t", "step_flops_per_token": 1.0, "metrics": {}}

    tc = result_row(run({"hook_name": "a", "hook_name_out": "b"},
                        {"architecture": "relu", "skip_connection": True,
                         "sparsity": {"penalty": "l1"}}))
    sae = result_row(run({"hook_name": "a"}, {"architecture": "relu",
                                               "sparsity": {"penalty": "l1"}}))
    assert (tc["hook_name"], sae["hook_name"]) == ("a -> b", "a")  # the panel key
    assert (series_of(tc), series_of(sae)) == ("relu/l1 skip transcoder", "relu/l1")
