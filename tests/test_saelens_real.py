"""saerun and the real SAELens (sae-lens 6.54.12 in bench's SAELens virtualenv), both ways.

1. Exports SAELens uses: a tiny spec trains every architecture; each export gets a
   check.safetensors from saerun's own SAE on held-out activations (and the eval tokens with the
   registry's delta_lm_loss), and `bench/saelens_check.py` (run in the SAELens venv) loads it:
   metadata kept, `add_sae` attaches, codes and reconstructions equal, spliced CE equal.
2. Outside SAEs on the frontier: the SAELens venv WRITES folders with the real `save_model`
   (every architecture, a TopK with rescale_acts_by_decoder_norm and non-unit decoder rows);
   `sae: {from_pretrained: ...}` evaluates them; their L0 equals SAELens's own encode of the
   same activations (the same checker).

Skipped, with the reason, where the SAELens venv is absent (`python -m bench --setup sae_lens`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import saerun

ROOT = Path(__file__).resolve().parents[1]
# bench's SAELens venv, or another interpreter with sae-lens 6.x (SAERUN_SAELENS_PYTHON)
SAELENS_PYTHON = Path(os.environ.get("SAERUN_SAELENS_PYTHON")
                      or ROOT / "bench" / ".venvs" / "sae_lens" / "bin" / "python")
CHECKER = ROOT / "bench" / "saelens_check.py"
HOOK = "blocks.1.hook_resid_post"
DATA = ("{context_size: 64, train_tokens: 8192, eval_tokens: 1024, shuffle_buffer_tokens: 4096,"
        " lm_batch_sequences: 16}")
TRAIN_SPEC = f"""\
name: interop
model: {{name: saerun/tiny-stdlib}}
site: {{hook_name: {HOOK}}}
data: {DATA}
sae: {{architecture: relu, d_sae: 256}}
train: {{lr: 5e-3, batch_tokens: 512}}
sweep:
  zip:
    sae:
      - {{architecture: relu, d_sae: 256}}
      - {{architecture: gated, d_sae: 256}}
      - {{architecture: jumprelu, d_sae: 256}}
      - {{architecture: topk, d_sae: 256, k: 8}}
      - {{architecture: batchtopk, d_sae: 256, k: 8}}
      - {{architecture: matryoshka, d_sae: 256, k: 8}}
"""
# Run in the SAELens venv: one folder per architecture, random weights, d_in 128 (the embedded
# model's width), written by SAELens's own save_model.
WRITE_WITH_SAELENS = """
import sys, torch
from sae_lens import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE,
                      StandardSAEConfig, TopKSAE, TopKSAEConfig)
out, hook = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
kinds = {"standard": (StandardSAE, StandardSAEConfig(d_in=128, d_sae=192)),
         "gated": (GatedSAE, GatedSAEConfig(d_in=128, d_sae=192)),
         "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=128, d_sae=192)),
         "topk": (TopKSAE, TopKSAEConfig(d_in=128, d_sae=192, k=12)),
         "topk_rescaled": (TopKSAE, TopKSAEConfig(d_in=128, d_sae=192, k=12,
                                                   rescale_acts_by_decoder_norm=True))}
for name, (cls, cfg) in kinds.items():
    cfg.metadata.hook_name, cfg.metadata.model_name = hook, "saerun/tiny-stdlib"
    sae = cls(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1)
        if name == "jumprelu":
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
        if name.startswith("topk"):  # decoder rows of norms 0.2 .. 5
            sae.W_dec.mul_(torch.logspace(-0.7, 0.7, 192)[torch.randperm(192)][:, None]
                           / sae.W_dec.norm(dim=1, keepdim=True))
    sae.save_model(f"{out}/{name}")
print("ok")
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SAELENS_PYTHON.exists(),
                       reason="no SAELens virtualenv (python -m bench --setup sae_lens, or set "
                       "SAERUN_SAELENS_PYTHON)"),
]


