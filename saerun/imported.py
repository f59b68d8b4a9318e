"""Evaluating SAEs trained elsewhere (`sae: {from_pretrained: FOLDER}`) as registered runs.

No training and no checkpoint: each SAE is read from its SAELens folder (`saelens.load_sae`,
whose content must still hash to what the planner saw), evaluated with every metric of the
spec on its held-out tokens beside the language model (`evaluate.evaluate_group`, exactly as a
trained SAE is) and registered. Its run folder gets the run's standalone spec, the folder's
cfg.json and weights (so the run exports like any other) and the feature densities.
`execute.run_group` hands a group of imported runs here (the planner never groups them with
runs that train).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from saerun import artifacts, saelens
from saerun.activations import LanguageModel, eval_token_batches, outlier_limits
from saerun.errors import SaerunError
from saerun.evaluate import evaluate_group
from saerun.plan import Job
from saerun.registry import OWNER
from saerun.spec import RunConfig, export_spec
from saerun.spec.architectures import ImportedSAEConfig


class ImportSink(Protocol):
    """What evaluating imported runs records (the registry, or a cluster job's run folders)."""

    def artifacts_dir(self, run_id: str) -> Path: ...

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    def mark_running(self, run_id: str, environment: dict[str, Any], data_fingerprint: str,
                     owner: str | None = None) -> bool: ...

    def mark_done(self, run_id: str, metrics: dict[str, float], train_seconds: float,
                  eval_seconds: float, tokens_trained: int, owner: str | None = None) -> bool: ...

    def mark_failed(self, run_id: str, error: str, owner: str | None = None) -> bool: ...


def is_imported(config: RunConfig) -> bool:
    return isinstance(config.sae, ImportedSAEConfig)


def folder_info(config: RunConfig) -> saelens.FolderSAE:
    sae = config.sae
    if not isinstance(sae, ImportedSAEConfig):
        raise TypeError("not an imported SAE")
    return saelens.read_folder(sae.from_pretrained, sae.norm_scaling_factor)


def evaluate_imported(reg: ImportSink, jobs: list[Job], lm: LanguageModel, env: dict[str, Any],
                      fingerprint: str) -> dict[str, str]:
    """Evaluate and register a group of claimed imported runs; returns {run_id: reason} of the
    ones whose folder could not be read (marked failed)."""
    first = jobs[0].config
    failures: dict[str, str] = {}
    saes: dict[str, tuple[SAELensSAE, str, str | None]] = {}  # (sae, hook, target or None)
    for job in jobs:
        reg.mark_running(job.run_id, env, fingerprint, OWNER)
        run = reg.get_run(job.run_id)
        if run is None:
            raise SaerunError(f"run {job.run_id[:10]} vanished from the registry while running")
        folder = reg.artifacts_dir(job.run_id)
        artifacts.write_text(folder / "run.yaml", export_spec(run))
        planned = job.config.sae
        try:
            info = folder_info(job.config)
            if not isinstance(planned, ImportedSAEConfig) or \
                    info.content_sha256 != planned.content_sha256:
                raise SaerunError(f"{info.folder} changed since it was planned (content "
                                  f"{info.content_sha256[:12]}, planned "
                                  f"{str(getattr(planned, 'content_sha256', ''))[:12]})",
                                  hint="plan the spec again: a new content is a new run")
            site = job.config.site
            saes[job.run_id] = (load_sae(info, lm.device), site.hook_name, site.hook_name_out)
        except SaerunError as err:
            failures[job.run_id] = err.message
            reg.mark_failed(job.run_id, err.message, OWNER)
    if not saes:
        return failures
    t0 = time.perf_counter()
    # The positions a trained run of this spec counts: outliers excluded by the same limit.
    hooks = sorted({h for _, hook, out in saes.values() for h in (hook, out) if h is not None})
    limits = outlier_limits(lm, first.data, hooks)
    results = evaluate_group(lm, eval_token_batches(lm, first.data), saes,
                             set(first.eval.metrics), first.data.exclude_special_tokens, limits)
    eval_seconds = time.perf_counter() - t0
    for run_id, (sae, hook, _) in saes.items():
        res = results[run_id]
        metrics = dict(res.metrics)
        if limits is not None:
            metrics["outlier_norm_limit"] = limits[hook]
        folder = reg.artifacts_dir(run_id)
        _copy_folder(sae.info.folder, folder)
        density = res.density.clamp_min(1e-10).log10()
        artifacts.write_tensors(folder / "sparsity.safetensors", {"sparsity": density})
        reg.mark_done(run_id, metrics, 0.0, eval_seconds, 0, OWNER)
    return failures


def _copy_folder(source: Path, target: Path) -> None:
    """The SAE's cfg.json and weights into its run folder: a hard link where the file system
    allows one (published SAEs are large), else a copy."""
    for name in (saelens.CFG_FILENAME, saelens.WEIGHTS_FILENAME):
        dest = target / name
        dest.unlink(missing_ok=True)
        try:
            os.link(source / name, dest)
        except OSError:
            shutil.copyfile(source / name, dest)


# -- the SAE of a folder ----------------------------------------------------------------------


class SAELensSAE(nn.Module):
    """A SAELens-format SAE at inference, on raw activations [n, d_in] (a hook_z site arrives
    flattened to n_heads * d_head, as SAELens's reshape makes it), in float32. It computes what
    SAELens's inference classes compute, in their order of operations, so codes and L0 agree
    with SAELens's own encode bit for bit (tests/test_saelens_real.py)."""

    def __init__(self, info: saelens.FolderSAE, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self.info = info
        self.architecture = info.architecture
        self.d_in, self.d_sae = info.d_in, info.d_sae
        self.transcoder = info.transcoder
        # JumpReLU's mask on ReLU'd pre-activations, for the SAE and its two transcoder kinds.
        self.jump = info.architecture.startswith("jumprelu")
        opts = info.options
        self.apply_b_dec = bool(opts["apply_b_dec_to_input"])
        self.k: int | None = opts.get("k")
        self.rescale = bool(opts.get("rescale_acts_by_decoder_norm", False))
        self.scale = info.scaling_factor
        for name, value in tensors.items():
            self.register_buffer(name, value.to(torch.float32).contiguous())

    W_dec: Tensor  # [d_sae, d_in] ([d_sae, d_out]), a buffer like every tensor of the folder
    # A skip transcoder's W_skip [d_out, d_in] is one too: `evaluate.output` adds x W_skip^T.

    def _t(self, name: str) -> Tensor:
        tensor = self._buffers[name]
        if tensor is None:  # never: every tensor was registered with a value
            raise KeyError(name)
        return tensor

    def encode(self, x: Tensor) -> Tensor:
        if self.scale is not None:
            x = x * self.scale
        if self.transcoder:  # SAELens's transcoders: no b_dec on the input (it is d_out wide)
            pre = x @ self._t("W_enc") + self._t("b_enc")
            f = torch.relu(pre)
            return f * (pre > self._t("threshold")).to(pre.dtype) if self.jump else f
        # SAELens: sae_in - b_dec * apply_b_dec_to_input, then the architecture's activation.
        sae_in = x - self._t("b_dec") * self.apply_b_dec
        W_enc = self._t("W_enc")
        if self.architecture == "gated":
            gate = (sae_in @ W_enc + self._t("b_gate") > 0).to(sae_in.dtype)
            mag = torch.relu(sae_in @ (W_enc * self._t("r_mag").exp()) + self._t("b_mag"))
            return gate * mag
        pre = sae_in @ W_enc + self._t("b_enc")
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self._t("threshold")).to(pre.dtype)
        if self.architecture == "topk":
            if self.rescale:
                pre = pre * self.W_dec.norm(dim=-1)
            values, indices = torch.topk(pre, k=self.k or 1, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return torch.relu(pre)

    def decode(self, f: Tensor) -> Tensor:
        if self.rescale:
            f = f * (1 / self.W_dec.norm(dim=-1))
        x_hat = f @ self.W_dec + self._t("b_dec")
        if self.transcoder:  # SAELens's transcoder decode undoes no input normalisation
            return x_hat
        return x_hat / self.scale if self.scale is not None else x_hat

    def tensors(self) -> dict[str, Tensor]:
        return {name: buf for name, buf in self.named_buffers()}


def load_sae(info: saelens.FolderSAE, device: str = "cpu") -> SAELensSAE:
    """The folder's weights (safetensors, never pickle), every tensor checked by name and
    shape against the architecture `read_folder` found."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = info.folder / saelens.WEIGHTS_FILENAME
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise SaerunError(f"cannot read {path}: {err}") from None
    if info.architecture == "jumprelu" and "log_threshold" in tensors and \
            "threshold" not in tensors:  # older SAELens checkpoints, as SAELens converts them
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    wanted = saelens.TENSORS[info.architecture]
    sizes = {"d_in": info.d_in, "d_sae": info.d_sae, "d_out": info.d_out or info.d_in}
    for name in sorted(set(tensors) | set(wanted)):
        if name not in wanted:
            raise SaerunError(f"{path}: tensor {name!r} is not part of a {info.architecture} SAE",
                              hint="saerun refuses what it cannot honour rather than ignore it")
        if name not in tensors:
            raise SaerunError(f"{path}: tensor {name!r} is missing")
        shape = tuple(sizes[d] for d in wanted[name])
        if tuple(tensors[name].shape) != shape:
            raise SaerunError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                              f"cfg.json says {shape}")
    return SAELensSAE(info, tensors).to(device)
