"""Mixed precision and compilation of the SAE step (train.precision, train.compile): bf16 trains
every architecture close to fp32, keeps master weights, Adam state and thresholds fp32, metrics
and norm estimates accumulate in float64, precision enters the run id, compiled equals eager."""

from __future__ import annotations

import pytest
import torch

from saerun import activations
from saerun.metrics import MetricAccumulator
from saerun.plan import run_id_of
from saerun.sae import SAE_CLASSES
from saerun.spec import DataConfig, RunConfig
from saerun.spec.derive import resolved_sae
from saerun.train import Trainer, train_group

D_IN, D_SAE, BATCH, STEPS = 32, 512, 128, 40


def config(architecture: str, **train: object) -> RunConfig:
    sae: dict[str, object] = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE}
    if architecture in ("relu", "gated"):
        sae["sparsity"] = {"coefficient": 0.1}
    if architecture in ("topk", "batchtopk", "matryoshka"):
        sae["k"] = 8
    c = RunConfig.model_validate({
        "seed": 0, "model": {}, "site": {"hook_name": "h"},
        "data": {"train_tokens": BATCH * STEPS}, "sae": sae,
        "train": {"batch_tokens": BATCH, "lr": 3e-3, "log_every_steps": 10, **train},
        "eval": {},
    })
    return c.model_copy(update={"sae": resolved_sae(c.sae)})


def batches(n: int = STEPS) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(64, D_IN, generator=g)  # sparse codes over 64 directions: learnable
    out = []
    for _ in range(n):
        codes = torch.rand(BATCH, 64, generator=g) * (torch.rand(BATCH, 64, generator=g) < 0.1)
        out.append({"h": codes @ basis + 0.05 * torch.randn(BATCH, D_IN, generator=g)})
    return out


def trained(architecture: str, **train: object) -> Trainer:
    tr = Trainer.create("a" * 16, config(architecture, **train), "cpu")
    train_group([tr], batches(), 0, {"h": 1.0}, lambda t: None)
    assert tr.done and tr.failure is None
    return tr


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_bf16_trains_every_architecture_within_10_percent_of_fp32(architecture):
    fp32, bf16 = trained(architecture), trained(architecture, precision="bf16")
    # Tolerance: the final curve's MSE within 10% (relative) of fp32's after 40 steps.
    assert bf16.curve[-1]["mse"] == pytest.approx(fp32.curve[-1]["mse"], rel=0.10)
    assert bf16.curve[-1]["mse"] < bf16.curve[0]["mse"]  # it learned
    # Master weights, their gradients' Adam moments and every threshold stay fp32.
    for name, p in bf16.sae.named_parameters():
        assert p.dtype == torch.float32, name
    for state in bf16.optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    for name, buf in bf16.sae.named_buffers():
        assert buf.dtype == torch.float32, name


@pytest.mark.parametrize("architecture", sorted(SAE_CLASSES))
def test_the_bf16_loss_reductions_are_fp32_and_its_matmuls_bf16(architecture):
    tr = Trainer.create("a" * 16, config(architecture, precision="bf16"), "cpu")
    x = batches(1)[0]["h"]
    tr.sae.init_b_dec(x)
    from saerun.sae import StepInfo

    info = StepInfo(1.0, torch.zeros(D_SAE, dtype=torch.bool))
    for sparse_kernels in (True, False):
        tr.sae.sparse_kernels = sparse_kernels
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tr.sae.loss(x, info)
            assert (x @ tr.sae.W_enc).dtype == torch.bfloat16  # autocast is really on
        assert out.loss.dtype == out.mse.dtype == out.l0.dtype == torch.float32
        out.loss.backward()
        assert all(p.grad is None or p.grad.dtype == torch.float32
                   for p in tr.sae.parameters())


def test_jumprelu_and_batchtopk_thresholds_move_under_bf16():
    """SAELens 6.50: bf16 rounding froze JumpReLU's threshold updates. theta stays fp32 here
    and moves as far as in fp32 (within 10%)."""
    moved = {}
    for precision in ("fp32", "bf16"):
        tr = trained("jumprelu", precision=precision)
        start = torch.full((D_SAE,), config("jumprelu").sae.init_threshold).log()  # type: ignore[union-attr]
        moved[precision] = (tr.sae.log_threshold.detach() - start).abs().mean().item()
    assert moved["fp32"] > 0
    assert moved["bf16"] == pytest.approx(moved["fp32"], rel=0.10)
    thresholds = {p: trained("batchtopk", precision=p).sae.threshold for p in ("fp32", "bf16")}
    assert thresholds["bf16"].dtype == torch.float32 and (thresholds["bf16"] > 0).all()
    assert thresholds["bf16"][0].item() == pytest.approx(thresholds["fp32"][0].item(), rel=0.10)


