"""TTS node: turns the LLM's reply chunks into audio fragments as soon as the synthesizer produces them.

Inputs:
    * ``text`` — llm/text :class:`~dora_voice.schema.TextSegment` chunks (``segment_index`` = LLM chunk index).
    * ``playback`` — barge-in (optional, recommended): speaker/playback :class:`~dora_voice.schema.PlaybackEvent`
      ``turn_interrupted`` for turn ``T`` cancels ``T`` and older turns (the speaker has already applied its
      minimum-speech and echo guards). Other playback events are ignored.
    * ``events`` — barge-in straight from the VAD (optional, for a dataflow without a speaker feeding back):
      vad/events :class:`~dora_voice.schema.VadEvent` ``speech_started`` for turn ``T`` cancels every older turn
      (raw VAD: a cough, or the assistant's own voice on an open microphone, cancels too). Other VAD events are
      ignored. (The same id and type as the speaker's ``events`` input.)

Outputs ``audio`` (:class:`~dora_voice.schema.AudioFragment`), ``segment_done`` (one
:class:`~dora_voice.schema.SegmentDone` per LLM chunk once all its audio is synthesized, for LLM pacing) and
``timing`` (tts_segment_start, tts_first_fragment, tts_segment_done, tts_done).

Per chunk: normalize for speech (markdown, emoji, numbers; ``TTS_NORMALIZE_TEXT``), then with
``ENABLE_INTERNAL_SEGMENTATION`` split it into TTS segments of at most ``TTS_MAX_SEGMENT_LENGTH`` characters at
sentence ends (the turn's first segment may end at a clause, and is cut at ``TTS_FIRST_SEGMENT_MAX_LENGTH`` when
the text runs on without punctuation; the rules are :attr:`TtsConfig.segmentation`, applied by one
:class:`~dora_voice.text.segmenter.TextSegmenter` per turn), each synthesized on its own. Segments are
numbered 0, 1, … per turn by the TTS and carry ``text_segment_index`` = the LLM chunk they came from. With
``RETURN_FRAGMENT`` each segment's audio leaves in fragments of about ``FRAGMENT_INTERVAL`` seconds as soon as the
engine yields it (Piper: one chunk per sentence); without it, one fragment per segment.

Cached phrases: a segment whose normalized text is one of ``TTS_CACHED_PHRASES`` (reply openers such as "Sure,",
synthesized at start-up) or a short segment (at most ``TTS_CACHE_MAX_WORDS`` words) already synthesized in this
session is voiced at once from the engine's earlier output (:mod:`dora_voice.tts_engines.cache`): a reply's first
chunk is often such an opener, and when it is ready only after the confirmation its synthesis is the last step
before the listener hears anything.

Order: chunks are taken in ``segment_index`` order per turn, whatever order they arrive in (a reorder buffer of
at most ``MAX_PENDING_CHUNKS``); a duplicate, a chunk after the turn's final one, or a turn id that cannot belong to
the session (:class:`~dora_voice.turns.TurnSequence`) is an ``input_error`` and changes nothing.

Speculation: the chunks of a reply the LLM began during the pause, before the end of turn was confirmed, come
marked ``speculative``. They are synthesized as any other, but nothing they produce (audio, ``segment_done``, timing)
leaves the node until the LLM's verdict for the turn: ``confirmed`` sends it all at once, stamped no earlier than
the confirmation (the listener's wait starts there, so the monitor's parts still add up); ``cancelled`` drops it,
stops its synthesis and forgets the turn, which may then be answered again from chunk 0. The speaker therefore only
ever receives confirmed audio. A dropped speculation is counted (``speculation_cancelled``), never lost.

Turn closing: the turn's last fragment has ``is_final=True`` and ``segments_total``. When the LLM's final chunk has
no speakable text (empty, only emoji), or the turn is cancelled, the TTS sends an empty fragment that only closes
the turn: its ``segment_index`` is ``segments_total`` (not a segment) unless it closes a segment cut short by a
barge-in, in which case it is that segment's last fragment.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from dora_voice.config import (
    ConfigError, env_field, parse_bool, parse_choice, parse_float, parse_int, parse_str,
)
from dora_voice.contracts import NodeContract
from dora_voice.runtime import Emit, NodeCore, UnknownInputError, emit
from dora_voice.schema import (
    AudioFragment, Key, Output, PlaybackEvent, PlaybackKind, SchemaError, SegmentDone, TextSegment, TimingKind,
    VadEvent, VadEventKind, Verdict,
)
from dora_voice.text import normalize
from dora_voice.text.normalize import SpeechNormalizer
from dora_voice.text.segmenter import SegmentationPolicy, SegmentRule, TextSegmenter, ends_at_pause
from dora_voice.tts_engines import ENGINES, TtsEngine
from dora_voice.tts_engines.cache import DEFAULT_PHRASES, PhraseCache
from dora_voice.turns import TurnSequence

logger = logging.getLogger(__name__)

FIRST_FRAGMENT_HOLD_S = 0.01
"""Audio (s) kept back when a segment's first engine chunk is shorter than one fragment and goes out at once: the
segment's last fragment then always has samples (no empty ``is_last_fragment`` message after every short segment)."""

