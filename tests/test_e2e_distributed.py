"""End to end across two dora daemons on one host: ``examples/distributed/run-local-cluster.sh`` starts a
coordinator and the daemons ``edge`` (mic, vad, speaker, monitor) and ``server`` (asr, llm, tts) on loopback and
runs ``voice-chatbot-distributed.yml`` on a real recording with the small test models. The same checks as the
single-machine test, plus: each node ran on its machine, nothing listened beyond loopback, nothing was left running.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

import netcheck
from daemon_helpers import ROOT, READY, processes_running, start, tool_env
from recordings import E2E_SETTINGS, active_seconds, check_turn, compose, silence
from recordings import load_clip

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "examples" / "distributed" / "run-local-cluster.sh"
PORTS = {"DORA_COORDINATOR_PORT": "16113", "EDGE_LISTEN_PORT": "16391", "SERVER_LISTEN_PORT": "16392",
         "EDGE_ZENOH_PORT": "17547", "SERVER_ZENOH_PORT": "17548"}


def test_voice_answer_through_two_daemons(tmp_path: Path) -> None:
    compose(tmp_path / "in.wav", [silence(0.5), load_clip("goforward.wav"), silence(0.3)])
    workdir = tmp_path / "cluster"
    env = tool_env({**E2E_SETTINGS, **PORTS})
    proc, out = start(["bash", str(SCRIPT), "--input", str(tmp_path / "in.wav"), "--output",
                       str(tmp_path / "answer.wav"), "--report", str(tmp_path / "timing.jsonl"),
                       "--workdir", str(workdir), "--timeout", "240"], env, tmp_path)
    try:
        assert out.wait_for(READY, 180), out.text[-4000:]
        exposed = netcheck.beyond_loopback(netcheck.open_sockets(netcheck.descendants(proc.pid)))
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    log = out.text
    assert rc == 0, log[-4000:]
    assert not exposed, f"opened beyond loopback: {[str(s) for s in exposed]}"

    # Each node ran under the daemon the YAML deploys it to.
    for node, machine in {"mic": "edge", "vad": "edge", "speaker": "edge", "monitor": "edge",
                          "asr": "server", "llm": "server", "tts": "server"}.items():
        assert re.search(rf"{node} on daemon `{machine}`: daemon {node} finished successfully", log), node

    turns = [line for line in (tmp_path / "timing.jsonl").read_text().splitlines() if line.strip()]
    assert len(turns) == 1, log[-4000:]

    turn = json.loads(turns[0])
    check_turn(turn)
    assert "forward" in turn["transcript"].lower()
    answer, rate = sf.read(tmp_path / "answer.wav", dtype="float32")
    loud_s, _ = active_seconds(answer, rate)
    assert loud_s >= 0.5

    # Torn down: no coordinator or daemon of this cluster is left, and the daemons worked outside the checkout.
    assert not processes_running(f"--coordinator-port {PORTS['DORA_COORDINATOR_PORT']}")
    assert not processes_running(f"--port {PORTS['DORA_COORDINATOR_PORT']}")
    assert (workdir / "edge" / "_work").is_dir() and (workdir / "server" / "_work").is_dir()
    leftovers = [p for p in (SCRIPT.parent / "out", SCRIPT.parent / "_work", ROOT / "uv.lock") if p.exists()]
    assert not leftovers, leftovers


def test_cluster_script_fails_clearly_and_starts_nothing_without_the_nodes_on_path(tmp_path: Path) -> None:
    env = tool_env(PORTS)
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run(["bash", str(SCRIPT), "--input", str(tmp_path / "missing.wav")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "activate" in proc.stderr
    assert not processes_running(f"--port {PORTS['DORA_COORDINATOR_PORT']}")


def test_ctrl_c_tears_the_cluster_down(tmp_path: Path) -> None:
    """Ctrl-C while the dataflow runs: exit 130, and no coordinator, daemon or node of the cluster is left."""
    node = tmp_path / "idle_node.py"
    node.write_text("from dora import Node\n\nfor event in Node():\n    pass\n")  # runs until dora stops it
    (tmp_path / "idle.yml").write_text(
        "nodes:\n"
        f"  - {{id: a, path: {node}, outputs: [x], deploy: {{machine: edge}}}}\n"
        f"  - id: b\n    path: {node}\n    deploy: {{machine: server}}\n"
        "    inputs:\n      x: {source: a/x, queue_size: 10, queue_policy: backpressure}\n")
    proc, out = start(["bash", str(SCRIPT), "--dataflow", str(tmp_path / "idle.yml"), "--workdir",
                       str(tmp_path / "cluster")], tool_env(PORTS), tmp_path)
    try:
        assert out.wait_for(READY, 60), out.text[-3000:]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, out.text[-3000:]
    assert not processes_running(str(node))
    assert not processes_running(f"--port {PORTS['DORA_COORDINATOR_PORT']}")
    assert not processes_running(f"--coordinator-port {PORTS['DORA_COORDINATOR_PORT']}")