def test_metrics_from_bf16_activations_equal_float64_references():
    g = torch.Generator().manual_seed(1)
    # A large mean beside a small spread: where fp32 sums of squares lose digits.
    xs = [(torch.randn(300, 16, generator=g) + 40).bfloat16() for _ in range(4)]
    xhats = [(x.float() + 0.3 * torch.randn(300, 16, generator=g)).bfloat16() for x in xs]
    fs = [torch.relu(torch.randn(300, 64, generator=g)).bfloat16() for _ in xs]
    acc = MetricAccumulator()
    for x, x_hat, f in zip(xs, xhats, fs, strict=True):
        acc.update_reconstruction(x, x_hat, f)
    got = acc.result()
    x, x_hat, f = (torch.cat(t).double() for t in (xs, xhats, fs))
    sse = (x - x_hat).pow(2).sum()
    fvu = sse / (x - x.mean(0)).pow(2).sum()
    cos = ((x * x_hat).sum(-1) / (x.norm(dim=-1) * x_hat.norm(dim=-1))).mean()
    assert got["fvu"] == pytest.approx(fvu.item(), rel=1e-12)
    assert got["mse"] == pytest.approx((sse / x.shape[0]).item(), rel=1e-12)
    assert got["cosine_similarity"] == pytest.approx(cos.item(), rel=1e-12)
    assert got["shrinkage"] == pytest.approx(
        (x_hat.pow(2).sum() / (x * x_hat).sum()).item(), rel=1e-12)
    assert got["l0"] == (f > 0).sum().item() / x.shape[0]


def test_the_norm_estimate_from_bf16_activations_equals_a_float64_reference(monkeypatch):
    g = torch.Generator().manual_seed(2)
    acts = [{"h": (torch.randn(1000, 64, generator=g) * 3 + 5).bfloat16()} for _ in range(8)]
    kept = [(a, torch.zeros(1000, dtype=torch.bool)) for a in acts]
    monkeypatch.setattr(activations, "_kept_batches", lambda lm, data, hooks, **kw: iter(kept))
    no_model = type("NoModel", (), {})()  # the stream head is kept per model object
    scale = activations.estimate_norm_scale(
        no_model, DataConfig(exclude_outlier_norm=None), ["h"], n_tokens=8000)
    norms = torch.cat([a["h"] for a in acts]).double().norm(dim=-1)
    assert scale["h"] == pytest.approx(64**0.5 / norms.mean().item(), rel=1e-6)


def test_precision_enters_the_run_id_and_fp32_keeps_the_v1_id():
    base = config("relu")
    ids = {p: run_id_of(config("relu", precision=p)) for p in ("fp32", "bf16")}
    assert ids["fp32"] == run_id_of(base) != ids["bf16"]
    assert run_id_of(config("relu", compile=True)) != ids["fp32"]
    assert run_id_of(config("relu", tf32=False)) != ids["fp32"]
    assert run_id_of(config("relu", device="cuda:1")) != ids["fp32"]
    assert run_id_of(config("relu", overlap=True)) == ids["fp32"]  # bit-identical: no new id


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk"])
def test_compiled_steps_equal_eager(architecture):
    """A few steps of the compiled loss against eager (the dense reference path): weights
    within 1e-4 (relative to their scale), losses within 1e-4 relative."""
    short = batches(6)

    def run(compile_: bool) -> Trainer:
        tr = Trainer.create("a" * 16, config(architecture, compile=compile_,
                                             log_every_steps=1), "cpu")
        tr.sae.sparse_kernels = False  # eager on the path the compiled SAE takes
        train_group([tr], short, 0, {"h": 1.0}, lambda t: None)
        return tr

    eager, compiled = run(False), run(True)
    assert compiled.step == eager.step == 6
    for a, b in zip(eager.curve, compiled.curve, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    for (name, p), q in zip(eager.sae.named_parameters(), compiled.sae.parameters(),
                            strict=True):
        assert (p - q).abs().max().item() <= 1e-4 * (1 + p.abs().max().item()), name
