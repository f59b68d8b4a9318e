"""Reports computed from the registry's result rows: Markdown tables and PNG plots.

A pure function of registry rows: nothing here trains, loads a model, re-evaluates or imports
torch (`saerun.campaign` trains the findings specs, `saerun.posthoc` stores the post-hoc
analyses in the registry first).

- `build.py`: `write_reports(registry, kinds, filters, out_dir, form)`, one registry read for
  every requested report; `--format json|csv` writes the tables instead of Markdown.
- `rows.py`: `results(registry, filters)`, the flat result rows every report reads.
- `common.py`: row preparation (series, remedy, knob), the frontier maths (Pareto points,
  step value, log-log interpolation, comparing two frontiers), `Table` in three formats.
- `frontier.py`: L0 against FVU / CE loss recovered / delta LM loss, and at matched compute.
- `death.py`: dead and dense latents by series, width and remedy; densities; init effect.
- `lr.py`: metrics against the learning rate, best LR and the flatness of the optimum.
- `curves.py`: training curves against tokens.
- `posthoc.py`: threshold ablation, TopK at other k, opposing decoder directions (stored records).
- `findings.py`: docs/FINDINGS.md and its reports from the findings runs.
- `figures.py`: every plot; matplotlib (Agg), imported lazily inside the functions.

Nothing is imported here, so `import saerun.report` costs nothing. Every report is
deterministic: the same rows in any order give byte-identical Markdown and PNGs.
"""
