"""``monitor_streaming_timing`` without a dataflow: arguments, attach errors, deadline, and a run on a fake node.

The real attachment to a ``dora run`` dataflow is in ``test_monitor_dataflow.py``.
"""

from __future__ import annotations

import json

import monitor_scenarios as sc
import pytest
from dora_voice_monitor import cli

# dora 1.1's errors, as measured (RUST_BACKTRACE=0)
NO_DATAFLOW = ("Could not setup node from node id. Make sure to have a running dataflow with this dynamic node\n\n"
               "Caused by:\n   0: internal error\n   1: Could not connect to the daemon\n"
               "   2: failed to open TCP connection\n   3: Connection refused (os error 111)\n")
NOT_DECLARED = ("Could not setup node from node id. Make sure to have a running dataflow with this dynamic node\n\n"
                "Caused by:\n    initialization failed: failed to get node config from daemon: "
                "no node with ID `monitor-dynamic`\n")
TIMEOUT = {"type": "ERROR", "error": "Timeout event stream error: Receiver timed out"}


class FakeNode:
    """Stands in for ``dora.Node``: serves scripted events, then the end of the stream."""

    def __init__(self, events: list[dict], inputs: tuple[str, ...] = ("llm_timing",)) -> None:
        self.events = list(events)
        self.inputs = inputs
        self.waits: list[float] = []

    def next(self, timeout: float | None = None) -> dict | None:
        self.waits.append(timeout)
        return self.events.pop(0) if self.events else None

    def node_config(self) -> dict:
        return {"inputs": {i: {} for i in self.inputs}, "outputs": []}

    def dataflow_descriptor(self) -> dict:
        return {"nodes": [{"id": "monitor-dynamic", "outputs": []}]}


def timing_inputs(events) -> list[dict]:
    out = []
    for event in events:
        value, meta = event.encode()
        out.append({"type": "INPUT", "id": f"{event.node}_timing", "value": value, "metadata": meta})
    return out


def test_help_explains_the_dynamic_node(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("path: dynamic", "llm_timing: {source: llm/timing", "--turns", "--timeout", "--save-audio",
                     "--jsonl", "--plot", "--node-id", "dora run"):
        assert expected in text


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--turns", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_attach_errors_are_explained():
    missing = cli.explain_attach_error("monitor-dynamic", RuntimeError(NO_DATAFLOW))
    assert "dora said: Connection refused (os error 111)" in missing
    assert "No dataflow is running" in missing and "dora run dataflows/voice-chatbot-live-monitor.yml" in missing
    undeclared = cli.explain_attach_error("monitor-dynamic", RuntimeError(NOT_DECLARED))
    assert "has no node 'monitor-dynamic'" in undeclared and "dora destroy" in undeclared
    assert "voice-chatbot-live-monitor.yml" in undeclared
    assert "path: dynamic" in undeclared


def test_attach_retries_until_the_dataflow_is_up():
    attempts = []
    now = [0.0]

    def factory(node_id):
        attempts.append(node_id)
        if len(attempts) < 3:
            raise RuntimeError(NO_DATAFLOW)
        return "node"

    def sleep(seconds):
        now[0] += seconds

    assert cli.attach("m", 5.0, node_factory=factory, sleep=sleep, monotonic=lambda: now[0]) == "node"
    assert attempts == ["m", "m", "m"]
    attempts.clear()
    with pytest.raises(RuntimeError):
        cli.attach("m", 0.0, node_factory=lambda _id: (_ for _ in ()).throw(RuntimeError(NO_DATAFLOW)),
                   sleep=sleep, monotonic=lambda: now[0])


def test_deadline_node_swallows_timeouts_and_ends_at_the_deadline():
    now = [0.0]
    event = {"type": "INPUT", "id": "llm_timing"}

    class Ticking(FakeNode):
        def next(self, timeout=None):
            now[0] += timeout  # each dora wait uses its whole timeout
            return super().next(timeout)

    node = Ticking([TIMEOUT, event] + [TIMEOUT] * 100)
    events = cli.DeadlineNode(node, 2.0, poll_s=0.5, monotonic=lambda: now[0])
    assert events.next() is event and not events.timed_out
    assert events.next() is None and events.timed_out
    assert max(node.waits) <= 0.5 and now[0] == pytest.approx(2.0)


def test_main_reports_turns_from_the_node(monkeypatch, tmp_path, capsys):
    node = FakeNode(timing_inputs(sc.turn0() + sc.turn1()), inputs=("llm_timing", "tts_timing"))
    monkeypatch.setattr(cli, "attach", lambda node_id, wait_s: node)
    status = cli.main(["--turns", "1", "--jsonl", str(tmp_path / "t.jsonl"), "--verbose"])
    assert status == cli.EXIT_OK
    (line,) = (tmp_path / "t.jsonl").read_text().splitlines()
    assert json.loads(line)["llm_start_to_first_audio_ms"] == 640.0
    out = capsys.readouterr().out
    assert "CHUNK BREAKDOWN:" in out and "SESSION SUMMARY: 1 turn " in out
    assert node.events, "the monitor should stop reading once --turns is reached"


def test_main_exit_status_when_attach_fails_or_turns_are_missing(monkeypatch, capsys):
    def refuse(node_id, wait_s):
        raise RuntimeError(NOT_DECLARED)

    monkeypatch.setattr(cli, "attach", refuse)
    assert cli.main([]) == cli.EXIT_ATTACH_FAILED
    assert "cannot attach" in capsys.readouterr().err
    monkeypatch.setattr(cli, "attach", lambda node_id, wait_s: FakeNode(timing_inputs(sc.turn0())))
    assert cli.main(["--turns", "2"]) == cli.EXIT_TOO_FEW_TURNS
