"""The research ideas of docs/FINDINGS.md (issue 20: options no peer offers, each measured).

Each idea owns one small module with `SPECS` (its findings spec file names) and
`section(rows, plans, curves, compare_words) -> list[str]` (Markdown lines, saying so when its
runs are missing). Their runs train at the main findings site but stay out of the other
sections (like the MLP specs), so an option that is off by default never mixes into the
architecture frontiers of sections 1-5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saerun.report import ideas_gated, ideas_jumprelu, ideas_matryoshka, ideas_progressive

Section = Callable[[list[dict[str, Any]], dict[str, list[str]],
                    dict[str, list[dict[str, Any]]], Any], list[str]]

# (spec file names, section) per idea, in page order: each idea's module is imported above
# and adds its `(SPECS, section)` entry here.
IDEAS: list[tuple[tuple[str, ...], Section]] = [
    (ideas_matryoshka.SPECS, ideas_matryoshka.section),
    (ideas_progressive.SPECS, ideas_progressive.section),
    (ideas_jumprelu.SPECS, ideas_jumprelu.section),
    (ideas_gated.SPECS, ideas_gated.section),
]

IDEA_SPECS: tuple[str, ...] = tuple(s for specs, _ in IDEAS for s in specs)


def ideas_sections(rows: list[dict[str, Any]], plans: dict[str, list[str]],
                   curves: dict[str, list[dict[str, Any]]], compare_words: Any) -> list[str]:
    """Markdown lines of every idea's section, each from its own specs' runs only."""
    md: list[str] = []
    for specs, section in IDEAS:
        ids = {i for s in specs for i in plans.get(s, [])}
        md += section([r for r in rows if r["run_id"] in ids], plans, curves, compare_words)
    return md