_MAX_CLOSED_TURNS = 1024
MAX_PENDING_CHUNKS = 256
"""Reorder buffer bound per turn (LLM chunks); more waiting chunks means one went missing upstream."""


@dataclass(frozen=True)
class TtsConfig:
    """TTS settings."""

    backend: str = env_field("TTS_BACKEND", "piper", parse_choice(*ENGINES),
                             f"synthesizer: {', '.join(ENGINES)} (each reads its own settings, listed below)")
    enable_internal_segmentation: bool = env_field(
        "ENABLE_INTERNAL_SEGMENTATION", True, parse_bool,
        "split long LLM chunks into segments at sentence ends (false: one segment per chunk)")
    max_segment_chars: int = env_field("TTS_MAX_SEGMENT_LENGTH", 100, parse_int(min_value=10, max_value=5000),
                                       "longest TTS segment before a forced cut, characters")
    first_max_segment_chars: int = env_field(
        "TTS_FIRST_SEGMENT_MAX_LENGTH", 50, parse_int(min_value=10, max_value=5000),
        "longest first segment of a turn when no clause or sentence ends within TTS_MAX_SEGMENT_LENGTH, characters")
    min_segment_chars: int = env_field("TTS_MIN_SEGMENT_LENGTH", 20, parse_int(min_value=0, max_value=5000),
                                       "shortest TTS segment cut at a sentence end, characters")
    return_fragment: bool = env_field("RETURN_FRAGMENT", True, parse_bool,
                                      "emit audio in fragments as it is synthesized (false: one per segment)")
    fragment_interval_s: float = env_field("FRAGMENT_INTERVAL", 0.3, parse_float(min_value=0.02, max_value=30.0),
                                           "audio per fragment, seconds")
    normalize_text: bool = env_field("TTS_NORMALIZE_TEXT", True, parse_bool,
                                     "spell out numbers/units/abbreviations, drop markdown and emoji")
    cached_phrases: str = env_field(
        "TTS_CACHED_PHRASES", "|".join(DEFAULT_PHRASES), parse_str,
        "phrases synthesized at start-up and voiced at once when a segment is exactly one of them, separated by | "
        "(reply openers such as 'Sure,'; none: no phrases)")
    cache_max_words: int = env_field(
        "TTS_CACHE_MAX_WORDS", 3, parse_int(min_value=0, max_value=50),
        "segments of at most this many words synthesized during the session are kept and voiced at once when "
        "the same text comes again (0: none)")

    def __post_init__(self) -> None:
        if self.min_segment_chars > self.max_segment_chars:
            raise ConfigError(f"TTS_MIN_SEGMENT_LENGTH={self.min_segment_chars} exceeds TTS_MAX_SEGMENT_LENGTH="
                              f"{self.max_segment_chars}")

    @property
    def segmentation(self) -> SegmentationPolicy:
        """Where a turn's text is cut into TTS segments.

        Every segment ends at a sentence end at most ``TTS_MAX_SEGMENT_LENGTH`` long (prosody). The turn's first
        segment may also end at a clause, and when the text runs on with no pause within ``TTS_MAX_SEGMENT_LENGTH``
        it is cut at a space within ``TTS_FIRST_SEGMENT_MAX_LENGTH``: Piper's time to first audio grows with the
        length of the first sentence it synthesizes (RealtimeTTS keeps first-fragment thresholds apart for the
        same reason).
        """
        return SegmentationPolicy(
            first=SegmentRule(self.max_segment_chars, self.min_segment_chars, clause_cut=True,
                              cut_chars=min(self.first_max_segment_chars, self.max_segment_chars)),
            later=SegmentRule(self.max_segment_chars, self.min_segment_chars))