def held_out(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(eval tokens [b, T], their activations at the counted positions [n, d_in]): what the
    registry's metrics were computed on."""
    from saerun.activations import LanguageModel, eval_token_batches
    from saerun.spec import RunConfig

    cfg = RunConfig.model_validate(config)
    lm = LanguageModel.load(cfg.model.name)
    tokens = torch.cat(eval_token_batches(lm, cfg.data))
    keep = ~lm.special_mask(tokens)
    with torch.no_grad():
        acts = lm.capture(tokens, [cfg.site.hook_name])[cfg.site.hook_name]
    return tokens, acts[keep].float()


def write_check(folder: Path, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor,
                tokens: torch.Tensor, metrics: dict, y_hat: torch.Tensor | None = None) -> None:
    """check.safetensors for bench/saelens_check.py; y_hat: a transcoder's whole output."""
    from safetensors.torch import save_file

    tensors = {"x": x.contiguous(), "f": f.contiguous(), "x_hat": x_hat.contiguous(),
               "tokens": tokens.contiguous(),
               "delta_lm_loss": torch.tensor([metrics["delta_lm_loss"]], dtype=torch.float64)}
    if y_hat is not None:
        tensors["y_hat"] = y_hat.contiguous()
    save_file(tensors, str(folder / "check.safetensors"))


def run_checker(folders: list[Path]) -> dict[str, dict]:
    done = subprocess.run([str(SAELENS_PYTHON), str(CHECKER), *map(str, folders)],
                          capture_output=True, text=True, timeout=900)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(folders), done.stderr[-3000:]
    return {r["folder"]: r for r in results}


def runs_of(tmp_path: Path) -> list[dict]:
    listed = json.loads(saerun("ls", "--json", cwd=tmp_path).stdout)
    return [json.loads(saerun("show", r["run_id"], "--json", cwd=tmp_path).stdout)
            for r in listed]


def test_every_export_loads_in_saelens_and_attaches(tmp_path):
    from saerun import artifacts
    from saerun.sae import build_sae
    from saerun.spec import RunConfig

    (tmp_path / "interop.yaml").write_text(TRAIN_SPEC)
    done = saerun("interop.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = runs_of(tmp_path)
    assert len(runs) == 6
    tokens, x = held_out(runs[0]["config"])
    folders = []
    for run in runs:
        folder = Path(run["artifacts"])
        sae = build_sae(RunConfig.model_validate(run["config"]).sae, seed=1).eval()
        sae.load_state_dict(artifacts.read_weights(folder))  # the export: raw activations in
        with torch.no_grad():
            f = sae.encode(x)
            write_check(folder, x, f, sae.decode(f), tokens, run["metrics"])
        folders.append(folder)
    results = run_checker(folders)
    for run, folder in zip(runs, folders, strict=True):
        result = results[str(folder)]
        arch = run["config"]["sae"]["architecture"]
        assert result["ok"], (arch, result["problems"], result)
        assert result["metadata"]["hook_name"] == HOOK
        assert result["metadata"]["model_name"] == "saerun/tiny-stdlib"
        assert result["add_sae"] == "attached"
        assert result["l0_saelens"] == result["l0_saerun"]
        assert abs(result["l0_saerun"] - run["metrics"]["l0"]) < 1e-4 * run["metrics"]["l0"]


def test_saelens_written_folders_are_evaluated_as_runs(tmp_path):
    from saerun import imported, saelens

    made = tmp_path / "published"
    done = subprocess.run([str(SAELENS_PYTHON), "-c", WRITE_WITH_SAELENS, str(made), HOOK],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["standard", "gated", "jumprelu", "topk", "topk_rescaled"]
    folders_listed = ", ".join(f"published/{n}" for n in names)
    (tmp_path / "outside.yaml").write_text(
        f"name: outside\nmodel: {{name: saerun/tiny-stdlib}}\nsite: {{hook_name: {HOOK}}}\n"
        f"data: {DATA}\nsae: {{from_pretrained: published/standard}}\n"
        f"sweep: {{grid: {{sae.from_pretrained: [{folders_listed}]}}}}\n")
    done = saerun("outside.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = runs_of(tmp_path)
    assert len(runs) == 5 and all(r["status"] == "done" for r in runs)
    tokens, x = held_out(runs[0]["config"])
    folders = []
    for run in runs:
        assert run["config"]["sae"]["from_pretrained"].startswith(str(made))
        assert run["metrics"]["l0"] > 0 and run["metrics"]["fvu"] > 0
        folder = Path(run["config"]["sae"]["from_pretrained"])
        sae = imported.load_sae(saelens.read_folder(folder))
        with torch.no_grad():
            f = sae.encode(x)
            write_check(folder, x, f, sae.decode(f), tokens, run["metrics"])
        folders.append(folder)
    results = run_checker(folders)
    for run, folder in zip(runs, folders, strict=True):
        result = results[str(folder)]
        assert result["ok"], (folder.name, result)
        assert result["add_sae"] == "attached"
        # SAELens's own encode of the same activations has saerun's codes, hence its L0.
        assert result["encode_max_abs_diff"] == 0, (folder.name, result)
        assert abs(result["l0_saelens"] - run["metrics"]["l0"]) < 1e-5 * run["metrics"]["l0"]


TRANSCODER_SPEC = f"""\
name: transcoders
model: {{name: saerun/tiny-stdlib}}
site: {{hook_name: blocks.1.hook_mlp_in, hook_name_out: blocks.1.hook_mlp_out}}
data: {DATA}
sae: {{architecture: relu, d_sae: 256}}
train: {{lr: 5e-3, batch_tokens: 512}}
sweep:
  zip:
    sae:
      - {{architecture: relu, d_sae: 256, skip_connection: true}}
      - {{architecture: relu, d_sae: 256}}
      - {{architecture: jumprelu, d_sae: 256, skip_connection: true}}
      - {{architecture: batchtopk, d_sae: 256, k: 8}}
      - {{architecture: topk, d_sae: 256, k: 8}}
"""


def test_transcoder_exports_load_in_saelens_as_transcoders(tmp_path):
    """Each transcoder export loads as SAELens's transcoder kind with metadata.hook_name_out;
    SAELens's decode of its encode (plus the skip) equals saerun's output, exactly where the
    maths is SAELens's (TopK: with top-k applied to SAELens's encode, which has none)."""
    from saerun import artifacts
    from saerun.sae import build_sae
    from saerun.spec import RunConfig

    (tmp_path / "tc.yaml").write_text(TRANSCODER_SPEC)
    done = saerun("tc.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = runs_of(tmp_path)
    assert len(runs) == 5
    tokens, x = held_out(runs[0]["config"])  # at IN, the transcoders' input
    folders = []
    for run in runs:
        folder = Path(run["artifacts"])
        sae = build_sae(RunConfig.model_validate(run["config"]).sae, seed=1).eval()
        sae.load_state_dict(artifacts.read_weights(folder))
        with torch.no_grad():
            f = sae.encode(x)
            write_check(folder, x, f, sae.decode(f), tokens, run["metrics"], y_hat=sae(x))
        folders.append(folder)
    results = run_checker(folders)
    kinds = {}
    for run, folder in zip(runs, folders, strict=True):
        result = results[str(folder)]
        sae_cfg = run["config"]["sae"]
        kinds[(sae_cfg["architecture"], sae_cfg["skip_connection"])] = result["architecture"]
        assert result["ok"], (sae_cfg["architecture"], result["problems"], result)
        assert result["metadata"]["hook_name"] == "blocks.1.hook_mlp_in"
        assert result["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
        assert result["forward_max_abs_diff"] <= 1e-5
        assert result["add_sae"] == "attached"
    assert kinds == {("relu", True): "skip_transcoder", ("relu", False): "transcoder",
                     ("jumprelu", True): "jumprelu_skip_transcoder",
                     ("batchtopk", False): "jumprelu_transcoder",
                     ("topk", False): "jumprelu_transcoder"}


WRITE_TRANSCODERS_WITH_SAELENS = """
import sys, torch
from sae_lens import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                      JumpReLUTranscoderConfig, SkipTranscoder, SkipTranscoderConfig, Transcoder,
                      TranscoderConfig)
out = sys.argv[1]
torch.manual_seed(0)
shape = dict(d_in=128, d_sae=192, d_out=128, apply_b_dec_to_input=False)
kinds = {"transcoder": (Transcoder, TranscoderConfig(**shape)),
         "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig(**shape)),
         "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig(**shape)),
         "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder,
                                      JumpReLUSkipTranscoderConfig(**shape))}
for name, (cls, cfg) in kinds.items():
    cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.1.hook_mlp_in", "saerun/tiny-stdlib"
    cfg.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    sae = cls(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1)
        if "jumprelu" in name:
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
        if "skip" in name:
            sae.W_skip.copy_(torch.randn_like(sae.W_skip) * 0.05)
    sae.save_model(f"{out}/{name}")
print("ok")
"""


def test_saelens_written_transcoders_are_evaluated_as_transcoders(tmp_path):
    """The four transcoder kinds as the real SAELens writes them, evaluated through
    sae: {from_pretrained} at blocks.1's MLP: SAELens's own encode of the same activations has
    saerun's codes (so its L0) and its forward (skip included) saerun's output."""
    from saerun import imported, saelens
    from saerun.evaluate import output

    made = tmp_path / "published"
    done = subprocess.run([str(SAELENS_PYTHON), "-c", WRITE_TRANSCODERS_WITH_SAELENS, str(made)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]
    listed = ", ".join(f"published/{n}" for n in names)
    (tmp_path / "outside.yaml").write_text(
        "name: outside-tc\nmodel: {name: saerun/tiny-stdlib}\n"
        "site: {hook_name: blocks.1.hook_mlp_in, hook_name_out: blocks.1.hook_mlp_out}\n"
        f"data: {DATA}\nsae: {{from_pretrained: published/transcoder}}\n"
        f"sweep: {{grid: {{sae.from_pretrained: [{listed}]}}}}\n")
    done = saerun("outside.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = runs_of(tmp_path)
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
    tokens, x = held_out(runs[0]["config"])  # at IN, the transcoders' input
    folders = []
    for run in runs:
        assert run["config"]["sae"]["d_out"] == 128
        assert run["metrics"]["l0"] > 0 and run["metrics"]["fvu"] > 0
        folder = Path(run["config"]["sae"]["from_pretrained"])
        sae = imported.load_sae(saelens.read_folder(folder))
        with torch.no_grad():
            f = sae.encode(x)
            write_check(folder, x, f, sae.decode(f), tokens, run["metrics"],
                        y_hat=output(sae, x, f))
        folders.append(folder)
    results = run_checker(folders)
    for run, folder in zip(runs, folders, strict=True):
        result = results[str(folder)]
        assert result["ok"], (folder.name, result["problems"], result)
        assert result["architecture"] == folder.name
        assert result["encode_max_abs_diff"] == 0, (folder.name, result)
        assert result["forward_max_abs_diff"] <= 1e-5, (folder.name, result)
        assert abs(result["l0_saelens"] - run["metrics"]["l0"]) < 1e-5 * run["metrics"]["l0"]
