"""The dora plumbing every node shares: one event loop around a pure, dora-free core.

A node's ``main()`` builds a :class:`NodeCore` subclass (models injected) and calls :func:`run_node`. The core
never sees dora: it gets ``(input_id, value, metadata)`` and returns :data:`Emit` tuples. Unit tests drive the core
directly; the loop here is the only code that talks to ``dora.Node``.

Cooperative scheduling: a core that has work in progress (an LLM generating, a TTS queue) says so with
:meth:`NodeCore.busy`; the loop then polls for events without blocking (``Node.try_recv``) between units of work
(:meth:`NodeCore.step`), so control messages such as a barge-in are seen within one unit of work.

Nothing is lost: the loop never ``break``s on STOP (dora can deliver STOP before queued inputs); it tells the core
(:meth:`NodeCore.on_stop`: a source such as the mic stops producing there) and drains until the event stream ends,
or until the core reports :meth:`NodeCore.finished` (needed where a feedback edge would otherwise keep an input open
forever).

Source nodes (no inputs, e.g. the mic) use the same loop: their core is :meth:`~NodeCore.busy` while it has
something to produce and produces it in :meth:`~NodeCore.step`.

Between machines dora 1.1 can drop a message (zenoh publishes with congestion control ``Drop``) and can deliver
the close of an output before data queued ahead of it (dora-rs/dora PR #3215). Where the YAML wires delivery reports
on such an edge (``ack`` output, ``ack_<receiver>`` inputs; ``dora_voice_tools.launcher.deploy_overlay`` adds them),
the loop numbers, reorders, retransmits and closes the stream with a handshake: :mod:`dora_voice.link`. Elsewhere a
node that sent something during the last :data:`EXIT_LINGER_S` waits until that long after its last send before it
returns (a node that was quiet at the end exits at once).

Warm-up: pyarrow sets up its numpy conversion on the first ``pa.array`` of a numpy array in a process, which took
13-21 ms here (and the first ``to_numpy`` depends on it). :func:`run_node` does it before the first event
(:func:`warm_up_arrow`), so the first audio fragment, utterance or block of a session does not pay it on the user's
path (measured before: the first answer's audio reached the speaker 25-32 ms after the TTS made it, later ones
4-7 ms).

Bad input: a :class:`~dora_voice.schema.SchemaError` or ``ValueError`` from the core is logged with the input id,
counted in :attr:`NodeCore.input_errors`, reported to the monitor as a ``input_error`` timing event, and the node
keeps running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Mapping, TypeVar

import numpy as np
import pyarrow as pa

from dora_voice.link import (
    ACK_PREFIX, ACK_TIMEOUT_S, MARKER_RETRY_S, NACK_RETRY_S, Link, acking_sources, own_node_id,
)
from dora_voice.schema import Output, SchemaError, TimingEvent, TimingKind, Key

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_LINGER_S = 0.5
"""Seconds a node stays alive after its last output before it exits (see the module docstring). The inter-daemon
publish of a queued message takes milliseconds on an idle machine; half a second covers a loaded 2-core one."""

Emit = tuple[str, pa.Array, dict[str, Any]]
"""One output to send: ``(output_id, payload, metadata)``."""


def emit(output_id: str, message: Any) -> Emit:
    """Encode a schema message for ``output_id``."""
    value, meta = message.encode()
    return output_id, value, meta


class UnknownInputError(SchemaError):
    """An input id the node does not declare."""


class NodeCore:
    """Base class of the pure cores. Subclasses override the ``on_*`` hooks they need.

    Attributes:
        node_id: dora node id, stamped on timing events.
        input_errors: bad messages rejected so far.
    """

    node_id = "node"

    def __init__(self, clock_ns=time.time_ns) -> None:
        self.clock_ns = clock_ns
        self.input_errors = 0
        self.session_id = ""

    # -- hooks -------------------------------------------------------------------------------------------------
    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        """Handle one input message. Raise :class:`SchemaError` for bad input."""
        raise UnknownInputError(f"unknown input id {input_id!r}")

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        """An upstream node finished; its input will deliver nothing more."""
        return ()

    def busy(self) -> bool:
        """True while the core has work that :meth:`step` should advance."""
        return False

    def step(self) -> Iterable[Emit]:
        """Advance pending work by one unit (one token, one segment)."""
        return ()

    def finished(self) -> bool:
        """True when the node should exit although some input is still open (feedback edges)."""
        return False

    def on_stop(self) -> Iterable[Emit]:
        """The dataflow asked the node to stop (dora's STOP). Queued inputs are still delivered afterwards; a source
        stops producing here."""
        return ()

    def on_end(self) -> Iterable[Emit]:
        """The event stream ended: flush what is left."""
        return ()

    # -- helpers -----------------------------------------------------------------------------------------------
    def timing(self, kind: TimingKind, turn_id: int, t_ns: int | None = None, **fields: Any) -> Emit:
        """A timing event for the monitor, stamped now unless ``t_ns`` is given."""
        event = TimingEvent(kind=kind, node=self.node_id, session_id=self.session_id, turn_id=turn_id,
                            t_ns=self.clock_ns() if t_ns is None else t_ns, fields=fields)
        return emit(Output.TIMING, event)

    def reject(self, input_id: str, exc: Exception) -> list[Emit]:
        """Count and log a bad message; returns the ``input_error`` timing event."""
        self.input_errors += 1
        logger.warning("%s: rejected input %r: %s (%d rejected so far)", self.node_id, input_id, exc, self.input_errors)
        return [self.timing(TimingKind.INPUT_ERROR, -1, **{Key.DETAIL: f"{input_id}: {exc}"[:500]})]

    def handle(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> list[Emit]:
        """:meth:`on_input` with bad input turned into a counted, logged rejection."""
        try:
            return list(self.on_input(input_id, value, metadata))
        except (SchemaError, ValueError) as exc:
            return self.reject(input_id, exc)


class _Sender:
    """Sends a core's outputs, skipping undeclared ones, and remembers when it last sent (monotonic s).

    The timing events of one batch go out after its other outputs: they are stamped when they are made and only the
    monitor reads them, while each send waits for the daemon (a few ms on a loaded machine), so a TTS's first audio
    fragment does not wait behind its ``tts_segment_start``. Each output keeps its own order."""

    def __init__(self, node: Any, declared: set[str] | None, monotonic=time.monotonic, link: Link | None = None) -> None:
        self.node = node
        self.declared = declared
        self.monotonic = monotonic
        self.link = link
        self.last_send_s: float | None = None

    def __call__(self, outputs: Iterable[Emit]) -> None:
        batch = list(outputs)
        if len(batch) > 1:
            batch.sort(key=lambda item: item[0] == Output.TIMING)  # stable: the order within each output is kept
        for output_id, value, meta in batch:
            if self.declared is not None and output_id not in self.declared:
                continue  # an optional output this dataflow does not wire (e.g. timing without a monitor)
            if self.link is not None:
                meta = self.link.stamp(output_id, value, meta)
            self.node.send_output(output_id, value, meta)
            self.last_send_s = self.monotonic()

    def linger_s(self, linger_s: float = EXIT_LINGER_S) -> float:
        """Seconds still to wait before exiting so the last output is published before the close (0 when quiet)."""
        if self.last_send_s is None:
            return 0.0
        return max(0.0, self.last_send_s + linger_s - self.monotonic())


def _node_config(node: Any) -> dict[str, Any] | None:
    try:
        config = node.node_config()
    except Exception:  # noqa: BLE001 - a dynamic node or an older dora: nothing known
        return None
    return config if isinstance(config, dict) else None


def _declared_outputs(node: Any) -> set[str] | None:
    """Output ids this node has in the running dataflow's YAML, or ``None`` when unknown."""
    config = _node_config(node)
    return None if config is None else {str(o) for o in config.get("outputs") or []}


def declared_outputs(node: Any) -> set[str] | None:
    """Output ids this node has in the running dataflow's YAML, or ``None`` when unknown."""
    return _declared_outputs(node)


def declared_inputs(node: Any) -> set[str] | None:
    """Input ids this node has in the running dataflow's YAML, or ``None`` when unknown."""
    config = _node_config(node)
    return None if config is None else {str(i) for i in (config.get("inputs") or {})}


def input_sources(node: Any) -> dict[str, str] | None:
    """Input id -> its source ``node/output`` (either YAML form), or ``None`` when unknown."""
    config = _node_config(node)
    if config is None:
        return None
    return {str(input_id): str(spec.get("source") if isinstance(spec, dict) else spec)
            for input_id, spec in (config.get("inputs") or {}).items()}


def _descriptor(node: Any) -> dict[str, Any] | None:
    try:
        descriptor = node.dataflow_descriptor()
    except Exception:  # noqa: BLE001 - a dynamic node, a test double or an older dora: nothing known
        return None
    return descriptor if isinstance(descriptor, dict) else None


def warm_up_arrow() -> float:
    """Convert a one-sample float32 numpy array to Arrow and back (see the module docstring: the first conversion in
    a process costs 13-21 ms). Returns the time it took, ms."""
    started = time.perf_counter()
    pa.array(np.zeros(1, dtype=np.float32), type=pa.float32()).to_numpy(zero_copy_only=True)
    pa.array(["warm-up"], type=pa.string())
    return (time.perf_counter() - started) * 1000


def run_node(node: Any, core: NodeCore, *, sleep=time.sleep, monotonic=time.monotonic) -> None:
    """Drive ``core`` with the events of ``node`` (a ``dora.Node``) until the stream ends.

    Outputs the YAML does not declare are skipped silently, so a node can run in a dataflow without a monitor.
    On edges wired for delivery reports the loop also numbers, reorders and retransmits, and a sender ends with the
    end-of-stream handshake (:mod:`dora_voice.link`). Before returning, waits until :data:`EXIT_LINGER_S` after the
    last output sent (see the module docstring);
    ``sleep`` and ``monotonic`` (s) are injectable for tests.
    """
    logger.debug("%s: Arrow's numpy conversion warmed up in %.1f ms", core.node_id, warm_up_arrow())
    declared = _declared_outputs(node)
    sources = input_sources(node)
    link = Link(sources, declared, uuid.uuid4().hex[:12],
                acked_by_sender=acking_sources(_descriptor(node), own_node_id()), clock=monotonic)
    send = _Sender(node, declared, monotonic, link)
    if link.sends or link.reports_to:
        logger.info("%s: reliable delivery between machines: receivers reporting %s; reporting to %s", core.node_id,
                    ", ".join(sorted(i.removeprefix(ACK_PREFIX) for i in link.ack_inputs)) or "none",
                    ", ".join(sorted(link.reports_to)) or "none")
    # With report inputs open (their receivers live until this node exits), dora never ends the stream by itself:
    # a sender is done when its data inputs are.
    open_data = set(sources or ()) - link.ack_inputs
    while True:
        if core.finished() or (link.sends and sources and not open_data and not core.busy()):
            break
        now = monotonic()
        if link.pending:
            send(link.tick(now))
        send(link.probes(now))
        if core.busy():
            event = node.try_recv()
            if event is None:
                send(core.step())
                continue
        else:
            waits = [w for w in (NACK_RETRY_S if link.pending else None, link.probe_due_s(monotonic())) if w is not None]
            event = node.next(timeout=max(min(waits), 0.001)) if waits else node.next()
            if event is None:
                break
        kind = event.get("type")
        if kind == "INPUT":
            input_id, metadata = event["id"], event.get("metadata") or {}
            if input_id in link.ack_inputs:
                send(link.on_report(input_id, event["value"], metadata))
                continue
            deliver, reports = link.receive(input_id, event["value"], metadata, monotonic())
            send(reports)
            for input_id, value, metadata in deliver:
                send(core.handle(input_id, value, metadata))
        elif kind == "INPUT_CLOSED":
            input_id = event["id"]
            if input_id in link.ack_inputs:
                link.on_report_closed(input_id)
                continue
            open_data.discard(input_id)
            for held_id, value, metadata in link.close(input_id):
                send(core.handle(held_id, value, metadata))
            send(core.on_input_closed(input_id))
        elif kind == "ERROR":
            if "Timeout" not in str(event.get("error", "")):
                logger.error("%s: dora error event: %s", core.node_id, str(event.get("error"))[:300])
        elif kind == "STOP":  # keep draining; the stream ends by itself once every input is closed
            send(core.on_stop())
    while core.busy():
        send(core.step())
    send(core.on_end())
    _end_of_stream(node, core.node_id, link, send, monotonic)
    wait_s = send.linger_s()
    if wait_s > 0:
        sleep(wait_s)
    logger.info("%s: finished (%d bad inputs rejected)", core.node_id, core.input_errors)



def _end_of_stream(node: Any, node_id: str, link: Link, send: _Sender, monotonic) -> None:
    """A sender's last act (:mod:`dora_voice.link`): send the end-of-stream markers, answer the receivers' requests
    for retransmission, and wait (at most :data:`~dora_voice.link.ACK_TIMEOUT_S`) until each has reported ``done``
    or finished. Markers are sent again every :data:`~dora_voice.link.MARKER_RETRY_S`. Other inputs arriving now
    (feedback edges) come after the core finished and are dropped (DEBUG log)."""
    markers = link.markers()
    if not markers:
        return
    send(markers)
    started = last_markers = monotonic()
    while link.waiting:
        now = monotonic()
        if now - started >= ACK_TIMEOUT_S:
            logger.warning("%s: no end-of-stream report on %s after %.0f s; exiting anyway (those receivers may "
                           "miss this node's last messages)", node_id, ", ".join(sorted(link.waiting)), ACK_TIMEOUT_S)
            return
        if now - last_markers >= MARKER_RETRY_S:
            send(link.markers())
            last_markers = now
        event = node.next(timeout=min(MARKER_RETRY_S, ACK_TIMEOUT_S - (now - started)))
        if event is None:
            break
        kind = event.get("type")
        if kind == "INPUT" and event["id"] in link.ack_inputs:
            send(link.on_report(event["id"], event["value"], event.get("metadata") or {}))
        elif kind == "INPUT":
            logger.debug("%s: input %r after the end of the stream dropped", node_id, event["id"])
        elif kind == "INPUT_CLOSED" and event["id"] in link.ack_inputs:
            link.on_report_closed(event["id"])
    logger.info("%s: end of stream delivered in %.0f ms (%d message(s) sent again, %d lost)", node_id,
                (monotonic() - started) * 1000, link.retransmitted, link.gone)


LOWEST_PRIORITY_NICE = 19
"""The nice value of work made ahead (Linux ``setpriority``; 19 is the lowest priority)."""


def build_at_lowest_priority(factory: Callable[[], T], what: str) -> T:
    """Call ``factory`` on a thread running at the lowest CPU priority (nice :data:`LOWEST_PRIORITY_NICE`) and return
    what it built.

    For work made ahead of need (partial transcripts while the user speaks): a library that starts its compute threads
    while it loads (CTranslate2's model replicas) starts them from that thread, and on Linux a thread inherits its
    creator's nice value. Such threads then take the idle CPU while the user speaks and yield the cores to the work
    of a turn that ends (the speculative transcript, the end-of-turn model, the reply) instead of halving their
    speed. Where the priority cannot be lowered (another OS), ``factory`` still runs, at the usual priority.

    Raises:
        whatever ``factory`` raises.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY_NICE)
        except (AttributeError, OSError) as exc:
            logger.info("%s: cannot lower the CPU priority (%s); it runs at the usual priority", what, exc)
        try:
            box["value"] = factory()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"build-{what}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
