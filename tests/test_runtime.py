"""The shared event loop: draining, undeclared outputs, and the wait after the last output before exiting."""

from __future__ import annotations

import pyarrow as pa

from dora_voice.runtime import EXIT_LINGER_S, NodeCore, run_node

from fakes import FakeClock


class EventNode:
    """A ``dora.Node`` stand-in: ``next()`` returns the scripted events, then ``None``; sends are stamped with the
    fake clock so the test can order them against the loop's final wait."""

    def __init__(self, events: list[dict], outputs: list[str], clock: FakeClock) -> None:
        self.events = list(events)
        self.outputs = outputs
        self.clock = clock
        self.sent: list[tuple[str, float]] = []

    def node_config(self) -> dict:
        return {"outputs": self.outputs}

    def next(self):
        return self.events.pop(0) if self.events else None

    def try_recv(self):
        return self.next()

    def send_output(self, output_id, value, metadata) -> None:
        self.sent.append((output_id, self.clock() / 1e9))


class Echo(NodeCore):
    """Sends every input back on ``out`` (and on ``undeclared``), and one ``out`` at the end."""

    def on_input(self, input_id, value, metadata):
        return [("out", value, {}), ("undeclared", value, {})]

    def on_end(self):
        return [("out", pa.array([0]), {})]


def inputs(n: int) -> list[dict]:
    return [{"type": "INPUT", "id": "in", "value": pa.array([k]), "metadata": {}} for k in range(n)]


def test_a_node_that_sent_waits_the_linger_after_its_last_output_then_exits() -> None:
    clock = FakeClock()
    node = EventNode(inputs(3) + [{"type": "STOP"}, {"type": "INPUT_CLOSED", "id": "in"}], ["out"], clock)
    run_node(node, Echo(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    # Every input drained past STOP, the undeclared output skipped, the end flushed.
    assert [o for o, _t in node.sent] == ["out"] * 4
    # One wait, after the last send, of the whole linger (the fake clock did not move in between).
    assert clock.sleeps == [EXIT_LINGER_S]


def test_a_node_that_sent_long_ago_waits_only_the_rest_and_a_quiet_node_not_at_all() -> None:
    clock = FakeClock()

    class SlowEnd(Echo):
        def on_end(self):
            clock.advance(EXIT_LINGER_S * 0.75)  # flushing took a while after the last output
            return []

    node = EventNode(inputs(1), ["out"], clock)
    run_node(node, SlowEnd(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    assert len(node.sent) == 1
    assert clock.sleeps and abs(clock.sleeps[0] - EXIT_LINGER_S * 0.25) < 1e-6

    clock = FakeClock()
    node = EventNode(inputs(2), [], clock)  # nothing it produces is wired: nothing was sent
    run_node(node, Echo(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    assert node.sent == [] and clock.sleeps == []
