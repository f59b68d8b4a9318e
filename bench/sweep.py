"""Workload (b): a sweep of 8 ReLU+L1 SAEs (d_sae 1024, 8 L1 coefficients) at one site of the
embedded model (saerun/tiny-stdlib, a 4-layer GPT-2, d_model 128; blocks.2.hook_resid_post),
end to end, each tool its usual way:

- saerun: one spec, `saerun SPEC --registry TMP --quiet` (one model pass per batch feeds all 8),
  run twice: reconstruction metrics only (the peers' work) and every metric (CE/KL: spliced
  forwards); the registry's train/eval seconds give the phases apart;
- SAELens: 8 `LanguageModelSAETrainingRunner` runs in one process, one after the other;
- dictionary_learning: `trainSAE` with 8 trainer configs sharing one ActivationBuffer.

Same model folder, corpus, context size (128), batch (4096 tokens), learning rate and tokens per
SAE. Tokens/s = 8 x tokens per SAE / wall time of the whole process (interpreter start, imports
and model load included). Peak RSS of each process from os.wait4.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import common
from bench.common import Comparison, DriverError, log

MODEL = common.ROOT / "saerun" / "embedded" / "tiny-stdlib"
CORPUS = common.ROOT / "saerun" / "embedded" / "corpus" / "stdlib.jsonl"
LAYER, D_SAE, BATCH, CONTEXT, LR = 2, 1024, 4096, 128, 1e-3
COEFFICIENTS = [0.3, 0.5, 1, 2, 3, 5, 7, 10]
SCRIPTS = {"sae_lens": "saelens_sweep.py", "dictionary_learning": "dictlearn_sweep.py"}

SPEC = """\
name: bench-sweep
seed: 0
model: {{name: saerun/tiny-stdlib}}
site: {{hook_name: blocks.{layer}.hook_resid_post}}
data: {{dataset: saerun/stdlib, context_size: {context}, train_tokens: {tokens}}}
sae: {{architecture: relu, d_sae: {d_sae}, sparsity: {{penalty: l1, coefficient: 1}}}}
train: {{lr: {lr}, batch_tokens: {batch}}}
{eval}
sweep:
  zip: {{sae.sparsity.coefficient: {coefficients}}}
"""


def description(tokens: int) -> list[str]:
    return [
        f"8 ReLU+L1 SAEs, d_in 128 -> d_sae {D_SAE}, at `blocks.{LAYER}.hook_resid_post` of the "
        f"embedded 4-layer GPT-2 (saerun/tiny-stdlib), context {CONTEXT}, batch {BATCH} tokens, "
        f"lr {LR}, {tokens:,} training tokens per SAE, L1 coefficients {COEFFICIENTS}.",
        "",
        "- saerun: one spec through its CLI (`saerun SPEC --registry TMP --quiet`): one model "
        "pass per batch feeds all 8 SAEs. It runs twice per round. 'saerun' does the peers' "
        "work: `eval: {metrics: []}`, so its evaluation is the reconstruction metrics on "
        "32,768 held-out tokens (no language-model pass beyond the site). 'saerun, full eval' "
        "adds every metric, CE loss recovered and KL included: a clean, a zero-ablated, a "
        "mean-ablated and 8 spliced forwards per eval batch. SAELens and dictionary_learning "
        "evaluate nothing here.",
        "- SAELens: 8 `LanguageModelSAETrainingRunner` runs (its usual way) in one process: "
        "each loads the model and streams its own activations. (SAELens 6.54 also ships a "
        "`MultiSAETrainingRunner`; not measured here.)",
        "- dictionary_learning: `trainSAE` with 8 `StandardTrainer` configs sharing one "
        "`ActivationBuffer` (nnsight 0.3.7).",
        "- Tokens/s = 8 x tokens per SAE / wall time of the whole process (interpreter start, "
        "imports, model load, training, saving; evaluation for saerun). Rounds (`--rounds`, "
        "default 1 for the sweep) run saerun, SAELens, dictionary_learning in turn; medians "
        "over rounds.",
        "- Offline loading: SAELens loads the local folder through its own `load_model` "
        "(HookedTransformer) after two shims in bench/peers/saelens_sweep.py: a local path "
        "passes transformer-lens's official-name lookup, and `GPT2Config.n_ctx` (gone from "
        "transformers 5.23, still read by transformer-lens 3.9) aliases n_positions. Corpus: "
        "the same JSONL via `datasets` (`override_dataset`), whole file (saerun trains on its "
        "95 % train split). dictionary_learning: nnsight `LanguageModel(folder)`; its buffer "
        "truncates each document to the context, so the text stream cycles.",
    ]


# saerun runs twice per round: with its full evaluation (CE/KL need 2 + 8 spliced forwards per
# eval batch), and as the same work the peers do here (they evaluate nothing): only the
# reconstruction metrics, which need no language-model pass past the site.
# tool -> (the spec's eval section, the workload name of its comparisons)
SAERUN_VARIANTS = {"saerun": ("eval: {metrics: []}", "sweep"),
                   "saerun_full_eval": ("eval: {}", "sweep_full_eval")}


def saerun_job(tmp: Path, tokens: int, eval_section: str = "eval: {}"
               ) -> tuple[list, Callable[[dict], dict]]:
    """The saerun command and a function adding the registry's phase timings to its result."""
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(layer=LAYER, context=CONTEXT, tokens=tokens, d_sae=D_SAE,
                                lr=LR, batch=BATCH, coefficients=json.dumps(COEFFICIENTS),
                                eval=eval_section))
    registry = tmp / "saerun.db"
    saerun = common.ROOT / ".venv" / "bin" / "saerun"
    cmd = [saerun, spec, "--registry", registry, "--quiet"]

    def phases(result: dict) -> dict:
        out = common.run_json_list([saerun, "ls", "--json", "--registry", registry], 300)
        done = [r for r in out if r.get("status") == "done"]
        if len(done) != len(COEFFICIENTS):
            raise DriverError(f"saerun finished {len(done)} of {len(COEFFICIENTS)} runs")
        # One group: every run reports the group's shared training and evaluation time.
        result["train_s"] = max(r["train_seconds"] for r in done)
        result["eval_s"] = max(r["eval_seconds"] for r in done)
        result["tokens_trained"] = sum(r["tokens_trained"] for r in done)
        return result

    return cmd, phases


