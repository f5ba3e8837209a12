"""Imports point one way (import-linter contracts in pyproject.toml) and no module-level import cycle exists.

The subpackages live in the repository's top-level folders and install under `polycap` through setuptools'
package-dir mapping, which static tools cannot follow; so the check runs on a copy laid out as installed.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("pipelines", "transforms", "schemas", "sharding", "prompts", "trainer")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_layout(dest: Path) -> Path:
    """`dest/polycap/<subpackage>/...`: the package tree as a wheel installs it (Python files only)."""
    root = dest / "polycap"
    shutil.copytree(REPO / "polycap", root, ignore=shutil.ignore_patterns("__pycache__"))
    for name in SUBPACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.md"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return root


def lint_imports(dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=dest, capture_output=True, text=True,
                          env={"PYTHONPATH": str(dest), "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.fail("import-linter is not installed: it is in the dev extra (make install)")
    dest = tmp_path_factory.mktemp("layout")
    installed_layout(dest)
    return dest


def test_import_contracts_are_kept(layout):
    res = lint_imports(layout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module,line", [
    ("sharding/writer.py", "from polycap.transforms import plumbing"),       # storage reaching up to stages
    ("trainer/data.py", "from polycap.transforms import build_records"),     # trainer beyond schemas/sharding
    ("schemas/records.py", "from polycap.sharding import reader"),           # schemas import nothing of ours
])
def test_an_upward_import_breaks_the_contract(layout, tmp_path, module, line):
    """The check can fail: one import against the layers, even inside a function, is reported."""
    dest = tmp_path / "broken"
    shutil.copytree(layout, dest)
    path = dest / "polycap" / module
    path.write_text(path.read_text() + f"\n\ndef _upward():\n    {line}\n")
    res = lint_imports(dest)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout


def module_imports(root: Path) -> dict[str, set[str]]:
    """Module name -> polycap modules it imports at module level (not inside functions or classes)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        pkg = name if rel.name == "__init__" else name.rpartition(".")[0]
        targets: set[str] = set()
        nodes = list(ast.parse(path.read_text()).body)
        while nodes:
            node = nodes.pop()
            if isinstance(node, (ast.If, ast.Try)):
                nodes.extend(node.body + node.orelse + getattr(node, "finalbody", [])
                             + [s for h in getattr(node, "handlers", []) for s in h.body])
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t.startswith("polycap")}
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_module_level_import_cycle(layout):
    graph = module_imports(layout / "polycap")
    assert len(graph) > 50
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
