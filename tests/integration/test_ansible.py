"""The Ansible role in deploy/ansible passes ansible-lint and runs, in check mode, on a host.

What it proves: `ansible-lint` (production profile, deploy/ansible/.ansible-lint)
finds no violation in the role and its playbooks; the rolling-upgrade
playbook, run with `--check` against localhost (connection=local) with every
path of the role in a temporary folder and the homes of a real `archipelago
testnet --hosts` run, completes with no failure, would change the host
(install the package, lay out the home, install the unit), and changes
nothing in check mode; the first-install playbook parses. Waiting for a
validator to sign cannot be checked without restarting one: a check run skips
it (the role says so).

ansible-core and ansible-lint come with the `test` extra; without them these
tests skip, unless ARCHIPELAGO_REQUIRE_ANSIBLE=1 (.ci/run), which makes their
absence a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "deploy" / "ansible"
# ansible's startup and one Python process per task: about 90 s for the role
# on a busy 2-core machine, 15 s on a quiet one.
PLAYBOOK_TIMEOUT_S = 600
LINT_TIMEOUT_S = 300


def _tool(name: str) -> str | None:
    """The tool installed next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent
    return shutil.which(name, path=os.pathsep.join([str(here), os.environ.get("PATH", "")]))


ANSIBLE_LINT = _tool("ansible-lint")
ANSIBLE_PLAYBOOK = _tool("ansible-playbook")
_MISSING = ANSIBLE_LINT is None or ANSIBLE_PLAYBOOK is None
if _MISSING and os.environ.get("ARCHIPELAGO_REQUIRE_ANSIBLE") == "1":
    raise RuntimeError("ARCHIPELAGO_REQUIRE_ANSIBLE=1 but ansible-lint or ansible-playbook missing")
pytestmark = pytest.mark.skipif(
    _MISSING, reason="ansible not installed (pip install -e '.[test]'); CI runs these checks"
)


def _env(tmp: Path) -> dict[str, str]:
    """Ansible's caches and temp files in `tmp`, not in the user's home; plain output."""
    here = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([here, os.environ.get("PATH", "")]),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "XDG_CACHE_HOME": str(tmp / "cache"),
    }


def test_ansible_lint_finds_nothing(tmp_path: Path) -> None:
    assert ANSIBLE_LINT is not None
    result = subprocess.run(
        [ANSIBLE_LINT, "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"Passed: 0 failure\(s\), 0 warning\(s\)", output), output
    assert "Profile 'production' was required, and it passed" in output, output


def _testnet(out: Path) -> None:
    """The homes of `archipelago testnet --hosts`, as an operator makes them."""
    cli = [sys.executable, "-c", "import sys; from node.cli import main; sys.exit(main())"]
    hosts = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4"
    subprocess.run(
        [*cli, "testnet", "--validators", "4", "--hosts", hosts, "--output", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _inventory(tmp: Path, testnet: Path, wheel: Path) -> Path:
    inventory = tmp / "inventory.yml"
    # Every path of the role in tmp; the files belong to whoever runs the test
    # (a check run cannot look up a user it would create); no systemd calls
    # where systemd is not the init system (a container).
    manage_service = Path("/run/systemd/system").is_dir()
    # The playbooks become root (`become: true`); a user who is not root (a
    # newcomer's `make test`, with no sudo) runs the role as itself, which the
    # host variable allows over the play's keyword: every path is in tmp.
    become = os.geteuid() == 0
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout
    inventory.write_text(
        f"""
archipelago:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: {sys.executable}
      ansible_become: {str(become).lower()}
      archipelago_testnet_node: node1
  vars:
    archipelago_testnet_dir: {testnet}
    archipelago_package_src: {wheel}
    archipelago_prefix: {tmp / "opt"}
    archipelago_home: {tmp / "home"}
    archipelago_unit_dir: {tmp / "unit"}
    archipelago_create_user: false
    archipelago_user: {user.strip()}
    archipelago_group: {group.strip()}
    archipelago_manage_service: {str(manage_service).lower()}
"""
    )
    return inventory


def test_rolling_upgrade_runs_in_check_mode_on_localhost(tmp_path: Path) -> None:
    assert ANSIBLE_PLAYBOOK is not None
    testnet = tmp_path / "testnet"
    _testnet(testnet)
    wheel = tmp_path / "dist" / "archipelago-0.0.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")  # check mode never opens it
    inventory = _inventory(tmp_path, testnet, wheel)
    env = _env(tmp_path)

    syntax = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory), "site.yml", "--syntax-check"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT_S,
        check=False,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr

    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory), "rolling_upgrade.yml", "--check"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    recap = re.search(r"localhost\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=0", output)
    assert recap is not None, output
    assert int(recap.group(2)) >= 5, output  # package, home, keys, config, unit
    for task in ("Install the package into the venv", "Install config.toml", "systemd unit"):
        assert task in output, output
    # Check mode: nothing was written.
    for path in ("opt", "home", "unit"):
        assert not (tmp_path / path).exists(), path
