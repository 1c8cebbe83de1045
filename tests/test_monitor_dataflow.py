"""The monitor in real dora dataflows (``dora run``): as the ``dora-voice-monitor`` node, and as the
``monitor_streaming_timing`` dynamic node attached to a running dataflow.

``monitor_timing_sender.py`` plays the scripted turns of ``monitor_scenarios`` as the pipeline's nodes would send
them; every input uses ``queue_policy: backpressure``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
SENDER = TESTS / "monitor_timing_sender.py"
ROLES = ("vad", "asr", "text_input", "llm", "tts", "speaker")
DYNAMIC_PORT = 53291  # dora 1.1's fixed local port for dynamic nodes (measured: `dora run` ignores overrides)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # nodes need the venv's python
    env["RUST_BACKTRACE"] = "0"
    env["LOG_LEVEL"] = "INFO"  # the CLI test waits for the "attached as" log line
    for name in ("TIMING_REPORT", "MONITOR_VERBOSE", "MONITOR_PLOT_DIR", "MONITOR_SAVE_AUDIO"):
        env.pop(name, None)
    return env


def _yaml(monitor: str, sender_env: dict[str, str], monitor_env: dict[str, str] | None = None,
          audio: bool = False) -> str:
    inputs = "".join(f"      {role}_timing: {{source: sender/{role}, queue_size: 1000, queue_policy: backpressure}}\n"
                     for role in ROLES)
    if audio:
        inputs += "      tts_audio: {source: sender/audio, queue_size: 1000, queue_policy: backpressure}\n"
    outputs = ", ".join(ROLES + (("audio",) if audio else ()))
    text = (f"nodes:\n  - id: sender\n    path: {SENDER}\n    outputs: [{outputs}]\n    env:\n"
            + "".join(f"      {k}: \"{v}\"\n" for k, v in sender_env.items())
            + f"  - id: {monitor}\n    path: {'dynamic' if monitor == 'monitor-dynamic' else 'dora-voice-monitor'}\n"
            + f"    inputs:\n{inputs}")
    if monitor_env:
        text += "    env:\n" + "".join(f"      {k}: \"{v}\"\n" for k, v in monitor_env.items())
    return text


@pytest.fixture(autouse=True)
def _dora_available():
    if shutil.which("dora", path=_env()["PATH"]) is None:
        pytest.skip("the dora CLI is not installed")


def _check_turns(records: list[dict], turn_ids: list[int]) -> None:
    assert [r["turn_id"] for r in records] == turn_ids
    by_id = {r["turn_id"]: r for r in records}
    if 0 in by_id:
        r = by_id[0]
        assert r["complete"] and r["transcript"] == "tell me a joke"
        assert (r["asr_latency_ms"], r["llm_ttft_ms"], r["tts_ttfb_ms"], r["first_audio_ms"],
                r["llm_start_to_first_audio_ms"]) == (800.0, 110.0, 300.0, 1450.0, 640.0)
        assert [c["combined_ms"] for c in r["chunks"]] == [595.0, 940.0, 1290.0]
        assert (r["segments"], r["segments_played"], r["segments_lost"]) == (3, 3, 0)
    if 1 in by_id:
        assert by_id[1]["interrupted"] and by_id[1]["segments_cancelled"] == 1 and by_id[1]["segments_lost"] == 0
    if 2 in by_id:
        assert by_id[2]["segments_lost"] == 1 and by_id[2]["input_errors"] == 1


def test_monitor_node_in_dataflow(tmp_path):
    report = tmp_path / "turns.jsonl"
    wav = tmp_path / "tts.wav"
    (tmp_path / "dataflow.yml").write_text(_yaml(
        "monitor", {"SENDER_BAD_MESSAGE": "true", "SENDER_AUDIO": "true"},
        {"TIMING_REPORT": str(report), "MONITOR_SAVE_AUDIO": str(wav), "MONITOR_VERBOSE": "true"}, audio=True))
    run = subprocess.run(["dora", "run", "dataflow.yml", "--stop-after", "60s"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    _check_turns([json.loads(line) for line in report.read_text().splitlines()], [0, 1, 2])
    logs = run.stdout + run.stderr
    assert "SESSION SUMMARY: 3 turns (0 incomplete, 1 interrupted)" in logs
    assert "input errors: 2" in logs  # the sender's malformed llm_chunk and the scripted tts error
    assert "utterances without a transcript: 1 (turns 3)" in logs
    assert "CHUNK BREAKDOWN:" in logs
    # every fragment arrived: 4300 + 3400 + 2400 ms of audio at 16 kHz
    assert soundfile.info(str(wav)).frames == (4300 + 3400 + 2400) * 16


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _Lines:
    """Collects a process's output lines in a thread; ``wait_for`` blocks until one contains a text."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in line for line in self.lines), timeout=timeout_s)


def test_cli_attaches_to_running_dataflow(tmp_path):
    if _port_in_use(DYNAMIC_PORT):
        pytest.skip(f"another dora daemon holds the dynamic-node port {DYNAMIC_PORT} (a 'dora up' or another "
                    "'dora run'); the dynamic node would attach there")
    start = tmp_path / "start"
    report = tmp_path / "turns.jsonl"
    (tmp_path / "dataflow.yml").write_text(_yaml("monitor-dynamic", {"SENDER_START_FILE": str(start)}))
    env = _env()
    dataflow = subprocess.Popen(["dora", "run", "dataflow.yml", "--stop-after", "90s"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monitor = subprocess.Popen(
        ["monitor_streaming_timing", "--turns", "1", "--jsonl", str(report), "--wait-for-dataflow", "30",
         "--timeout", "60"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = _Lines(monitor.stdout), _Lines(monitor.stderr)
        assert stderr.wait_for("attached as 'monitor-dynamic'", 40), "".join(stderr.lines)
        started = time.monotonic()
        start.touch()  # only now does the sender play its turns: nothing is sent before the monitor listens
        status = monitor.wait(timeout=60)
        assert stdout.wait_for("SESSION SUMMARY", 5)
        out = "".join(stdout.lines)
        assert status == 0, out + "".join(stderr.lines)
        assert time.monotonic() - started < 30
        assert "SESSION SUMMARY: 1 turn (0 incomplete, 0 interrupted)" in out
        _check_turns([json.loads(line) for line in report.read_text().splitlines()], [0])
        # the dataflow goes on without the monitor and ends by itself (backpressure inputs do not stall it)
        dataflow_out, _ = dataflow.communicate(timeout=60)
        assert dataflow.returncode == 0, dataflow_out[-3000:]
    finally:
        for proc in (monitor, dataflow):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
