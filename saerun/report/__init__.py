"""Reports computed from the registry's result rows: Markdown tables and PNG plots.

- `build.py`: `write_reports(registry, kinds, filters, out_dir, form)`, one registry read for
  every requested report; `--format json|csv` writes the tables instead of Markdown.
- `common.py`: row preparation (series, remedy, knob), the frontier maths (Pareto points,
  step value, log-log interpolation, comparing two frontiers), `Table` in three formats.
- `frontier.py`: L0 against FVU / CE loss recovered / delta LM loss, and at matched compute.
- `death.py`: dead and dense latents by series, width and remedy; densities; init effect.
- `lr.py`: metrics against the learning rate, best LR and the flatness of the optimum.
- `curves.py`: training curves against tokens.
- `posthoc.py`: threshold ablation, TopK at other k, opposing decoder directions (loads SAEs).
- `findings.py`: `saerun findings`, the findings specs trained and docs/FINDINGS.md written.
- `plots.py`, `figures.py`: matplotlib (Agg), imported lazily inside the functions.
- `synthetic.py`: a synthetic registry for the tests and `bench/report_speed.py`.

Nothing is imported here, so `import saerun.report` costs nothing. Every report is
deterministic: the same rows in any order give byte-identical Markdown and PNGs.
"""
