"""Config parsing: strict values, errors that name the variable, defaults, every node's --help."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from dora_voice.config import (
    ConfigError, env_field, env_vars, load_config, parse_bool, parse_choice, parse_float, parse_int,
)
from dora_voice_tools.contracts import all_contracts


@dataclass(frozen=True)
class Demo:
    flag: bool = env_field("DEMO_FLAG", False, parse_bool, "a flag")
    count: int = env_field("DEMO_COUNT_MS", 5, parse_int(min_value=0, max_value=10), "a count, ms")
    ratio: float = env_field("DEMO_RATIO", 0.5, parse_float(min_value=0.0), "a ratio")
    mode: str = env_field("DEMO_MODE", "a", parse_choice("a", "b"), "a mode")


def test_defaults_and_values() -> None:
    assert load_config(Demo, {}) == Demo()
    cfg = load_config(Demo, {"DEMO_FLAG": "TRUE", "DEMO_COUNT_MS": " 7 ", "DEMO_RATIO": "1e-1", "DEMO_MODE": "B"})
    assert cfg == Demo(True, 7, 0.1, "b")
    assert load_config(Demo, {"DEMO_COUNT_MS": ""}).count == 5  # empty means default


@pytest.mark.parametrize("env,name", [
    ({"DEMO_FLAG": "yes please"}, "DEMO_FLAG"), ({"DEMO_COUNT_MS": "1.5"}, "DEMO_COUNT_MS"),
    ({"DEMO_COUNT_MS": "11"}, "DEMO_COUNT_MS"), ({"DEMO_RATIO": "nan"}, "DEMO_RATIO"),
    ({"DEMO_RATIO": "-1"}, "DEMO_RATIO"), ({"DEMO_MODE": "c"}, "DEMO_MODE"),
])
def test_bad_values_name_the_variable(env, name) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(Demo, env)


def test_env_vars_lists_names_defaults_and_help() -> None:
    assert env_vars(Demo)["DEMO_COUNT_MS"] == (5, "a count, ms")


def test_every_node_config_loads_with_defaults() -> None:
    for contract in all_contracts().values():
        for config in contract.configs:
            load_config(config, {})


@pytest.mark.parametrize("path", sorted(all_contracts()))
def test_every_node_has_a_helpful_help(path: str) -> None:
    exe = __import__("shutil").which(path, path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, f"console script {path} is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    contract = all_contracts()[path]
    for name in contract.env():
        if name != "LOG_LEVEL" and any(name in env_vars(config) for config in contract.configs):
            assert name in out.stdout, f"{path} --help does not mention {name}"
