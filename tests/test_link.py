"""Reliable delivery between machines (dora_voice.link): numbering, gaps, retransmission, end of stream; and a
sender and a receiver talking through a channel that drops messages, reports and markers."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from dora_voice.link import NACK_RETRY_S, PROBE_AFTER_S, RETRANSMIT_KEEP, Link, acking_sources, own_node_id
from dora_voice.schema import Key


def sender(outputs=("out",)) -> Link:
    return Link({"in": "up/x", "ack_rx": "rx/ack"}, {*outputs}, "tok")


def receiver(inputs=None) -> Link:
    return Link(inputs or {"in": "tx/out"}, {"ack"}, "rx-token", acked_by_sender={"tx"})


def message(seq: int, **extra) -> tuple[pa.Array, dict]:
    return pa.array([seq]), {Key.LINK: "tok", Key.LINK_SEQ: seq, **extra}


def test_a_sender_numbers_each_output_and_its_markers_carry_the_counts() -> None:
    link = sender(("a", "b"))
    seqs = [link.stamp(o, pa.array([1]), {"k": 1})[Key.LINK_SEQ] for o in ("a", "a", "b", "a")]
    assert seqs == [0, 1, 0, 2]
    assert {o: m[Key.LINK_SEQ] for o, _v, m in link.markers()} == {"a": 3, "b": 1}
    assert link.waiting == {"ack_rx"}
    # A node nobody reports to sends as before.
    plain = Link({"in": "up/x"}, {"a"}, "tok")
    assert plain.stamp("a", pa.array([1]), {"k": 1}) == {"k": 1} and plain.markers() == []


def test_a_sender_retransmits_what_is_asked_and_says_gone_for_what_it_no_longer_keeps() -> None:
    link = sender()
    sent = [link.stamp("out", pa.array([k]), {"k": k}) for k in range(RETRANSMIT_KEEP + 2)]
    nack = {Key.LINK: "tok", Key.EVENT: "nack", Key.DETAIL: "out"}
    again = link.on_report("ack_rx", pa.array([0, 5], pa.uint64()), nack)
    assert [m.get(Key.GONE, False) for _o, _v, m in again] == [True, False]  # 0 fell out of the window
    assert again[1][2] == sent[5] and again[1][1].to_pylist() == [5]
    assert link.retransmitted == 1 and link.gone == 1
    # A report about another sender's messages (one ack output serves all of a receiver's senders) is ignored.
    assert link.on_report("ack_rx", pa.array([5], pa.uint64()), {**nack, Key.LINK: "other"}) == []
    link.markers()
    link.on_report("ack_rx", pa.array([], pa.uint8()), {Key.LINK: "tok", Key.EVENT: "done"})
    assert link.waiting == set()


def test_a_receiver_holds_messages_behind_a_gap_asks_once_and_delivers_in_order() -> None:
    link = receiver()
    deliver, send = link.receive("in", *message(0), now_s=0.0)
    assert [v.to_pylist() for _i, v, _m in deliver] == [[0]] and send == []
    assert deliver[0][2] == {}  # the link's metadata never reaches the core
    deliver, send = link.receive("in", *message(2), now_s=0.0)
    assert deliver == [] and [(m[Key.EVENT], v.to_pylist()) for _o, v, m in send] == [("nack", [1])]
    assert link.pending
    assert link.receive("in", *message(3), now_s=0.01) == ([], [])  # 1 already asked for
    assert link.tick(0.01) == []  # too soon to ask again
    assert [v.to_pylist() for _o, v, _m in link.tick(NACK_RETRY_S + 0.01)] == [[1]]
    deliver, _ = link.receive("in", *message(1), now_s=0.5)
    assert [v.to_pylist()[0] for _i, v, _m in deliver] == [1, 2, 3] and not link.pending
    assert link.receive("in", *message(2), now_s=0.6) == ([], [])  # a late duplicate
    assert link.recovered == 1


def test_a_receiver_reports_done_once_every_input_from_a_sender_is_complete_and_asks_for_a_lost_tail() -> None:
    link = receiver({"a": "tx/o1", "b": "tx/o2", "c": "other/x"})
    link.receive("a", *message(0), now_s=0)
    _d, send = link.receive("a", *message(1, **{Key.END_OF_STREAM: True}), now_s=0)
    assert send == []  # b is not complete yet
    _d, send = link.receive("b", *message(2, **{Key.END_OF_STREAM: True}), now_s=0)
    assert [(m[Key.EVENT], m[Key.DETAIL], v.to_pylist()) for _o, v, m in send] == [("nack", "o2", [0, 1])]
    link.receive("b", *message(0), now_s=0.1)
    _d, send = link.receive("b", *message(1), now_s=0.1)
    assert [m[Key.EVENT] for _o, _v, m in send] == ["done"]
    # c's sender does not listen to this node's reports: its messages pass through untouched, markers dropped.
    deliver, send = link.receive("c", *message(7), now_s=0.2)
    assert len(deliver) == 1 and deliver[0][2] == {} and send == []
    assert link.receive("c", *message(8, **{Key.END_OF_STREAM: True}), now_s=0.2) == ([], [])


def test_a_closed_input_delivers_what_was_held_and_counts_the_gap_lost(caplog) -> None:
    link = receiver()
    link.receive("in", *message(0), now_s=0)
    link.receive("in", *message(2), now_s=0)
    assert [v.to_pylist()[0] for _i, v, _m in link.close("in")] == [2]
    assert "never received: lost" in caplog.text and not link.pending


def test_a_gone_message_is_skipped_and_the_stream_goes_on(caplog) -> None:
    link = receiver()
    link.receive("in", *message(1), now_s=0)
    deliver, _ = link.receive("in", pa.array([], pa.uint8()), {Key.LINK: "tok", Key.LINK_SEQ: 0, Key.GONE: True},
                              now_s=0.1)
    assert [v.to_pylist()[0] for _i, v, _m in deliver] == [1] and "is lost" in caplog.text


def test_acking_sources_reads_who_listens_to_this_node_from_the_descriptor() -> None:
    descriptor = {"nodes": [{"id": "tts", "inputs": {"ack_speaker": {"source": "speaker/ack"}, "text": "llm/text"}},
                            {"id": "vad", "inputs": {"ack_asr": "asr/ack"}}]}
    assert acking_sources(descriptor, "speaker") == {"tts"}
    assert acking_sources(descriptor, "llm") == set() and acking_sources(None, "speaker") == set()


@pytest.mark.parametrize("seed", range(20))
def test_everything_arrives_once_and_in_order_through_a_channel_that_drops_a_third(seed: int) -> None:
    """The sender's messages, its markers, and the receiver's reports each cross a channel that drops 30 % of what
    it carries (dora's zenoh publish with congestion control Drop, exaggerated). The loops run as the runtime's do:
    the receiver ticks while a gap is open, the sender re-sends its markers until it hears done."""
    rng = random.Random(seed)
    tx, rx = Link({"ack_rx": "rx/ack"}, {"out", "timing"}, "tok"), Link(
        {"in": "tx/out", "t": "tx/timing"}, {"ack"}, "rx", acked_by_sender={"tx"})
    delivered: list[tuple[str, int]] = []
    now = 0.0

    def to_receiver(messages) -> None:
        for output, value, meta in messages:
            if rng.random() < 0.3:
                continue
            deliver, reports = rx.receive({"out": "in", "timing": "t"}[output], value, meta, now)
            delivered.extend((i, v.to_pylist()[0]) for i, v, _m in deliver)
            to_sender(reports)

    def to_sender(reports) -> None:
        for _o, value, meta in reports:
            if rng.random() < 0.3:
                continue
            to_receiver(tx.on_report("ack_rx", value, meta))

    sent = []
    for k in range(200):
        output = "timing" if k % 5 == 0 else "out"
        value = pa.array([k])
        sent.append(({"out": "in", "timing": "t"}[output], k))
        to_receiver([(output, value, tx.stamp(output, value, {}))])
        now += 0.01
        if rx.pending:
            to_sender(rx.tick(now))
    to_receiver(tx.markers())
    for _ in range(200):
        if not tx.waiting:
            break
        now += 0.35
        to_sender(rx.tick(now))
        to_receiver(tx.markers())
    assert not tx.waiting, "the sender never heard done"
    assert sorted(delivered, key=lambda m: m[1]) == sent
    for name in ("in", "t"):  # in order on each input
        seqs = [k for i, k in delivered if i == name]
        assert seqs == sorted(seqs)
    assert tx.gone == 0 and tx.retransmitted > 0


def test_own_node_id_reads_dora_s_node_config_whatever_tags_it_carries(monkeypatch) -> None:
    monkeypatch.setenv("DORA_NODE_CONFIG", "dataflow_id: 01a2\nnode_id: speaker\nrun_config:\n  x: !Shmem {a: 1}\n")
    assert own_node_id() == "speaker"
    monkeypatch.delenv("DORA_NODE_CONFIG")
    assert own_node_id() is None


def test_a_quiet_output_probes_once_with_its_count_and_a_lost_last_message_is_asked_for_at_once() -> None:
    now = [0.0]
    tx = Link({"ack_rx": "rx/ack"}, {"speech"}, "tok", clock=lambda: now[0])
    rx = Link({"in": "tx/speech"}, {"ack"}, "rx", acked_by_sender={"tx"})
    first = tx.stamp("speech", pa.array([0]), {})
    tx.stamp("speech", pa.array([1]), {})  # the utterance that dora drops
    rx.receive("in", pa.array([0]), first, now[0])
    assert tx.probes(now[0] + PROBE_AFTER_S / 2) == [] and tx.probe_due_s(now[0]) == pytest.approx(PROBE_AFTER_S)
    (probe,) = tx.probes(now[0] + PROBE_AFTER_S)
    assert probe[2][Key.PROBE] and probe[2][Key.LINK_SEQ] == 2
    assert tx.probes(now[0] + 1.0) == [] and tx.probe_due_s(now[0] + 1.0) is None  # once per quiet spell
    deliver, reports = rx.receive("in", probe[1], probe[2], now[0] + PROBE_AFTER_S)
    assert deliver == [] and [(m[Key.EVENT], v.to_pylist()) for _o, v, m in reports] == [("nack", [1])]
    (again,) = tx.on_report("ack_rx", reports[0][1], reports[0][2])
    deliver, _ = rx.receive("in", again[1], again[2], now[0] + 0.06)
    assert [v.to_pylist() for _i, v, _m in deliver] == [[1]]  # before any end of stream
