"""Per-turn latency records built from the pipeline's timing events.

Every node stamps :class:`~dora_voice.schema.TimingEvent`s where things happen (``t_ns`` is ``time.time_ns()`` at the
source, one epoch for all processes). :class:`TimingCollector` groups them by ``turn_id`` and, once a turn is over,
computes a :class:`TurnRecord` (with one :class:`ChunkRecord` per LLM chunk). Nothing is computed while events
arrive: a record is built from all the events of its turn at once, so the order in which events from different nodes
reach the monitor does not matter.

A turn is complete when every event it needs has arrived: ``turn_played`` (speaker), ``llm_start``/``llm_done``,
``tts_done``, the transcript (``asr_done`` with the VAD's ``speech_started``/``speech_ended``, or ``text_input``),
and as many per-chunk and per-segment events as the totals on ``llm_done``, ``tts_done`` and ``turn_played``
announce. Every node must therefore close each turn with its ``*_done`` event, barge-in or not. When fewer segments
were played than synthesized and nothing says the turn was interrupted, or some event never comes, the turn is built
``grace_s`` (monitor clock) after its ``turn_played`` arrived (dora delivers each sender's messages in order, so in
practice a late ``barge_in`` cannot follow ``turn_played``; the grace only matters for lost events).
:meth:`TimingCollector.flush` builds every open turn at the end of the stream. Turns built while lacking an event
are marked ``complete=False``. Events of a turn already reported are logged and dropped. A turn with VAD events only
(speech the ASR found no words in) is not a turn of the conversation: :meth:`TimingCollector.flush` lists it in
:attr:`TimingCollector.unanswered_turns` instead.

Definitions (all durations in ms unless the name says ``_s``; ``None`` when an event needed is missing):
    * ``asr_latency_ms``: speech_end (last voiced sample, VAD) -> transcript emitted (``asr_done``).
    * ``eot_delay_ms``: speech_end -> the VAD decided the turn was over (``speech_ended.detected_ns``).
    * ``llm_ttft_ms``: ``llm_start`` -> ``llm_first_token``.
    * ``llm_first_chunk_ms``: ``llm_start`` -> first chunk emitted.
    * ``tts_ttfb_ms``: the first TTS segment's text received -> its first audio fragment emitted.
    * ``first_audio_ms`` (voice-to-voice): speech_end -> ``playback_started`` (first sample played); ``None`` for
      typed turns.
    * ``llm_start_to_first_audio_ms``: ``llm_start`` -> ``playback_started`` (the combined TTFB).
    * ``eot_rule`` / ``eot_probability``: the rule that ended the user's turn (``model``, ``max_wait``, ``silence``,
      ``max_speech``, ``end_of_stream``) and the end-of-turn model's P(complete) (``speech_ended`` fields).
    * ``speculation``: ``hit`` when the transcript was made during the pause, from the speculative utterance, and
      reused; ``miss`` when a speculative one was dropped first; ``none`` (``asr_done``'s field).
      ``speculation_cancelled``: speculative transcripts of the turn dropped because the user went on speaking
      (the ASR's ``speculation_cancelled`` events): deliberate, never heard, never lost segments.
    * ``llm_speculation``: ``hit`` when the reply began during the pause, from the speculative transcript, and was
      sent at the confirmation; ``miss`` when a reply begun that way was dropped first (``llm_start``'s field).
      ``llm_speculation_cancelled``: such replies dropped (the LLM's ``speculation_cancelled`` events). On a hit the
      LLM stamps its held events no earlier than the confirmation, so ``v2v_llm_ttft_ms`` and
      ``v2v_first_chunk_ms`` are then ~0 and ``llm_start``'s ``duration_ms`` says how long it had been generating.
      The TTS synthesizes the first chunk of such a reply during the pause too and holds its audio: on a hit it is
      sent at the confirmation, stamped no earlier (``v2v_tts_ms`` is then ~0);
      ``tts_speculation_cancelled`` counts the speculative audio the TTS dropped unheard (its
      ``speculation_cancelled`` events).
    * ``prefilled_words``: words of the user's message whose prompt the LLM evaluated while they were still
      speaking, from a partial transcript (``llm_start``'s field; 0 = none, ``TURN_PARTIAL_MS``).
    * Voice-to-voice, split into consecutive parts that add up to ``first_audio_ms`` exactly (:data:`V2V_PARTS`):
      ``v2v_eot_ms`` speech_end -> end of turn decided; ``v2v_asr_ms`` -> transcript emitted; ``v2v_llm_ttft_ms``
      -> first LLM token (the hop to the LLM and the prompt included); ``v2v_first_chunk_ms`` -> first chunk
      emitted; ``v2v_tts_ms`` -> first audio fragment emitted by the TTS; ``v2v_playback_ms`` -> first sample
      played (hop to the speaker and its buffering). ``None`` for a part whose events are missing.
    * ``inter_token_ms``: (``llm_done`` - ``llm_first_token``) / (tokens - 1); wall clock, so it includes any pause the
      LLM takes for pacing. ``tokens_per_s`` is its inverse.
    * ``audio_s``: audio synthesized (sum of ``tts_segment_done.audio_ms``); ``audio_played_s``: ``turn_played.audio_ms``
      (what the listener heard).
    * ``wall_s``: ``llm_start`` -> ``turn_played``.
    * ``rtf``: TTS synthesis time / audio synthesized (sum of ``tts_segment_done.duration_ms`` / ``audio_ms``).
    * ``segments``: LLM chunks (``llm_done.segments_total``, else the chunks seen); ``tts_segments``: audio segments
      (``tts_done.segments_total``, else those seen; one chunk may become several audio segments, and a chunk with
      nothing speakable none, so LLM chunks are not compared with played segments).
    * ``interrupted``: a ``barge_in`` event, or ``interrupted=True`` on ``llm_done``, ``tts_done`` or ``turn_played``.
    * ``segments_cancelled``: interrupted turns only: audio segments not played in full (the one cut, those dropped
      by the speaker, those synthesized after playback stopped), ``tts_segments - segments_played``.
    * ``segments_lost``: uninterrupted turns only: ``tts_segments - segments_played`` (the speaker's
      ``turn_played.cancelled`` there counts segments that never arrived: lost, not cancelled), plus, when the TTS
      never closed the turn (``tts_done`` missing: it died), the LLM chunks that got no audio segment. Must be 0.

Bounds: every turn id is checked against the session's sequence (:class:`~dora_voice.turns.TurnSequence`), segment
indices and totals are capped (:data:`MAX_SEGMENTS_PER_TURN`), and an event costs work for its own turn only (the
grace timers are a queue), so thousands of open or bogus turns cannot make the monitor fall behind.

Per-chunk definitions (:class:`ChunkRecord`): ``llm_ttft_ms`` exists for the first chunk only (``llm_start`` -> first
token; when a later chunk started generating is not observable); ``llm_gen_ms`` is the chunk's ``duration_ms`` as
the LLM reports it (previous chunk, or ``llm_start``, to this chunk emitted: it includes the first chunk's TTFT and
any pacing wait); TTS figures aggregate the audio segments made from the chunk (mapped by ``text_segment_index``);
``combined_ms`` is ``llm_start`` -> the chunk's first audio fragment.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import statistics
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Mapping, Any, Callable, Iterable, Sequence

from dora_voice.schema import Key, SchemaError, TimingEvent, TimingKind
from dora_voice.turns import TurnSequence

logger = logging.getLogger(__name__)

DEFAULT_GRACE_S = 2.0
"""How long a turn whose ``turn_played`` arrived waits for the rest of its events (s, monitor clock)."""

MAX_SEGMENTS_PER_TURN = 10_000
"""Largest segment index or total a timing event may carry (a 512-token answer has about 50 segments); larger
values are rejected, so one bad event cannot make the collector build huge lists."""

MAX_AEC_WINDOWS = 7200
"""``aec_stats`` windows kept for the session's echo summary (an hour at the aec node's default 500 ms)."""

MAX_OPEN_TURNS = 256
"""Turns kept open at once; when a new turn would exceed it, the oldest open turn is built as incomplete (its
events stopped coming long ago: a real session has one or two turns in flight)."""

_BOUNDED_FIELDS = (Key.SEGMENT_INDEX, Key.TEXT_SEGMENT_INDEX, Key.SEGMENTS_TOTAL, Key.COUNT)


def _check_bounds(event: TimingEvent) -> None:
    """Reject segment indices and totals beyond :data:`MAX_SEGMENTS_PER_TURN` (types and required fields were
    checked when the event was built or decoded, :data:`dora_voice.schema.TIMING_FIELDS`).

    Raises:
        SchemaError: a bounded field is negative or too large.
    """
    for key in _BOUNDED_FIELDS:
        value = event.fields.get(key)
        if value is not None and not 0 <= value <= MAX_SEGMENTS_PER_TURN:
            raise SchemaError(f"timing field {key!r} of {event.kind.value!r} from {event.node!r} is {value}: "
                              f"expected 0..{MAX_SEGMENTS_PER_TURN}")


def _ms(start_ns: int | None, end_ns: int | None) -> float | None:
    """Milliseconds from ``start_ns`` to ``end_ns``, or ``None`` if either is unknown."""
    if start_ns is None or end_ns is None:
        return None
    return (end_ns - start_ns) / 1e6


def _field(event: TimingEvent | None, key: str, default: Any = None) -> Any:
    """:meth:`TimingEvent.get` of an event that may not have arrived."""
    return default if event is None else event.get(key, default)


def _t(event: TimingEvent | None) -> int | None:
    return None if event is None else event.t_ns


def _sum(values: Iterable[float | None]) -> float | None:
    """Sum of the known values; ``None`` if none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _min(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _max(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


# --------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class ChunkRecord:
    """One LLM chunk of a turn and what the TTS and the speaker made of it.

    Attributes:
        segment_index: 0-based chunk index (the LLM's ``segment_index``; ``text_segment_index`` on the TTS side).
        tokens: LLM tokens in the chunk.
        text: the chunk's text.
        llm_ttft_ms: first chunk only: ``llm_start`` -> first token (ms); ``None`` for later chunks.
        llm_gen_ms: the chunk's generation time as reported by the LLM (``duration_ms``), ms.
        tts_ttfb_ms: the chunk's first TTS segment: text received -> first audio fragment (ms).
        tts_gen_ms: synthesis time of the chunk's TTS segments, summed (ms).
        audio_ms: audio synthesized for the chunk (ms of audio).
        combined_ms: ``llm_start`` -> the chunk's first audio fragment (ms).
        played_audio_ms: audio of the chunk the speaker finished playing (ms of audio).
        tts_segments: audio segments synthesized from the chunk.
        segments_played: of those, segments the speaker finished playing.
        llm_emit_ns: wall clock when the LLM emitted the chunk.
        tts_start_ns: when the TTS received the chunk's first segment.
        tts_first_fragment_ns: when the chunk's first audio fragment left the TTS.
        tts_done_ns: when the chunk's last segment was synthesized.
        play_start_ns: estimated start of playback (end of the first played segment minus its audio duration).
        play_end_ns: when the chunk's last played segment finished.
    """

    segment_index: int
    tokens: int | None
    text: str
    llm_ttft_ms: float | None
    llm_gen_ms: float | None
    tts_ttfb_ms: float | None
    tts_gen_ms: float | None
    audio_ms: float | None
    combined_ms: float | None
    played_audio_ms: float | None
    tts_segments: int
    segments_played: int
    llm_emit_ns: int | None
    tts_start_ns: int | None
    tts_first_fragment_ns: int | None
    tts_done_ns: int | None
    play_start_ns: int | None
    play_end_ns: int | None

    @property
    def number(self) -> int:
        """1-based chunk number, as the tables print it (``#``)."""
        return self.segment_index + 1


@dataclass(frozen=True)
class TurnRecord:
    """Latency record of one turn (one user utterance or typed query and its answer).

    Timestamps (``*_ns``) are wall-clock ``time.time_ns()`` values stamped by the node where the event happened;
    derived figures follow the definitions in this module's docstring. ``None`` means an event needed was not seen.

    Attributes:
        turn_id: the pipeline's turn id.
        session_id: the first non-empty session id seen in the turn's events.
        source: ``"voice"`` (VAD/ASR events seen), ``"text"`` (typed query) or ``"unknown"``.
        complete: every event the turn needs arrived (see module docstring); ``False`` when it was built at
            :meth:`TimingCollector.flush` or after the grace period with an event missing.
        transcript: what the user said or typed.
        reply: the LLM's reply (``llm_done.text``, else the chunk texts joined).
        input_errors: ``input_error`` events attributed to this turn (its own turn id, or turn id -1 stamped while
            the turn was in progress).
        chunks: one record per LLM chunk, in order.
    """

    turn_id: int
    session_id: str
    source: str
    complete: bool
    transcript: str
    reply: str
    # latencies, ms
    asr_latency_ms: float | None
    eot_delay_ms: float | None
    llm_ttft_ms: float | None
    llm_first_chunk_ms: float | None
    tts_ttfb_ms: float | None
    first_audio_ms: float | None
    llm_start_to_first_audio_ms: float | None
    # LLM throughput
    llm_tokens: int | None
    llm_total_ms: float | None
    inter_token_ms: float | None
    tokens_per_s: float | None
    # audio
    audio_s: float | None
    audio_played_s: float | None
    wall_s: float | None
    rtf: float | None
    underruns: int | None
    underrun_ms: float | None
    # segment accounting
    segments: int
    tts_segments: int
    segments_played: int
    segments_cancelled: int
    segments_lost: int
    interrupted: bool
    barge_in_ms: float | None
    input_errors: int
    # wall-clock timestamps, ns
    speech_start_ns: int | None
    speech_end_ns: int | None
    eot_detected_ns: int | None
    transcript_ns: int | None
    llm_start_ns: int | None
    llm_first_token_ns: int | None
    llm_done_ns: int | None
    tts_done_ns: int | None
    playback_started_ns: int | None
    barge_in_ns: int | None
    turn_played_ns: int | None
    # end of turn and the parts of voice-to-voice (see the module docstring), ms
    eot_rule: str | None = None
    eot_probability: float | None = None
    speculation: str | None = None  # asr_done's: hit (transcribed during the pause), miss, none
    speculation_cancelled: int = 0  # speculative transcripts of this turn dropped (the user went on speaking)
    llm_speculation: str | None = None  # llm_start's: hit (the reply began during the pause), miss, None
    llm_speculation_cancelled: int = 0  # replies begun during the pause and dropped (never sent, never heard)
    tts_speculation_cancelled: int = 0  # speculative audio synthesized during the pause and dropped (never heard)
    prefilled_words: int | None = None  # llm_start's: words whose prompt was evaluated while the user spoke
    v2v_eot_ms: float | None = None
    v2v_asr_ms: float | None = None
    v2v_llm_ttft_ms: float | None = None
    v2v_first_chunk_ms: float | None = None
    v2v_tts_ms: float | None = None
    v2v_playback_ms: float | None = None
    chunks: tuple[ChunkRecord, ...] = ()
    barge_in_onset_ns: int | None = None  # first voiced sample of the speech that interrupted the turn
    barge_in_from_onset_ms: float | None = None  # that onset -> playback stopped
    pauses_resumed: int = 0  # playback paused at a speech onset that was no barge-in, then resumed
    pause_ms: float | None = None  # the silence those pauses put into the answer, ms

    @property
    def v2v_parts(self) -> dict[str, float | None]:
        """The parts of voice-to-voice in time order (:data:`V2V_PARTS`), ms."""
        return {name: getattr(self, name) for name in V2V_PARTS}

    @property
    def origin_ns(self) -> int | None:
        """Time origin for plots: the end of speech for voice turns, else ``llm_start``."""
        return self.speech_end_ns if self.speech_end_ns is not None else self.llm_start_ns

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, chunks included (floats rounded to 0.001, non-finite -> ``None``)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "TurnRecord":
        """Rebuild a record from :meth:`to_json` output (e.g. a line of the JSONL report); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in names and k != "chunks"}
        chunk_names = {f.name for f in dataclasses.fields(ChunkRecord)}
        chunks = tuple(ChunkRecord(**{k: v for k, v in c.items() if k in chunk_names})
                       for c in record.get("chunks") or ())
        return cls(**values, chunks=chunks)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    return value


@dataclass(frozen=True)
class MetricStats:
    """Distribution of one per-turn metric over the turns where it is known.

    Attributes:
        name: the :class:`TurnRecord` field (its unit is in the name).
        n: turns with a value.
        p50 / p90: percentiles (linear interpolation), in the metric's unit.
        mean: arithmetic mean, in the metric's unit.
    """

    name: str
    n: int
    p50: float | None
    p90: float | None
    mean: float | None


@dataclass(frozen=True)
class SessionSummary:
    """What a monitor run saw, over all turns.

    Attributes:
        turns: turns reported.
        incomplete_turns: turns built without every event they need.
        interrupted_turns: turns stopped by a barge-in.
        metrics: one :class:`MetricStats` per entry of :data:`SUMMARY_METRICS`.
        segments / tts_segments / segments_played / segments_cancelled / segments_lost: summed over turns.
        underruns: summed over turns.
        input_errors: every ``input_error`` detail seen, ``"node: detail"``, in arrival order.
        unanswered_turns: turn ids with speech but no transcript (see :attr:`TimingCollector.unanswered_turns`).
    """

    turns: int
    incomplete_turns: int
    interrupted_turns: int
    metrics: tuple[MetricStats, ...]
    segments: int
    tts_segments: int
    segments_played: int
    segments_cancelled: int
    segments_lost: int
    underruns: int
    input_errors: tuple[str, ...]
    unanswered_turns: tuple[int, ...] = ()


V2V_PARTS = ("v2v_eot_ms", "v2v_asr_ms", "v2v_llm_ttft_ms", "v2v_first_chunk_ms", "v2v_tts_ms", "v2v_playback_ms")
"""The consecutive parts of voice-to-voice (``first_audio_ms``), in time order."""

SUMMARY_METRICS = (
    "asr_latency_ms", "eot_delay_ms", "llm_ttft_ms", "llm_first_chunk_ms", "tts_ttfb_ms", "first_audio_ms",
    "llm_start_to_first_audio_ms", "inter_token_ms", "tokens_per_s", "llm_total_ms", "audio_s", "wall_s", "rtf",
    "underrun_ms", "barge_in_ms", "barge_in_from_onset_ms", "eot_probability", *V2V_PARTS,
)
"""Per-turn metrics the session summary reports."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of non-empty ``values``, linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(turns: Sequence[TurnRecord], input_errors: Sequence[str] = (),
              unanswered_turns: Sequence[int] = ()) -> SessionSummary:
    """Aggregate turn records into a :class:`SessionSummary` (p50/p90/mean per metric, segment totals)."""
    metrics = []
    for name in SUMMARY_METRICS:
        values = [getattr(t, name) for t in turns if getattr(t, name) is not None]
        if values:
            metrics.append(MetricStats(name, len(values), percentile(values, 50), percentile(values, 90),
                                       statistics.fmean(values)))
        else:
            metrics.append(MetricStats(name, 0, None, None, None))
    return SessionSummary(
        turns=len(turns), incomplete_turns=sum(not t.complete for t in turns),
        interrupted_turns=sum(t.interrupted for t in turns), metrics=tuple(metrics),
        segments=sum(t.segments for t in turns), tts_segments=sum(t.tts_segments for t in turns),
        segments_played=sum(t.segments_played for t in turns),
        segments_cancelled=sum(t.segments_cancelled for t in turns),
        segments_lost=sum(t.segments_lost for t in turns), underruns=sum(t.underruns or 0 for t in turns),
        input_errors=tuple(input_errors), unanswered_turns=tuple(unanswered_turns),
    )


# --------------------------------------------------------------------------------------------------------------
# Building a record from a turn's events


class _TurnEvents:
    """All events of one turn, indexed for lookup.

    Singletons (``first``) resolve to the earliest ``t_ns``; per-segment events are keyed by ``segment_index``
    (LLM chunk index for ``llm_chunk``, audio segment index for the TTS and speaker events).
    """

    def __init__(self, events: Iterable[TimingEvent] = ()) -> None:
        self.by_kind: dict[TimingKind, list[TimingEvent]] = defaultdict(list)
        self.llm_chunks: dict[int, TimingEvent] = {}
        self.tts_starts: dict[int, TimingEvent] = {}
        self.first_fragments: dict[int, TimingEvent] = {}
        self.tts_dones: dict[int, TimingEvent] = {}
        self.played: dict[int, TimingEvent] = {}
        self._per_segment = {TimingKind.LLM_CHUNK: self.llm_chunks, TimingKind.TTS_SEGMENT_START: self.tts_starts,
                             TimingKind.TTS_FIRST_FRAGMENT: self.first_fragments,
                             TimingKind.TTS_SEGMENT_DONE: self.tts_dones, TimingKind.SEGMENT_PLAYED: self.played}
        for event in events:
            self.add(event)

    def add(self, event: TimingEvent) -> None:
        """Index one more event (cost independent of the other turns; logarithmic in this turn's events)."""
        items = self.by_kind[event.kind]
        if not items or items[-1].t_ns <= event.t_ns:
            items.append(event)
        else:
            bisect.insort(items, event, key=lambda e: e.t_ns)
        per_segment = self._per_segment.get(event.kind)
        if per_segment is not None:
            index = event.get(Key.SEGMENT_INDEX)
            known = per_segment.get(index)
            if known is None or event.t_ns < known.t_ns:
                per_segment[index] = event

    def first(self, kind: TimingKind) -> TimingEvent | None:
        items = self.by_kind.get(kind)
        return items[0] if items else None

    def all_events(self) -> list[TimingEvent]:
        return [event for items in self.by_kind.values() for event in items]

    def chunk_of(self, audio_segment: int) -> int:
        """The LLM chunk an audio segment was made from: the ``text_segment_index`` of any of its TTS events (its
        own index when none carries one)."""
        for events in (self.tts_starts, self.tts_dones, self.first_fragments, self.played):
            chunk = _field(events.get(audio_segment), Key.TEXT_SEGMENT_INDEX)
            if chunk is not None:
                return chunk
        return audio_segment

    def interrupted(self) -> bool:
        """A barge-in stopped the turn: a ``barge_in`` event, or ``interrupted`` on a closing event."""
        return self.first(TimingKind.BARGE_IN) is not None or any(
            _field(self.first(kind), Key.INTERRUPTED, False)
            for kind in (TimingKind.LLM_DONE, TimingKind.TTS_DONE, TimingKind.TURN_PLAYED))

    def tts_ttfb_ms(self, audio_segment: int) -> float | None:
        """An audio segment's text received -> first fragment emitted (ms)."""
        return _ms(_t(self.tts_starts.get(audio_segment)), _t(self.first_fragments.get(audio_segment)))

    def tts_gen_ms(self, audio_segment: int) -> float | None:
        """An audio segment's synthesis time: its reported ``duration_ms``, else start -> done (ms)."""
        done = self.tts_dones.get(audio_segment)
        reported = _field(done, Key.DURATION_MS)
        return reported if reported is not None else _ms(_t(self.tts_starts.get(audio_segment)), _t(done))


def build_turn(turn_id: int, events: Iterable[TimingEvent], *, complete: bool,
               errors: Sequence[TimingEvent] = ()) -> TurnRecord:
    """Compute the :class:`TurnRecord` of one turn from all its timing events (any order).

    Args:
        turn_id: the turn.
        events: the turn's events (``turn_id`` equal to ``turn_id``), input errors excluded.
        complete: whether every event the turn needs arrived.
        errors: ``input_error`` events that may concern this turn: those with this turn id count, and those with
            turn id -1 count when stamped between the turn's first and last event.
    """
    ev = _TurnEvents(events)
    speech_started, speech_ended = ev.first(TimingKind.SPEECH_STARTED), ev.first(TimingKind.SPEECH_ENDED)
    asr_done, text_input = ev.first(TimingKind.ASR_DONE), ev.first(TimingKind.TEXT_INPUT)
    llm_start, first_token = ev.first(TimingKind.LLM_START), ev.first(TimingKind.LLM_FIRST_TOKEN)
    llm_done, tts_done = ev.first(TimingKind.LLM_DONE), ev.first(TimingKind.TTS_DONE)
    playback_started, turn_played = ev.first(TimingKind.PLAYBACK_STARTED), ev.first(TimingKind.TURN_PLAYED)
    barge_in = ev.first(TimingKind.BARGE_IN)
    llm_start_ns = _t(llm_start)
    speech_end_ns = _t(speech_ended) if speech_ended else _field(asr_done, Key.SPEECH_END_NS)
    speech_start_ns = _t(speech_started) if speech_started else _field(speech_ended, Key.SPEECH_START_NS)
    transcript_event = asr_done or text_input

    tokens = _field(llm_done, Key.TOKENS)
    if tokens is None and ev.llm_chunks:
        tokens = sum(_field(e, Key.TOKENS, 0) for e in ev.llm_chunks.values())
    inter_token_ms = None
    if tokens is not None and tokens >= 2 and llm_done is not None and first_token is not None:
        inter_token_ms = (llm_done.t_ns - first_token.t_ns) / 1e6 / (tokens - 1)

    audio_ms = _sum(_field(e, Key.AUDIO_MS) for e in ev.tts_dones.values())
    synth_ms = _sum(_field(e, Key.DURATION_MS) for e in ev.tts_dones.values())
    played_audio_ms = _field(turn_played, Key.AUDIO_MS)
    if played_audio_ms is None:
        played_audio_ms = _sum(_field(e, Key.AUDIO_MS) for e in ev.played.values())

    segments = _field(llm_done, Key.SEGMENTS_TOTAL, len(ev.llm_chunks))
    tts_segments = _field(tts_done, Key.SEGMENTS_TOTAL, len(set(ev.tts_dones) | set(ev.tts_starts)))
    segments_played = _field(turn_played, Key.COUNT, len(ev.played))
    interrupted = ev.interrupted()
    # Stopped turns: whatever was not played in full was dropped on purpose (cut, discarded, or synthesized after
    # playback stopped). Otherwise every synthesized segment must be played.
    cancelled = max(0, tts_segments - segments_played) if interrupted else 0
    lost = 0 if interrupted else tts_segments - segments_played
    if not interrupted and tts_done is None:
        # The TTS never closed the turn (it died): the chunks it never turned into audio were lost too.
        voiced = {ev.chunk_of(seg) for seg in set(ev.tts_starts) | set(ev.tts_dones)}
        lost += sum(1 for i, e in ev.llm_chunks.items() if i not in voiced and _field(e, Key.TEXT, "x").strip())

    reply = _field(llm_done, Key.TEXT)
    if reply is None:
        reply = " ".join(_field(ev.llm_chunks[i], Key.TEXT, "") for i in sorted(ev.llm_chunks)).strip()

    own = ev.all_events()
    start_ns, end_ns = _min(e.t_ns for e in own), _max(e.t_ns for e in own)
    input_errors = sum(1 for e in errors if e.turn_id == turn_id or (
        e.turn_id < 0 and start_ns is not None and start_ns <= e.t_ns <= end_ns))
    wall_ms = _ms(llm_start_ns, _t(turn_played))
    cancelled_speculations = ev.by_kind.get(TimingKind.SPECULATION_CANCELLED, ())
    pauses = ev.by_kind.get(TimingKind.PLAYBACK_PAUSED, ())

    return TurnRecord(
        turn_id=turn_id,
        session_id=next((e.session_id for e in own if e.session_id), ""),
        source="voice" if (speech_ended or asr_done) else "text" if text_input else "unknown",
        complete=complete,
        transcript=_field(transcript_event, Key.TEXT) or _field(llm_start, Key.TEXT, ""), reply=reply,
        asr_latency_ms=_ms(speech_end_ns, _t(asr_done)),
        eot_delay_ms=_ms(speech_end_ns, _field(speech_ended, Key.DETECTED_NS)),
        llm_ttft_ms=_ms(llm_start_ns, _t(first_token)),
        llm_first_chunk_ms=_ms(llm_start_ns, _t(ev.llm_chunks[min(ev.llm_chunks)])) if ev.llm_chunks else None,
        tts_ttfb_ms=ev.tts_ttfb_ms(min(ev.tts_starts)) if ev.tts_starts else None,
        first_audio_ms=_ms(speech_end_ns, _t(playback_started)),
        llm_start_to_first_audio_ms=_ms(llm_start_ns, _t(playback_started)),
        llm_tokens=tokens, llm_total_ms=_ms(llm_start_ns, _t(llm_done)),
        inter_token_ms=inter_token_ms, tokens_per_s=1000.0 / inter_token_ms if inter_token_ms else None,
        audio_s=None if audio_ms is None else audio_ms / 1000.0,
        audio_played_s=None if played_audio_ms is None else played_audio_ms / 1000.0,
        wall_s=None if wall_ms is None else wall_ms / 1000.0,
        rtf=synth_ms / audio_ms if synth_ms is not None and audio_ms else None,
        underruns=_field(turn_played, Key.UNDERRUNS), underrun_ms=_field(turn_played, Key.UNDERRUN_MS),
        segments=segments, tts_segments=tts_segments, segments_played=segments_played,
        segments_cancelled=cancelled, segments_lost=lost, interrupted=interrupted,
        barge_in_ms=_field(barge_in, Key.DURATION_MS), input_errors=input_errors,
        speech_start_ns=speech_start_ns, speech_end_ns=speech_end_ns,
        eot_detected_ns=_field(speech_ended, Key.DETECTED_NS), transcript_ns=_t(transcript_event),
        llm_start_ns=llm_start_ns, llm_first_token_ns=_t(first_token), llm_done_ns=_t(llm_done),
        tts_done_ns=_t(tts_done), playback_started_ns=_t(playback_started), barge_in_ns=_t(barge_in),
        turn_played_ns=_t(turn_played),
        eot_rule=_field(speech_ended, Key.EOT_RULE), eot_probability=_field(speech_ended, Key.EOT_PROBABILITY),
        speculation=_field(asr_done, Key.SPECULATION),
        speculation_cancelled=sum(e.node not in ("llm", "tts") for e in cancelled_speculations),
        llm_speculation=_field(llm_start, Key.SPECULATION),
        llm_speculation_cancelled=sum(e.node == "llm" for e in cancelled_speculations),
        tts_speculation_cancelled=sum(e.node == "tts" for e in cancelled_speculations),
        prefilled_words=_field(llm_start, Key.PREFILLED_WORDS),
        **_v2v_parts(speech_end_ns, _field(speech_ended, Key.DETECTED_NS), _t(asr_done), _t(first_token),
                     _t(ev.llm_chunks[min(ev.llm_chunks)]) if ev.llm_chunks else None,
                     _min(_t(e) for e in ev.first_fragments.values()), _t(playback_started)),
        barge_in_onset_ns=_field(barge_in, Key.SPEECH_START_NS),
        barge_in_from_onset_ms=_ms(_field(barge_in, Key.SPEECH_START_NS), _t(barge_in)),
        pauses_resumed=len(pauses), pause_ms=_sum(_field(e, Key.DURATION_MS) for e in pauses) if pauses else None,
        chunks=tuple(_build_chunks(ev, llm_start_ns, _t(first_token))),
    )


def _v2v_parts(*instants: int | None) -> dict[str, float | None]:
    """The parts of voice-to-voice from its consecutive instants (speech end, end of turn, transcript, first token,
    first chunk, first fragment, first sample played): each part is the gap between two neighbours, so the known
    parts of a turn with every instant add up to ``first_audio_ms``."""
    return {name: _ms(a, b) for name, a, b in zip(V2V_PARTS, instants, instants[1:])}


def _build_chunks(ev: _TurnEvents, llm_start_ns: int | None, first_token_ns: int | None) -> list[ChunkRecord]:
    """One :class:`ChunkRecord` per chunk index seen on the LLM or the TTS side, in order."""
    audio_segments: dict[int, list[int]] = defaultdict(list)  # chunk -> its audio segments, in order
    for seg in sorted(set(ev.tts_starts) | set(ev.first_fragments) | set(ev.tts_dones) | set(ev.played)):
        audio_segments[ev.chunk_of(seg)].append(seg)

    records = []
    for index in sorted(set(ev.llm_chunks) | set(audio_segments)):
        chunk = ev.llm_chunks.get(index)
        segs = audio_segments.get(index, [])
        first_seg = segs[0] if segs else -1
        played = [ev.played[s] for s in segs if s in ev.played]
        play_starts = [None if _field(e, Key.AUDIO_MS) is None else e.t_ns - int(_field(e, Key.AUDIO_MS) * 1e6)
                       for e in played]
        first_fragment_ns = _min(_t(ev.first_fragments.get(s)) for s in segs)
        records.append(ChunkRecord(
            segment_index=index, tokens=_field(chunk, Key.TOKENS),
            text=_field(chunk, Key.TEXT) or _field(ev.tts_starts.get(first_seg), Key.TEXT, ""),
            llm_ttft_ms=_ms(llm_start_ns, first_token_ns) if index == 0 else None,
            llm_gen_ms=_field(chunk, Key.DURATION_MS),
            tts_ttfb_ms=ev.tts_ttfb_ms(first_seg),
            tts_gen_ms=_sum(ev.tts_gen_ms(s) for s in segs),
            audio_ms=_sum(_field(ev.tts_dones.get(s), Key.AUDIO_MS) for s in segs),
            combined_ms=_ms(llm_start_ns, first_fragment_ns),
            played_audio_ms=_sum(_field(e, Key.AUDIO_MS) for e in played),
            tts_segments=len(segs), segments_played=len(played),
            llm_emit_ns=_t(chunk), tts_start_ns=_t(ev.tts_starts.get(first_seg)),
            tts_first_fragment_ns=first_fragment_ns, tts_done_ns=_max(_t(ev.tts_dones.get(s)) for s in segs),
            play_start_ns=_min(play_starts), play_end_ns=_max(e.t_ns for e in played),
        ))
    return records


# --------------------------------------------------------------------------------------------------------------
# The collector


_VAD_KINDS = {TimingKind.SPEECH_STARTED, TimingKind.SPEECH_ENDED, TimingKind.SPECULATION_CANCELLED}


def _lacking(kind: TimingKind, seen: Mapping[int, TimingEvent], total: int) -> list[str]:
    """``"kind #i"`` for each index below ``total`` not in ``seen``; cheap when none is missing."""
    if len(seen) >= total and all(i in seen for i in range(min(total, len(seen)))):
        return []
    return [f"{kind.value} #{i}" for i in range(total) if i not in seen]


@dataclass
class _OpenTurn:
    events: list[TimingEvent] = field(default_factory=list)
    played_at_ns: int | None = None  # monitor clock when turn_played arrived
    index: _TurnEvents = field(default_factory=_TurnEvents)

    def add(self, event: TimingEvent) -> None:
        self.events.append(event)
        self.index.add(event)

    def missing(self) -> tuple[list[str], bool]:
        """What this turn still lacks: ``(missing event descriptions, maybe_barge_in)``.

        The totals on the closing events say how many per-segment events to expect: ``llm_done.segments_total``
        chunks, ``tts_done.segments_total`` audio segments, ``turn_played.count`` played segments.
        ``maybe_barge_in`` is true when fewer segments were played than synthesized and no ``barge_in`` has arrived:
        either one is still coming or segments were lost; only the grace period can tell.
        """
        ev = self.index
        lacking = [k.value for k in (TimingKind.TURN_PLAYED, TimingKind.LLM_START, TimingKind.LLM_DONE,
                                     TimingKind.TTS_DONE) if ev.first(k) is None]
        if ev.first(TimingKind.ASR_DONE) is not None:
            lacking += [k.value for k in (TimingKind.SPEECH_STARTED, TimingKind.SPEECH_ENDED) if ev.first(k) is None]
        elif ev.first(TimingKind.TEXT_INPUT) is None:
            lacking.append("asr_done or text_input")
        llm_done, tts_done = ev.first(TimingKind.LLM_DONE), ev.first(TimingKind.TTS_DONE)
        turn_played = ev.first(TimingKind.TURN_PLAYED)
        if _field(llm_done, Key.TOKENS, 0) > 0 and ev.first(TimingKind.LLM_FIRST_TOKEN) is None:
            lacking.append(TimingKind.LLM_FIRST_TOKEN.value)
        lacking += _lacking(TimingKind.LLM_CHUNK, ev.llm_chunks, _field(llm_done, Key.SEGMENTS_TOTAL, 0))
        tts_total = _field(tts_done, Key.SEGMENTS_TOTAL, 0)
        for kind, seen in ((TimingKind.TTS_SEGMENT_START, ev.tts_starts),
                           (TimingKind.TTS_FIRST_FRAGMENT, ev.first_fragments),
                           (TimingKind.TTS_SEGMENT_DONE, ev.tts_dones)):
            lacking += _lacking(kind, seen, tts_total)
        if _field(turn_played, Key.INTERRUPTED, False) and ev.first(TimingKind.BARGE_IN) is None:
            lacking.append(TimingKind.BARGE_IN.value)  # the speaker reports a barge-in before the turn it stopped
        played = _field(turn_played, Key.COUNT, 0)
        if played > 0 and ev.first(TimingKind.PLAYBACK_STARTED) is None:
            lacking.append(TimingKind.PLAYBACK_STARTED.value)
        if not ev.interrupted() and len(ev.played) < played:
            lacking.append(TimingKind.SEGMENT_PLAYED.value)
        maybe_barge_in = not ev.interrupted() and turn_played is not None and played < tts_total
        return lacking, maybe_barge_in


class TimingCollector:
    """Groups timing events by turn and returns each turn's :class:`TurnRecord` once it is over.

    Pure: no dora, no I/O. Feed it with :meth:`add`; it returns the turns that this event completed. Events with
    turn id -1 (``stream_started``, most ``input_error``s) are kept at session level.

    Args:
        grace_s: how long (s, monitor clock) a turn whose ``turn_played`` arrived waits for its other closing
            events before it is built as incomplete.
        clock_ns: monotonic clock in ns (injected in tests).

    Attributes:
        input_errors: every ``input_error`` event seen, in arrival order.
        stream_started: the mic's ``stream_started`` event, if seen.
        aec_stats: the last :data:`MAX_AEC_WINDOWS` ``aec_stats`` events (echo cancellation windows), in arrival
            order.
        unanswered_turns: turn ids that had VAD events only when :meth:`flush` ran.
    """

    def __init__(self, *, grace_s: float = DEFAULT_GRACE_S, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.grace_s = grace_s
        self.clock_ns = clock_ns
        self.input_errors: list[TimingEvent] = []
        self.stream_started: TimingEvent | None = None
        self.aec_stats: deque[TimingEvent] = deque(maxlen=MAX_AEC_WINDOWS)
        self.unanswered_turns: list[int] = []
        self._open: dict[int, _OpenTurn] = {}
        self._done: set[int] = set()
        self._grace: deque[tuple[int, int]] = deque()  # (monitor clock when turn_played arrived, turn id)
        self._turn_ids = TurnSequence()

    def add(self, event: TimingEvent) -> list[TurnRecord]:
        """Take one event; return the turns it (or the grace period) completed, oldest first.

        Raises:
            SchemaError: a segment index or total beyond :data:`MAX_SEGMENTS_PER_TURN`, or a turn id impossible in
                the session's sequence. Nothing is recorded then. (Required fields and types were checked when the
                event was built or decoded: :data:`dora_voice.schema.TIMING_FIELDS`.)
        """
        _check_bounds(event)
        if event.turn_id >= 0:
            self._turn_ids.check(event.turn_id, f"timing event {event.kind.value!r} from {event.node!r}")
        ready: list[TurnRecord] = []
        if event.kind is TimingKind.INPUT_ERROR:
            self.input_errors.append(event)
        elif event.kind is TimingKind.STREAM_STARTED:
            self.stream_started = event
        elif event.kind is TimingKind.AEC_STATS:
            self.aec_stats.append(event)
        elif event.turn_id < 0:
            logger.debug("timing event %s from %s has no turn; ignored", event.kind.value, event.node)
        elif event.turn_id in self._done:
            logger.warning("late timing event %s from %s for turn %d, already reported; ignored",
                           event.kind.value, event.node, event.turn_id)
        else:
            turn = self._open.get(event.turn_id)
            if turn is None:
                if len(self._open) >= MAX_OPEN_TURNS:
                    oldest = min(self._open)
                    logger.warning("%d turns open at once: the oldest, turn %d, is built now", len(self._open),
                                   oldest)
                    record = self._close(oldest)
                    if record is not None:
                        ready.append(record)
                turn = self._open[event.turn_id] = _OpenTurn()
            turn.add(event)
            if event.kind is TimingKind.TURN_PLAYED and turn.played_at_ns is None:
                turn.played_at_ns = self.clock_ns()
                self._grace.append((turn.played_at_ns, event.turn_id))
            lacking, maybe_barge_in = turn.missing()
            if not lacking and not maybe_barge_in:
                ready.append(self._finish(event.turn_id, True))
        return sorted(ready + self.poll(), key=lambda t: t.turn_id)

    def poll(self) -> list[TurnRecord]:
        """Build the turns whose grace period after ``turn_played`` ran out (complete turns are built by :meth:`add`
        as their last event arrives). Cost: the turns that expire, not the turns open."""
        now = self.clock_ns()
        ready = []
        while self._grace and now - self._grace[0][0] >= self.grace_s * 1e9:
            _played_at, turn_id = self._grace.popleft()
            turn = self._open.get(turn_id)
            if turn is not None:
                lacking, _maybe_barge_in = turn.missing()
                ready.append(self._finish(turn_id, not lacking))
        return ready

    def flush(self) -> list[TurnRecord]:
        """Build every open turn now (end of stream), oldest first; those lacking events are incomplete.

        Turns with VAD events only go to :attr:`unanswered_turns` instead.
        """
        turns = []
        for turn_id in sorted(self._open):
            record = self._close(turn_id)
            if record is not None:
                turns.append(record)
        return turns

    def _close(self, turn_id: int) -> TurnRecord | None:
        """Build open turn ``turn_id`` as it is; ``None`` (and listed as unanswered) when it had VAD events only."""
        if {e.kind for e in self._open[turn_id].events} <= _VAD_KINDS:
            del self._open[turn_id]
            self._done.add(turn_id)
            self.unanswered_turns.append(turn_id)
            logger.info("turn %d: speech without a transcript; not a turn of the conversation", turn_id)
            return None
        return self._finish(turn_id, not self._open[turn_id].missing()[0])

    @property
    def open_turns(self) -> list[int]:
        """Turn ids seen but not yet reported."""
        return sorted(self._open)

    def error_details(self) -> list[str]:
        """Every input error as ``"node: detail"``, in arrival order."""
        return [f"{e.node}: {_field(e, Key.DETAIL, '')}" for e in self.input_errors]

    def _finish(self, turn_id: int, complete: bool) -> TurnRecord:
        turn = self._open.pop(turn_id)
        self._done.add(turn_id)
        if not complete:
            lacking = turn.missing()[0]
            logger.info("turn %d reported incomplete, without: %s", turn_id, ", ".join(lacking[:8]))
        return build_turn(turn_id, turn.events, complete=complete, errors=self.input_errors)


@dataclass(frozen=True)
class EchoSummary:
    """Echo cancellation over a session, from the aec node's ``aec_stats`` windows.

    Attributes:
        windows: windows reported; ``measured``: those with enough reference-active audio for an ERLE.
        erle_db_p50 / erle_db_p10: ERLE percentiles over the measured windows, dB (None without any); the windows
            include any the user spoke in, which lowers them (the bench excludes those).
        delay_ms: the last echo delay estimate, ms (None before one).
        cpu_percent: mean CPU of the aec node, % of one core.
        canceller_cpu_percent: the echo cancellers' own part of it, % of one core (None from an older aec node).
        reference_active_s: audio with the assistant audible, s.
    """

    windows: int
    measured: int
    erle_db_p50: float | None
    erle_db_p10: float | None
    delay_ms: float | None
    cpu_percent: float | None
    reference_active_s: float
    canceller_cpu_percent: float | None = None


def summarize_echo(events: Sequence[TimingEvent]) -> EchoSummary | None:
    """Aggregate ``aec_stats`` events; None when there are none (no aec node, or it passes audio through)."""
    if not events:
        return None
    erle = [float(e.fields[Key.ERLE_DB]) for e in events if Key.ERLE_DB in e.fields]
    delays = [float(e.fields[Key.DELAY_MS]) for e in events if float(e.fields.get(Key.DELAY_MS, -1.0)) >= 0]
    cpu = [float(e.fields[Key.CPU_PERCENT]) for e in events if Key.CPU_PERCENT in e.fields]
    canceller = [float(e.fields[Key.CANCELLER_CPU_PERCENT]) for e in events if Key.CANCELLER_CPU_PERCENT in e.fields]
    return EchoSummary(
        windows=len(events), measured=len(erle),
        erle_db_p50=percentile(erle, 50) if erle else None, erle_db_p10=percentile(erle, 10) if erle else None,
        delay_ms=delays[-1] if delays else None, cpu_percent=statistics.fmean(cpu) if cpu else None,
        reference_active_s=sum(float(e.fields.get(Key.AUDIO_MS, 0.0)) for e in events) / 1000.0,
        canceller_cpu_percent=statistics.fmean(canceller) if canceller else None,
    )
