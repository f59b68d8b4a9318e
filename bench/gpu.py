"""The GPU check: saerun's training path on one GPU, measured, in one call of under 8 minutes.

    bash bench/gpu_wheels.sh                               # here, once: the wheels to carry
    python bench/gpu.py --wheels bench/.gpu-wheels         # on the GPU machine (no network)
    python bench/gpu.py --smoke                            # on a CPU: the same code, tiny sizes

Two models — the embedded tiny-stdlib and a randomly initialised GPT-2-small-sized model built
from a local config (12 layers, d_model 768, the embedded tokenizer; nothing downloaded) — with
1 and 8 SAEs at d_sae 24,576, fp32 against bf16, torch.compile off and on. Each case plans a
real spec (so every value is resolved as `saerun SPEC` resolves it), loads the model, and times
the two halves of a training step separately, with a device sync around each: the language-model
batch (forward pass to the site, special tokens dropped, shuffle) and the SAE steps. Prints one
JSON object per case (and all of them at the end): tokens/s, the fraction of the time spent in
the LM forward, peak GPU memory against the planner's estimate, and the achieved TFLOP/s of the
SAE steps (saerun.flops's count) against the chip's bf16 dense peak.

The GPU machines lent to this project have torch, transformers, safetensors, rich and pyyaml
but no package index: `--wheels DIR` unpacks saerun's other dependencies from DIR onto sys.path
(bench/gpu_wheels.sh downloads them), and the modules transformer-lens's bridge imports but
saerun's path never uses (datasets, pyarrow, pandas, sentencepiece, protobuf) are stubbed when
they are missing.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak of the chips this project is lent (NVIDIA's datasheets, without sparsity).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
OPTIONAL = ("datasets", "pyarrow", "pandas", "sentencepiece", "google.protobuf", "wandb")


def unpack_wheels(folder: Path, into: Path) -> None:
    """Every wheel of `folder` unzipped into `into`, which goes first on sys.path (a wheel is a
    zip of the installed tree; compiled modules cannot be imported from the zip itself)."""
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(into)
    sys.path.insert(0, str(into))


class _Stub(types.ModuleType):
    """A module that exists so that importing it works; using anything in it raises."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Stub(f"{self.__name__}.{name}")
        sub.__path__ = []
        setattr(self, name, sub)
        return sub

    def __call__(self, *args: object, **kwargs: object) -> Any:
        raise RuntimeError(f"{self.__name__} is a stub in bench/gpu.py (not installed here)")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, name: str, path: object, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if any(name == r or name.startswith(r + ".") for r in self.roots):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def stub_missing(names: tuple[str, ...] = OPTIONAL) -> list[str]:
    """Stub the optional modules that are not installed; returns their names."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # a parent package is missing
            found = None
        if found is None:
            missing.append(name)
    if missing:
        sys.meta_path.insert(0, _StubFinder(set(missing)))
    return missing


def gpt2_small_folder(into: Path, seed: int = 0) -> Path:
    """A randomly initialised GPT-2-small-sized model (12 x 768, 12 heads, context 1024) with
    the embedded model's tokenizer, saved as a local Hugging Face folder."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    embedded = ROOT / "saerun" / "embedded" / "tiny-stdlib"
    vocab = json.loads((embedded / "config.json").read_text())["vocab_size"]
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=vocab)
    GPT2LMHeadModel(config).save_pretrained(into, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded / name, into / name)
    return into


