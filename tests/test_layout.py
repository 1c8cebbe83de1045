"""Imports run one way: tools -> monitor -> nodes. Nothing below imports anything above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # package -> (its folder, the packages it must not import)
    "dora_voice": (ROOT / "nodes" / "dora_voice", ("dora_voice_monitor", "dora_voice_tools")),
    "dora_voice_monitor": (ROOT / "monitor" / "dora_voice_monitor", ("dora_voice_tools",)),
}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
            elif isinstance(node.args[0], ast.JoinedStr):  # f"pkg.{name}": its constant head
                head = node.args[0].values[0]
                names.add(head.value if isinstance(head, ast.Constant) else "")
    return names


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_lower_layers_do_not_import_upper_ones(package: str) -> None:
    folder, forbidden = PACKAGES[package]
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted(folder.rglob("*.py")) for name in sorted(_imported_modules(path))
                 if name.split(".")[0] in forbidden]
    assert not offenders, offenders


def test_library_code_does_not_reach_into_the_checkout() -> None:
    # The packages must work installed from a wheel: no path built from the checkout layout.
    offenders = []
    for path in sorted((ROOT / "nodes").rglob("*.py")) + sorted((ROOT / "monitor").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in ("parents[2]", "REPO_ROOT", '"tests"', "'tests'", '"examples"', "tests/data/"):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders
