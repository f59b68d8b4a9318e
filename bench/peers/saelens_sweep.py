"""SAELens's usual way to sweep: one `LanguageModelSAETrainingRunner` run per SAE (8 runs, each
loading the model and streaming its own activations), wandb off, outputs saved as usual.

Offline on a local GPT-2 folder: transformer-lens 3.9's `HookedTransformer.from_pretrained`
maps every name through `get_official_model_name`, which rejects paths although the config and
weight loaders below it accept a local folder; so that one lookup is made to pass a path
through unchanged, and SAELens's own `load_model` does the rest. (transformer-lens 3.9 also
reads `GPT2Config.n_ctx`, gone from the transformers 5 it is installed with; restored as an
alias of n_positions. This breaks loading *any* GPT-2 through HookedTransformer in this
environment, hub name or not.) The corpus is the same JSONL,
loaded once with `datasets` and passed as `override_dataset` (SAELens tokenizes it itself).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import _sweep_args  # noqa: E402
import torch  # noqa: E402


def allow_local_paths() -> None:
    import transformer_lens.loading_from_pretrained as loading
    from transformers import GPT2Config

    # transformer-lens 3.9 reads GPT2Config.n_ctx, an alias transformers 5 (which the same
    # SAELens install pulls) no longer defines: give it back as n_positions, its meaning.
    if not hasattr(GPT2Config, "n_ctx"):
        GPT2Config.n_ctx = property(lambda self: self.n_positions)

    official = loading.get_official_model_name

    def official_or_path(name: str) -> str:
        return name if Path(name).is_dir() else official(name)

    loading.get_official_model_name = official_or_path


def main() -> None:
    args = _sweep_args.parse_args()
    torch.set_num_threads(2)
    import datasets
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        StandardTrainingSAEConfig,
    )

    allow_local_paths()
    dataset = datasets.load_dataset("json", data_files=args.corpus, split="train")
    d_in = None
    runs = []
    for i, coefficient in enumerate(args.coefficients):
        t = time.perf_counter()
        if d_in is None:
            import json
            d_in = json.loads((Path(args.model) / "config.json").read_text())["n_embd"]
        cfg = LanguageModelSAERunnerConfig(
            sae=StandardTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, l1_coefficient=coefficient),
            model_name=args.model,
            hook_name=f"blocks.{args.layer}.hook_resid_post",
            dataset_path=args.corpus,
            is_dataset_tokenized=False,
            streaming=False,
            context_size=args.context,
            training_tokens=args.tokens,
            train_batch_size_tokens=args.batch,
            # 512 sequences of context 128 = 65,536 tokens: saerun's shuffle buffer.
            n_batches_in_buffer=65_536 // args.context,
            lr=args.lr,
            lr_end=args.lr,
            device="cpu",
            dtype="float32",
            logger=LoggingConfig(log_to_wandb=False),
            output_path=str(Path(args.out) / f"sae_{i}"),
            checkpoint_path=str(Path(args.out) / f"ckpt_{i}"),
            seed=i,
        )
        LanguageModelSAETrainingRunner(cfg, override_dataset=dataset).run()
        runs.append(round(time.perf_counter() - t, 2))
    _sweep_args.emit("sae_lens", version("sae-lens"), T0, run_s=runs)


if __name__ == "__main__":
    main()