@dataclass
class _Turn:
    """What the TTS knows about one reply."""

    turn_id: int
    session_id: str
    is_streaming: bool
    segmenter: TextSegmenter
    normalizer: SpeechNormalizer = field(default_factory=SpeechNormalizer)
    last_text_segment_index: int = -1
    pending: dict[int, TextSegment] = field(default_factory=dict)  # reorder buffer: segment_index -> chunk
    final_index: int | None = None  # segment_index of the final chunk, once it arrived
    segments_started: int = 0  # TTS segment indices handed out = segments with audio emitted
    audio_samples: int = 0
    cancelled: int = 0  # segments dropped unsynthesized by a barge-in
    first_received_ns: int = 0


@dataclass
class _Chunk:
    """One LLM chunk waiting in the work queue, with its TTS segments not yet started."""

    turn: _Turn
    text_segment_index: int
    received_ns: int
    texts: deque[str]
    is_final: bool
    speakable: bool  # the chunk had text (segment_done is sent for it)
    audio_samples: int = 0  # synthesized so far, over the chunk's segments
    synth_ns: int = 0  # synthesis wall time so far, over the chunk's segments


@dataclass
class _Synthesis:
    """The segment being synthesized."""

    chunk: _Chunk
    segment_index: int
    text: str
    audio: Iterator[np.ndarray]
    started_ns: int
    last_of_turn: bool
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    fragments: int = 0
    samples: int = 0
    cached: bool = False  # voiced from the phrase cache: no synthesis time to report for pacing


