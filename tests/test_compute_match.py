"""Compute-matched widths: the FLOPs of a training step, the matched width, spec and plan."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from saerun.errors import SpecError
from saerun.plan import build_plan
from saerun.runner import model_dims
from saerun.sae import build_sae
from saerun.sae.base import StepInfo
from saerun.sae.cost import (
    compute_matched_d_sae,
    reference_config,
    step_flops_per_token,
)
from saerun.spec import derive, load_spec, locate

ARCHITECTURES = ["relu", "gated", "jumprelu", "topk", "batchtopk", "matryoshka"]


def counted_on_cpu(cfg, batch: int, dead: bool = False) -> int:
    """FLOPs of one real (CPU, not meta) training step of the dense reference (the products
    it names; the sparse kernels do the same maths in fewer): what cost.py's meta-device count
    and saerun.flops's formula must agree with. A transcoder's target is a d_out-wide y."""
    sae = build_sae(cfg, seed=0)
    sae.sparse_kernels = False
    x = torch.randn(batch, cfg.d_in, generator=torch.Generator().manual_seed(1))
    y = None if cfg.d_out is None else torch.randn(batch, cfg.d_out)
    step = StepInfo(1.0, torch.full((cfg.d_sae,), dead, dtype=torch.bool))
    with FlopCounterMode(display=False) as counter:
        sae.loss(x, step, y).loss.backward()
    return counter.get_total_flops()


def test_relu_step_flops_match_a_hand_count():
    # ReLU, B tokens, D = d_in, d = d_sae; one product [m, n] x [n, p] is 2 m n p FLOPs.
    #   forward:  pre = (x - b_dec) W_enc          2 B D d
    #             x_hat = f W_dec                  2 B d D
    #   backward: dW_enc = (x - b_dec)^T dpre      2 B D d
    #             d(x - b_dec) = dpre W_enc^T      2 B D d   (b_dec requires grad)
    #             df = dx_hat W_dec^T              2 B D d
    #             dW_dec = f^T dx_hat              2 B d D
    # 6 products: 12 B D d, i.e. 12 D d per token. Norms, ReLU and sums are not products.
    d_in, d_sae, batch = 8, 24, 5
    cfg = reference_config("relu", d_in, d_sae)
    assert counted_on_cpu(cfg, batch) == 12 * batch * d_in * d_sae
    assert step_flops_per_token(cfg, d_sae) == 12 * d_in * d_sae


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fitted_line_equals_a_real_step(architecture):
    """a + b d_sae from the two meta-device probes = a real CPU step at another width."""
    d_in, d_sae, batch = 16, 96, 7
    cfg = reference_config(architecture, d_in, d_sae)
    assert step_flops_per_token(cfg, d_sae) * batch == counted_on_cpu(cfg, batch)


def test_auxk_is_paid_whatever_the_dead_mask():
    """The reference AuxK runs without a host sync, so its products run with or without dead
    latents: the count (which includes them) does not depend on the mask cost.py measures
    with."""
    cfg = reference_config("topk", 16, 64)
    assert counted_on_cpu(cfg, 4, dead=False) == counted_on_cpu(cfg, 4, dead=True)


def test_ratios_per_latent_and_gated_matched_to_relu():
    d_in, ref_width = 128, 3 * 2**10
    relu = reference_config("relu", d_in, ref_width)
    per_latent = {
        a: step_flops_per_token(reference_config(a, d_in, ref_width), 1)
        / step_flops_per_token(relu, 1)
        for a in ARCHITECTURES
    }
    print("step FLOPs per latent relative to relu:", per_latent)
    # Products per step, against relu's 6 (see the hand count above):
    #   gated 11: forward gate and magnitude encoders, decode, and the auxiliary reconstruction
    #     ReLU(pi_gate) W_dec.detach() (4); backward, both encoders to weight and input (4), the
    #     decode to f and W_dec (2), the auxiliary decode to the gate only (1, decoder detached).
    #   jumprelu 6: relu's products; the threshold and its estimators are elementwise.
    #   topk family 9: relu's 6 plus AuxK's decode e_hat = f_aux W_dec (1) and its backward to
    #     the pre-activations and W_dec (2).
    assert per_latent == pytest.approx({
        "relu": 1.0, "gated": 11 / 6, "jumprelu": 1.0,
        "topk": 1.5, "batchtopk": 1.5, "matryoshka": 1.5,
    })
    gated = reference_config("gated", d_in, ref_width)
    matched = compute_matched_d_sae(gated, relu, ref_width)
    print(f"gated matched to relu at {ref_width}: {matched} (ratio {ref_width / matched:.3f})")
    # The paper's 1.5 counts the inference forward pass (two encoder products and one decoder
    # product against one and one); a training step also pays the auxiliary reconstruction and
    # the second encoder's backward, hence 11/6 = 1.83: 3072 * 6 / 11 = 1675.6.
    assert matched == 1676


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_matching_an_architecture_to_itself_keeps_the_width(architecture):
    cfg = reference_config(architecture, 64, 768)
    assert compute_matched_d_sae(cfg, cfg, 768) == 768


def test_matched_width_is_at_least_one():
    gated, relu = reference_config("gated", 32, 64), reference_config("relu", 32, 1)
    assert compute_matched_d_sae(gated, relu, 1) == 1


def error_of(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value).replace(str(path), "s.yaml")


@pytest.mark.parametrize(
    "sae, expected",
    [
        ("{architecture: gated, d_sae: 512, compute_matched_to: {architecture: relu}}",
         "error: s.yaml:2: sae: give one of d_sae, expansion_factor, compute_matched_to"),
        ("{architecture: gated, expansion_factor: 4, compute_matched_to: {architecture: relu}}",
         "error: s.yaml:2: sae: give one of d_sae, expansion_factor, compute_matched_to"),
        ("{architecture: gated, compute_matched_to: {architecture: reul}}",
         "error: s.yaml:2: sae.compute_matched_to.architecture: unknown architecture (allowed: "
         "batchtopk, gated, jumprelu, matryoshka, relu, topk) (got 'reul')"),
        ("{architecture: gated, compute_matched_to: {architecture: relu, d_sae: 8, "
         "expansion_factor: 2}}",
         "error: s.yaml:2: sae.compute_matched_to: give the reference's d_sae or "
         "expansion_factor, not both"),
        ("{architecture: gated, compute_matched_to: {architecture: relu, d_sae: 0}}",
         "error: s.yaml:2: sae.compute_matched_to.d_sae: Input should be greater than 0 (got 0)"),
    ],
)
def test_spec_errors(tmp_path, sae, expected):
    assert error_of(tmp_path, f"name: t\nsae: {sae}\n") == expected


SPEC = """\
name: matched
model: {name: saerun/tiny-stdlib}
site: {hook_name: blocks.1.hook_resid_post}
sae:
  architecture: gated
  compute_matched_to: {architecture: relu, expansion_factor: 24}
"""


def plan_of(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    spec, raw, lines, _ = load_spec(path)
    try:
        return build_plan(spec, raw, model_dims)
    except SpecError as err:  # the planner names key paths; the file's lines locate them
        raise locate(err, lines, str(path), spec) from None


def test_plan_resolves_the_matched_width_on_the_embedded_model(tmp_path):
    job = plan_of(tmp_path, SPEC).jobs[0]
    assert job.config.sae.d_in == 128  # the embedded model's width
    assert job.config.sae.d_sae == 1676 and job.config.sae.compute_matched_to is None
    assert job.provenance["sae.d_sae"] == (
        "derived: compute-matched to relu at d_sae 3072: 4,719,616 vs 4,718,592 FLOPs/token "
        "per step"
    )
    assert job.provenance["sae.compute_matched_to"] == "derived: resolved into d_sae"
    # The run id depends on the resolved width only, not on how it was asked for.
    spelled = SPEC.replace("compute_matched_to: {architecture: relu, expansion_factor: 24}",
                           "d_sae: 1676")
    assert plan_of(tmp_path, spelled, "b.yaml").jobs[0].run_id == job.run_id


def test_plan_reports_a_reference_that_cannot_exist(tmp_path):
    text = SPEC.replace("{architecture: relu, expansion_factor: 24}", "{architecture: topk, "
                        "d_sae: 8}")
    with pytest.raises(SpecError) as info:
        plan_of(tmp_path, text)
    assert str(info.value).replace(str(tmp_path / "s.yaml"), "s.yaml") == (
        "error: s.yaml:6: sae.compute_matched_to: the reference topk SAE at d_sae 8 is invalid: "
        "k (32) must be at most d_sae (8)"
    )


@pytest.mark.parametrize("data", [
    {"architecture": "relu"}, {"architecture": "relu", "ghost_grads": True},
    {"architecture": "relu", "decoder_mode": "unit_norm", "sparsity": {"penalty": "tanh"}},
    {"architecture": "gated"}, {"architecture": "gated", "decoder_mode": "norm_weighted"},
    {"architecture": "gated", "aux_loss": False}, {"architecture": "gated", "b_mag": "tied"},
    {"architecture": "jumprelu"}, {"architecture": "jumprelu", "sparsity_mode": "l0"},
    {"architecture": "jumprelu", "sparsity_mode": "target_l0", "target_l0": 20,
     "pre_act_coefficient": 0},
    {"architecture": "topk"}, {"architecture": "topk", "aux_k": 8, "aux_coefficient": 0},
    {"architecture": "topk", "decoder_mode": "norm_weighted"}, {"architecture": "batchtopk"},
    {"architecture": "matryoshka"},
    {"architecture": "matryoshka", "d_sae": 512, "prefix_widths": [8, 100, 512]},
])
def test_the_planners_flops_formula_is_the_measured_count(data):
    """saerun.flops (torch-free, what the planner stores with each job) counts what sae.cost
    measures with torch's FLOP counter, for every architecture and the options that add terms."""
    from pydantic import TypeAdapter

    from saerun import flops
    from saerun.spec import SAEConfig

    for d_in in (64, 96):
        cfg = TypeAdapter(SAEConfig).validate_python({"d_in": d_in, "d_sae": 512, **data})
        for d_sae in (512, 3000):
            assert flops.step_flops_per_token(cfg, d_sae, 4096) == step_flops_per_token(cfg, d_sae)


