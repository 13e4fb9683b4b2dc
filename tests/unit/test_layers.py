"""Imports point down: consensus/ imports neither node/, network/ nor I/O; network/ never node/;
no module of consensus/, network/ or node/ imports the tools above them, sim/ and devnet/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"sim", "devnet"}
FORBIDDEN = {
    "consensus": {
        "apps",
        "node",
        "network",
        "trio",
        "socket",
        "asyncio",
        "os",
        "time",
        "random",
        "select",
    }
    | TOOLS,
    "apps": {"node", "network", "trio", "socket", "asyncio", "os", "time", "random", "select"}
    | TOOLS,
    "network": {"node"} | TOOLS,
    "node": TOOLS,
    # The offline verifier is vendored alone: the standard library, pynacl and msgpack only.
    "proofcheck": {"consensus", "apps", "node", "network"} | TOOLS,
}
# The one exception: node/cli.py is the command-line entry point, above every package.
# Its `simulate`, `localnet` and `perturb` subcommands import sim/ and devnet/ only when
# they run (inside `_simulate`, `_localnet` and `_perturb`), and nothing imports the CLI back.
ALLOWED = {"node/cli.py": TOOLS}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_import_direction() -> None:
    """No module of a lower layer imports a higher layer or an I/O module it must not use."""
    violations = []
    for package, banned in FORBIDDEN.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"{package}/ has no modules"
        for path in files:
            relative = path.relative_to(ROOT)
            bad = _imported_modules(path) & banned - ALLOWED.get(relative.as_posix(), set())
            if bad:
                violations.append(f"{relative} imports {sorted(bad)}")
    assert violations == []


PACKAGES = ("apps", "consensus", "devnet", "network", "node", "sim")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_within(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere (top level, functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule; `from pkg import name` the package.
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in modules:
                    found.add(sub)
                elif node.module in modules:
                    found.add(node.module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    """No circle among the project's modules, counting every import (even in functions and
    under TYPE_CHECKING): each module can be read knowing only those below it."""
    paths = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(paths)
    graph = {m: _imports_within(p, modules) - {m} for m, p in paths.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_long_modules_say_why() -> None:
    """A module over the house's 600 lines says why in its docstring."""
    silent = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 600 and "600 lines" not in (
                ast.get_docstring(ast.parse(text)) or ""
            ):
                silent.append(str(path.relative_to(ROOT)))
    assert silent == []
