"""The package layout of STYLE.md, checked from the source alone (no import, no ruff): modules
stay under MAX_LINES, no import cycle among the package's modules, and no module imports
another one's `_private` name (a name used by two modules is public, so it drops the underscore).

Every import statement counts, also one inside a function: a late import keeps `banger --help`
fast, it does not make a cycle any easier to read. Packages (`__init__.py`) only re-export, so
an import of one is no edge: the `bangercli` front door imports its stages and that is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bangercli"
MAX_LINES = 400


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__.py) for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["bangercli", *path.relative_to(PACKAGE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, (path, _) in MODULES.items()}


def imported(name: str) -> list[tuple[str, list[str], int]]:
    """(module named by the statement, names it takes from it, line) for every import in
    module `name`, relative imports resolved."""
    found = []
    is_package = MODULES[name][1]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def dependencies(name: str) -> set[str]:
    """The package's modules (not packages) that module `name` imports."""
    found = set()
    for target, names, _ in imported(name):
        for candidate in (target, *(f"{target}.{each}" for each in names)):  # `from . import api`
            if candidate in MODULES and not MODULES[candidate][1] and candidate != name:
                found.add(candidate)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for following in sorted(graph[node]):
            if state.get(following) == 1:
                return path[path.index(following):] + [following]
            if following not in state and (cycle := visit(following)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_is_where_the_test_looks():
    assert "bangercli.api" in MODULES and "bangercli.cli.app" in MODULES


def test_no_module_is_over_400_lines():
    lines = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, (path, _) in MODULES.items()}
    assert {name: count for name, count in lines.items() if count > MAX_LINES} == {}


def test_no_import_cycle():
    graph = {name: dependencies(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_a_private_name_of_another():
    found = [
        f"{MODULES[name][0].relative_to(PACKAGE)}:{line}: {each} from {target}"
        for name in MODULES
        for target, names, line in imported(name)
        if target.startswith("bangercli") and target != name
        for each in names
        if each.startswith("_") and not each.startswith("__")
    ]
    assert found == []
