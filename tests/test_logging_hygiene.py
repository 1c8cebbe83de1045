"""Library code never prints or configures logging (speech-to-speech's logging hygiene test)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Modules whose job is to talk to a terminal user (CLIs) may print, and so may a node's main() / device listing.
CLI_MODULES = {"cli.py", "models.py", "node.py", "report.py"}
CLI_FUNCTIONS = {"main", "node_cli", "list_devices", "print_devices"}


def _calls(tree: ast.AST):
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in CLI_FUNCTIONS:
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id
            elif isinstance(func, ast.Attribute):
                yield f"{getattr(func.value, 'id', '')}.{func.attr}"


def test_no_print_or_basicconfig_in_library_code() -> None:
    offenders = []
    for path in list((ROOT / "nodes").rglob("*.py")) + list((ROOT / "monitor").rglob("*.py")):
        calls = set(_calls(ast.parse(path.read_text())))
        if path.name != "logs.py" and "logging.basicConfig" in calls:
            offenders.append(f"{path}: logging.basicConfig")
        if path.name not in CLI_MODULES and "print" in calls:
            offenders.append(f"{path}: print")
    assert not offenders, offenders


def test_no_ansi_or_emoji_in_log_formats() -> None:
    for path in list((ROOT / "nodes").rglob("*.py")) + list((ROOT / "monitor").rglob("*.py")):
        text = path.read_text()
        assert "\x1b[" not in text and "\\033[" not in text, path
        assert not any(ord(ch) >= 0x1F300 for ch in text), path
