"""The shared event loop: draining, undeclared outputs, the wait after the last output before exiting, and reliable
delivery between machines in the loop."""

from __future__ import annotations

import logging
import sys

import pytest

import pyarrow as pa

from dora_voice.link import ACK_TIMEOUT_S, MARKER_RETRY_S
from dora_voice.runtime import EXIT_LINGER_S, NodeCore, run_node
from dora_voice.schema import Key

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


# -- reliable delivery between machines (dora_voice.link) in the loop -----------------------------------------------


class LinkNode(EventNode):
    """An ``EventNode`` with input sources and a dataflow descriptor. As a sender's peer it plays the receiver: the
    end-of-stream markers, once all outputs have one, are answered with ``done`` on ``ack_<receiver>`` (``answer``
    ``None``: never). Blocking on an empty queue fails the test: with a report input open, dora would never end the
    stream by itself."""

    def __init__(self, events, outputs, inputs, clock, *, receivers=(), answer=True, ends=False,
                 descriptor=None) -> None:
        super().__init__(events, outputs, clock)
        self.inputs, self.receivers, self.answer, self.ends = inputs, receivers, answer, ends
        self.descriptor = descriptor or {"nodes": []}
        self.metadata: list[tuple[str, dict]] = []

    def node_config(self) -> dict:
        return {"outputs": self.outputs, "inputs": self.inputs}

    def dataflow_descriptor(self) -> dict:
        return self.descriptor

    def next(self, timeout=None):
        if self.events:
            return self.events.pop(0)
        if self.ends:
            return None
        assert timeout is not None, "blocked on an empty stream: would hang"
        self.clock.advance(timeout)
        return {"type": "ERROR", "error": "Timeout event stream error: Receiver timed out"}

    def send_output(self, output_id, value, metadata) -> None:
        super().send_output(output_id, value, metadata)
        self.metadata.append((output_id, dict(metadata)))
        markers = [m for _o, m in self.metadata if m.get(Key.END_OF_STREAM)]
        if self.answer and metadata.get(Key.END_OF_STREAM) and len(markers) == len(self.outputs):
            self.events += [{"type": "INPUT", "id": f"ack_{r}", "value": pa.array([], pa.uint8()),
                             "metadata": {Key.LINK: metadata[Key.LINK], Key.EVENT: "done"}} for r in self.receivers]


SENDER_INPUTS = {"in": "up/x", "ack_rx": {"source": "rx/ack"}}


