"""Build the embedded default once: corpus, tokenizer and a tiny GPT-2, all offline.

    .venv/bin/python scripts/build_embedded.py [--minutes 10]

Writes (and the repo commits):
    saerun/embedded/corpus/stdlib.jsonl     cleaned Python-stdlib source + docstrings, chunked
    saerun/embedded/tiny-stdlib/            GPT-2 config, model.safetensors, tokenizer, BUILD.json

The corpus is this interpreter's standard library minus codec tables (encodings/), tests and
generated tables: text every machine with Python has, so the build needs no download. The
train/eval split is the one `saerun.data` uses, so BUILD.json's held-out loss is honest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMBEDDED = ROOT / "saerun" / "embedded"
CORPUS = EMBEDDED / "corpus" / "stdlib.jsonl"
MODEL_DIR = EMBEDDED / "tiny-stdlib"
SKIP_DIRS = {"encodings", "test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__",
             "pydoc_data", "ensurepip", "turtledemo", "tkinter", "config-3.11-x86_64-linux-gnu"}
SKIP_FILES = {"unicodedata.py", "_pydecimal.py", "pydoc.py", "_aix_support.py"}
CHUNK_CHARS = 4000
MAX_FILE_BYTES = 200_000
MAX_FILE_CHARS = 12_000  # per file, so every module contributes, not just a-m


def build_corpus() -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    records = []
    size = 0
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if set(rel.parts[:-1]) & SKIP_DIRS or rel.name in SKIP_FILES:
            continue
        raw = path.read_bytes()
        if len(raw) > MAX_FILE_BYTES:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        # Long runs of table data or escapes teach the model nothing about language.
        if text.count("\\x") > 200 or text.count("0x") > 400:
            continue
        text = text.replace("\t", "    ")[:MAX_FILE_CHARS]
        lines = text.splitlines(keepends=True)
        chunk = ""
        for line in lines:
            if len(chunk) + len(line) > CHUNK_CHARS and chunk.strip():
                records.append({"text": chunk, "source": str(rel)})
                size += len(chunk)
                chunk = ""
            chunk += line
        if chunk.strip():
            records.append({"text": chunk, "source": str(rel)})
            size += len(chunk)
    seen: set[str] = set()  # identical chunks (boilerplate) once only
    records = [r for r in records if not (r["text"] in seen or seen.add(r["text"]))]
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    with open(CORPUS, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    return len(records)


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=128,
    )
    fast.save_pretrained(MODEL_DIR)
    return fast


def pack(ids_per_doc: list[list[int]], eos: int, ctx: int) -> list[list[int]]:
    """Documents joined by EOS, cut into rows of ctx-1 tokens, each row prefixed with BOS."""
    stream: list[int] = []
    for ids in ids_per_doc:
        stream.extend(ids)
        stream.append(eos)
    n = ctx - 1
    return [[eos] + stream[i : i + n] for i in range(0, len(stream) - n + 1, n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--skip-corpus", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from saerun import data as data_mod
    from saerun.spec import DataConfig

    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)
    if not args.skip_corpus:
        print(f"corpus: {build_corpus()} chunks -> {CORPUS}")
    cfg = DataConfig()
    train_docs = list(data_mod.iter_documents(cfg, "train"))
    eval_docs = list(data_mod.iter_documents(cfg, "eval"))
    print(f"documents: {len(train_docs)} train, {len(eval_docs)} eval")

    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(train_docs, args.vocab)
    eos = tok.eos_token_id
    ctx = 128
    train_rows = torch.tensor(pack([tok.encode(t) for t in train_docs], eos, ctx))
    eval_rows = torch.tensor(pack([tok.encode(t) for t in eval_docs], eos, ctx))
    print(f"tokens: {train_rows.numel():,} train, {eval_rows.numel():,} eval")

    config = GPT2Config(
        vocab_size=len(tok), n_positions=ctx, n_embd=128, n_layer=4, n_head=4,
        bos_token_id=eos, eos_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, betas=(0.9, 0.98))
    batch = 32
    budget = args.minutes * 60
    step_time_guess = 0.25
    total_steps = max(100, int(budget / step_time_guess))
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    step = 0
    model.train()
    while step < total_steps and time.time() - t0 < budget:
        idx = torch.randint(0, len(train_rows), (batch,), generator=g)
        warm = min(1.0, (step + 1) / 100)
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
        for group in opt.param_groups:
            group["lr"] = 2e-3 * warm * (0.1 + 0.9 * decay)
        out = model(train_rows[idx], labels=train_rows[idx])
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step == 20:  # re-estimate how many steps fit the budget, so the cosine ends on time
            total_steps = int(budget / ((time.time() - t0) / 20))
        if step % 200 == 0:
            print(f"step {step}/{total_steps} loss {out.loss.item():.3f} {time.time() - t0:.0f}s")

    model.eval()
    with torch.no_grad():
        losses = [model(eval_rows[i : i + 64], labels=eval_rows[i : i + 64]).loss.item()
                  for i in range(0, len(eval_rows), 64)]
    model_ce = sum(losses) / len(losses)
    # Unigram baseline: token frequencies fit on train, scored on held-out tokens (add-one).
    counts = Counter(train_rows[:, 1:].flatten().tolist())
    total = sum(counts.values()) + len(tok)
    held = eval_rows[:, 1:].flatten().tolist()
    unigram_ce = -sum(math.log((counts[t] + 1) / total) for t in held) / len(held)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    build = {
        "corpus": str(CORPUS.relative_to(ROOT)),
        "train_tokens": train_rows.numel(),
        "eval_tokens": eval_rows.numel(),
        "steps": step,
        "batch_sequences": batch,
        "context_size": ctx,
        "minutes": round((time.time() - t0) / 60, 2),
        "heldout_ce_nats_per_token": round(model_ce, 4),
        "unigram_ce_nats_per_token": round(unigram_ce, 4),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    (MODEL_DIR / "BUILD.json").write_text(json.dumps(build, indent=2) + "\n")
    print(json.dumps(build, indent=2))


if __name__ == "__main__":
    main()
