"""What the first latents of trained Matryoshka SAEs reconstruct on their own: the FVU of each
prefix dictionary (latents >= m zeroed after the eval-mode encode) at m = d/64, d/16, d/4, d, on
the first 4096 held-out tokens of the runs' own data. Not a stored metric (issue 20, item 1:
docs/FINDINGS.md's every-prefix section names the gap); a post-hoc check, printed only.

    PYTHONPATH=. python scripts/matryoshka_prefix_fvu.py REGISTRY RUN_ID [RUN_ID ...]
"""

from __future__ import annotations

import sys

import torch

from saerun.activations import LanguageModel, eval_token_batches
from saerun.metrics import MetricAccumulator
from saerun.posthoc import load_sae
from saerun.registry import Registry
from saerun.spec import RunConfig

TOKENS = 4096


def main(registry: str, run_ids: list[str]) -> None:
    torch.set_num_threads(1)
    with Registry(registry, must_exist=True) as reg:
        runs = [reg.get_run(i) for i in run_ids]
        folders = {r["run_id"]: reg.artifacts_dir(r["run_id"]) for r in runs if r}
        cfgs = {r["run_id"]: RunConfig.model_validate(r["config"]) for r in runs if r}
    first = next(iter(cfgs.values()))  # the runs share model, site and data (one spec)
    lm = LanguageModel.load(first.model.name, device="cpu")
    hook = first.site.hook_name
    acts = [lm.capture(b, [hook])[hook][~lm.special_mask(b)].float()
            for b in eval_token_batches(lm, first.data.model_copy(update={"eval_tokens": TOKENS}))]
    x = torch.cat(acts)
    for run_id, cfg in cfgs.items():
        sae = load_sae(cfg, folders[run_id])
        d = sae.d_sae
        widths = [w for w in (d // 64, d // 16, d // 4, d) if w >= 1]
        fvus = []
        with torch.no_grad():
            f = sae.encode(x)
            for m in widths:
                g = f.clone()
                g[:, m:] = 0
                acc = MetricAccumulator()
                acc.update_reconstruction(x, sae.decode(g), g)
                fvus.append(f"{acc.result()['fvu']:.4f}")
        scheme = (f"every/{cfg.sae.prefix_weights}" if cfg.sae.prefix_widths == "every"
                  else f"widths {cfg.sae.prefix_widths}")
        print(f"{run_id[:10]} k={cfg.sae.k} {scheme}: FVU at m={widths}: {', '.join(fvus)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
