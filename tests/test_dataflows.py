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
        # Any node may take part in the end-of-stream handshake (dora_voice.link).
        assert set(node.get("outputs", [])) - {"ack"} <= set(contract.outputs), f"{node_id}: undeclared outputs"
        for key in (node.get("env") or {}):
            assert key in contract.env(), f"{node_id}: env {key} is not read by {node['path']}"
        for input_id, spec in (node.get("inputs") or {}).items():
            assert input_id in contract.inputs or input_id.startswith("ack_") or (
                node["path"] == "dora-voice-monitor" and input_id.endswith(("timing", "audio"))), \
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


def _defaults(env: dict) -> dict[str, str]:
    """``VAR: ${VAR:-default}`` entries -> ``{VAR: default}`` (other values as written)."""
    out = {}
    for key, value in (env or {}).items():
        match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
        out[key] = match.group(2) if match else str(value)
    return out


def test_env_defaults_in_yaml_parse_with_the_node_config() -> None:
    from dora_voice.config import load_config

    for path in YAMLS:
        shared = _defaults(load(path).get("env"))
        for node in load(path)["nodes"]:
            contract = CONTRACTS.get(node["path"])
            if contract is None:
                continue
            env = {k: v for k, v in shared.items() if k in contract.env()}
            env.update(_defaults(node.get("env")))
            load_config(contract.config, env)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_setting_passes_through_from_the_callers_shell(path: Path) -> None:
    """One rule for ``dora run`` and ``dora start``: every env var a node of the YAML reads is listed once in the
    dataflow-level ``env:`` as ``VAR: ${VAR:-default}``. dora expands it from the shell of whoever runs ``dora
    run``/``dora start``, and ``--env VAR=x`` overrides it (a node-level entry would beat ``--env``; measured with
    dora 1.1), so no node repeats one in its own ``env:``."""
    from dora_voice.models import ENV_MODELS_DIR

    flow = load(path)
    wanted: set[str] = set()
    for node in flow["nodes"]:
        if node["path"] != "dynamic":
            wanted |= set(CONTRACTS[node["path"]].env())
            if node["path"] in ("dora-voice-asr", "dora-voice-llm", "dora-voice-tts"):
                wanted.add(ENV_MODELS_DIR)
    env = flow.get("env") or {}
    assert set(env) == wanted, (f"missing {sorted(wanted - set(env))}, not read by any node "
                                f"{sorted(set(env) - wanted)}")
    for key, value in env.items():
        assert re.fullmatch(r"\$\{" + key + r":-[^$]*\}", str(value)), f"{key}: write {key}: ${{{key}:-default}}"
    for node in flow["nodes"]:
        assert not set(node.get("env") or {}) & wanted, f"{node['id']}: move its env entries to the dataflow env"


LIVE_MONITOR_VARIANTS = {
    ROOT / "dataflows" / "voice-chatbot-live-monitor.yml": ROOT / "dataflows" / "voice-chatbot.yml",
    ROOT / "examples" / "voice-chatbot" / "test_streaming_pipeline_live_monitor.yml":
        ROOT / "examples" / "voice-chatbot" / "test_streaming_pipeline.yml",
}


@pytest.mark.parametrize("variant", LIVE_MONITOR_VARIANTS, ids=lambda p: p.name)
def test_live_monitor_variant_is_the_plain_dataflow_plus_the_attach_point(variant: Path) -> None:
    """A declared but unattached dynamic node makes dora log an ERROR at the end of every run and open a
    multicast scouting socket on 0.0.0.0 (measured): only the ``*live_monitor*`` variants declare one."""
    from dora_voice_monitor.cli import DEFAULT_NODE_ID

    plain, live = load(LIVE_MONITOR_VARIANTS[variant]), load(variant)
    assert not [n for n in plain["nodes"] if n["path"] == "dynamic"]
    extra = [n for n in live["nodes"] if n["path"] == "dynamic"]
    assert [n["id"] for n in extra] == [DEFAULT_NODE_ID]
    assert {k: v for k, v in live.items() if k != "nodes"} == {k: v for k, v in plain.items() if k != "nodes"}
    assert [n for n in live["nodes"] if n["path"] != "dynamic"] == plain["nodes"]
    timing = {f"{n['id'].replace('-', '_')}_timing" for n in plain["nodes"] if "timing" in n.get("outputs", [])}
    assert timing <= set(extra[0]["inputs"])


DISTRIBUTED = ROOT / "examples" / "distributed" / "voice-chatbot-distributed.yml"
MACHINES = {"mic": "edge", "aec": "edge", "vad": "edge", "speaker": "edge", "monitor": "edge",
            "asr": "server", "llm": "server", "tts": "server"}


def test_distributed_dataflow_is_the_voice_chatbot_split_across_edge_and_server() -> None:
    split, plain = load(DISTRIBUTED), load(ROOT / "dataflows" / "voice-chatbot.yml")
    assert {n["id"]: n.get("deploy") for n in split["nodes"]} == {k: {"machine": v} for k, v in MACHINES.items()}
    assert [_without_handshake(n) for n in split["nodes"]] == plain["nodes"]
    assert split["env"] == plain["env"]


def _without_handshake(node: dict) -> dict:
    """A node of the split dataflow without its deploy key and its end-of-stream handshake wiring."""
    node = {k: v for k, v in node.items() if k != "deploy"}
    node["inputs"] = {k: v for k, v in (node.get("inputs") or {}).items() if not k.startswith("ack_")} or None
    node["outputs"] = [o for o in node.get("outputs", []) if o != "ack"] or None
    return {k: v for k, v in node.items() if v is not None}
