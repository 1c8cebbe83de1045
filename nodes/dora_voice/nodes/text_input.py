"""Text-input node: typed or scripted queries straight into the LLM (no mic, VAD or ASR).

Sends one query, waits until the speaker reports the answer played (``playback`` input, ``turn_done``, whose
``t_ns`` is when its last sample leaves), then sends the next; exits after the last answer. Queries come from ``TEXT_INPUT_QUERIES`` (separated by ``|``) or
``TEXT_INPUT_FILE`` (one per line, ``#`` comments skipped). Used by ``test_streaming_pipeline.yml`` and the
benchmark. Without a ``playback`` input wired, queries are sent ``TEXT_INPUT_INTERVAL_S`` apart.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa

from dora_voice.config import ConfigError, env_field, parse_float, parse_str
from dora_voice.contracts import NodeContract
from dora_voice.runtime import Emit, NodeCore, UnknownInputError, emit
from dora_voice.schema import Key, Output, PlaybackEvent, PlaybackKind, TimingKind, Transcript

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextInputConfig:
    """Text-input settings."""

    queries: str = env_field("TEXT_INPUT_QUERIES", "", parse_str, "queries separated by |")
    queries_file: str = env_field("TEXT_INPUT_FILE", "", parse_str, "file with one query per line")
    interval_s: float = env_field("TEXT_INPUT_INTERVAL_S", 0.0, parse_float(min_value=0.0, max_value=3600.0),
                                  "pause after an answer finished before the next query, s")
    session_id: str = env_field("SESSION_ID", "", parse_str, "conversation id (default: random)")

    def load_queries(self) -> list[str]:
        """The queries, in order.

        Raises:
            ConfigError: no queries given, or the file is missing.
        """
        if self.queries_file:
            path = Path(self.queries_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"TEXT_INPUT_FILE={path}: no such file")
            lines = path.read_text(encoding="utf-8").splitlines()
            queries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        else:
            queries = [q.strip() for q in self.queries.split("|") if q.strip()]
        if not queries:
            raise ConfigError("no queries: set TEXT_INPUT_QUERIES='first|second' or TEXT_INPUT_FILE=path")
        return queries


POLL_S = 0.01
"""Longest :meth:`TextInputCore.step` sleeps before the next query is due (s)."""


class TextInputCore(NodeCore):
    """Sends queries one at a time, each after the previous answer finished playing.

    Args:
        queries: the queries.
        session_id: conversation id.
        interval_s: pause after an answer before the next query.
        paced_by_playback: wait for ``turn_done`` (True) or only for ``interval_s`` (False).
        clock_ns: wall clock (``time.time_ns``); tests inject a fake.
        sleep: ``sleep(seconds)`` while the next query is not yet due; tests inject one that advances the fake clock.
    """

    node_id = "text-input"

    def __init__(self, queries: list[str], session_id: str, interval_s: float = 0.0, paced_by_playback: bool = True,
                 clock_ns: Callable[[], int] = time.time_ns, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(clock_ns)
        self.sleep = sleep
        self.queries = list(queries)
        self.session_id = session_id
        self.interval_s = interval_s
        self.paced = paced_by_playback
        self.sent = 0
        self.done = 0
        self.next_at_ns = clock_ns()
        self.playback_closed = False

    def _send(self) -> list[Emit]:
        now = self.clock_ns()
        text = self.queries[self.sent]
        turn_id = self.sent
        self.sent += 1
        logger.info("turn %d: sending %r", turn_id, text)
        return [emit(Output.TEXT, Transcript(text, self.session_id, turn_id, 0, now, "text")),
                self.timing(TimingKind.TEXT_INPUT, turn_id, now, **{Key.TEXT: text})]

    def busy(self) -> bool:
        return self.sent < len(self.queries) and (not self.paced or self.done >= self.sent)

    def step(self) -> Iterable[Emit]:
        wait_s = (self.next_at_ns - self.clock_ns()) / 1e9
        if wait_s > 0:
            self.sleep(min(wait_s, POLL_S))
            return []
        return self._send()

    def finished(self) -> bool:
        return self.sent == len(self.queries) and (not self.paced or self.done >= self.sent or self.playback_closed)

    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id != "playback":
            raise UnknownInputError(f"unknown input id {input_id!r} (expected 'playback')")
        event = PlaybackEvent.decode(value, metadata)
        if event.kind is PlaybackKind.TURN_DONE and event.session_id in ("", self.session_id):
            self.done = max(self.done, event.turn_id + 1)
            # t_ns is when the last sample leaves the speaker (with a file sink: on its virtual clock, possibly
            # still ahead of now), so the next query never talks over the previous answer.
            self.next_at_ns = max(self.clock_ns(), event.t_ns) + int(self.interval_s * 1e9)
        return []

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        self.playback_closed = True
        return ()


CONTRACT = NodeContract(
    path="dora-voice-text-input",
    inputs={"playback": "speaker/playback: PlaybackEvent (turn_done paces the queries; optional)"},
    outputs=(Output.TEXT, Output.TIMING),
    config=TextInputConfig,
)


def main(argv: list[str] | None = None) -> None:
    """Run the text-input node inside a dora dataflow."""
    from dora import Node

    from dora_voice.nodes import fatal, node_cli
    from dora_voice.runtime import declared_inputs, run_node

    config, _ = node_cli(CONTRACT, __doc__, argv)
    try:
        queries = config.load_queries()
    except ConfigError as exc:
        fatal(CONTRACT.path, str(exc))
    node = Node()
    paced = "playback" in (declared_inputs(node) or {"playback"})
    run_node(node, TextInputCore(queries, config.session_id or uuid.uuid4().hex[:12], config.interval_s, paced))

if __name__ == "__main__":
    main()