def spec_text(name: str, model: str, hook: str, n_saes: int, d_sae: int, arch: str,
              precision: str, compile_step: bool, tokens: int, batch_tokens: int) -> str:
    """A spec of `n_saes` SAEs that differ only in their seed (one activation group)."""
    sae = f"{{architecture: {arch}, d_sae: {d_sae}" + (", k: 64}" if arch != "relu" else "}")
    return (
        f"name: {name}\nmodel: {{name: '{model}'}}\nsite: {{hook_name: {hook}}}\n"
        f"data: {{context_size: 128, train_tokens: {tokens}, eval_tokens: 1024, "
        f"shuffle_buffer_tokens: {4 * batch_tokens}, lm_batch_sequences: 32}}\n"
        f"sae: {sae}\n"
        f"train: {{batch_tokens: {batch_tokens}, precision: {precision}, "
        f"compile: {str(compile_step).lower()}}}\n"
        f"sweep: {{seeds: {list(range(n_saes))}}}\n"
    )


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(case: dict[str, Any], folder: Path, steps: int, warmup: int) -> dict[str, Any]:
    import torch

    from saerun import flops
    from saerun.activations import LanguageModel, estimate_norm_scale
    from saerun.execute import pick_device
    from saerun.runner import prepare
    from saerun.stream import ActivationStream
    from saerun.train import Trainer

    path = folder / f"{case['name']}.yaml"
    path.write_text(spec_text(**case), encoding="utf-8")
    plan = prepare(path, offline_dims=False).plan
    jobs = plan.jobs
    first = jobs[0].config
    device = pick_device(first.model.device)
    estimate = getattr(plan, "device_jobs", None)
    estimate_gb = float(estimate[0].memory_gb) if estimate else None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dtype = getattr(torch, first.model.dtype)
    lm = LanguageModel.load(first.model.name, device=device, dtype=dtype)
    hook = first.site.hook_name
    scale = estimate_norm_scale(lm, first.data, [hook], n_tokens=8192)[hook]
    trainers = [Trainer.create(j.run_id, j.config, device) for j in jobs]
    stream = iter(ActivationStream(lm, first.data, [hook], first.train.batch_tokens, device))
    t_lm = t_sae = 0.0
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        batch = next(stream)[hook] * scale
        sync(device)
        t1 = time.perf_counter()
        for tr in trainers:
            tr.train_step(batch)
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            t_lm, t_sae = t_lm + (t1 - t0), t_sae + (t2 - t1)
    tokens = steps * first.train.batch_tokens
    step_flops = sum(flops.step_flops_per_token(j.config.sae, j.config.sae.widths[1],
                                                j.config.train.batch_tokens) for j in jobs)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    achieved = step_flops * tokens / t_sae / 1e12
    return {
        **{k: case[k] for k in ("name", "model", "hook", "n_saes", "d_sae", "arch", "precision",
                                "compile_step")},
        "device": name,
        "tokens_per_s": tokens / (t_lm + t_sae),
        "lm_fraction": t_lm / (t_lm + t_sae),
        "sae_tokens_per_s": tokens / t_sae,
        "peak_gpu_gb": peak_gb,
        "planner_estimate_gb": estimate_gb,
        "estimate_over_peak": (estimate_gb / peak_gb) if estimate_gb and peak_gb else None,
        "sae_tflops": achieved,
        "bf16_peak_tflops": peak_tflops,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops else None,
        "final_loss": trainers[0].curve[-1]["loss"] if trainers[0].curve else None,
    }


def cases(smoke: bool, gpt2: Path | None) -> list[dict[str, Any]]:
    embedded = "saerun/tiny-stdlib"
    if smoke:  # the same code paths on a CPU in seconds
        base = dict(model=embedded, hook="blocks.1.hook_resid_post", d_sae=512, arch="topk",
                    tokens=8 * 1024, batch_tokens=1024)
        grid = [(1, "fp32", False), (2, "bf16", False), (1, "bf16", True)]
        return [dict(base, name=f"smoke-{n}-{p}-{'c' if c else 'e'}", n_saes=n, precision=p,
                     compile_step=c) for n, p, c in grid]
    out = []
    models = [(embedded, "blocks.2.hook_resid_post", "tiny")]
    if gpt2 is not None:
        models.append((str(gpt2), "blocks.6.hook_resid_post", "gpt2s"))
    for model, hook, short in models:
        for n in (1, 8):
            for precision, compile_step in (("fp32", False), ("bf16", False), ("bf16", True)):
                out.append(dict(
                    name=f"{short}-{n}-{precision}-{'compiled' if compile_step else 'eager'}",
                    model=model, hook=hook, n_saes=n, d_sae=24_576, arch="topk",
                    precision=precision, compile_step=compile_step, tokens=4096 * 64,
                    batch_tokens=4096))
    # Compiling 8 SAEs can take minutes: every eager figure first, so the budget cuts those last.
    return sorted(out, key=lambda c: c["compile_step"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", type=Path, help="unpack these wheels onto sys.path first")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the same code on a CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new case after this many seconds (default 420)")
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="saerun-gpu-"))
    if args.wheels:
        unpack_wheels(args.wheels, tmp / "site")
    sys.path.insert(0, str(ROOT))
    stubbed = stub_missing()
    import torch

    steps = args.steps or (2 if args.smoke else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    header = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "stubbed": stubbed, "steps": steps, "warmup": warmup}
    print(json.dumps(header), flush=True)
    gpt2 = None if args.smoke else gpt2_small_folder(tmp / "gpt2-small-random")
    results: list[dict[str, Any]] = []
    for case in cases(args.smoke, gpt2):
        if time.perf_counter() - started > args.budget_s:
            results.append({"name": case["name"], "skipped": "time budget spent"})
            continue
        try:
            row = run_case(case, tmp, steps, warmup)
        except Exception as err:  # one failing case must not hide the others' figures
            row = {"name": case["name"], "error": f"{type(err).__name__}: {err}"}
        row["elapsed_s"] = round(time.perf_counter() - started, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    summary = {**header, "results": results, "total_s": time.perf_counter() - started}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(json.dumps(summary), flush=True)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
