"""Library code never prints or configures logging (speech-to-speech's logging hygiene test).

Only the functions that talk to a terminal user may print, and only ``setup_logging`` configures logging. They
are listed one by one (no module is exempt as a whole), and every entry must exist, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("nodes", "monitor")

MAY_PRINT = {
    "nodes/dora_voice/models.py": {"main", "_cmd_list", "_cmd_prepare", "_cmd_install", "_cmd_verify", "_cmd_path",
                                    "_cmd_mlx"},
    "nodes/dora_voice/nodes/__init__.py": {"node_cli"},  # --help and --list-env of every node
    "monitor/dora_voice_monitor/cli.py": {"main"},
    "monitor/dora_voice_tools/cli.py": {"print_report", "cmd_run", "cmd_live", "cmd_devices"},
    "monitor/dora_voice_tools/bench/cli.py": {"main", "_Bench.say", "_Bench.run_one", "_Bench.run_stress",
                                              "_Bench.run", "_Bench.run_answers", "_Bench.run_soak",
                                              "_Bench._session", "_Bench.run_echo"},
}
"""Terminal programs: ``path -> qualified names of the functions that may print``."""

MAY_CONFIGURE_LOGGING = {"nodes/dora_voice/logs.py": {"setup_logging"}}


def _calls(tree: ast.AST) -> list[tuple[str, str, int]]:
    """``(called name, qualified name of the enclosing function, line)`` for every call in ``tree``."""
    found: list[tuple[str, str, int]] = []

    def walk(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope + [child.name] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                ast.ClassDef)) else scope
            if isinstance(child, ast.Call):
                func = child.func
                if isinstance(func, ast.Name):
                    found.append((func.id, ".".join(scope), child.lineno))
                elif isinstance(func, ast.Attribute):
                    found.append((f"{getattr(func.value, 'id', '')}.{func.attr}", ".".join(scope), child.lineno))
            walk(child, inner)

    walk(tree, [])
    return found


def _definitions(tree: ast.AST) -> set[str]:
    names: set[str] = set()

    def walk(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(".".join(scope + [child.name]))
                walk(child, scope + [child.name])

    walk(tree, [])
    return names


def _library() -> dict[str, ast.AST]:
    return {path.relative_to(ROOT).as_posix(): ast.parse(path.read_text())
            for root in LIBRARY for path in sorted((ROOT / root).rglob("*.py"))}


def test_no_print_or_basicconfig_in_library_code() -> None:
    offenders = []
    for rel, tree in _library().items():
        for name, scope, line in _calls(tree):
            if name == "print" and scope not in MAY_PRINT.get(rel, set()):
                offenders.append(f"{rel}:{line} ({scope or 'module'}): print")
            if name == "logging.basicConfig" and scope not in MAY_CONFIGURE_LOGGING.get(rel, set()):
                offenders.append(f"{rel}:{line} ({scope or 'module'}): logging.basicConfig")
    assert not offenders, offenders


def test_every_exemption_names_a_function_that_exists() -> None:
    library = _library()
    stale = [f"{rel}: {name}" for allowed in (MAY_PRINT, MAY_CONFIGURE_LOGGING) for rel, names in allowed.items()
             for name in sorted(names) if rel not in library or name not in _definitions(library[rel])]
    assert not stale, f"exemptions for functions that no longer exist (update the lists): {stale}"


def test_no_ansi_or_emoji_in_log_formats() -> None:
    for root in LIBRARY:
        for path in (ROOT / root).rglob("*.py"):
            text = path.read_text()
            assert "\x1b[" not in text and "\\033[" not in text, path
            assert not any(ord(ch) >= 0x1F300 for ch in text), path
