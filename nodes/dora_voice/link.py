"""Reliable, ordered delivery on the edges between machines: sequence numbers, retransmission, end of stream.

Why: between two dora daemons a message travels over zenoh, which dora 1.1 publishes with congestion control
``Drop`` (``dora-daemon``'s ``send_to_remote_receivers``): under load a message can be dropped without a trace, and
the close of an output can overtake data still queued for the other machine (dora-rs/dora PR #3215). Measured here:
2 of 10 two-daemon runs lost a message (an utterance, an answer's last fragment), and one run lost a 138 KB
utterance that had been sent 2.5 s before the sender's last message arrived. Nothing may be lost, so the nodes keep
their own books, as TCP does over IP (selective negative acknowledgements, RFC 4077's NACK-oriented approach):

* **Wiring** (``dora_voice_tools.launcher.deploy_overlay`` adds it to a split dataflow): on an edge from a sender
  node S to a receiver node R on another machine, R declares an ``ack`` output and S an input
  ``ack_<R>: R/ack``. Nothing else changes; a node without that wiring behaves as before.
* **Sender** (a node with ``ack_*`` inputs): every message on every output carries ``link`` (a token naming this
  run of the node) and ``link_seq`` (0, 1, 2, ... per output). The last :data:`RETRANSMIT_KEEP` messages of each
  output (at most :data:`RETRANSMIT_KEEP_BYTES`) are kept for retransmission. An output that falls quiet sends a
  probe with its count :data:`PROBE_AFTER_S` after its latest message (TCP's tail loss probe, RFC 8985), so that a
  lost last message is asked for within milliseconds, not when the next one comes. When the node is done, it sends an
  end-of-stream marker on each output (``end_of_stream``, with ``link_seq`` = messages sent) and waits, at most
  :data:`ACK_TIMEOUT_S`, until each receiver has reported ``done``; it re-sends the markers every
  :data:`MARKER_RETRY_S` meanwhile (a marker can be dropped too). Only then does it exit and let dora close its
  outputs, so the close cannot overtake anything.
* **Receiver** (a node with an ``ack`` output, on an input whose sender listens to it): messages are passed to the
  core in ``link_seq`` order, duplicates dropped. A gap holds the messages behind it and is reported at once
  (``nack`` with the missing numbers; again every :data:`NACK_RETRY_S` while it stays open). The sender retransmits
  them, or answers that a message is gone (no longer kept): that one is counted as lost and logged as an error, and
  the stream goes on. Once the marker of every input from a sender has arrived and nothing is missing, the receiver
  reports ``done`` to it.

The cost on a healthy link is two integers of metadata per message and one report per sender at the end.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pyarrow as pa

from dora_voice.schema import Key, Output

logger = logging.getLogger(__name__)

ACK_PREFIX = "ack_"
"""Input ids ``ack_<receiver>`` carry a receiver's delivery reports (its ``ack`` output)."""
ACK_TIMEOUT_S = 10.0
"""Seconds a sender waits at the end for every receiver's ``done`` before it exits anyway (warned)."""
NACK_RETRY_S = 0.3
"""A gap still open this long after it was reported is reported again, s."""
MARKER_RETRY_S = 1.0
"""End-of-stream markers not yet acknowledged are sent again after this long, s."""
PROBE_AFTER_S = 0.05
"""An output that has sent nothing for this long after a message sends a probe with its count, s: a lost last
message of a burst (an utterance, an answer's last fragment) is noticed then, not when the next one comes."""
RETRANSMIT_KEEP = 512
"""Messages kept per output for retransmission (the oldest go first)."""
RETRANSMIT_KEEP_BYTES = 64 * 1024 * 1024
"""Payload bytes kept per output for retransmission."""

NACK = "nack"
DONE = "done"

Message = tuple[str, pa.Array, dict[str, Any]]
"""``(input or output id, payload, metadata)``."""

_EMPTY = pa.array([], type=pa.uint8())


def own_node_id() -> str | None:
    """This node's id in the running dataflow (the ``node_id:`` line of ``DORA_NODE_CONFIG``, which dora sets for
    every node it spawns; the rest of that YAML carries tags a safe loader refuses), or ``None`` outside dora."""
    found = re.search(r"^node_id:\s*['\"]?([^'\"\s]+)", os.environ.get("DORA_NODE_CONFIG", ""), re.MULTILINE)
    return found.group(1) if found else None


