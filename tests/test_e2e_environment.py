"""dora resolves the nodes from the environment the user installed into, and leaves the checkout alone.

dora 1.1 resolves a node's ``path:`` that is not a file next to the YAML with ``uv run which <path>`` whenever
``uv`` is on PATH (``dora_core::descriptor::resolve_path``; ``dora-rs-cli`` depends on ``uv``, so it always is).
In a folder under a ``pyproject.toml``, ``uv run`` syncs that project into ``<project>/.venv`` (creating it, with
the declared dependencies only) and writes ``uv.lock``; the project's ``[tool.uv] managed = false`` turns that
off. This test runs ``dora run`` inside a copy of the checkout's ``pyproject.toml`` with the node's console script
installed only in a venv outside it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_helpers import ROOT, tool_env

pytestmark = pytest.mark.e2e


def test_dora_run_takes_the_node_from_the_users_venv_and_writes_nothing_into_the_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "dataflows").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    outside_bin = tmp_path / "elsewhere" / "venv" / "bin"
    outside_bin.mkdir(parents=True)
    probe = outside_bin / "dora-voice-probe"
    probe.write_text(f"#!{sys.executable}\nimport sys\nfrom dora import Node\n\nNode()\n"
                     f"print('probe ran as', sys.argv[0], flush=True)\n")
    probe.chmod(0o755)
    (checkout / "dataflows" / "probe.yml").write_text("nodes:\n  - id: probe\n    path: dora-voice-probe\n")
    env = tool_env()
    env["PATH"] = f"{outside_bin}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(outside_bin.parent)
    proc = subprocess.run(["dora", "run", "probe.yml", "--stop-after", "60s"], cwd=checkout / "dataflows", env=env,
                          capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert f"probe ran as {probe}" in output, output[-3000:]
    assert not (checkout / ".venv").exists(), "uv built a venv in the checkout"
    assert not (checkout / "uv.lock").exists(), "uv wrote uv.lock into the checkout"
