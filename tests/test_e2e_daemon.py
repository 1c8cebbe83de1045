"""End to end in daemon mode, as the README documents it: ``dora up``, then ``dora start`` of the voice chatbot
(attached, and detached with ``dora list`` / ``dora logs`` / ``dora stop``), the live monitor attached to a dataflow
started that way, and the settings rule (a variable set in the shell that calls ``dora start`` reaches the nodes;
``--env`` overrides the YAML's default). Real recordings, small real models.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netcheck
from recordings import load_clip
from daemon_helpers import ROOT, dora, pids_running, start, tool_env
from dora_voice.models import TEST_LLM
from recordings import E2E_SETTINGS, check_turn, compose, silence

pytestmark = pytest.mark.e2e

DATAFLOW = ROOT / "dataflows" / "voice-chatbot.yml"
LIVE = ROOT / "dataflows" / "voice-chatbot-live-monitor.yml"
# The daemon is started with a bare environment (no models, no files): whatever reaches the nodes comes from the
# shell that calls `dora start`. DORA_ZENOH_MULTICAST=off: the README's `dora up` (nothing listens beyond loopback).
UP_ENV = {"DORA_ZENOH_MULTICAST": "off"}


@pytest.fixture
def daemon(tmp_path: Path, request):
    """``dora up`` for one test (``DORA_ZENOH_MULTICAST=off`` unless the test is marked ``scouting``: the live
    monitor, a dynamic node, finds the daemon by zenoh scouting); ``dora destroy`` afterwards, whatever happened."""
    env = tool_env({} if request.node.get_closest_marker("scouting") else UP_ENV)
    dora("destroy", "--force", env=env, cwd=tmp_path)
    up = dora("up", env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env
    finally:
        dora("destroy", "--force", env=env, cwd=tmp_path)
        deadline = time.monotonic() + 20
        while pids_running("dora daemon") and time.monotonic() < deadline:
            time.sleep(0.2)


def _clip(path: Path, lead_s: float = 0.5, tail_s: float = 0.3) -> Path:
    compose(path, [silence(lead_s), load_clip("goforward.wav"), silence(tail_s)])
    return path


def _turns(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_dora_start_attach_answers_with_settings_from_the_callers_shell(tmp_path: Path, daemon) -> None:
    shell = tool_env({**E2E_SETTINGS, "AUDIO_INPUT": str(_clip(tmp_path / "in.wav")),
                      "AUDIO_OUTPUT": str(tmp_path / "answer.wav"), "TIMING_REPORT": str(tmp_path / "t.jsonl")})
    shell.pop("LLM_MODEL")  # given with --env instead: it must beat the YAML's default (qwen2.5-0.5b)
    proc, out = start(["dora", "start", str(DATAFLOW), "--attach", "--env", f"LLM_MODEL={TEST_LLM}"], shell, tmp_path)
    try:
        assert out.wait_for("all nodes are ready", 180), out.text[-4000:]
        daemons = set(pids_running("dora daemon")) | set(pids_running("dora coordinator"))
        exposed = netcheck.beyond_loopback(netcheck.open_sockets(netcheck.descendants(*daemons)))
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, out.text[-4000:]
    assert not exposed, f"opened beyond loopback: {[str(s) for s in exposed]}"
    assert "smollm2" in out.text.lower(), "--env LLM_MODEL did not reach the llm node"
    turns = _turns(tmp_path / "t.jsonl")
    assert len(turns) == 1, out.text[-4000:]
    check_turn(turns[0])
    assert (tmp_path / "answer.wav").stat().st_size > 10_000


@pytest.mark.scouting
def test_detached_run_with_list_logs_and_the_live_monitor_attached(tmp_path: Path, daemon) -> None:
    # A long lead-in, so that the monitor attaches before the question is spoken.
    shell = tool_env({**E2E_SETTINGS, "AUDIO_INPUT": str(_clip(tmp_path / "in.wav", lead_s=4.0)),
                      "AUDIO_OUTPUT": str(tmp_path / "answer.wav"), "TIMING_REPORT": str(tmp_path / "t.jsonl")})
    started = dora("start", str(LIVE), "--detach", "--name", "dv-detached", env=shell, cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    monitor = subprocess.run([str(Path(sys.executable).parent / "monitor_streaming_timing"), "--turns", "1",
                              "--timeout", "180", "--wait-for-dataflow", "60", "--jsonl", str(tmp_path / "live.jsonl")],
                             env=shell, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert monitor.returncode == 0, monitor.stdout[-3000:] + monitor.stderr[-3000:]
    live = _turns(tmp_path / "live.jsonl")
    assert [t["turn_id"] for t in live] == [0], monitor.stderr[-3000:]
    assert live[0]["first_audio_ms"] is not None and live[0]["segments_lost"] == 0

    deadline = time.monotonic() + 120
    listing = ""
    while time.monotonic() < deadline:
        listing = dora("list", env=shell, cwd=tmp_path).stdout
        if "dv-detached" in listing and "Running" not in listing:
            break
        time.sleep(1)
    assert "dv-detached" in listing and "Finished" in listing, listing
    # By name only while it runs; a finished dataflow's logs are found by its UUID (dora 1.1).
    uuid = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", started.stdout + started.stderr)
    assert uuid, started.stdout + started.stderr
    logs = dora("logs", uuid.group(0), "--node", "monitor", env=shell, cwd=tmp_path)
    assert "SESSION SUMMARY" in logs.stdout + logs.stderr, logs.stdout[-3000:] + logs.stderr[-3000:]
    turns = _turns(tmp_path / "t.jsonl")
    assert len(turns) == 1
    check_turn(turns[0])
    assert turns[0]["transcript"] == live[0]["transcript"]


def test_dora_stop_ends_a_running_dataflow(tmp_path: Path, daemon) -> None:
    shell = tool_env({**E2E_SETTINGS, "AUDIO_INPUT": str(_clip(tmp_path / "in.wav", tail_s=120.0)),
                      "AUDIO_OUTPUT": str(tmp_path / "answer.wav"), "TIMING_REPORT": str(tmp_path / "t.jsonl")})
    started = dora("start", str(DATAFLOW), "--detach", "--name", "dv-stop", env=shell, cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    # Stop it mid-session: once the first answer was given (every node is up by then; `dora list` says Running
    # while the models still load, and a stop then fails on a node that never connected).
    deadline = time.monotonic() + 180
    while not _turns(tmp_path / "t.jsonl") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _turns(tmp_path / "t.jsonl"), "precondition not met: no answer within 180 s, nothing to stop mid-session"
    stopped = dora("stop", "dv-stop", env=shell, cwd=tmp_path, timeout_s=90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = dora("list", env=shell, cwd=tmp_path).stdout
        if "dv-stop" in listing and "Running" not in listing:
            break
        time.sleep(0.5)
    assert "Running" not in listing, listing
