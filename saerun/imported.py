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

from saerun import artifacts, saelens
from saerun.activations import LanguageModel, eval_token_batches
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
    saes: dict[str, tuple[saelens.SAELensSAE, str]] = {}
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
            saes[job.run_id] = (saelens.load_sae(info, lm.device), job.config.site.hook_name)
        except SaerunError as err:
            failures[job.run_id] = err.message
            reg.mark_failed(job.run_id, err.message, OWNER)
    if not saes:
        return failures
    t0 = time.perf_counter()
    results = evaluate_group(lm, eval_token_batches(lm, first.data), saes,
                             set(first.eval.metrics), first.data.exclude_special_tokens)
    eval_seconds = time.perf_counter() - t0
    for run_id, (sae, _) in saes.items():
        res = results[run_id]
        folder = reg.artifacts_dir(run_id)
        _copy_folder(sae.info.folder, folder)
        density = res.density.clamp_min(1e-10).log10()
        artifacts.write_tensors(folder / "sparsity.safetensors", {"sparsity": density})
        reg.mark_done(run_id, dict(res.metrics), 0.0, eval_seconds, 0, OWNER)
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
