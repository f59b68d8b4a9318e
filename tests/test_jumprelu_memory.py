"""JumpReLU's threshold estimator with memory (`sae.kde_half_life_tokens`, issue 20 item 2):
exact against the single-batch estimator (half life 0), a two-step example by hand, dense =
sparse, the planner's derived decay, and resume == uninterrupted (bitwise)."""

from __future__ import annotations

import pytest
import torch

from saerun import artifacts
from saerun.sae import StepInfo, build_sae
from saerun.sae.jumprelu import JumpReLUSAE
from saerun.spec import RunConfig
from saerun.spec.architectures import JumpReLUSAEConfig
from saerun.spec.derive import default_kde_decay, sae_derivations, v1_identity
from saerun.train import Trainer, train_group


def jumprelu(sparse: bool = False, **kw) -> JumpReLUSAE:
    cfg = JumpReLUSAEConfig(architecture="jumprelu", d_in=8, d_sae=16, init_threshold=0.3,
                            bandwidth=0.5, **kw)
    sae = build_sae(cfg, 0)
    assert isinstance(sae, JumpReLUSAE)
    sae.sparse_kernels = sparse
    return sae


def info(d_sae: int = 16, dead: bool = False) -> StepInfo:
    return StepInfo(1.0, torch.full((d_sae,), dead))


def trained(sae: JumpReLUSAE, steps: int = 6, dead: bool = True) -> JumpReLUSAE:
    """A few Adam steps on fixed random batches (dead latents: the pre-activation loss is on)."""
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(64, 8, generator=g)
        opt.zero_grad()
        sae.loss(x, info(dead=dead)).loss.backward()
        opt.step()
    return sae


@pytest.mark.parametrize("mode", ["tanh", "l0"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_half_life_zero_is_the_single_batch_estimator_exactly(mode, sparse):
    off = trained(jumprelu(sparse, sparsity_mode=mode))
    zero = trained(jumprelu(sparse, sparsity_mode=mode, kde_half_life_tokens=0.0,
                            kde_decay=0.0))
    for (name, p), q in zip(off.named_parameters(), zero.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert float(zero.kde_den) == 1.0  # d = 0: the state is this batch's alone


def test_two_steps_by_hand():
    """d_in 1, two latents at theta 1, W_dec 0 (no reconstruction term), l0 mode, lambda 0.5,
    eps 1/8, batches of 2 tokens: the L0 term's gradient is -(lambda / eps) n_near / B =
    -2 n_near per latent, n_near the tokens with |pre - 1| < 1/16. Batch 1 (x = 1, 0.2; pre =
    x W_enc, W_enc = [1, 2]): n_near = [1, 0]; batch 2 (x = 1.02, 0.51): [1, 1]. With d = 1/2,
    step 2's gradient is (d g1 + g2) / (d + 1) = ([-1, 0] + [-2, -2]) / 1.5 = [-2, -4/3]."""
    cfg = JumpReLUSAEConfig(architecture="jumprelu", d_in=1, d_sae=2, init_threshold=1.0,
                            bandwidth=0.125, sparsity_mode="l0", coefficient=0.5,
                            pre_act_coefficient=0.0, kde_half_life_tokens=2.0, kde_decay=0.5)
    sae = build_sae(cfg, 0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 2.0]]))
        sae.W_dec.zero_()
    seen = []
    for x in ([[1.0], [0.2]], [[1.02], [0.51]]):
        sae.zero_grad()
        sae.loss(torch.tensor(x), info(2)).loss.backward()
        seen.append(sae.log_threshold.grad.clone())  # theta = 1: d/dlog theta = d/dtheta
    assert seen[0].tolist() == [-2.0, 0.0]  # step 1: N = g1, D = 1
    assert torch.equal(seen[1], torch.tensor([-3.0, -2.0]) / 1.5)
    assert torch.equal(sae.kde_num, torch.tensor([-3.0, -2.0]))
    assert float(sae.kde_den) == 1.5


def test_memory_matches_a_naive_running_average_of_single_batch_gradients():
    """With decay d, every step's theta gradient is sum_s d^(t-s) g_s / sum_s d^(t-s), g_s the
    single-batch estimator's gradient at the same parameters (computed from a copy with the
    memory off, which never steps)."""
    decay = 0.7
    mem = jumprelu(kde_half_life_tokens=1.0, kde_decay=decay)
    ref = jumprelu()
    g = torch.Generator().manual_seed(2)
    history: list[torch.Tensor] = []
    for _ in range(4):
        x = torch.randn(64, 8, generator=g)
        for sae in (mem, ref):
            sae.zero_grad()
            sae.loss(x, info()).loss.backward()
        theta = ref.threshold.detach()
        history.append(ref.log_threshold.grad / theta)
        weights = [decay ** (len(history) - 1 - s) for s in range(len(history))]
        naive = sum(w * h for w, h in zip(weights, history, strict=True)) / sum(weights)
        assert torch.allclose(mem.log_threshold.grad / theta, naive, rtol=1e-5, atol=1e-7)
        # only theta's gradient changes
        assert torch.equal(mem.W_enc.grad, ref.W_enc.grad)


def test_dense_and_sparse_paths_agree_with_memory():
    dense = trained(jumprelu(False, kde_half_life_tokens=1.0, kde_decay=0.6))
    sparse = trained(jumprelu(True, kde_half_life_tokens=1.0, kde_decay=0.6))
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    assert torch.allclose(dense.kde_num, sparse.kde_num, rtol=1e-4, atol=1e-6)


def test_the_state_exists_only_with_the_option_and_resampling_restarts_it():
    assert set(jumprelu().state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"}
    sae = trained(jumprelu(kde_half_life_tokens=1.0, kde_decay=0.5), steps=2)
    assert {"kde_num", "kde_den"} <= set(sae.state_dict())
    assert "kde_num" not in sae.export_tensors()  # SAELens's JumpReLU has no such tensor
    before = sae.kde_num.clone()
    idx = torch.tensor([0, 3])
    sae.reinit_latents(idx, torch.randn(2, 8), torch.randn(2, 8))
    assert torch.equal(sae.kde_num[idx], torch.zeros(2))
    assert torch.equal(sae.kde_num[4:], before[4:])


def test_an_unresolved_decay_is_refused():
    with pytest.raises(ValueError, match="kde_decay"):
        jumprelu(kde_half_life_tokens=4096.0)
    with pytest.raises(ValueError, match="kde_half_life_tokens"):
        JumpReLUSAEConfig(architecture="jumprelu", kde_decay=0.5)


def test_the_decay_is_derived_from_the_half_life_in_tokens():
    assert default_kde_decay(16384, 4096)[0] == 0.5 ** 0.25
    assert default_kde_decay(0, 4096)[0] == 0.0
    cfg = JumpReLUSAEConfig(architecture="jumprelu", d_in=8, d_sae=16, kde_half_life_tokens=128)
    assert ("sae", "kde_decay") not in sae_derivations(cfg)  # no batch size: the planner
    value, how = sae_derivations(cfg, batch_tokens=64)[("sae", "kde_decay")]
    assert value == 0.5 ** 0.5 and "64 / 128" in how


def test_the_planner_resolves_the_decay_with_provenance():
    from saerun.runner import prepare

    jobs = prepare("specs/findings/ideas-jumprelu-memory.yaml").plan.jobs
    on = [j for j in jobs if j.config.sae.kde_half_life_tokens is not None]
    off = [j for j in jobs if j.config.sae.kde_half_life_tokens is None]
    assert len(on) == len(off) == 3
    assert all(j.config.sae.kde_decay == 0.5 ** (4096 / 16384) for j in on)
    assert all(j.config.sae.kde_decay is None for j in off)
    assert on[0].provenance["sae.kde_decay"].startswith("derived: 0.5 ** (train.batch_tokens")
    # off: the fields leave the run id's view (existing ids unchanged)
    view = v1_identity(off[0].config.model_dump(mode="json"))["sae"]
    assert "kde_half_life_tokens" not in view and "kde_decay" not in view


def config(**sae) -> RunConfig:
    return RunConfig.model_validate({
        "seed": 0, "model": {}, "site": {"hook_name": "h"}, "data": {"train_tokens": 64 * 20},
        "sae": {"architecture": "jumprelu", "d_in": 8, "d_sae": 32, "init_threshold": 0.3,
                "bandwidth": 0.5, "b_dec_init": "mean", **sae},
        "train": {"batch_tokens": 64, "lr": 1e-2, "checkpoint_every_tokens": 64 * 7,
                  "log_every_steps": 5},
        "eval": {},
    })


def test_resume_from_checkpoint_is_bit_identical_with_memory(tmp_path):
    """As tests/test_train.py's resume test, with the estimator's state in the checkpoint."""
    g = torch.Generator().manual_seed(0)
    data = [{"h": torch.randn(64, 8, generator=g) * 3} for _ in range(20)]
    sae_cfg = {"kde_half_life_tokens": 128.0, "kde_decay": 0.5 ** 0.5}

    def run(trainers, start=0, stop=20, on_checkpoint=lambda tr: None):
        train_group(trainers, data[start:stop], start, {"h": 0.5}, on_checkpoint)

    full = Trainer.create("a" * 16, config(**sae_cfg), "cpu")
    run([full])
    first = Trainer.create("a" * 16, config(**sae_cfg), "cpu")
    run([first], stop=9, on_checkpoint=lambda tr: artifacts.save_checkpoint(tmp_path, *tr.state()))
    tensors, meta = artifacts.load_checkpoint(tmp_path)
    assert meta["step"] == 7 and "sae.kde_num" in tensors
    resumed = Trainer.create("a" * 16, config(**sae_cfg), "cpu")
    resumed.load_state(tensors, meta)
    run([resumed], start=resumed.step)
    for (name, p), q in zip(full.sae.named_parameters(), resumed.sae.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(full.sae.kde_num, resumed.sae.kde_num)
    assert torch.equal(full.sae.kde_den, resumed.sae.kde_den)
    # and the memory changed the run: the single-batch estimator's differs
    plain = Trainer.create("a" * 16, config(), "cpu")
    run([plain])
    assert not torch.equal(plain.sae.log_threshold, full.sae.log_threshold)


# -- the findings section, on synthetic rows ---------------------------------------------------


def _rows(fvu_on: float) -> list[dict]:
    rows = []
    for i, coef in enumerate((0.2, 0.4, 0.8)):
        for half_life, fvu in ((None, 0.10), (16384.0, fvu_on)):
            rows.append({"run_id": f"{i}{'m' if half_life else 'o'}" + "0" * 14,
                         "sae.coefficient": coef, "sae.kde_half_life_tokens": half_life,
                         "l0": 40.0 / (i + 1), "fvu": fvu * (i + 1),
                         "ce_loss_recovered": 0.9 - 0.02 * i, "dead_fraction": 0.05,
                         "train.lr": 1e-3, "data.train_tokens": 500_000,
                         "train.batch_tokens": 4096, "sae.init_threshold": 0.001})
    return rows


@pytest.mark.parametrize(("fvu_on", "verdict"), [(0.10, "**Nil**"), (0.0999, "**Nil**"),
                                                 (0.09, "**Better**"), (0.12, "**Worse**")])
def test_section_says_what_the_numbers_say(fvu_on, verdict):
    from saerun.report.findings import _cmp_words
    from saerun.report.ideas_jumprelu import SPECS, section

    rows = _rows(fvu_on)
    plans = {SPECS[0]: [r["run_id"] for r in rows]}
    md = "\n".join(section(rows, plans, {}, _cmp_words))
    assert md.startswith("## 12. JumpReLU's threshold estimator with memory")
    assert verdict in md
    if verdict == "**Nil**":  # the bound: 0.001 exp(1e-3 * 122); no frontier paragraph
        assert "in 122 steps at lr 0.001 theta can go from 0.001 to at most about 0.0011" in md
        assert "frontier" not in md.split("Memory against none")[1]
    assert "| 0.2 | 16,384 tokens | 40.0 |" in md and "`0m00000000`" in md
    assert "Not trained yet" in "\n".join(section([], plans, {}, _cmp_words))


@pytest.mark.slow
def test_compiled_steps_with_memory_equal_eager():
    """train.compile: the memory's in-place update in the backward survives torch.compile."""
    g = torch.Generator().manual_seed(0)
    data = [{"h": torch.randn(64, 8, generator=g) * 3} for _ in range(6)]

    def run(compile_: bool) -> Trainer:
        cfg = config(kde_half_life_tokens=128.0, kde_decay=0.5 ** 0.5)
        cfg = RunConfig.model_validate({**cfg.model_dump(), "train": {
            **cfg.train.model_dump(), "compile": compile_, "log_every_steps": 1}})
        tr = Trainer.create("a" * 16, cfg, "cpu")
        tr.sae.sparse_kernels = False  # eager on the path the compiled SAE takes
        train_group([tr], data, 0, {"h": 1.0}, lambda t: None)
        return tr

    eager, compiled = run(False), run(True)
    assert float(compiled.sae.kde_den) == float(eager.sae.kde_den) == pytest.approx(
        sum(0.5 ** (s / 2) for s in range(6)))
    assert torch.allclose(compiled.sae.kde_num, eager.sae.kde_num, rtol=1e-4, atol=1e-6)
    assert torch.allclose(compiled.sae.log_threshold, eager.sae.log_threshold, atol=1e-5)


def test_an_exported_memory_sae_loads_into_a_fresh_one(tmp_path):
    """The export leaves the estimator's memory out (training state): a fresh SAE built from
    the same config still loads the exported weights (post-hoc analyses do)."""
    from pydantic import TypeAdapter

    from saerun.sae import build_sae
    from saerun.spec import SAEConfig

    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": "jumprelu", "d_in": 4, "d_sae": 8, "kde_half_life_tokens": 64,
         "kde_decay": 0.5})
    sae = build_sae(cfg, seed=0)
    exported = {k: v for k, v in sae.state_dict().items() if not k.startswith("kde_")}
    fresh = build_sae(cfg, seed=1)
    fresh.load_state_dict(exported)
    assert torch.equal(fresh.log_threshold, sae.log_threshold)
    assert torch.equal(fresh.kde_num, torch.zeros(8)) and float(fresh.kde_den) == 0.0
