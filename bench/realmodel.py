"""Where a run's time goes on the real model (issue 18): SmolLM2-135M at blocks.15.hook_resid_post.

Measures each phase's rate in one process, on the same tokens, then composes the split of the
issue's run (4 TopK SAEs, d_sae 4608, k 32, 300k training tokens, 8,192 held-out tokens, CE
metrics on) the way the code before the fixes ran it and the way it runs now:
- tokenisation: one tokenizer call per document (before) against the batch call (now);
- the norm estimate: a separate LM pass over 32,768 tokens (before) against the stream head's
  batches, replayed for training (now: no extra pass);
- LM forward to the deepest site (layer 15 of 30), the SAE steps, and evaluation (a clean
  forward, two ablations and one patched forward per SAE over the held-out tokens), the same
  both ways.

    python -m bench.realmodel [--tokens 8192] [--json OUT]

Needs the real model (bash scripts/setup.sh --real-model). Prints one JSON line and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from pydantic import TypeAdapter

from saerun.activations import LanguageModel, token_batches
from saerun.data import iter_documents
from saerun.sae import StepInfo, build_sae
from saerun.spec import DataConfig, SAEConfig

MODEL, HOOK = "saerun/smollm2-135m", "blocks.15.hook_resid_post"
RUN = {"saes": 4, "train_tokens": 300_000, "eval_tokens": 8_192, "norm_tokens": 32_768,
       "d_sae": 4608, "k": 32, "batch": 4096}


def _timed(fn, repeat: int = 3) -> float:
    """Median seconds of `repeat` calls (the first call warms up and is dropped)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(tokens: int) -> dict[str, float]:
    lm = LanguageModel.load(MODEL)
    data = DataConfig(context_size=128, train_tokens=tokens, eval_tokens=tokens)
    docs = [d for _, d in zip(range(400), iter_documents(data, "train"), strict=False)
            if isinstance(d, str)]
    n_doc_tokens = sum(len(ids) for ids in lm.tokenizer(docs, add_special_tokens=False)
                       ["input_ids"])
    per_doc = _timed(lambda: [lm.tokenizer(d, add_special_tokens=False) for d in docs], 2)
    batched = _timed(lambda: [lm.tokenizer(docs[i:i + 64], add_special_tokens=False)
                              for i in range(0, len(docs), 64)], 2)
    rows = torch.cat(list(token_batches(lm, data, "eval")))[: max(1, tokens // 128)]
    n = rows.numel()
    to_site = _timed(lambda: lm.capture(rows, [HOOK]), 1)
    full = _timed(lambda: lm.forward_with_capture(rows, [HOOK]), 1)
    patched = _timed(lambda: lm.logits_patched(rows, HOOK, lambda a: a), 1)
    cfg = TypeAdapter(SAEConfig).validate_python(
        {"architecture": "topk", "d_in": lm.d_model, "d_sae": RUN["d_sae"], "k": RUN["k"]})
    sae = build_sae(cfg, 0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(RUN["batch"], lm.d_model)
    info = StepInfo(sparsity_scale=1.0, dead_mask=torch.zeros(RUN["d_sae"], dtype=torch.bool))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        sae.loss(x, info).loss.backward()
        opt.step()

    sae_step = _timed(step, 3)
    return {"tokenize_per_doc_tok_s": n_doc_tokens / per_doc,
            "tokenize_batched_tok_s": n_doc_tokens / batched,
            "lm_to_site_tok_s": n / to_site, "lm_full_tok_s": n / full,
            "lm_patched_tok_s": n / patched, "sae_step_tok_s": RUN["batch"] / sae_step,
            "tokens": float(n), "threads": float(torch.get_num_threads())}


def split(rates: dict[str, float]) -> dict[str, dict[str, float]]:
    """Seconds per phase of the issue's run, before the fixes and now."""
    train, ev, saes = RUN["train_tokens"], RUN["eval_tokens"], RUN["saes"]
    common = {
        "LM forward to the site (training stream)": train / rates["lm_to_site_tok_s"],
        "SAE steps": saes * train / rates["sae_step_tok_s"],
        "evaluation (clean + 2 ablations + 1 patched forward per SAE)":
            ev / rates["lm_full_tok_s"] + (2 + saes) * ev / rates["lm_patched_tok_s"],
    }
    before = {"tokenisation": train / rates["tokenize_per_doc_tok_s"],
              "norm estimate (separate LM pass)": RUN["norm_tokens"] / rates["lm_to_site_tok_s"],
              **common}
    now = {"tokenisation": train / rates["tokenize_batched_tok_s"],
           "norm estimate (separate LM pass)": 0.0, **common}
    return {"before": before, "now": now}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rates = measure(args.tokens)
    parts = split(rates)
    out = {"rates": rates, "split_seconds": parts}
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    print("| phase | before (s) | now (s) |\n|---|---:|---:|")
    for phase in parts["before"]:
        print(f"| {phase} | {parts['before'][phase]:.0f} | {parts['now'][phase]:.0f} |")
    total = {k: sum(v.values()) for k, v in parts.items()}
    print(f"| total | {total['before']:.0f} | {total['now']:.0f} |")


if __name__ == "__main__":
    main()
