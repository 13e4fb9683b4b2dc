"""Imports point down: consensus/ imports neither node/, network/ nor I/O; network/ never node/;
no module of consensus/, network/ or node/ imports the tools above them, sim/ and devnet/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"sim", "devnet"}
FORBIDDEN = {
    "consensus": {"node", "network", "trio", "socket", "asyncio", "os", "time", "random", "select"}
    | TOOLS,
    "network": {"node"} | TOOLS,
    "node": TOOLS,
}
# The one exception: node/cli.py is the command-line entry point, above every package.
# Its `simulate` and `localnet` subcommands import sim/ and devnet/ only when they run
# (inside `_simulate` and `_localnet`), and nothing imports the CLI back.
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