class TtsCore(NodeCore):
    """Text chunks in, audio fragments out; synthesis advances one engine chunk per :meth:`step`.

    Args:
        config: TTS settings.
        engine: the synthesizer (injected; tests pass a scripted fake).
        clock_ns: wall clock (``time.time_ns``); stamps fragments and timing events and times synthesis.

    Attributes:
        cancelled_segments: segments dropped unsynthesized by barge-ins, all turns.
        synthesis_errors: segments whose synthesis raised (logged; the segment ends with what it had).
        speculation_hits / speculation_cancelled: speculative replies whose audio was sent at the confirmation /
            dropped unheard.
    """

    node_id = "tts"

    def __init__(self, config: TtsConfig, engine: TtsEngine, clock_ns=time.time_ns) -> None:
        super().__init__(clock_ns)
        self.config = config
        self.engine = engine
        self.sample_rate = int(engine.sample_rate)
        self.segmentation = config.segmentation
        self.fragment_samples = max(1, round(config.fragment_interval_s * self.sample_rate))
        self.hold_samples = max(1, round(FIRST_FRAGMENT_HOLD_S * self.sample_rate))
        self.queue: deque[_Chunk] = deque()
        self.active: _Synthesis | None = None
        self.turns: dict[int, _Turn] = {}  # open turns
        self.closed: dict[int, bool] = {}  # recently closed turn -> closed by a barge-in
        self.cancel_below = -(2 ** 62)  # text for a turn id below this is cancelled on arrival
        self.cancelled_segments = 0
        self.synthesis_errors = 0
        self.text_closed = False  # the LLM finished: no more text will come
        self.turn_ids = TurnSequence()
        self.held: dict[int, list[Emit]] = {}  # speculative turn id -> what it produced, until the LLM's verdict
        self.held_since: dict[int, int] = {}  # speculative turn id -> when its first chunk came
        self.speculation_hits = 0
        self.speculation_cancelled = 0

    # -- dora hooks ------------------------------------------------------------------------------------------
    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id == Output.TEXT:
            return self._hold(self._on_text(TextSegment.decode(value, metadata)))
        if input_id == Output.PLAYBACK:
            return self._hold(self._on_playback(PlaybackEvent.decode(value, metadata)))
        if input_id == Output.EVENTS:
            return self._hold(self._on_vad_event(VadEvent.decode(value, metadata)))
        raise UnknownInputError(f"unknown input id {input_id!r} (expected text, playback or events)")

    def busy(self) -> bool:
        return self.active is not None or bool(self.queue)

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        if input_id == "text":
            self.text_closed = True
        return ()

    def finished(self) -> bool:
        # The ``playback`` input comes back from the speaker, which itself waits for our audio to end: exit once
        # the LLM is done and everything it sent has been synthesized (the loop then runs on_end).
        return self.text_closed and not self.busy()

    def step(self) -> Iterable[Emit]:
        if self.active is not None:
            return self._hold(self._advance())
        if not self.queue:
            return []
        chunk = self.queue[0]
        if not chunk.texts:
            self.queue.popleft()
            return self._hold(self._chunk_done(chunk))
        return self._hold(self._start(chunk, chunk.texts.popleft()))

    def on_end(self) -> Iterable[Emit]:
        out: list[Emit] = []
        for turn_id in list(self.held):  # never confirmed (the LLM cancels before it ends): never heard
            out += self._cancel_speculation(turn_id, "the text ended before a verdict")
        for turn in sorted(self.turns.values(), key=lambda t: t.turn_id):
            if turn.pending:  # chunks held back behind one that never came: speak what there is, in order
                logger.warning("turn %d: input ended with chunk %d missing; %d later chunk(s) spoken without it",
                               turn.turn_id, turn.last_text_segment_index + 1, len(turn.pending))
                for index in sorted(turn.pending):
                    self._queue_chunk(turn, turn.pending.pop(index), self.clock_ns())
        while self.busy():
            out += self.step()
        for turn in sorted(self.turns.values(), key=lambda t: t.turn_id):
            logger.warning("turn %d: input ended before the LLM's final chunk; closing the turn", turn.turn_id)
            out += self._close_turn(turn, turn.segments_started, 0, turn.last_text_segment_index, cancelled=False)
        return out

    def _on_playback(self, played: PlaybackEvent) -> list[Emit]:
        """The speaker's barge-in (turn_interrupted); other playback events are ignored."""
        if played.kind is PlaybackKind.TURN_INTERRUPTED:
            self.turn_ids.check_known(played.turn_id, "turn_interrupted")
            return self._barge_in(played.turn_id + 1, "speaker interrupted playback")
        return []

    def _on_vad_event(self, event: VadEvent) -> list[Emit]:
        """The VAD's barge-in (speech_started); other VAD events are ignored."""
        if event.kind is VadEventKind.SPEECH_STARTED:
            self.turn_ids.check(event.turn_id, "speech_started")
            return self._barge_in(event.turn_id, "speech started")
        return []

    # -- text ------------------------------------------------------------------------------------------------
    def _on_text(self, segment: TextSegment) -> list[Emit]:
        if segment.segment_index < 0:
            raise SchemaError(f"segment_index must be >= 0, got {segment.segment_index}")
        self.turn_ids.check(segment.turn_id, "text")
        now = self.clock_ns()
        self.session_id = segment.session_id or self.session_id
        if segment.verdict is not None:
            return self._on_verdict(segment)
        turn = self.turns.get(segment.turn_id)
        held = segment.turn_id in self.held
        if held and not segment.speculative:
            raise SchemaError(f"turn {segment.turn_id}: chunk {segment.segment_index} is not speculative, but the "
                              "turn's earlier chunks are and no verdict came")
        if segment.speculative and not held:
            if turn is not None or segment.turn_id in self.closed:
                raise SchemaError(f"turn {segment.turn_id}: speculative chunk {segment.segment_index} after the "
                                  "turn's ordinary chunks")
            if segment.turn_id < self.cancel_below:
                logger.debug("turn %d was superseded; dropping its speculative chunk", segment.turn_id)
                return []
            self.held[segment.turn_id] = []
            self.held_since[segment.turn_id] = now
        if turn is None:
            if segment.turn_id in self.closed:
                if self.closed[segment.turn_id]:
                    logger.debug("turn %d was cancelled; dropping chunk %d", segment.turn_id, segment.segment_index)
                    return []
                raise SchemaError(f"turn {segment.turn_id} is already closed (chunk {segment.segment_index} came "
                                  "after its final chunk)")
            turn = _Turn(segment.turn_id, segment.session_id, segment.is_streaming,
                         TextSegmenter(self.segmentation), first_received_ns=now)
            self.turns[segment.turn_id] = turn
            if segment.turn_id < self.cancel_below:
                logger.info("turn %d: superseded by newer speech before any audio; closing it", segment.turn_id)
                return self._close_turn(turn, 0, 0, segment.segment_index, cancelled=True)
        index = segment.segment_index
        if turn.final_index is not None and index > turn.final_index:
            raise SchemaError(f"turn {turn.turn_id}: chunk {index} came after the final chunk {turn.final_index}")
        if index <= turn.last_text_segment_index or index in turn.pending:
            raise SchemaError(f"turn {turn.turn_id}: duplicate chunk {index} rejected")
        if segment.is_final and any(i > index for i in turn.pending):
            raise SchemaError(f"turn {turn.turn_id}: final chunk {index} comes before chunk {max(turn.pending)}")
        if len(turn.pending) >= MAX_PENDING_CHUNKS:
            raise SchemaError(f"turn {turn.turn_id}: reorder buffer full ({MAX_PENDING_CHUNKS} chunks) waiting for "
                              f"chunk {turn.last_text_segment_index + 1}")
        if segment.is_final:
            turn.final_index = index
        turn.pending[index] = segment
        if index != turn.last_text_segment_index + 1:
            logger.warning("turn %d: chunk %d arrived before chunk %d; held back", turn.turn_id, index,
                           turn.last_text_segment_index + 1)
        while turn.last_text_segment_index + 1 in turn.pending:
            self._queue_chunk(turn, turn.pending.pop(turn.last_text_segment_index + 1), now)
        return []

    # -- speculation -----------------------------------------------------------------------------------------
    def _hold(self, out: list[Emit]) -> list[Emit]:
        """What ``out`` holds for turns awaiting a verdict is kept back; the rest is returned."""
        if not self.held:
            return out
        sent: list[Emit] = []
        for item in out:
            held = self.held.get(item[2].get(Key.TURN_ID))
            (sent if held is None else held).append(item)
        return sent

    def _on_verdict(self, segment: TextSegment) -> list[Emit]:
        """The LLM's verdict on a turn's speculative chunks: send what they produced at once, or drop it."""
        turn_id = segment.turn_id
        if turn_id not in self.held:
            raise SchemaError(f"turn {turn_id}: verdict {segment.verdict.value if segment.verdict else None!r} "
                              "without speculative chunks")
        if segment.verdict is Verdict.CANCELLED:
            return self._cancel_speculation(turn_id, "the LLM dropped the reply begun during the pause")
        now = self.clock_ns()
        out = self.held.pop(turn_id)
        ahead_ms = (now - self.held_since.pop(turn_id)) / 1e6
        self.speculation_hits += 1
        audio = [item for item in out if item[0] == Output.AUDIO]
        logger.info("turn %d: confirmed: %d fragment(s) synthesized during the pause (%.0f ms ahead) sent now",
                    turn_id, len(audio), ahead_ms)
        for _output, _value, meta in out:  # the listener's wait starts at the confirmation
            if meta.get(Key.T_NS, now) < now:
                meta[Key.T_NS] = now
        return out

    def _cancel_speculation(self, turn_id: int, why: str) -> list[Emit]:
        """Drop a speculative turn: its held output, its queued and running synthesis, the turn itself."""
        dropped = self.held.pop(turn_id, [])
        since = self.held_since.pop(turn_id, self.clock_ns())
        if self.active is not None and self.active.chunk.turn.turn_id == turn_id:
            self._stop_synthesis()
        self.queue = deque(c for c in self.queue if c.turn.turn_id != turn_id)
        self.turns.pop(turn_id, None)
        self.closed.pop(turn_id, None)
        self.speculation_cancelled += 1
        spent_ms = (self.clock_ns() - since) / 1e6
        audio = sum(1 for item in dropped if item[0] == Output.AUDIO)
        logger.info("turn %d: speculative audio dropped (%s): %d fragment(s), %.0f ms; %d dropped so far", turn_id,
                    why, audio, spent_ms, self.speculation_cancelled)
        return [self.timing(TimingKind.SPECULATION_CANCELLED, turn_id, **{Key.DURATION_MS: spent_ms})]

    def _stop_synthesis(self) -> None:
        """Abandon the segment being synthesized (the engine's generator is closed)."""
        assert self.active is not None
        close = getattr(self.active.audio, "close", None)
        if close is not None:
            close()
        self.active = None

    def _queue_chunk(self, turn: _Turn, segment: TextSegment, now: int) -> None:
        """Normalize and segment one in-order chunk and put it in the work queue."""
        text = turn.normalizer.normalize(segment.text) if self.config.normalize_text else " ".join(segment.text.split())
        texts = self._segments(turn, text) if text else []
        if segment.text.strip() and not texts:
            logger.info("turn %d: chunk %d has nothing to say after normalization: %r", turn.turn_id,
                        segment.segment_index, segment.text[:80])
        turn.last_text_segment_index = segment.segment_index
        self.queue.append(_Chunk(turn, segment.segment_index, now, deque(texts), segment.is_final,
                                 speakable=bool(segment.text.strip())))

    def _segments(self, turn: _Turn, text: str) -> list[str]:
        """One normalized chunk as TTS segments (:attr:`TtsConfig.segmentation`), or whole.

        The turn's segmenter carries over from chunk to chunk (its first segment is the turn's first), and each
        chunk ends a segment: segment_done and the speaker's heard-text tracking count whole chunks.
        """
        if not self.config.enable_internal_segmentation:
            return [text]
        return turn.segmenter.push(text) + turn.segmenter.flush()

    # -- synthesis -------------------------------------------------------------------------------------------
    def _start(self, chunk: _Chunk, text: str) -> list[Emit]:
        turn = chunk.turn
        index = turn.segments_started
        turn.segments_started += 1
        now = self.clock_ns()
        cached = getattr(self.engine, "cached", None)
        self.active = _Synthesis(chunk, index, text, iter(self.engine.synthesize(text)), now,
                                 last_of_turn=chunk.is_final and not chunk.texts,
                                 cached=bool(cached is not None and cached(text)))
        logger.debug("turn %d: segment %d (chunk %d): %r", turn.turn_id, index, chunk.text_segment_index, text)
        out = [self.timing(TimingKind.TTS_SEGMENT_START, turn.turn_id, chunk.received_ns, **{
            Key.SEGMENT_INDEX: index, Key.TEXT_SEGMENT_INDEX: chunk.text_segment_index, Key.TEXT: text})]
        return out + self._advance()

    def _advance(self) -> list[Emit]:
        synth = self.active
        assert synth is not None
        try:
            samples = next(synth.audio)
        except StopIteration:
            return self._finish_segment(synth)
        except Exception:  # noqa: BLE001 - a third-party engine failing on one text must not stop the node
            self.synthesis_errors += 1
            logger.exception("turn %d: synthesis of segment %d failed (%r); ending it with the audio it had",
                             synth.chunk.turn.turn_id, synth.segment_index, synth.text[:200])
            return self._finish_segment(synth)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        synth.samples += len(samples)
        synth.pending = np.concatenate([synth.pending, samples]) if len(synth.pending) else samples
        return self._drain(synth, final=False)

    def _drain(self, synth: _Synthesis, *, final: bool) -> list[Emit]:
        """Fragments ready in ``synth.pending``; with ``final``, everything, the last one flagged."""
        out: list[Emit] = []
        if self.config.return_fragment:
            size = self.fragment_samples
            while len(synth.pending) > size:  # strictly: a non-empty remainder is left to carry is_last_fragment
                out += self._fragment(synth, synth.pending[:size], last=False)
                synth.pending = synth.pending[size:]
            if not final and synth.fragments == 0 and len(synth.pending) > self.hold_samples:
                cut = len(synth.pending) - self.hold_samples  # first audio of the segment: out now
                out += self._fragment(synth, synth.pending[:cut], last=False)
                synth.pending = synth.pending[cut:]
        if final:
            out += self._fragment(synth, synth.pending, last=True)
            synth.pending = np.zeros(0, np.float32)
        return out

    def _fragment(self, synth: _Synthesis, samples: np.ndarray, *, last: bool) -> list[Emit]:
        turn = synth.chunk.turn
        final = last and synth.last_of_turn
        now = self.clock_ns()
        fragment = AudioFragment(
            samples=samples, sample_rate=self.sample_rate, session_id=turn.session_id, turn_id=turn.turn_id,
            segment_index=synth.segment_index, fragment_index=synth.fragments,
            text_segment_index=synth.chunk.text_segment_index, is_last_fragment=last, is_final=final,
            is_streaming=turn.is_streaming, t_ns=now, segments_total=turn.segments_started if final else None,
            ends_at_punctuation=ends_at_pause(synth.text))
        out = [emit(Output.AUDIO, fragment)]
        if synth.fragments == 0:
            out.append(self.timing(TimingKind.TTS_FIRST_FRAGMENT, turn.turn_id, now, **{
                Key.SEGMENT_INDEX: synth.segment_index, Key.TEXT_SEGMENT_INDEX: synth.chunk.text_segment_index}))
        synth.fragments += 1
        return out

    def _finish_segment(self, synth: _Synthesis) -> list[Emit]:
        out = self._drain(synth, final=True)
        turn, chunk = synth.chunk.turn, synth.chunk
        now = self.clock_ns()
        turn.audio_samples += synth.samples
        chunk.audio_samples += synth.samples
        if not synth.cached:  # segment_done's synth_ms is the engine's speed, for the LLM's pacing
            chunk.synth_ns += now - synth.started_ns
        audio_ms = synth.samples * 1000 / self.sample_rate
        synth_ms = (now - synth.started_ns) / 1e6
        out.append(self.timing(TimingKind.TTS_SEGMENT_DONE, turn.turn_id, now, **{
            Key.SEGMENT_INDEX: synth.segment_index, Key.TEXT_SEGMENT_INDEX: chunk.text_segment_index,
            Key.AUDIO_MS: audio_ms, Key.DURATION_MS: synth_ms}))
        logger.debug("turn %d: segment %d: %.0f ms of audio in %.0f ms, %d fragments", turn.turn_id,
                     synth.segment_index, audio_ms, synth_ms, synth.fragments)
        self.active = None
        if not chunk.texts:
            self.queue.popleft()
            out += self._chunk_done(chunk, turn_closed=synth.last_of_turn)
        return out

    def _chunk_done(self, chunk: _Chunk, *, turn_closed: bool = False) -> list[Emit]:
        """Every segment of ``chunk`` is synthesized: pacing feedback, and the end of the turn if it was final."""
        turn = chunk.turn
        out: list[Emit] = []
        if chunk.speakable:
            out.append(emit(Output.SEGMENT_DONE, SegmentDone(
                turn.session_id, turn.turn_id, chunk.text_segment_index, self.clock_ns(),
                audio_ms=chunk.audio_samples * 1000 / self.sample_rate, synth_ms=chunk.synth_ns / 1e6)))
        if chunk.is_final:
            if turn_closed:
                out += self._turn_done(turn, cancelled=False)
            else:  # the final chunk had nothing to say: an empty fragment closes the turn
                out += self._close_turn(turn, turn.segments_started, 0, chunk.text_segment_index, cancelled=False)
        return out

    # -- closing and barge-in --------------------------------------------------------------------------------
    def _close_turn(self, turn: _Turn, segment_index: int, fragment_index: int, text_segment_index: int, *,
                    cancelled: bool) -> list[Emit]:
        """Send the empty fragment that closes ``turn`` and forget the turn."""
        fragment = AudioFragment(
            samples=np.zeros(0, np.float32), sample_rate=self.sample_rate, session_id=turn.session_id,
            turn_id=turn.turn_id, segment_index=segment_index, fragment_index=fragment_index,
            text_segment_index=max(text_segment_index, 0), is_last_fragment=True, is_final=True,
            is_streaming=turn.is_streaming, t_ns=self.clock_ns(), segments_total=turn.segments_started)
        return [emit(Output.AUDIO, fragment)] + self._turn_done(turn, cancelled=cancelled)

    def _turn_done(self, turn: _Turn, *, cancelled: bool) -> list[Emit]:
        self.turns.pop(turn.turn_id, None)
        self.closed[turn.turn_id] = cancelled
        while len(self.closed) > _MAX_CLOSED_TURNS:
            del self.closed[next(iter(self.closed))]
        now = self.clock_ns()
        audio_ms = turn.audio_samples * 1000 / self.sample_rate
        logger.info("turn %d: %d segments, %.1f s of audio, done %.0f ms after its first chunk%s", turn.turn_id,
                    turn.segments_started, audio_ms / 1000, (now - turn.first_received_ns) / 1e6,
                    f" (barge-in: {turn.cancelled} segments cancelled)" if cancelled else "")
        return [self.timing(TimingKind.TTS_DONE, turn.turn_id, now, **{
            Key.SEGMENTS_TOTAL: turn.segments_started, Key.AUDIO_MS: audio_ms, Key.CANCELLED: turn.cancelled,
            Key.INTERRUPTED: cancelled})]

    def _barge_in(self, below_turn_id: int, reason: str) -> list[Emit]:
        """Cancel every open turn with an id below ``below_turn_id``, and any that arrives later.

        Pending segments are dropped and counted; a segment being synthesized is cut where it is (its
        ``tts_segment_done`` says ``interrupted``); each cancelled turn still gets its closing empty fragment
        (``is_final``, ``segments_total`` = segments with audio sent).
        """
        self.cancel_below = max(self.cancel_below, below_turn_id)
        out: list[Emit] = []
        for turn in sorted(self.turns.values(), key=lambda t: t.turn_id):
            if turn.turn_id >= below_turn_id:
                continue
            dropped = sum(len(c.texts) for c in self.queue if c.turn is turn)
            self.queue = deque(c for c in self.queue if c.turn is not turn)
            segment_index, fragment_index, text_index = turn.segments_started, 0, turn.last_text_segment_index
            synth = self.active
            if synth is not None and synth.chunk.turn is turn:
                self._stop_synthesis()
                turn.audio_samples += synth.samples
                segment_index, fragment_index = synth.segment_index, synth.fragments
                text_index = synth.chunk.text_segment_index
                now = self.clock_ns()  # the segment it started ends here, cut: the report expects its end
                out.append(self.timing(TimingKind.TTS_SEGMENT_DONE, turn.turn_id, now, **{
                    Key.SEGMENT_INDEX: synth.segment_index, Key.TEXT_SEGMENT_INDEX: text_index,
                    Key.AUDIO_MS: synth.samples * 1000 / self.sample_rate,
                    Key.DURATION_MS: (now - synth.started_ns) / 1e6, Key.INTERRUPTED: True}))
            turn.cancelled += dropped
            self.cancelled_segments += dropped
            logger.info("turn %d: barge-in (%s): %d pending segments dropped", turn.turn_id, reason, dropped)
            out += self._close_turn(turn, segment_index, fragment_index, text_index, cancelled=True)
        return out


