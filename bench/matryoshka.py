"""Matryoshka with every prefix (prefix_widths every, `saerun/sae/prefix.py`) against the
default four prefixes, in one process, interleaved step by step so machine load cancels out:
one full training step (loss, backward, Adam, renorm) on the CPU's sparse kernels at d_in 512,
d_sae 4096, k 32, batch 4096 (wall-clock medians, and the process's CPU time, which a machine
shared with other work inflates less). Target (issue 20): every prefix at most 2x the
default's median step. Also the loss alone (forward + backward of the reconstruction term on
fixed codes) and the peak resident memory of the process. Prints JSON lines.

    python -m bench.matryoshka [--steps 9] [--threads 2]
                               [--d-in 512 --d-sae 4096 --k 32 --batch 4096]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from pydantic import TypeAdapter

from bench.kernels import full_step
from saerun.sae import build_sae
from saerun.spec import SAEConfig

D_IN, D_SAE, K, BATCH = 512, 4096, 32, 4096
VARIANTS = {
    "default": {},
    "every_uniform": {"prefix_widths": "every"},
    "every_log_uniform": {"prefix_widths": "every", "prefix_weights": "log_uniform"},
}


def build(extra: dict, d_in: int = D_IN, d_sae: int = D_SAE, k: int = K):
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": "matryoshka", "d_in": d_in, "d_sae": d_sae, "k": k, **extra})
    sae = build_sae(cfg, 0)
    return sae, torch.optim.Adam(sae.parameters(), lr=1e-5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.matryoshka")
    p.add_argument("--steps", type=int, default=9, help="steps per variant (the first untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-in", type=int, default=D_IN)
    p.add_argument("--d-sae", type=int, default=D_SAE)
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--batch", type=int, default=BATCH)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.d_in, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(args.d_sae, dtype=torch.bool)
    saes = {name: build(extra, args.d_in, args.d_sae, args.k) for name, extra in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in saes}
    cpu: dict[str, list[float]] = {name: [] for name in saes}
    recon: dict[str, list[float]] = {name: [] for name in saes}
    for i in range(args.steps):
        for name, (sae, opt) in saes.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            out = full_step(sae, opt, x, dead)
            if i:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            # The reconstruction term alone, on this step's codes.
            codes = out.f
            vals = codes.vals.clone().requires_grad_(True)
            w_dec = sae.train_decoder()
            start = time.perf_counter()
            term, _ = sae.sparse_reconstruction(x, x, codes.with_vals(vals), w_dec)
            term.backward()
            if i:
                recon[name].append(time.perf_counter() - start)
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    med_cpu = {name: sorted(v)[len(v) // 2] for name, v in cpu.items()}
    med_recon = {name: sorted(v)[len(v) // 2] for name, v in recon.items()}
    for name in saes:
        print(json.dumps({"variant": name, "step_s": round(med[name], 3),
                          "step_cpu_s": round(med_cpu[name], 3),
                          "recon_term_s": round(med_recon[name], 3),
                          "ratio_to_default": round(med[name] / med["default"], 2),
                          "cpu_ratio_to_default": round(med_cpu[name] / med_cpu["default"], 2),
                          "timed_steps": len(times[name]), "threads": args.threads}),
              flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb_all_variants": round(peak)}), flush=True)


if __name__ == "__main__":
    main()
