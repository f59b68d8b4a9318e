"""sparsify's (EleutherAI) TopK training step, timed. Run with bench/.venvs/sparsify.

Its `Trainer` only trains from a Hugging Face model's forward pass, so this drives
`SparseCoder` exactly as `Trainer.fit` does per step with its defaults (sparsify 1.3.3,
trainer.py): unit-norm the decoder, dead mask, total variance of the batch, forward (FVU +
auxk_alpha * AuxK), backward, the did-fire bookkeeping and the float() of the logged FVU,
projection of the decoder gradient, optimizer step + zero_grad, LR schedulers, dead counters.
The optimizer is fit's default, signum (ScheduleFreeWrapper(SignSGD)); `--optimizer adam`
gives its Adam path (torch.optim.Adam + linear warm-up schedule) instead.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

import _driver
import torch

AUXK_ALPHA = 1 / 32  # saerun's AuxK coefficient; fit's default 0 would skip the dead mask


def make_step(optimizer_name: str):
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(num_latents=_driver.D_SAE, k=_driver.K)
    sae = SparseCoder(_driver.D_IN, cfg, device="cpu", dtype=torch.float32)
    schedulers = []
    if optimizer_name == "adam":
        from transformers import get_linear_schedule_with_warmup

        lr = 2e-4 / (sae.num_latents / (2**14)) ** 0.5
        opt = torch.optim.Adam([dict(params=sae.parameters(), lr=lr)])
        schedulers = [get_linear_schedule_with_warmup(opt, 1000, 100_000)]
    else:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = 5e-3 / (sae.num_latents / (2**14)) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
        opt.train()
    dead_threshold = 10_000_000
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    state = {"step": 0}

    def step(x: torch.Tensor) -> None:
        if state["step"] == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = tokens_since_fired > dead_threshold
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # fit logs avg_fvu with a float() every step
        float(out.auxk_loss.detach())
        loss = out.fvu + AUXK_ALPHA * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            tokens_since_fired.add_(x.shape[0])
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        state["step"] += 1

    return step


if __name__ == "__main__":
    import sparsify  # noqa: F401  (imported once, before any fork)
    optimizer_name = "signum"
    if "--optimizer" in sys.argv:
        i = sys.argv.index("--optimizer")
        optimizer_name = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    _driver.main("sparsify", version("eai-sparsify"), {"topk"},
                 lambda arch: make_step(optimizer_name),
                 extra=lambda arch: {"optimizer": optimizer_name})
