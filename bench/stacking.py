"""Would stacking a sweep's same-shape SAEs into batched tensors speed up the CPU step?

`python -m bench.stacking`: the forward and backward of 8 ReLU SAEs (the sweep workload's
shape, d_in 128 -> d_sae 1024, batch 4096): as 8 separate products per step; as stacked
[8, ...] batched products; and with the 8 encoders side by side as one wide product (decoders
batched). Interleaved in one process, medians of 7. On this machine's 2 cores both stacked
forms were the slower ones (see BENCHMARKS.md), which is why saerun steps the SAEs of a group
one after the other.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

N_SAES, BATCH, D_IN, D_SAE, ROUNDS = 8, 4096, 128, 1024, 7


def main() -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, D_IN, generator=g)
    enc = torch.randn(N_SAES, D_IN, D_SAE, generator=g) / D_IN**0.5
    dec = torch.randn(N_SAES, D_SAE, D_IN, generator=g) / D_SAE**0.5
    separate = [(e.clone().requires_grad_(), d.clone().requires_grad_())
                for e, d in zip(enc, dec, strict=True)]
    stacked = enc.clone().requires_grad_(), dec.clone().requires_grad_()
    # the encoders side by side as one wide [d_in, 8 * d_sae] product, decoders batched
    wide = (enc.permute(1, 0, 2).reshape(D_IN, N_SAES * D_SAE).clone().requires_grad_(),
            dec.clone().requires_grad_())

    def one_by_one() -> None:
        for w_enc, w_dec in separate:
            x_hat = torch.relu(x @ w_enc) @ w_dec
            (x_hat - x).pow(2).sum().backward()

    def batched() -> None:
        w_enc, w_dec = stacked
        x_hat = torch.bmm(torch.relu(torch.matmul(x, w_enc)), w_dec)
        (x_hat - x).pow(2).sum().backward()

    def wide_encoder() -> None:
        w_enc, w_dec = wide
        f = torch.relu(x @ w_enc).view(BATCH, N_SAES, D_SAE).transpose(0, 1)
        x_hat = torch.bmm(f, w_dec)
        (x_hat - x).pow(2).sum().backward()

    times: dict[str, list[float]] = {"separate": [], "stacked": [], "wide": []}
    for _ in range(ROUNDS):
        for name, step in (("separate", one_by_one), ("stacked", batched),
                           ("wide", wide_encoder)):
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"n_saes": N_SAES, "shape": [BATCH, D_IN, D_SAE],
                      "separate_ms": round(1e3 * med["separate"], 1),
                      "stacked_ms": round(1e3 * med["stacked"], 1),
                      "wide_encoder_ms": round(1e3 * med["wide"], 1),
                      "stacked_over_separate": round(med["stacked"] / med["separate"], 2),
                      "wide_over_separate": round(med["wide"] / med["separate"], 2)}))


if __name__ == "__main__":
    main()
