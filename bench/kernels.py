"""saerun's sparse kernels against its own dense reference (`sparse_kernels = False`), in one
process, interleaved step by step so machine load cancels out: one full step (loss, backward,
Adam, renorm) at d_in 512, d_sae 4096, batch 4096; relu / gated / jumprelu with biases (or
thresholds) set so ~1 % / ~3 % of latents fire, a trained SAE's density. Prints JSON lines.

    python -m bench.kernels
"""

import json
import time

import torch
from pydantic import TypeAdapter

from saerun.sae import StepInfo, build_sae
from saerun.spec import SAEConfig

CASES = [("topk", None), ("batchtopk", None), ("matryoshka", None), ("relu", 0.01),
         ("relu", 0.03), ("gated", 0.01), ("jumprelu", 0.01)]
STEPS = 7  # the first of each is a warm-up


def full_step(sae, opt, x: torch.Tensor, dead: torch.Tensor):
    """One whole training step as the trainer takes it (loss, backward, Adam, renorm, the
    fired-latent read); returns the loss output."""
    out = sae.loss(x, StepInfo(1.0, dead))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    sae.after_step()
    out.fired()
    return out


def build(arch: str, sparse: bool, density: float | None, x: torch.Tensor):
    kw: dict = {"k": 32} if arch in ("topk", "batchtopk", "matryoshka") else {}
    if arch == "jumprelu":  # the peers' objective (bench/peers/saerun_step.py)
        kw.update(sparsity_mode="l0", pre_act_coefficient=0.0)
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": arch, "d_in": 512, "d_sae": 4096, **kw})
    sae = build_sae(cfg, 0)
    sae.sparse_kernels = sparse
    if density is not None:
        with torch.no_grad():
            pre = (x - sae.b_dec) @ sae.W_enc
            q = float(torch.quantile(pre.flatten()[::97], 1 - density))
            if arch == "jumprelu":
                sae.log_threshold.fill_(torch.tensor(q).log().item())
            else:
                sae.b_enc.fill_(-q)
    return sae, torch.optim.Adam(sae.parameters(), lr=1e-5)


def main() -> None:
    torch.set_num_threads(2)
    x = torch.randn(4096, 512, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(4096, dtype=torch.bool)
    for arch, density in CASES:
        pair = {sparse: build(arch, sparse, density, x) for sparse in (True, False)}
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(STEPS):
            for sparse, (sae, opt) in pair.items():
                start = time.perf_counter()
                out = full_step(sae, opt, x, dead)
                if i:
                    times[sparse].append(time.perf_counter() - start)
        med = {sparse: sorted(v)[len(v) // 2] for sparse, v in times.items()}
        print(json.dumps({"architecture": arch, "density": density,
                          "l0": round(float(out.l0), 1), "sparse_s": round(med[True], 3),
                          "dense_s": round(med[False], 3),
                          "speedup": round(med[False] / med[True], 2)}), flush=True)


if __name__ == "__main__":
    main()
