"""Every dataflow YAML against the node contracts: paths, inputs, sources, queue policy, env keys."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dora_voice_tools.contracts import all_contracts

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(ROOT.glob("dataflows/*.yml")) + sorted(ROOT.glob("examples/*/*.yml"))
CONTRACTS = all_contracts()
# Example scripts that run as nodes, and the contract they follow.
CONTRACTS["test_streaming_llm_tts.py"] = CONTRACTS["dora-voice-text-input"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_matches_the_node_contracts(path: Path) -> None:
    nodes = {n["id"]: n for n in load(path)["nodes"]}
    for node_id, node in nodes.items():
        if node["path"] == "dynamic":
            continue
        contract = CONTRACTS.get(node["path"])
        assert contract is not None, f"{node_id}: unknown node path {node['path']!r}"
        assert set(node.get("outputs", [])) <= set(contract.outputs), f"{node_id}: undeclared outputs"
        for key in (node.get("env") or {}):
            assert key in contract.env(), f"{node_id}: env {key} is not read by {node['path']}"
        for input_id, spec in (node.get("inputs") or {}).items():
            assert input_id in contract.inputs or (node["path"] == "dora-voice-monitor" and
                                                    input_id.endswith(("timing", "audio"))), \
                f"{node_id}: input {input_id!r} not in {node['path']}'s contract"
            _check_input(nodes, node_id, input_id, spec)


def _check_input(nodes: dict, node_id: str, input_id: str, spec) -> None:
    assert isinstance(spec, dict), f"{node_id}.{input_id}: write {{source, queue_size, queue_policy}}"
    assert spec.get("queue_policy") == "backpressure", f"{node_id}.{input_id}: queue_policy must be backpressure"
    assert int(spec.get("queue_size", 0)) >= 10
    source_node, output = spec["source"].split("/", 1)
    assert source_node in nodes, f"{node_id}.{input_id}: no node {source_node}"
    if nodes[source_node]["path"] != "dynamic":
        assert output in nodes[source_node].get("outputs", []), f"{node_id}.{input_id}: {spec['source']} not declared"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_dora_validate(path: Path) -> None:
    dora = shutil.which("dora")
    if dora is None:
        pytest.skip("dora CLI not on PATH")
    out = subprocess.run([dora, "validate", path.name], cwd=path.parent, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_env_defaults_in_yaml_parse_with_the_node_config() -> None:
    from dora_voice.config import load_config

    for path in YAMLS:
        for node in load(path)["nodes"]:
            contract = CONTRACTS.get(node["path"])
            if contract is None:
                continue
            env = {}
            for key, value in (node.get("env") or {}).items():
                match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
                env[key] = match.group(2) if match else str(value)
            load_config(contract.config, env)