@pytest.mark.parametrize("d_out", [None, 24, "d_in"])
@pytest.mark.parametrize("data", [
    {"architecture": "relu"}, {"architecture": "relu", "ghost_grads": True},
    {"architecture": "gated"}, {"architecture": "gated", "aux_loss": False},
    {"architecture": "jumprelu"},
    {"architecture": "topk", "k": 4}, {"architecture": "topk", "k": 4, "multi_k": [1, 2, 4]},
    {"architecture": "batchtopk", "k": 4}, {"architecture": "matryoshka", "k": 4},
    {"architecture": "matryoshka", "k": 4, "prefix_widths": "every",
     "prefix_weights": "uniform"},
    {"architecture": "matryoshka", "k": 4, "prefix_widths": "every",
     "prefix_weights": "log_uniform"},
])
def test_the_planners_flops_formula_counts_a_real_step(data, d_out):
    """saerun.flops against a real CPU step's FLOP counter, SAE and transcoder (with and without
    a skip, as wide as its input or not): the terms the meta-device line cannot see too
    (multi_k's extra decodes, the every-prefix Gram products, quadratic in d_sae and partly per
    step, not per token)."""
    from pydantic import TypeAdapter

    from saerun import flops
    from saerun.spec import SAEConfig

    batch = 8
    for d_in, d_sae in ((16, 64), (32, 96)):
        for skip in (False, True) if d_out else (False,):
            cfg = TypeAdapter(SAEConfig).validate_python(
                {"d_in": d_in, "d_sae": d_sae, "skip_connection": skip,
                 "d_out": d_in if d_out == "d_in" else d_out,
                 "init_encoder_as_decoder_transpose": d_out is None, **data})
            counted = counted_on_cpu(derive.resolved_sae(cfg), batch)
            assert flops.step_flops_per_token(cfg, d_sae, batch) * batch == counted, (d_in, skip)
            if data.get("prefix_widths") != "every":  # sae.cost's meta-device line agrees
                assert step_flops_per_token(cfg, d_sae) * batch == counted, (d_in, skip)


def test_compute_matching_an_every_prefix_matryoshka_is_refused():
    from pydantic import TypeAdapter, ValidationError

    from saerun.spec import SAEConfig

    with pytest.raises(ValidationError, match="compute_matched_to needs a step cost linear"):
        TypeAdapter(SAEConfig).validate_python({
            "architecture": "matryoshka", "prefix_widths": "every", "prefix_weights": "uniform",
            "compute_matched_to": {"architecture": "relu", "d_sae": 512}})
