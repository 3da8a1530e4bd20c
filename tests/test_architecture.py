"""The house rules, read from the code's own imports (docs/architecture.md).

1. Layers: a package imports only itself and the packages below it —
   ``keys`` < ``envelopes``, ``broker`` (side by side: neither imports the other) <
   ``gateway`` < ``agents``; ``compose`` (deployment tooling) may use any of them, none
   of them uses it. Imports inside functions count too (a lazy import is still a joint).
2. No import cycle between modules, lazy imports included.
3. No module over 500 lines and no function over 80, except a module that says why in
   one line at its top, right after its docstring: ``# Oversized: <reason>``. A module
   that says so and is small is reported too (the reason must go when it is split).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"keys": 0, "envelopes": 1, "broker": 1, "gateway": 2, "agents": 3, "compose": 4}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
OVERSIZED_REASON = re.compile(r"^# Oversized: (\S.*)$", re.M)


def modules() -> dict[str, Path]:
    found = {}
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (module level or lazily)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import mod`` imports pkg.mod; ``from pkg import name``, pkg itself.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in RANK:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_package_imports_upwards_or_sideways():
    wrong = []
    for module, targets in graph().items():
        here = module.split(".")[0]
        for target in targets:
            there = target.split(".")[0]
            if there != here and RANK[there] >= RANK[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def oversized() -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for path in [*modules().values(), *sorted((ROOT / "bench").glob("*.py"))]:
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            out[rel].append(f"{lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out[rel].append(f"{node.name}() {length} lines")
    return dict(out)


def stated_reasons() -> dict[str, str]:
    """The ``# Oversized:`` line at the top of each module (after its docstring)."""
    out = {}
    for path in [*modules().values(), *sorted((ROOT / "bench").glob("*.py"))]:
        head = "\n".join(path.read_text().splitlines()[:60])
        if m := OVERSIZED_REASON.search(head):
            out[path.relative_to(ROOT).as_posix()] = m.group(1)
    return out


def test_modules_and_functions_stay_small_or_say_why():
    found, stated = oversized(), stated_reasons()
    unexplained = {k: v for k, v in found.items() if k not in stated}
    assert unexplained == {}, "split these, or say why at their top: # Oversized: <reason>"
    stale = sorted(k for k in stated if k not in found)
    assert stale == [], "these are small now: remove their # Oversized: line"