def run(node: EventNode, clock: FakeClock) -> float:
    """Runs an ``Echo`` core on ``node``; returns the seconds it took on the fake clock."""
    start_s = clock() / 1e9
    run_node(node, Echo(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    return clock() / 1e9 - start_s


def test_a_sender_numbers_its_messages_marks_the_end_and_exits_once_the_receiver_reports_done() -> None:
    clock = FakeClock()
    node = LinkNode(inputs(2) + [{"type": "INPUT_CLOSED", "id": "in"}], ["out", "timing"], SENDER_INPUTS, clock,
                    receivers=["rx"])
    took_s = run(node, clock)
    sent = [(o, m.get(Key.LINK_SEQ), bool(m.get(Key.END_OF_STREAM))) for o, m in node.metadata]
    # Data numbered per output, then one marker per output carrying the count; the loop ended without dora
    # ending the stream (the report input stays open), and it did not wait out the timeout.
    assert sent == [("out", 0, False), ("out", 1, False), ("out", 2, False), ("out", 3, True), ("timing", 0, True)]
    assert node.events == [] and took_s <= EXIT_LINGER_S


def test_a_sender_without_a_report_gives_up_after_the_timeout_and_says_so(caplog) -> None:
    clock = FakeClock()
    node = LinkNode(inputs(1) + [{"type": "INPUT_CLOSED", "id": "in"}], ["out"], SENDER_INPUTS, clock, answer=False)
    with caplog.at_level(logging.WARNING):
        took_s = run(node, clock)
    assert ACK_TIMEOUT_S <= took_s <= ACK_TIMEOUT_S + EXIT_LINGER_S
    assert "no end-of-stream report on ack_rx" in caplog.text
    # The markers went out again while it waited (a marker can be dropped too).
    assert len([m for _o, m in node.metadata if m.get(Key.END_OF_STREAM)]) >= ACK_TIMEOUT_S / MARKER_RETRY_S - 1


def test_a_sender_stops_waiting_for_a_receiver_that_finished() -> None:
    clock = FakeClock()
    events = inputs(1) + [{"type": "INPUT_CLOSED", "id": "in"}, {"type": "INPUT_CLOSED", "id": "ack_rx"}]
    node = LinkNode(events, ["out"], SENDER_INPUTS, clock, answer=False)
    assert run(node, clock) <= EXIT_LINGER_S


def test_a_receiver_reorders_a_retransmission_and_never_shows_the_link_to_its_core(monkeypatch) -> None:
    monkeypatch.setenv("DORA_NODE_CONFIG", "node_id: rx\n")
    clock = FakeClock()

    def message(seq: int, **extra) -> dict:
        return {"type": "INPUT", "id": "in", "value": pa.array([seq]),
                "metadata": {Key.LINK: "tok", Key.LINK_SEQ: seq, **extra}}

    descriptor = {"nodes": [{"id": "tx", "inputs": {"ack_rx": "rx/ack"}}]}
    events = [message(0), message(2), message(1), message(1), message(3, **{Key.END_OF_STREAM: True})]
    node = LinkNode(events, ["out", "ack"], {"in": "tx/o"}, clock, ends=True, descriptor=descriptor)
    received = []

    class Record(Echo):
        def on_input(self, input_id, value, metadata):
            received.append((value.to_pylist()[0], sorted(metadata)))
            return []

    run_node(node, Record(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    # In order, once each (the duplicate of 1 dropped), without the link's metadata.
    assert received == [(0, []), (1, []), (2, [])]
    reports = [(m[Key.EVENT], value) for o, m in node.metadata if o == "ack" for value in [m.get(Key.DETAIL)]]
    assert reports == [("nack", "o"), ("done", None)]  # 1 asked for as soon as 2 arrived; done after the marker


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_build_at_lowest_priority_runs_the_factory_on_a_thread_at_nice_19_whose_threads_inherit_it() -> None:
    """What CTranslate2 relies on: the compute threads a model starts while it loads take their creator's priority."""
    import os
    import threading

    from dora_voice.runtime import build_at_lowest_priority

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    caller = nice()
    seen: dict[str, int] = {}

    def factory() -> str:
        seen["factory"] = nice()
        child = threading.Thread(target=lambda: seen.__setitem__("child", nice()))
        child.start()
        child.join()
        return "built"

    assert build_at_lowest_priority(factory, "test") == "built"
    assert seen == {"factory": 19, "child": 19}
    assert nice() == caller  # the caller's own priority is untouched

    def broken() -> None:
        raise ValueError("no model here")

    with pytest.raises(ValueError, match="no model here"):
        build_at_lowest_priority(broken, "test")


def test_arrow_is_warmed_up_before_the_first_event(monkeypatch) -> None:
    """The first numpy -> Arrow conversion of a process is slow (pyarrow sets it up then): the loop does it before it
    reads the first event, not while it handles the first message."""
    from dora_voice import runtime

    clock = FakeClock()
    node = EventNode(inputs(2) + [{"type": "INPUT_CLOSED", "id": "in"}], ["out"], clock)
    events_left: list[int] = []
    monkeypatch.setattr(runtime, "warm_up_arrow", lambda: events_left.append(len(node.events)) or 0.0)
    run_node(node, Echo(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    assert events_left == [3] and len(node.sent) == 3  # before the first of the 3 events; nothing else changes


class Timed(NodeCore):
    """Per input: a timing event, then two outputs on ``a`` and one on ``b``, interleaved with more timing."""

    def on_input(self, input_id, value, metadata):
        k = value[0].as_py()
        return [("timing", pa.array([k]), {}), ("a", pa.array([k]), {}), ("timing", pa.array([k + 10]), {}),
                ("b", pa.array([k]), {}), ("a", pa.array([k + 100]), {})]


def test_a_batch_sends_its_timing_events_after_its_data_in_order() -> None:
    clock = FakeClock()
    sent: list[tuple[str, int]] = []
    node = EventNode(inputs(2) + [{"type": "INPUT_CLOSED", "id": "in"}], ["a", "b", "timing"], clock)
    node.send_output = lambda output_id, value, metadata: sent.append((output_id, value[0].as_py()))
    run_node(node, Timed(clock_ns=clock), sleep=clock.sleep, monotonic=lambda: clock() / 1e9)
    assert sent == [("a", 0), ("b", 0), ("a", 100), ("timing", 0), ("timing", 10),
                    ("a", 1), ("b", 1), ("a", 101), ("timing", 1), ("timing", 11)]
