"""BENCHMARKS.md from a results dict: machine, versions, command, one table per workload with
medians, ratios and targets met/missed. The `<!-- notes -->` ... `<!-- /notes -->` section of an
existing BENCHMARKS.md is carried over verbatim (the analysis is written there by hand)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench import common

PATH = common.ROOT / "BENCHMARKS.md"
NOTES_OPEN, NOTES_CLOSE = "<!-- notes -->", "<!-- /notes -->"
STEP_TARGET = 1.5  # every architecture: >= 1.5x the fastest peer that has it
SWEEP_TARGET = 4.0  # the 8-SAE sweep end to end: >= 4x SAELens's 8 runs


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb,
            "os": platform.platform(), "python": platform.python_version()}


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def versions(results: dict) -> dict:
    """Tool versions as the drivers reported them, plus torch of the project venv."""
    out = {}
    for workload in results.get("raw", {}).values():
        out.update({k: v for k, v in workload.get("versions", {}).items() if v})
    try:
        torch_version = subprocess.run(
            [str(common.SAERUN_PYTHON), "-c", "import torch; print(torch.__version__)"],
            capture_output=True, text=True, timeout=120).stdout.strip()
        out["torch"] = torch_version or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        out["torch"] = "unknown"
    return out


def notes(text: str) -> str:
    """The hand-written notes section of an existing BENCHMARKS.md (markers included)."""
    start, end = text.find(NOTES_OPEN), text.find(NOTES_CLOSE)
    if start == -1 or end == -1 or end < start:
        return f"{NOTES_OPEN}\n(analysis goes here; kept across rewrites)\n{NOTES_CLOSE}"
    return text[start:end + len(NOTES_CLOSE)]


def _k(x: float | None) -> str:
    return "-" if x is None else f"{x / 1000:.2f}k"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def step_table(comparisons: list[dict], workload: str = "step") -> list[str]:
    rows = [c for c in comparisons if c["workload"] == workload]
    if not rows:
        return ["(not run)"]
    density = any("saerun_density" in c for c in rows)
    lines = [
        "| architecture | peer | saerun tok/s | peer tok/s | ratio | saerun RSS MB | "
        "peer RSS MB |" + (" saerun density |" if density else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if density else ""),
    ]
    for c in rows:
        lines.append(
            f"| {c['architecture']} | {c['peer']} | {_k(c['saerun_tokens_per_s'])} | "
            f"{_k(c['peer_tokens_per_s'])} | {c['ratio']:.2f}x | "
            f"{_mb(c.get('saerun_peak_rss_mb'))} | {_mb(c.get('peer_peak_rss_mb'))} |"
            + (f" {c.get('saerun_density', float('nan')):.1%} |" if density else ""))
    lines += ["", f"Target: every architecture at least {STEP_TARGET}x the fastest peer that has "
              "it (TopK: including sparsify).", "",
              "| architecture | fastest peer | ratio to it | speed target | peak RSS vs leanest "
              "peer | memory target |", "| --- | --- | ---: | --- | --- | --- |"]
    for arch in dict.fromkeys(c["architecture"] for c in rows):
        mine = [c for c in rows if c["architecture"] == arch]
        fastest = max(mine, key=lambda c: c["peer_tokens_per_s"])
        lean = [c for c in mine if c.get("peer_peak_rss_mb") is not None]
        leanest = min(lean, key=lambda c: c["peer_peak_rss_mb"]) if lean else None
        speed_ok = fastest["ratio"] >= STEP_TARGET
        if leanest and leanest.get("saerun_peak_rss_mb") is not None:
            mem = f"{leanest['saerun_peak_rss_mb']:.0f} vs {leanest['peer_peak_rss_mb']:.0f} MB"
            mem_ok = "met" if leanest["saerun_peak_rss_mb"] <= leanest["peer_peak_rss_mb"] else \
                "**missed**"
        else:
            mem, mem_ok = "-", "-"
        lines.append(f"| {arch} | {fastest['peer']} | {fastest['ratio']:.2f}x | "
                     f"{'met' if speed_ok else '**missed**'} | {mem} | {mem_ok} |")
    return lines


def sweep_table(comparisons: list[dict], raw: dict) -> list[str]:
    rows = [c for c in comparisons if c["workload"] in ("sweep", "sweep_full_eval")]
    lines = []
    if rows:
        lines += [
            "| saerun | peer | saerun tok/s | peer tok/s | ratio | saerun s | peer s | "
            "saerun RSS MB | peer RSS MB | target |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in rows:
            target = ""
            if c["peer"] == "sae_lens" and c["workload"] == "sweep":
                target = f"{SWEEP_TARGET}x: " + ("met" if c["ratio"] >= SWEEP_TARGET else
                                                 "**missed**")
            variant = "same work" if c["workload"] == "sweep" else "full eval"
            lines.append(
                f"| {variant} | {c['peer']} | {_k(c['saerun_tokens_per_s'])} | "
                f"{_k(c['peer_tokens_per_s'])} | {c['ratio']:.2f}x | "
                f"{c.get('saerun_wall_s', '-')} | {c.get('peer_wall_s', '-')} | "
                f"{_mb(c.get('saerun_peak_rss_mb'))} | {_mb(c.get('peer_peak_rss_mb'))} "
                f"| {target} |")
        same = [c for c in rows if c["workload"] == "sweep"]
        lean = [c for c in same if c.get("peer_peak_rss_mb") is not None]
        if lean and same[0].get("saerun_peak_rss_mb") is not None:
            leanest = min(lean, key=lambda c: c["peer_peak_rss_mb"])
            ok = leanest["saerun_peak_rss_mb"] <= leanest["peer_peak_rss_mb"]
            lines += ["", f"Memory target (peak RSS on the same work no higher than the "
                      f"leanest peer's, {leanest['peer']}): {leanest['saerun_peak_rss_mb']:.0f}"
                      f" vs {leanest['peer_peak_rss_mb']:.0f} MB: "
                      f"{'met' if ok else '**missed**'}."]
        phases = []
        for workload, name in (("sweep", "same work"), ("sweep_full_eval", "full eval")):
            c = next((c for c in rows if c["workload"] == workload
                      and c.get("saerun_train_only_tokens_per_s")), None)
            if c:
                phases.append(f"{name}: training {c['saerun_train_only_s']} s = "
                              f"{_k(c['saerun_train_only_tokens_per_s'])} tokens/s, evaluation "
                              f"{c.get('saerun_eval_s', '-')} s, the rest (interpreter, "
                              f"imports, model load, norm estimate, saving) "
                              f"{c['saerun_wall_without_eval_s'] - c['saerun_train_only_s']:.1f}"
                              " s")
        if phases:
            lines += ["", "saerun's phases (from its registry; training = the shared model pass "
                      "+ 8 SAE steps per batch): " + "; ".join(phases) + "."]
    else:
        lines.append("(not run)")
    for err in raw.get("errors", []):
        lines += ["", f"- {err['tool']} did not run: {err['error'].splitlines()[0]}"]
    return lines


def render(results: dict, old: str = "") -> str:
    m, v, s = results["machine"], results.get("versions", {}), results.get("settings", {})
    comparisons = results["comparisons"]
    raw = results.get("raw", {})
    lines = [
        "# Benchmarks: saerun against SAELens, dictionary_learning and sparsify",
        "",
        "Generated by `python -m bench --write` (bench/report.py) from the saved results "
        "(bench/results.json, or `--from FILE ...`); only the notes section is written by hand.",
        "",
        "## Run",
        "",
        f"- command: `{results['command']}` ({results.get('seconds', '?')} s, "
        f"started {results.get('started', '?')})",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gb')} GB RAM, {m['os']}, "
        f"Python {m['python']}",
        f"- load average (1/5/15 min) before: {results.get('load_before')}, after: "
        f"{results.get('load_after')} (the machine is shared: saerun and each peer run in "
        "alternating processes, so load slows both alike; compare ratios, not absolute rates)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())),
        f"- settings: {s}; every process: CPU, fp32, torch.set_num_threads(2)",
        *caution(results),
        "",
        "## (a) Training step: d_in 512, d_sae 4096, batch 4096 tokens, k 32, in memory",
        "",
        "Each process: build the SAE and its optimizer, warm-up steps, then timed full training "
        "steps (forward, loss, backward, optimizer step, decoder renormalisation, whatever the "
        "tool's own trainer does per step). Tokens/s = 4096 / median step time over every timed "
        "step of every round; peak RSS = the largest ru_maxrss of the rounds (includes the 32 MB "
        "of activations every process loads).",
        "",
        *STEP_DRIVERS,
        "",
        *step_table(comparisons),
        "",
        "## (a') The same step from a trained state",
        "",
        *trained_section(comparisons, raw.get("step_trained")),
        "",
        "## (b) Sweep of 8 SAEs at one site, end to end on the embedded model",
        "",
        *sweep_section(comparisons, raw.get("sweep")),
        "",
        "## (c) Peak memory",
        "",
        "Peak RSS of each process is in the tables above (columns 'RSS MB'); the target is "
        "saerun's peak no higher than the leanest peer's on the same work.",
        "",
        "## Notes",
        "",
        notes(old),
        "",
    ]
    errors = raw.get("step", {}).get("errors", []) + raw.get("step_trained", {}).get("errors", [])
    if errors:
        lines[-1:-1] = ["## Failures in this run", ""] + [
            f"- step {e['arch']} / {e['tool']}: {e['error'].splitlines()[0]}" for e in errors
        ] + [""]
    return "\n".join(lines)


def caution(results: dict) -> list[str]:
    """A warning when the figures come from a quick run or a loaded machine."""
    cores = results["machine"].get("cores") or 1
    loads = [v for key in ("load_before", "load_after") for v in (results.get(key) or [])[:1]]
    out = []
    if results.get("quick"):
        out.append("- **quick run**: few rounds and steps; the ratios are indicative only")
    if loads and max(loads) > cores:
        out.append(f"- **loaded machine**: load average up to {max(loads):.1f} on {cores} cores "
                   "during the run (other jobs): absolute rates are several times below a quiet "
                   "machine's and single ratios can be off by tens of percent")
    return out


def trained_section(comparisons: list[dict], raw: dict | None) -> list[str]:
    if not raw:
        return ["(not run)"]
    trained = raw.get("trained", {})
    states = "; ".join(f"{a} {t['l0']:g} latents of {t['d_sae']} ({t['density']:.1%})"
                       for a, t in trained.items() if "d_sae" in t)
    return [
        "A fresh ReLU, Gated or JumpReLU SAE fires on about half its latents, so every tool's "
        "step is dense; after a few hundred steps only a few percent fire, the state most of a "
        "real run is spent in. Here saerun trains one SAE per architecture for "
        f"{raw.get('trained_steps', '?')} steps on other synthetic activations "
        "(bench/trained.py, cached in bench/.cache/), and every tool's driver loads those same "
        "weights (`--init`, mapped onto its own parameter names) before the same warm-up and "
        "timed steps as in (a). saerun's driver resumes the whole training state (Adam's "
        "moments, step, clocks, the sparsity coefficient at full strength), as a resumed run "
        "would; the peers start their own optimizers (their steps are dense products whatever "
        "the weights). Firing on the timed batches at the start: "
        f"{states or '?'}. 'saerun density' is measured after the timed steps.",
        "",
        *step_table(comparisons, "step_trained"),
    ]


def sweep_section(comparisons: list[dict], raw: dict | None) -> list[str]:
    if not raw:
        return ["(not run)"]
    from bench import sweep  # the current description of the workload, not a stale copy

    text = sweep.description(raw["tokens_per_sae"]) if "tokens_per_sae" in raw else \
        raw.get("description", [])
    return [*text, "", *sweep_table(comparisons, raw)]


STEP_DRIVERS = [
    "What one step is, per tool (bench/peers/*_step.py; each tool's defaults except sizes):",
    "",
    "- saerun: `Trainer.train_step(x)` (loss, backward, gradient clipping at 1.0, Adam, decoder "
    "renorm / projection, dead-latent clocks); relu = L1 with decoder-norm weighting.",
    "- SAELens: `SAETrainer.step(x)` plus the rest of `fit`'s loop body (sparsity window, step "
    "counter, progress-bar loss read); Standard/TopK/BatchTopK/Gated/JumpReLU/"
    "MatryoshkaBatchTopK TrainingSAE (matryoshka widths 64, 256, 1024, 4096).",
    "- dictionary_learning: `trainer.update(step, x)` (what `trainSAE` calls per step): "
    "StandardTrainer, TopKTrainer, BatchTopKTrainer, GatedSAETrainer, JumpReluTrainer, "
    "MatryoshkaBatchTopKTrainer (group fractions 1/64, 3/64, 12/64, 48/64).",
    "- sparsify (TopK only): `SparseCoder` driven as `Trainer.fit` does per step with its "
    "default optimizer, signum (ScheduleFreeWrapper(SignSGD)), and AuxK on "
    "(auxk_alpha 1/32, like saerun; fit's default 0 skips the dead mask).",
]


def write(results: dict, path: Path = PATH) -> Path:
    old = path.read_text() if path.exists() else ""
    path.write_text(render(results, old))
    return path
