"""Reports computed from the registry's result rows: Markdown tables and PNG plots.

- `frontier.py`: `write_frontier_report(rows, out_dir)`, per (model, site) tables, frontier
  stars and plain-words summaries, the only place that writes report Markdown.
- `plots.py`: `frontier_plot(...)`, matplotlib (Agg) imported lazily inside it.

Nothing is imported here, so `import saerun.report` costs nothing.
"""
