"""The pieces of the two-machine setup that need no dora: the launcher's deploy overlay, the packaged cluster
script, the hop-cost summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dora_voice_tools import resources
from dora_voice_tools.launcher import LaunchError, deploy_overlay, parse_machines

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "distributed" / "run-local-cluster.sh"
BENCH_SPLIT = "edge=mic,aec,room,vad,speaker,monitor,text-input;server=asr,llm,tts"


def test_packaged_cluster_script_is_the_examples() -> None:
    assert resources.CLUSTER_SCRIPT.read_bytes() == SCRIPT.read_bytes(), (
        f"copy {SCRIPT} over {resources.CLUSTER_SCRIPT} (the bench's distributed plan runs the packaged copy)")


def test_cluster_script_parses_and_explains_itself() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    helped = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0
    for expected in ("--input", "AUDIO_OUTPUT", "TIMING_REPORT", "DORA_COORDINATOR_PORT", "EDGE_ZENOH_PORT", "Ctrl-C"):
        assert expected in helped.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument: --frobnicate" in bad.stderr


def test_parse_machines() -> None:
    machines = parse_machines(BENCH_SPLIT)
    assert machines["vad"] == "edge" and machines["llm"] == "server" and machines["*"] == "edge"
    assert parse_machines("") == {}
    with pytest.raises(LaunchError, match="two machines"):
        parse_machines("a=x;b=x")
    with pytest.raises(LaunchError, match="expected machine=node"):
        parse_machines("edge")


def test_overlay_of_the_voice_dataflow_is_the_distributed_example() -> None:
    overlay = yaml.safe_load(deploy_overlay(resources.VOICE_DATAFLOW.read_text(), parse_machines(BENCH_SPLIT)))
    example = yaml.safe_load((ROOT / "examples" / "distributed" / "voice-chatbot-distributed.yml").read_text())
    assert overlay == example


def test_overlay_leaves_dynamic_nodes_alone() -> None:
    live = (ROOT / "dataflows" / "voice-chatbot-live-monitor.yml").read_text()
    nodes = yaml.safe_load(deploy_overlay(live, parse_machines(BENCH_SPLIT)))["nodes"]
    assert [n["id"] for n in nodes if "deploy" not in n] == ["monitor-dynamic"]


def test_hop_cost_summary() -> None:
    sys.path.insert(0, str(ROOT / "examples" / "distributed"))
    try:
        import hop_cost
    finally:
        sys.path.pop(0)
    near = {"text": [[0, 50.0]] + [[i, 1.0] for i in range(1, 101)], "audio_1s": [[i, 2.0] for i in range(101)]}
    far = {"text": [[0, 90.0]] + [[i, 1.5] for i in range(1, 101)], "audio_1s": [[i, 3.0 + (i == 100)] for i in range(101)]}
    figures = hop_cost.summarize({"near": near, "far": far}, skip_first=1)
    assert figures["near/text"]["n"] == 100 and figures["near/text"]["p99"] == 1.0  # the start-up message is skipped
    assert figures["extra/text"]["p50"] == 0.5
    assert figures["extra/audio_1s"]["p50"] == 1.0 and figures["far/audio_1s"]["p99"] == 3.0


def test_overlay_wires_the_end_of_stream_handshake_on_every_edge_between_machines_only() -> None:
    flow = yaml.safe_load(deploy_overlay(resources.VOICE_DATAFLOW.read_text(), parse_machines(BENCH_SPLIT)))
    nodes = {n["id"]: n for n in flow["nodes"] if n["path"] != "dynamic"}
    machine = {node_id: n["deploy"]["machine"] for node_id, n in nodes.items()}
    expected = set()
    for receiver, node in nodes.items():
        for input_id, spec in (node.get("inputs") or {}).items():
            sender = spec["source"].split("/", 1)[0]
            if input_id.startswith("ack_"):
                assert spec["source"] == f"{input_id.removeprefix('ack_')}/ack"
                assert "ack" in nodes[sender]["outputs"]
            elif machine[sender] != machine[receiver]:
                expected.add((sender, receiver))
    wired = {(sender, input_id.removeprefix("ack_")) for sender, n in nodes.items()
             for input_id in (n.get("inputs") or {}) if input_id.startswith("ack_")}
    assert wired == expected and ("tts", "speaker") in wired and ("vad", "asr") in wired
