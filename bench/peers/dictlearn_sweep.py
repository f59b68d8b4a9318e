"""dictionary_learning's way to sweep: `trainSAE` with a list of 8 StandardTrainer configs that
all step on every batch of ONE shared `ActivationBuffer` (nnsight `LanguageModel` on the local
GPT-2 folder, block `layer`'s output = resid_post). Final SAEs saved as usual. The text stream
cycles over the corpus (the buffer truncates each document to the context length)."""

from __future__ import annotations

import time

T0 = time.perf_counter()

import itertools  # noqa: E402
import json  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import _sweep_args  # noqa: E402
import torch  # noqa: E402


def texts(corpus: str):
    docs = [json.loads(line)["text"] for line in Path(corpus).read_text().splitlines() if line]
    return itertools.cycle([d for d in docs if d.strip()])


def main() -> None:
    args = _sweep_args.parse_args()
    torch.set_num_threads(2)
    from dictionary_learning import ActivationBuffer
    from dictionary_learning.trainers import StandardTrainer
    from dictionary_learning.training import trainSAE
    from nnsight import LanguageModel

    model = LanguageModel(args.model, device_map="cpu", dispatch=True)
    d_in = model.config.n_embd
    submodule = model.transformer.h[args.layer]
    buffer = ActivationBuffer(
        texts(args.corpus), model, submodule, d_submodule=d_in, io="out",
        n_ctxs=65_536 // args.context,  # 65,536 tokens: saerun's shuffle buffer
        ctx_len=args.context, refresh_batch_size=32, out_batch_size=args.batch, device="cpu",
    )
    steps = args.tokens // args.batch
    warm = max(1, steps // 20)
    configs = [
        dict(trainer=StandardTrainer, steps=steps, activation_dim=d_in, dict_size=args.d_sae,
             layer=args.layer, lm_name=args.model, lr=args.lr, l1_penalty=c,
             warmup_steps=warm, sparsity_warmup_steps=warm, seed=i, device="cpu",
             wandb_name=f"bench_{i}")
        for i, c in enumerate(args.coefficients)
    ]
    trainSAE(data=buffer, trainer_configs=configs, steps=steps, save_dir=args.out, device="cpu")
    _sweep_args.emit("dictionary_learning", version("dictionary-learning"), T0, steps=steps)


if __name__ == "__main__":
    main()
