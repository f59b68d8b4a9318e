"""The package's shape, checked: dependencies point one way, modules stay small, the README's
file tree names what is there. These are the conventions of STYLE.md that nothing else enforces.

Imports are read with `ast` from the source, function-local ones included (a function-local import
is for start-up time only, never to dodge a cycle, so it counts like any other).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saerun"
MAX_LINES = 600

# Bottom to top. A module may import from its own layer or any layer below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "faults", "migrations", "pareto", "progress"),
    ("artifacts", "metrics", "spec"),
    ("realmodel",),
    ("models", "data", "flops", "memory", "saelens"),
    ("sae",),
    ("plan",),  # it counts each run's step FLOPs through sae/cost.py
    ("registry", "activations", "actcache", "stream", "resample", "train", "evaluate",
     "imported"),
    ("execute",),
    ("launch",),
    ("runner",),
    ("reproduce", "campaign", "posthoc", "report", "views", "listing", "saebench"),
    ("cli",),
    ("__main__",),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
# Rooms that are one concern among equals: none of them may import another of the same layer.
SIBLINGS_APART = {"reproduce", "campaign", "posthoc", "report"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def room(module: str) -> str:
    """saerun.launch.slurm -> launch; saerun.cli -> cli."""
    return module.split(".")[1] if module.count(".") else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every saerun module this file imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "saerun"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "saerun":
                continue
            for alias in node.names:  # `from saerun import data` imports saerun.data
                sub = PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.add(f"{target}.{alias.name}" if is_module else target)
    found.discard("saerun")
    return found


def test_every_room_has_a_layer() -> None:
    rooms = {room(module_name(p)) for p in modules()} - {"__init__"}
    assert rooms <= set(LAYER_OF), f"place these in LAYERS: {sorted(rooms - set(LAYER_OF))}"


def test_dependencies_point_down() -> None:
    upward = []
    for path in modules():
        mine = room(module_name(path))
        if mine == "__init__":
            continue
        for target in sorted(imports_of(path)):
            theirs = room(target)
            if theirs == "__init__" or theirs == mine:
                continue
            if LAYER_OF[theirs] > LAYER_OF[mine] or (
                    LAYER_OF[theirs] == LAYER_OF[mine] and mine in SIBLINGS_APART):
                upward.append(f"{module_name(path)} imports {target}")
    assert upward == []


def test_no_import_cycle() -> None:
    graph = {module_name(p): imports_of(p) for p in modules()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done or node not in graph:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, stack + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_long() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these (over {MAX_LINES} lines): {long}"


def _files_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Files\n", 1)[1]
    return section.split("```", 2)[1]


def _readme_entries() -> dict[str, str]:
    """The entries under `saerun/` of the README's tree: name -> its description (with the
    continuation lines, so a package's entry names its modules)."""
    entries: dict[str, str] = {}
    current = None
    inside = False
    for line in _files_block().splitlines():
        if line.startswith("saerun/"):
            inside = True
            continue
        if not inside:
            continue
        if not line.startswith("  "):
            break
        match = re.match(r"^  (\S+)\s*(.*)$", line)
        if match and not line.startswith("   "):
            current = match[1]
            entries[current] = match[2]
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def test_readme_file_tree_matches_the_package() -> None:
    entries = _readme_entries()
    on_disk = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    on_disk |= {p.name + "/" for p in PACKAGE.iterdir()
                if p.is_dir() and p.name != "__pycache__"}
    assert sorted(set(entries) - on_disk) == [], "the README names what is not there"
    assert sorted(on_disk - set(entries)) == [], "the README's Files section misses these"


@pytest.mark.parametrize("package", sorted(
    p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()))
def test_readme_names_every_module_of_a_package(package: str) -> None:
    text = _readme_entries()[package + "/"]
    stems = sorted(p.stem for p in (PACKAGE / package).glob("*.py") if p.stem != "__init__")
    missing = [s for s in stems if not re.search(rf"\b{re.escape(s)}\b", text)]
    assert missing == [], f"README: {package}/ does not name {missing}"
    named = set(re.findall(r"\b(\w+)\.py\b", text))
    unknown = sorted(named - set(stems) - {"__init__"})
    assert unknown == [], f"README: {package}/ names missing modules {unknown}"


def test_the_lint_pyproject_configures_is_clean() -> None:
    """ruff (a dev dependency; rules in pyproject.toml: no print() in the library outside the CLI
    and reports, sorted imports, zip(strict=...)) over everything Python here: nothing else runs
    it, and unenforced it drifted to 12 findings."""
    import shutil
    import subprocess
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    exe = str(ruff) if ruff.exists() else shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (bash scripts/setup.sh --dev installs it)")
    out = subprocess.run([exe, "check", "--output-format", "concise", "saerun", "tests", "bench",
                          "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