def peer_cmd(peer: str, python: Path, tmp: Path, tokens: int) -> list:
    return [python, common.PEERS_DIR / SCRIPTS[peer], "--model", MODEL, "--corpus", CORPUS,
            "--layer", str(LAYER), "--d-sae", str(D_SAE), "--tokens", str(tokens),
            "--batch", str(BATCH), "--context", str(CONTEXT), "--lr", str(LR),
            "--coefficients", *map(str, COEFFICIENTS), "--out", tmp / peer]


def run(peers: list[str], tokens: int, rounds: int = 1, venvs: Path = common.VENVS,
        timeout: float = 3600, emit: Callable[[Comparison], None] = lambda c: None
        ) -> tuple[list[Comparison], dict]:
    tokens = max(1, tokens // BATCH) * BATCH  # whole batches: every tool trains exactly this
    pythons = {p: py for p in peers if p in SCRIPTS
               and (py := common.venv_python(p, venvs)) is not None}
    raw: dict = {"runs": [], "versions": {}, "errors": [], "description": description(tokens),
                 "tokens_per_sae": tokens}
    results: dict[str, list[dict]] = {t: [] for t in [*SAERUN_VARIANTS, *pythons]}
    for r in range(rounds):
        for tool in results:
            with tempfile.TemporaryDirectory(prefix="saerun-bench-sweep-") as tmp_name:
                tmp = Path(tmp_name)
                log(f"sweep round {r + 1}/{rounds}: {tool}")
                try:
                    if tool in SAERUN_VARIANTS:
                        cmd, finish = saerun_job(tmp, tokens, SAERUN_VARIANTS[tool][0])
                        res = finish(common.run_measured(cmd, timeout))
                        res.pop("json", None)
                    else:
                        res = common.run_measured(peer_cmd(tool, pythons[tool], tmp, tokens),
                                                  timeout)
                        # The driver's own line (version, inner timings); wall time and peak
                        # RSS stay the harness's measurement of the whole process.
                        inner = res.pop("json", None) or {}
                        res = {**inner, "inner_peak_rss_mb": inner.get("peak_rss_mb"), **res}
                except DriverError as e:
                    log(f"  {tool} failed: {e}")
                    raw["errors"].append({"tool": tool, "error": str(e)})
                    continue
                res["tool"] = tool
                results[tool].append(res)
                raw["runs"].append(res)
                if res.get("version"):
                    raw["versions"][tool] = res["version"]
                log(f"  {tool}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB")
    comparisons = compare(results, tokens)
    for c in comparisons:
        emit(c)
    return comparisons, raw


def compare(results: dict[str, list[dict]], tokens: int) -> list[Comparison]:
    """Per saerun variant and peer, one comparison (workload "sweep": the same work as the
    peers, reconstruction metrics only; "sweep_full_eval": saerun with every metric)."""
    total = len(COEFFICIENTS) * tokens
    out = []
    for variant, (_, workload) in SAERUN_VARIANTS.items():
        ours = results.get(variant) or []
        if not ours:
            continue
        wall = common.median([r["wall_s"] for r in ours])
        extra_ours = {"saerun_wall_s": round(wall, 1)}
        if all("eval_s" in r for r in ours):
            no_eval = common.median([r["wall_s"] - r["eval_s"] for r in ours])
            train = common.median([r["train_s"] for r in ours])
            extra_ours.update({
                "saerun_eval_s": round(common.median([r["eval_s"] for r in ours]), 1),
                "saerun_wall_without_eval_s": round(no_eval, 1),
                "saerun_train_only_s": round(train, 1),
                "saerun_train_only_tokens_per_s": round(total / train, 1),
            })
        for tool, runs in results.items():
            if tool in SAERUN_VARIANTS or not runs:
                continue
            peer_wall = common.median([r["wall_s"] for r in runs])
            out.append(Comparison(
                workload, "relu", total / wall, tool, total / peer_wall,
                max(r["peak_rss_mb"] for r in ours), max(r["peak_rss_mb"] for r in runs),
                extra={**extra_ours, "peer_wall_s": round(peer_wall, 1),
                       "n_saes": len(COEFFICIENTS), "tokens_per_sae": tokens},
            ))
    return out
