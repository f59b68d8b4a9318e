"""What a resumed job pays before its first new step (issue 19): the training stream resumed at
step N by regenerating it (the model over every batch before N, then dropped) against resuming
it from the stream snapshot saved with the step-N checkpoints.

The quickstart's stream (embedded model, blocks.2.hook_resid_post, batches of 4,096 tokens, a
64k-token shuffle buffer). Each way times, in one process, a fresh stream from construction to
its first batch; the norm-estimate head (the first 32,768 tokens) is computed again each time,
as a new job computes it. Both ways hand out the same batch (checked).

    python -m bench.resume [--steps 50 150 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from saerun import activations
from saerun.activations import LanguageModel
from saerun.runner import prepare
from saerun.stream import ActivationStream, load_snapshot, save_snapshot

SPEC = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"


def _first(stream: ActivationStream) -> tuple[float, dict[str, torch.Tensor]]:
    """Seconds to the stream's first batch, the norm estimate first (as a job starts)."""
    activations._HEADS.clear()  # as in a new job: the head is computed again
    t0 = time.perf_counter()
    activations.estimate_norm_scale(stream.lm, stream.data, stream.hooks)
    batch = next(iter(stream))
    return time.perf_counter() - t0, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 150, 300])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = prepare(SPEC).plan.jobs[0].config
    hooks, data, batch = [cfg.site.hook_name], cfg.data, cfg.train.batch_tokens
    lm = LanguageModel.load(cfg.model.name)
    folder = Path(tempfile.mkdtemp(prefix="saerun-bench-resume-"))
    wanted = set(args.steps)
    stream = ActivationStream(lm, data, hooks, batch)
    for i, _ in enumerate(stream, start=1):  # snapshots at the steps, saved as a job saves them
        if i in wanted:
            snap = stream.snapshot(i)
            assert snap is not None
            save_snapshot(folder, snap, lm.dtype, keep=len(wanted))
        if i >= max(wanted):
            break
    rows = []
    for step in args.steps:
        regen, snap = [], []
        for _ in range(args.repeat):
            skipped = ActivationStream(lm, data, hooks, batch)
            skipped.skip(step)
            seconds, a = _first(skipped)
            regen.append(seconds)
            resumed = ActivationStream(lm, data, hooks, batch)
            t0 = time.perf_counter()
            loaded, why = load_snapshot(folder, step, hooks)
            assert loaded is not None, why
            resumed.resume(loaded)
            _, b = _first(resumed)
            snap.append(time.perf_counter() - t0)  # reading the snapshot included
            assert torch.equal(a[hooks[0]], b[hooks[0]]), step  # the same next batch
        r, s = statistics.median(regen), statistics.median(snap)
        rows.append({"step": step, "tokens_before": step * batch, "regenerate_s": r,
                     "snapshot_s": s, "ratio": r / s,
                     "snapshot_mb": (folder / f"stream-{step}.safetensors").stat().st_size / 1e6})
    print(json.dumps(rows))
    print("| resumed at step | tokens before it | regenerate (s) | from the snapshot (s) | "
          "ratio | snapshot MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        print(f"| {x['step']} | {x['tokens_before']:,} | {x['regenerate_s']:.2f} | "
              f"{x['snapshot_s']:.2f} | {x['ratio']:.1f}x | {x['snapshot_mb']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