def _source(spec: Any) -> str:
    return str(spec.get("source") if isinstance(spec, dict) else spec)


def acking_sources(descriptor: Mapping[str, Any] | None, node_id: str | None) -> set[str]:
    """Nodes that listen to this node's ``ack`` output (they have an input from ``<node_id>/ack``)."""
    if not descriptor or not node_id:
        return set()
    listening = set()
    for node in descriptor.get("nodes") or []:
        for spec in (node.get("inputs") or {}).values():
            if _source(spec) == f"{node_id}/{Output.ACK}":
                listening.add(str(node.get("id")))
    return listening


@dataclass
class _Inbound:
    """Receiver state of one input on a reliable link."""

    sender: str
    output: str
    token: str | None = None
    expected: int = 0
    held: dict[int, Message] = field(default_factory=dict)
    final: int | None = None
    asked: set[int] = field(default_factory=set)
    asked_at: float = 0.0
    announced: int = 0  # messages the sender's latest probe said it had sent

    def missing(self) -> list[int]:
        upper = self.final if self.final is not None else (max(self.held) + 1 if self.held else self.expected)
        upper = max(upper, self.announced)
        return [seq for seq in range(self.expected, upper) if seq not in self.held]

    def complete(self) -> bool:
        return self.final is not None and self.expected >= self.final


class Link:
    """Both sides of reliable delivery (module docstring), pure: the event loop feeds it and sends what it returns.

    Args:
        inputs: this node's inputs from the YAML, input id -> ``node/output`` (``None`` when unknown: all off).
        outputs: this node's declared outputs (``None`` when unknown).
        token: names this run of the node on its outputs (receivers tell a restarted sender by it).
        acked_by_sender: the sender nodes that listen to this node's ``ack`` output (:func:`acking_sources`); only
            inputs from them are reordered and reported, others pass through untouched.
        clock: monotonic seconds, when each output last sent (for its probe); injectable in tests.

    Attributes:
        ack_inputs: the ``ack_*`` inputs (this node is a sender when there are any).
        waiting: ``ack_*`` inputs whose receiver has not reported ``done`` (nor gone) since :meth:`markers`.
        retransmitted / gone / recovered: messages sent again, asked for but no longer kept, and received after a
            gap (as sender / sender / receiver).
    """

    def __init__(self, inputs: Mapping[str, str] | None, outputs: set[str] | None, token: str, *,
                 acked_by_sender: set[str] = frozenset(), clock: Callable[[], float] = time.monotonic) -> None:
        inputs = dict(inputs or {})
        self.token = token
        self.ack_inputs = {i for i in inputs if i.startswith(ACK_PREFIX)}
        self.outputs = sorted(set(outputs or ()) - {Output.ACK})
        self.waiting: set[str] = set()
        self._ending = False
        self._gone_receivers: set[str] = set()
        self.clock = clock
        self._next_seq: dict[str, int] = {}
        self._unprobed: dict[str, float] = {}  # output -> when its latest message went, if no probe has followed
        self._kept: dict[str, OrderedDict[int, Message]] = {}
        self._kept_bytes: dict[str, int] = {}
        self._inbound: dict[str, _Inbound] = {}
        reports = outputs is not None and Output.ACK in outputs
        for input_id, source in inputs.items():
            node, _, output = source.partition("/")
            if reports and input_id not in self.ack_inputs and node in acked_by_sender:
                self._inbound[input_id] = _Inbound(node, output)
        self.retransmitted = 0
        self.gone = 0
        self.recovered = 0

    @property
    def reports_to(self) -> set[str]:
        """The sender nodes whose messages this node reorders and reports on."""
        return {inbound.sender for inbound in self._inbound.values()}

    @property
    def sends(self) -> bool:
        """True when receivers report to this node: its outputs are numbered."""
        return bool(self.ack_inputs)

    # -- sender ---------------------------------------------------------------------------------------------------
    def stamp(self, output_id: str, value: pa.Array, meta: dict[str, Any]) -> dict[str, Any]:
        """The metadata to send ``value`` with on ``output_id``: numbered and kept when this node is a sender."""
        if not self.sends or output_id == Output.ACK or Key.LINK in meta:
            return meta
        seq = self._next_seq.get(output_id, 0)
        self._next_seq[output_id] = seq + 1
        self._unprobed[output_id] = self.clock()
        meta = {**meta, Key.LINK: self.token, Key.LINK_SEQ: seq}
        kept = self._kept.setdefault(output_id, OrderedDict())
        kept[seq] = (output_id, value, meta)
        size = self._kept_bytes.get(output_id, 0) + value.nbytes
        while len(kept) > RETRANSMIT_KEEP or (size > RETRANSMIT_KEEP_BYTES and len(kept) > 1):
            _seq, (_o, old, _m) = kept.popitem(last=False)
            size -= old.nbytes
        self._kept_bytes[output_id] = size
        return meta

    def probes(self, now_s: float) -> list[Message]:
        """A probe (``probe``, ``link_seq`` = messages sent) on each output quiet for :data:`PROBE_AFTER_S` since
        its latest message."""
        due = [o for o, sent_s in self._unprobed.items() if now_s - sent_s >= PROBE_AFTER_S]
        for output in due:
            del self._unprobed[output]
        return [(o, _EMPTY, {Key.PROBE: True, Key.LINK: self.token, Key.LINK_SEQ: self._next_seq[o]}) for o in due]

    def probe_due_s(self, now_s: float) -> float | None:
        """Seconds until the next probe is due, or ``None`` when none is pending."""
        if not self._unprobed:
            return None
        return max(0.0, min(self._unprobed.values()) + PROBE_AFTER_S - now_s)

    def markers(self) -> list[Message]:
        """End-of-stream markers, one per output (none unless this node is a sender); starts :attr:`waiting`."""
        if not self.sends:
            return []
        if not self._ending:
            self._ending = True
            self.waiting = self.ack_inputs - self._gone_receivers
        return [(output, _EMPTY, {Key.END_OF_STREAM: True, Key.LINK: self.token,
                                  Key.LINK_SEQ: self._next_seq.get(output, 0)}) for output in self.outputs]

    def on_report(self, input_id: str, value: pa.Array, meta: Mapping[str, Any]) -> list[Message]:
        """A receiver's report on ``input_id`` (an ``ack_*`` input): the retransmissions it asks for."""
        if meta.get(Key.LINK) != self.token:
            return []  # about another sender (one ack output reports to all of a receiver's senders)
        if meta.get(Key.EVENT) == DONE:
            self.waiting.discard(input_id)
            return []
        if meta.get(Key.EVENT) != NACK:
            return []
        output = str(meta.get(Key.DETAIL, ""))
        kept = self._kept.get(output, OrderedDict())
        out: list[Message] = []
        for seq in value.to_pylist():
            message = kept.get(int(seq))
            if message is not None:
                out.append(message)
                self.retransmitted += 1
            else:
                self.gone += 1
                logger.error("%s asked again for message %d of output %r, which is no longer kept (the last %d "
                             "are): it is lost", input_id.removeprefix(ACK_PREFIX), seq, output, RETRANSMIT_KEEP)
                out.append((output, _EMPTY, {Key.LINK: self.token, Key.LINK_SEQ: int(seq), Key.GONE: True}))
        if out:
            logger.warning("%s missed %d message(s) of %r: sent again", input_id.removeprefix(ACK_PREFIX),
                           len(out), output)
        return out

    def on_report_closed(self, input_id: str) -> None:
        """The receiver behind ``input_id`` finished: nothing more to wait for from it."""
        self._gone_receivers.add(input_id)
        self.waiting.discard(input_id)

    # -- receiver -------------------------------------------------------------------------------------------------
    def receive(self, input_id: str, value: pa.Array, meta: Mapping[str, Any],
                now_s: float) -> tuple[list[Message], list[Message]]:
        """A message on a data input. Returns ``(deliver, send)``: the messages to pass to the core, in order and
        without the link's metadata, and the reports to send on ``ack``. End-of-stream markers are never
        delivered; on an input that is not a reliable link they are dropped and other messages pass as they are."""
        inbound = self._inbound.get(input_id)
        token = meta.get(Key.LINK)
        if inbound is None or token is None:
            if meta.get(Key.END_OF_STREAM) or meta.get(Key.PROBE):
                return [], []
            return [(input_id, value, _strip(meta))], []
        if inbound.token != token:
            if inbound.token is not None:
                logger.warning("%s restarted (new link %s): numbering starts again", inbound.sender, token)
            self._inbound[input_id] = inbound = _Inbound(inbound.sender, inbound.output, token)
        if meta.get(Key.END_OF_STREAM):
            inbound.final = int(meta[Key.LINK_SEQ])
            return [], self._report(input_id, inbound, now_s, repeat=True)
        if meta.get(Key.PROBE):
            inbound.announced = max(inbound.announced, int(meta[Key.LINK_SEQ]))
            return [], self._report(input_id, inbound, now_s, repeat=False)
        seq = int(meta[Key.LINK_SEQ])
        if seq < inbound.expected or seq in inbound.held:
            return [], []  # a duplicate (a retransmission that crossed the original)
        if seq in inbound.asked:
            self.recovered += 1
        inbound.held[seq] = (input_id, value, dict(meta))
        deliver: list[Message] = []
        while inbound.expected in inbound.held:
            _i, held_value, held_meta = inbound.held.pop(inbound.expected)
            inbound.asked.discard(inbound.expected)
            inbound.expected += 1
            if held_meta.get(Key.GONE):
                logger.error("message %d of %s/%s is lost (its sender no longer had it)", inbound.expected - 1,
                             inbound.sender, inbound.output)
                continue
            deliver.append((input_id, held_value, _strip(held_meta)))
        return deliver, self._report(input_id, inbound, now_s, repeat=False)

    def close(self, input_id: str) -> list[Message]:
        """``input_id`` closed (its sender exited): the messages still held behind a gap, in order, to deliver now;
        the gap is counted as lost (logged as an error)."""
        inbound = self._inbound.get(input_id)
        if inbound is None or not (inbound.held or inbound.missing()):
            return []
        missing = inbound.missing()
        logger.error("%s closed with messages %s of %s/%s never received: lost", input_id, _ranges(missing),
                     inbound.sender, inbound.output)
        deliver = [(i, v, _strip(m)) for _seq, (i, v, m) in sorted(inbound.held.items()) if not m.get(Key.GONE)]
        inbound.expected = max(inbound.expected, max(inbound.held, default=-1) + 1, max(missing, default=-1) + 1)
        inbound.final = inbound.expected
        inbound.held.clear()
        return deliver

    @property
    def pending(self) -> bool:
        """True while a gap is open on some input (the loop must then wake up for :meth:`tick`)."""
        return any(inbound.missing() for inbound in self._inbound.values())

    def tick(self, now_s: float) -> list[Message]:
        """Reports of the gaps still open :data:`NACK_RETRY_S` after they were last reported."""
        out: list[Message] = []
        for input_id, inbound in self._inbound.items():
            if inbound.missing() and now_s - inbound.asked_at >= NACK_RETRY_S:
                out += self._report(input_id, inbound, now_s, repeat=True)
        return out

    def _report(self, input_id: str, inbound: _Inbound, now_s: float, *, repeat: bool) -> list[Message]:
        missing = inbound.missing()
        if missing:
            ask = missing if repeat else [seq for seq in missing if seq not in inbound.asked]
            if not ask:
                return []
            inbound.asked.update(ask)
            inbound.asked_at = now_s
            logger.info("%s: messages %s of %s/%s missing; asked again", input_id, _ranges(ask), inbound.sender,
                        inbound.output)
            return [(Output.ACK, pa.array(ask, type=pa.uint64()),
                     {Key.LINK: inbound.token, Key.EVENT: NACK, Key.DETAIL: inbound.output})]
        from_sender = [i for i in self._inbound.values() if i.sender == inbound.sender]
        if inbound.complete() and all(i.complete() for i in from_sender):
            return [(Output.ACK, _EMPTY, {Key.LINK: inbound.token, Key.EVENT: DONE})]
        return []


def _strip(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    if Key.LINK not in meta:
        return meta  # the common case (no link on this edge): no copy per message
    return {k: v for k, v in meta.items() if k not in (Key.LINK, Key.LINK_SEQ)}


def _ranges(seqs: list[int]) -> str:
    return f"{seqs[0]}" if len(seqs) == 1 else f"{seqs[0]}..{seqs[-1]} ({len(seqs)})"
