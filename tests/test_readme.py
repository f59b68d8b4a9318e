"""README.md stays true: its spec reference is generated from the schema."""

from pathlib import Path

from saerun.spec.reference import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def test_readme_spec_reference_is_current():
    text = README.read_text()
    current = text[text.index(START) + len(START):text.index(END)].strip()
    assert current == reference_markdown().strip(), (
        "README spec reference is stale: run `python -m saerun.spec.reference` to regenerate it"
    )


def test_readme_opens_with_the_two_commands():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith("bash scripts/setup.sh && .venv/bin/saerun specs/quickstart.yaml")
    assert block[1] == "bash scripts/setup.sh --dev && .venv/bin/mypy && .venv/bin/pytest"
    ci = (README.parent / ".ci" / "run").read_text()
    assert block[1] in ci