CONTRACT = NodeContract(
    path="dora-voice-tts",
    inputs={
        "text": "llm/text: TextSegment",
        Output.PLAYBACK: "speaker/playback: PlaybackEvent (turn_interrupted cancels the turn); optional",
        Output.EVENTS: "vad/events: VadEvent (speech_started cancels older turns); optional",
    },
    outputs=(Output.AUDIO, Output.SEGMENT_DONE, Output.TIMING),
    config=TtsConfig,
    extra_config=tuple(spec.config for spec in ENGINES.values()),
)


def cached_engine(engine: TtsEngine, config: TtsConfig) -> TtsEngine:
    """``engine`` behind a :class:`~dora_voice.tts_engines.cache.PhraseCache` holding ``TTS_CACHED_PHRASES``
    (normalized as the node normalizes every segment) and the session's short segments; ``engine`` itself when
    both are off."""
    phrases = ([] if config.cached_phrases.strip().lower() == "none" else
               [p.strip() for p in config.cached_phrases.split("|") if p.strip()])
    if not phrases and not config.cache_max_words:
        return engine
    cache = PhraseCache(engine, max_words=config.cache_max_words)
    if config.normalize_text:
        cache.prepare(phrases, lambda text: SpeechNormalizer().normalize(text))
    else:
        cache.prepare(phrases, lambda text: " ".join(text.split()))
    return cache


def main(argv: list[str] | None = None) -> None:
    """Run the TTS node inside a dora dataflow: load and warm up the voice, then serve."""
    from dora_voice.models import ModelError
    from dora_voice.nodes import fatal, node_cli
    from dora_voice.tts_engines import load_engine

    config, _ = node_cli(CONTRACT, __doc__, argv)
    try:
        engine = load_engine(config.backend)
    except (ModelError, ValueError) as exc:  # ValueError includes ConfigError (the engine's settings)
        fatal(CONTRACT.path, str(exc))
    engine.warmup()
    if config.normalize_text:
        normalize.warm_up()
    engine = cached_engine(engine, config)
    from dora import Node

    from dora_voice.runtime import run_node

    run_node(Node(), TtsCore(config, engine))


if __name__ == "__main__":
    main()
