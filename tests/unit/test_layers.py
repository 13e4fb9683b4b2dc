"""Imports point down: consensus/ imports neither node/, network/ nor I/O; network/ never node/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
    },
    "apps": {"node", "network", "trio", "socket", "asyncio", "os", "time", "random", "select"},
    "network": {"node"},
}


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
            bad = _imported_modules(path) & banned
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert violations == []
