"""speaker node: plays the TTS fragments strictly in order, to a device or into a WAV on the input's clock.

Inputs:
    ``audio`` (tts/audio): :class:`~dora_voice.schema.AudioFragment`.
    ``stream_started`` (mic/stream_started): :class:`~dora_voice.schema.StreamStarted`; the file sink's origin.
    ``events`` (vad/events): :class:`~dora_voice.schema.VadEvent`; drives barge-in.

Outputs:
    ``playback``: :class:`~dora_voice.schema.PlaybackEvent`: ``segment_played`` per segment heard whole;
        on a barge-in ``segment_interrupted`` (heard_fraction) for the segment cut, then ``turn_interrupted`` (the
        LLM and TTS drop the rest of the turn); ``turn_done`` last for every turn, finished or cancelled.
    ``reference``: :class:`~dora_voice.schema.ReferenceFrame`, the far-end reference for echo cancellation: the
        whole output timeline (silence included, after fades, pauses and barge-in cuts) at 16 kHz in 20 ms frames,
        each stamped with the instant its first sample leaves the speaker. Sent only when the YAML wires it.
    ``timing``: ``playback_started`` (t_ns = when the turn's first sample leaves), ``segment_played``,
        ``turn_played`` (count = segments played, underruns, underrun_ms, audio_ms, cancelled, interrupted),
        ``barge_in`` (cancelled segments; t_ns = playback silent; duration_ms = speech_started detection -> playback
        silent, 0 when it had paused at the onset already), ``playback_paused`` (a pause at a speech onset that was
        not a barge-in, at resume: duration_ms = the gap heard).

One output timeline. Both sinks expose a timeline of output sample positions; position ``p`` leaves the speaker
at ``sink.position_to_ns(p)``. The core places each fragment at ``max(due, earliest)``: ``due`` is where it
should follow the audio before it (the end of the previous fragment of its segment, that end plus
``SENTENCE_PAUSE_MS`` for a new segment, the end of the previous turn plus the pause for a new turn), and
``earliest`` is the first position that has not left yet (file sink: ``(now - origin) * rate``; device sink: the
writer thread's next block). Nothing overlaps; silence fills every gap. A fragment that lands after its ``due``
inside a started turn is an underrun: counted, and the gap added to ``underrun_ms``.

Joins: fragments of one segment are contiguous pieces of one waveform and are joined unchanged. A segment is faded
in and out over ``CROSSFADE_MS`` (raised cosine); where an underrun cuts a segment, the audio before the gap is
faded out (as far as it has not left yet) and the audio after it faded in. So no join jumps by more than the audio
itself does.

Turn ids are checked against the session's sequence (:class:`~dora_voice.turns.TurnSequence`): an id that cannot be
right (negative, or impossibly far ahead of the newest turn) is an ``input_error`` and does not touch the turn
bookkeeping, so one bad message cannot make every later turn look finished.

Ordering: fragments are placed in (turn_id, segment_index, fragment_index) order through a per-turn reorder
buffer. A duplicate, or a fragment whose place has already passed, is rejected (counted as a bad input). A
fragment of a finished or cancelled turn is discarded and counted (``fragments_discarded``). The audio of a newer
turn closes an older turn that is still incomplete (dora delivers one sender's messages in order, so its missing
fragments will not come): what it lacks is counted as cancelled and logged.

Barge-in (``BARGE_IN``): a ``speech_started`` VadEvent starts a candidate interruption; once ``now - onset >=
BARGE_IN_MIN_SPEECH_MS`` with no ``speech_ended`` in between, every turn that has started playing is stopped at
the earliest position that has not left, with a ``BARGE_IN_FADE_MS`` fade; all audio placed after that and every
later fragment of those turns are discarded. The core checks the condition between events (``busy``/``step``).

Pause at the onset: a ``speech_onset`` VadEvent (``BARGE_IN_PAUSE_MS`` of voiced frames, not yet speech) pauses the
playing answer at once: it fades out at the earliest position that has not left (``BARGE_IN_FADE_MS``) and what was
placed after it is kept aside; fragments that arrive meanwhile wait in the reorder buffer. With an open speaker the
echo then stops, and with it the echo canceller's suppression of the user's first syllables, so the VAD confirms the
speech sooner. ``speech_started`` then makes it a barge-in that stopped where the pause began (so playback fell
silent ``BARGE_IN_MIN_SPEECH_MS - BARGE_IN_PAUSE_MS`` sooner than without the pause); ``onset_discarded``, a
``speech_ended`` or ``BARGE_IN_RESUME_MS`` without a confirmation resume it where it stopped, with a fade-in: the
audio kept aside is placed again and everything after it moves by the gap, which is no underrun. Nothing is lost
either way; a resumed pause is counted (``pauses_resumed``, the ``playback_paused`` timing).
``ECHO_GUARD=half_duplex`` ignores speech whose onset falls while the speaker is audible or within
``ECHO_TAIL_MS`` (300 ms) after, since an open microphone hears the speaker. ``aec`` (the aec node cancels the
echo before the VAD) and ``off`` let any speech interrupt. ``auto`` means ``off`` when AUDIO_INPUT or AUDIO_OUTPUT
is a file (no acoustic path), else ``aec`` when the ``reference`` output is wired and pywebrtc-audio is installed,
else ``half_duplex``.

Reference: audio becomes final once the sink can no longer change it (:meth:`Sink.final_position`: the device
sink's writer handed it to the device, which plays it ``stream.latency`` later; the file sink's clock passed it by
``CROSSFADE_MS``). While the ``events`` input is open (someone listens for barge-in), the core publishes the final
audio, resampled to 16 kHz with one continuous soxr stream, as :class:`ReferenceFrame` s; before the file sink knows
its rate the timeline is silence on the mic's clock.

Segment reports (``segment_played``, ``turn_done``) are sent when the listener has heard the audio (the play head
passed it). With the file sink and nothing able to interrupt any more (barge-in off, or ``events`` closed) they are
sent as soon as the audio is placed, stamped with the future instant it plays, so a file run ends without waiting.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa

from dora_voice import audio
from dora_voice.config import (
    ConfigError, env_field, parse_bool, parse_choice, parse_int, parse_optional_path,
    parse_str,
)
from dora_voice.echo import ECHO_GUARD_HELP, EchoGuard, aec_library_available, resolve_echo_guard
from dora_voice.contracts import NodeContract
from dora_voice.nodes import fatal, node_cli
from dora_voice.runtime import Emit, NodeCore, declared_inputs, declared_outputs, emit, run_node
from dora_voice.sinks import DEVICE_BLOCK_MS, DeviceSink, FileSink, Sink
from dora_voice.schema import (
    PIPELINE_SAMPLE_RATE_HZ, REFERENCE_FRAME_MS, AudioFragment, Key, Output, PlaybackEvent, PlaybackKind,
    ReferenceFrame, SchemaError, StreamStarted, TimingKind, VadEvent, VadEventKind,
)
from dora_voice.turns import TurnSequence

logger = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
ECHO_TAIL_MS = 300
"""Half-duplex echo guard: speech starting this long (ms) after the speaker fell silent is still ignored."""
MAX_PENDING_FRAGMENTS = 512
"""Reorder buffer bound per turn (fragments); more waiting fragments means one went missing upstream."""
POLL_S = 0.005
"""Longest the core sleeps in :meth:`SpeakerCore.step` between checks (s)."""


REFERENCE_HISTORY_MS = 2000
"""Written device blocks kept for the reference (ms); the core reads them within a few ms."""
__all__ = ["EchoGuard", "ReferenceTap", "SpeakerConfig", "SpeakerCore", "build_sink", "main"]


@dataclass(frozen=True)
class SpeakerConfig:
    """speaker settings, from the environment (see :func:`dora_voice.config.load_config`)."""

    audio_output: Path | None = env_field(
        "AUDIO_OUTPUT", None, parse_optional_path,
        "WAV file to write what the listener hears (same clock as the mic input); empty = play on a device")
    audio_output_device: str = env_field(
        "AUDIO_OUTPUT_DEVICE", "", parse_str, "sounddevice output device, index or name; empty = system default")
    audio_input: Path | None = env_field(
        "AUDIO_INPUT", None, parse_optional_path, "the mic's input file; read only to resolve ECHO_GUARD=auto")
    sample_rate_hz: int = env_field(
        "SPEAKER_SAMPLE_RATE", 0, parse_int(min_value=0, max_value=192_000),
        "output rate in Hz; 0 = the first fragment's rate (file) or the device's default rate (device)")
    sentence_pause_ms: int = env_field(
        "SENTENCE_PAUSE_MS", 120, parse_int(min_value=0, max_value=5000),
        "pause in ms after a segment that ends at punctuation (none after a mid-phrase cut)")
    crossfade_ms: int = env_field(
        "CROSSFADE_MS", 8, parse_int(min_value=0, max_value=200), "fade in/out in ms at segment joins and gaps")
    barge_in: bool = env_field("BARGE_IN", True, parse_bool, "stop playback when the user starts speaking")
    barge_in_min_speech_ms: int = env_field(
        "BARGE_IN_MIN_SPEECH_MS", 200, parse_int(min_value=0, max_value=10_000),
        "speech must last this long (ms, onset to now, no speech_ended) to interrupt")
    barge_in_fade_ms: int = env_field(
        "BARGE_IN_FADE_MS", 20, parse_int(min_value=0, max_value=1000), "fade-out in ms when playback is interrupted")
    barge_in_resume_ms: int = env_field(
        "BARGE_IN_RESUME_MS", 1000, parse_int(min_value=0, max_value=10_000),
        "a pause at a speech onset (the VAD's BARGE_IN_PAUSE_MS) that is not confirmed as speech this long after the "
        "onset resumes, ms (the VAD's onset_discarded normally resumes it sooner)")
    echo_guard: str = env_field(
        "ECHO_GUARD", "auto", parse_choice("auto", "off", "half_duplex", "aec"), ECHO_GUARD_HELP)
    reference: str = env_field(
        "SPEAKER_REFERENCE", "auto", parse_choice("auto", "on", "off"),
        "publish the far-end reference on the reference output (when wired): auto = when ECHO_GUARD resolves to "
        "aec; on = always (a simulated room needs it whatever the guard)")

    def __post_init__(self) -> None:
        if self.sample_rate_hz and self.sample_rate_hz < 8000:
            raise ConfigError(f"SPEAKER_SAMPLE_RATE={self.sample_rate_hz}: must be 0 or >= 8000 Hz")

    def resolved_echo_guard(self, aec_ready: bool) -> EchoGuard:
        """ECHO_GUARD with ``auto`` resolved; ``aec_ready``: the reference is wired and the AEC library present."""
        return resolve_echo_guard(self.echo_guard, files=bool(self.audio_output or self.audio_input),
                                  aec_ready=aec_ready)


CONTRACT = NodeContract(
    path="dora-voice-speaker",
    inputs={
        Output.AUDIO: "tts/audio: AudioFragment (float32 mono, any rate)",
        Output.STREAM_STARTED: "mic/stream_started: StreamStarted (origin of the file sink's clock)",
        Output.EVENTS: "vad/events: VadEvent (speech_onset / onset_discarded / speech_started / speech_ended, "
                       "for barge-in)",
    },
    outputs=(Output.PLAYBACK, Output.REFERENCE, Output.TIMING),
    config=SpeakerConfig,
)


class ReferenceTap:
    """Turns the sink's final output into 16 kHz :class:`ReferenceFrame` s (see the module docstring).

    Args:
        sink: the speaker's sink.
        frame_ms: frame length, ms.
    """

    RATE = PIPELINE_SAMPLE_RATE_HZ

    def __init__(self, sink: Sink, frame_ms: int = REFERENCE_FRAME_MS) -> None:
        self.sink = sink
        self.source = "file" if sink.virtual else "device"
        self.frame = self.RATE * frame_ms // 1000
        self.next_k = 0  # 16 kHz index after the last sample produced (sent or pending)
        self.sent = 0  # 16 kHz index after the last sample sent
        self._pos: int | None = None  # next sink position to read
        self._resampler: Any = None
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def ready(self) -> bool:
        """The output timeline has an origin (a device sink is open; a file sink knows the mic's start)."""
        return bool(self.sink.rate) or getattr(self.sink, "origin_ns", None) is not None

    def _origin_ns(self) -> int:
        return self.sink.position_to_ns(0) if self.sink.rate else int(getattr(self.sink, "origin_ns"))

    def _append(self, samples: np.ndarray) -> None:
        if samples.shape[0]:
            self._pending.append(samples)
            self._pending_n += samples.shape[0]
            self.next_k += samples.shape[0]

    def poll(self, now_ns: int, session_id: str) -> list[ReferenceFrame]:
        """The frames that became final since the last call."""
        sink = self.sink
        if not self.ready():
            return []
        if sink.rate:
            if self._pos is None:
                self._pos = self.next_k * sink.rate // self.RATE
                if sink.rate != self.RATE:
                    self._resampler = audio.resample_stream(sink.rate, self.RATE)
            final = sink.final_position(now_ns)
            if final > self._pos:
                x = sink.read_final(self._pos, final)
                self._pos = final
                if self._resampler is not None:
                    x = np.asarray(self._resampler.resample_chunk(x), dtype=np.float32)
                self._append(x)
        else:  # a file sink before its first fragment: silence on the mic's clock
            k = (now_ns - self._origin_ns()) * self.RATE // _NS_PER_S
            if k > self.next_k:
                self._append(np.zeros(k - self.next_k, dtype=np.float32))
        if self._pending_n < self.frame:
            return []
        data = np.concatenate(self._pending)
        whole = (data.shape[0] // self.frame) * self.frame
        rest = data[whole:]
        self._pending, self._pending_n = ([rest] if rest.shape[0] else []), rest.shape[0]
        origin = self._origin_ns()
        frames = []
        for i in range(0, whole, self.frame):
            k = self.sent
            frames.append(ReferenceFrame(samples=data[i: i + self.frame], sample_rate=self.RATE, sample_offset=k,
                                         t_ns=origin + k * _NS_PER_S // self.RATE, session_id=session_id,
                                         source=self.source))
            self.sent += self.frame
        return frames

    def next_due_ns(self) -> int | None:
        """When the next frame will be complete, if the sink's clock tells (file sink), else None."""
        if not self.ready():
            return None
        return self._origin_ns() + (self.sent + self.frame) * _NS_PER_S // self.RATE


# ================================================================================================================
# The pure core


@dataclass
class _Segment:
    index: int
    text_index: int
    start: int = -1  # position of the first placed sample; -1 before any
    end: int = -1  # position after the last placed sample
    samples: int = 0
    complete: bool = False  # its last fragment has been placed
    reported: bool = False
    in_rate: int = 0
    resampler: Any = None
    pause_after: bool = True  # its text ends at punctuation: the next segment follows after SENTENCE_PAUSE_MS


@dataclass
class _Turn:
    turn_id: int
    session_id: str
    pending: dict[tuple[int, int], AudioFragment] = field(default_factory=dict)
    next_segment: int = 0
    next_fragment: int = 0
    segments_total: int | None = None
    segments: list[_Segment] = field(default_factory=list)
    first_pos: int = -1
    end_pos: int = -1
    audio_samples: int = 0
    underruns: int = 0
    underrun_samples: int = 0
    played: int = 0
    missing: int = 0  # segments that never arrived (turn closed incomplete)

    @property
    def placement_done(self) -> bool:
        return self.segments_total is not None and self.next_segment >= self.segments_total

    @property
    def started(self) -> bool:
        return self.first_pos >= 0

    def known_segments(self) -> int:
        """Segments this turn has, as far as is known (segments_total, or the highest index seen)."""
        if self.segments_total is not None:
            return self.segments_total
        seen = [seg for seg, _frag in self.pending] + [s.index for s in self.segments]
        return max(seen) + 1 if seen else 0


@dataclass
class _Speech:
    onset_ns: int
    detected_ns: int
    turn_id: int


@dataclass
class _Pause:
    """Playback paused at a speech onset: faded out over ``[at, silent)``; ``removed`` is the audio that was placed
    from ``at`` on (unfaded), to place again on a resume."""

    onset_ns: int
    at: int
    silent: int
    silent_ns: int
    removed: np.ndarray


class SpeakerCore(NodeCore):
    """Ordering, placement, pauses, fades, underruns and barge-in over a :class:`Sink` (no dora inside).

    Args:
        config: speaker settings.
        sink: :class:`FileSink` or :class:`DeviceSink` (or a test double with the same interface).
        clock_ns: wall clock; tests inject a fake.
        sleep: ``sleep(seconds)`` used by :meth:`step` to wait for the next deadline (at most :data:`POLL_S`).
        reference: the YAML wires the ``reference`` output; it is published as ``SPEAKER_REFERENCE`` says.
        aec_ready: an echo canceller runs before the VAD (resolves ``ECHO_GUARD=auto``); default: ``reference``
            and pywebrtc-audio installed.

    Counters: ``fragments_discarded`` (fragments of finished/cancelled turns), ``speech_ignored`` (speech dropped by
    the echo guard), ``barge_ins``, ``pauses`` (paused at a speech onset) and ``pauses_resumed`` (of those, resumed:
    not a barge-in), and ``input_errors`` (rejected messages, from :class:`NodeCore`).
    """

    node_id = "speaker"

    def __init__(self, config: SpeakerConfig, sink: Sink, *, clock_ns: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep, reference: bool = False,
                 aec_ready: bool | None = None) -> None:
        super().__init__(clock_ns)
        self.config = config
        self.sink = sink
        self.sleep = sleep
        if aec_ready is None:
            aec_ready = reference and aec_library_available()
        self.echo_guard = config.resolved_echo_guard(aec_ready)
        if config.reference == "off" or (config.reference == "auto" and self.echo_guard is not EchoGuard.AEC):
            reference = False
        self.reference = ReferenceTap(sink) if reference else None
        self._turns: OrderedDict[int, _Turn] = OrderedDict()
        self._floor = 0  # turns below this id are finished or cancelled
        self._max_started = -1  # highest turn id that has started playing
        self._speech: _Speech | None = None
        self._pause: _Pause | None = None
        self._events_closed = False
        self._audible: deque[list[int]] = deque()  # [start_ns, end_ns] runs of placed audio, for the echo guard
        self.fragments_discarded = 0
        self.speech_ignored = 0
        self.barge_ins = 0
        self.pauses = 0
        self.pauses_resumed = 0
        self.turns_done = 0
        self._ended = False
        self.turn_ids = TurnSequence()
        self._placed_is_final()

    def _placed_is_final(self) -> None:
        """Nothing can interrupt any more: the file sink may write placed audio at once (see :class:`FileSink`)."""
        if not self._can_interrupt() and hasattr(self.sink, "commit_placed"):
            self.sink.commit_placed = True

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _samples(self, ms: float) -> int:
        return int(round(ms * self.sink.rate / 1000))

    def _ms(self, samples: int) -> float:
        return samples * 1000.0 / self.sink.rate if self.sink.rate else 0.0

    def _can_interrupt(self) -> bool:
        return self.config.barge_in and not self._events_closed and not self._ended

    def _reports_wait(self) -> bool:
        """Whether segment reports wait for the play head (else they go out when placed)."""
        return not self.sink.virtual or self._can_interrupt()

    def _playback(self, kind: PlaybackKind, turn: _Turn, segment: int, text_segment: int, heard: float,
                  t_ns: int) -> Emit:
        return emit(Output.PLAYBACK, PlaybackEvent(kind=kind, session_id=turn.session_id, turn_id=turn.turn_id,
                                                   segment_index=segment, text_segment_index=text_segment,
                                                   heard_fraction=float(min(1.0, max(0.0, heard))), t_ns=t_ns))

    # -- inputs -------------------------------------------------------------------------------------------------------
    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id == Output.AUDIO:
            return self._on_fragment(AudioFragment.decode(value, metadata))
        if input_id == Output.STREAM_STARTED:
            return self._on_stream_started(StreamStarted.decode(value, metadata))
        if input_id == Output.EVENTS:
            return self._on_vad(VadEvent.decode(value, metadata))
        return super().on_input(input_id, value, metadata)

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        if input_id == Output.EVENTS:
            now = self.clock_ns()
            out = self._resume(now, "the VAD's events closed")
            self._events_closed = True
            self._speech = None
            self._placed_is_final()
            return out + self._report(now)
        if input_id == Output.AUDIO and self._turns:
            # The TTS is gone (it closes every turn before it finishes normally): report what never came now.
            now = self.clock_ns()
            logger.error("speaker: the TTS stopped (audio closed) with turn(s) %s incomplete; reporting them",
                         sorted(self._turns))
            return self._close_stalled(max(self._turns) + 1, now) + self._report(now)
        return ()

    def _on_stream_started(self, msg: StreamStarted) -> list[Emit]:
        if self.sink.set_origin(msg.stream_start_ns):
            logger.info("speaker: output clock origin = mic stream start (%s)", msg.source)
        elif self.sink.virtual:
            logger.warning("speaker: stream_started ignored: the output clock origin was already set")
        if msg.session_id and not self.session_id:
            self.session_id = msg.session_id
        return []

    def _on_vad(self, event: VadEvent) -> list[Emit]:
        self.turn_ids.check(event.turn_id, f"VAD {event.kind.value}")
        now = self.clock_ns()
        if event.kind in (VadEventKind.SPEECH_ENDED, VadEventKind.ONSET_DISCARDED):
            out: list[Emit] = []
            if self._pause is not None and event.t_ns >= self._pause.onset_ns:
                out += self._resume(now, f"VAD {event.kind.value}")
            if self._speech is not None and event.t_ns >= self._speech.onset_ns:
                self._speech = None
            return out
        if not self.config.barge_in:
            return []
        if self.echo_guard is EchoGuard.HALF_DUPLEX and self._audible_at(event.t_ns):
            if event.kind is VadEventKind.SPEECH_STARTED:
                self.speech_ignored += 1
                logger.info("speaker: speech at %d ignored for barge-in (half-duplex echo guard, %d so far)",
                            event.t_ns, self.speech_ignored)
            return []
        if event.kind is VadEventKind.SPEECH_ONSET:
            return self._pause_at_onset(event, now)
        self._speech = _Speech(onset_ns=event.t_ns, detected_ns=event.detected_ns, turn_id=event.turn_id)
        return self._check_barge_in(now)

    def _audible_at(self, t_ns: int) -> bool:
        tail = ECHO_TAIL_MS * 1_000_000
        return any(start <= t_ns <= end + tail for start, end in self._audible)

    def _note_audible(self, start_ns: int, end_ns: int, now_ns: int) -> None:
        tail = ECHO_TAIL_MS * 1_000_000
        if self._audible and start_ns <= self._audible[-1][1] + tail:
            self._audible[-1][1] = max(self._audible[-1][1], end_ns)
        else:
            self._audible.append([start_ns, end_ns])
        while len(self._audible) > 1 and self._audible[0][1] + 10 * _NS_PER_S < now_ns:
            self._audible.popleft()

    # -- fragments ----------------------------------------------------------------------------------------------------
    def _on_fragment(self, frag: AudioFragment) -> list[Emit]:
        if frag.turn_id < 0 or frag.segment_index < 0 or frag.fragment_index < 0:
            raise SchemaError(f"negative turn/segment/fragment index in fragment {self._key(frag)}")
        if frag.segments_total is not None and frag.segments_total < 0:
            raise SchemaError(f"segments_total {frag.segments_total} < 0")
        self.turn_ids.check(frag.turn_id, f"fragment {self._key(frag)}")
        now = self.clock_ns()
        if logger.isEnabledFor(logging.DEBUG):  # per fragment: nothing built unless asked for
            logger.debug("speaker: fragment %s received %.1f ms after the TTS made it", self._key(frag),
                         (now - frag.t_ns) / 1e6)
        if frag.session_id:
            self.session_id = frag.session_id
        if frag.turn_id < self._floor or frag.turn_id < self._max_started:
            self.fragments_discarded += 1
            logger.debug("speaker: fragment %s of a finished or cancelled turn discarded (%d so far)",
                         self._key(frag), self.fragments_discarded)
            return []
        if not self.sink.rate:
            self.sink.open(self.config.sample_rate_hz or frag.sample_rate)
        if self.sink.set_origin(now):
            logger.info("speaker: no mic stream: output clock origin = first fragment's arrival")
        turn = self._turns.get(frag.turn_id)
        if turn is None:
            turn = _Turn(turn_id=frag.turn_id, session_id=frag.session_id or self.session_id)
        self._enqueue(turn, frag)
        if frag.turn_id not in self._turns:
            self._turns[frag.turn_id] = turn
            self._turns = OrderedDict(sorted(self._turns.items()))
        out: list[Emit] = []
        out += self._close_stalled(frag.turn_id, now)
        out += self._place_ready(now)
        out += self._check_barge_in(now)
        out += self._report(now)
        return out

    @staticmethod
    def _key(frag: AudioFragment) -> str:
        return f"(turn {frag.turn_id}, segment {frag.segment_index}, fragment {frag.fragment_index})"

    def _enqueue(self, turn: _Turn, frag: AudioFragment) -> None:
        """Validate ``frag`` against its turn and put it in the reorder buffer. Raises SchemaError."""
        key = (frag.segment_index, frag.fragment_index)
        if key in turn.pending or key < (turn.next_segment, turn.next_fragment):
            raise SchemaError(f"duplicate or late fragment {self._key(frag)} rejected")
        total = turn.segments_total
        marker = False
        if frag.is_final:
            claimed = frag.segments_total
            if claimed is None:  # infer: an empty first fragment closes the turn; else it is the last segment
                claimed = frag.segment_index if frag.samples.size == 0 and frag.fragment_index == 0 \
                    else frag.segment_index + 1
            marker = frag.samples.size == 0 and frag.segment_index >= claimed  # closes the turn, not a segment
            if total is not None and claimed != total:
                raise SchemaError(f"fragment {self._key(frag)} says segments_total={claimed}, turn said {total}")
            if (not marker and frag.segment_index >= claimed) or turn.next_segment > claimed \
                    or any(seg >= claimed for seg, _f in turn.pending):
                raise SchemaError(f"final fragment {self._key(frag)}: segments_total={claimed} does not cover "
                                  "the segments seen")
            total = claimed
        elif total is not None and frag.segment_index >= total:
            raise SchemaError(f"fragment {self._key(frag)} beyond segments_total={total}")
        if len(turn.pending) >= MAX_PENDING_FRAGMENTS and not marker:
            raise SchemaError(f"reorder buffer of turn {turn.turn_id} full ({MAX_PENDING_FRAGMENTS}); "
                              f"waiting for segment {turn.next_segment} fragment {turn.next_fragment}")
        turn.segments_total = total
        if not marker:
            turn.pending[key] = frag

    def _close_stalled(self, newest_turn: int, now: int) -> list[Emit]:
        """Close the turns older than ``newest_turn`` that still wait for fragments (they will not come)."""
        out: list[Emit] = []
        if self._pause is not None:
            return out  # done when the pause ends (a resume moves the positions this uses)
        for turn in list(self._turns.values()):
            if turn.turn_id >= newest_turn:
                break
            self._place_turn(turn, now, out)
            if turn.placement_done:
                continue
            known = turn.known_segments()
            if self._open_segment(turn):
                seg = turn.segments[-1]
                seg.complete = True
                seg.resampler = None
                if seg.samples:
                    self.sink.fade_tail(seg.end, self._samples(self.config.crossfade_ms))
            turn.missing = max(0, known - len(turn.segments))
            logger.warning("speaker: turn %d closed incomplete: waiting for segment %d fragment %d, %d segment(s) "
                           "missing, %d buffered fragment(s) discarded (turn %d started or the stream ended)",
                           turn.turn_id, turn.next_segment, turn.next_fragment, turn.missing, len(turn.pending),
                           newest_turn)
            self.fragments_discarded += len(turn.pending)
            turn.pending.clear()
            turn.segments_total = turn.next_segment = len(turn.segments)
            turn.next_fragment = 0
        return out

    @staticmethod
    def _open_segment(turn: _Turn) -> bool:
        return bool(turn.segments) and not turn.segments[-1].complete

    def _place_ready(self, now: int) -> list[Emit]:
        out: list[Emit] = []
        if self._pause is not None:
            return out  # the fragments wait in the reorder buffer until the pause ends
        for turn in list(self._turns.values()):
            self._place_turn(turn, now, out)
            if not turn.placement_done:
                break  # later turns wait for this one
        return out

    def _place_turn(self, turn: _Turn, now: int, out: list[Emit]) -> None:
        while not turn.placement_done:
            frag = turn.pending.pop((turn.next_segment, turn.next_fragment), None)
            if frag is None:
                return
            self._place(turn, frag, now, out)

    def _place(self, turn: _Turn, frag: AudioFragment, now: int, out: list[Emit]) -> None:
        """Resample, fade and place one in-order fragment; update the turn's bookkeeping."""
        sink = self.sink
        last = frag.is_last_fragment or frag.is_final
        if frag.fragment_index == 0:
            turn.segments.append(_Segment(index=frag.segment_index, text_index=frag.text_segment_index,
                                          pause_after=frag.ends_at_punctuation))
        seg = turn.segments[-1]
        samples = self._convert(seg, frag, last)
        fade_n = self._samples(self.config.crossfade_ms)
        if samples.shape[0]:
            first_of_segment = seg.samples == 0
            if turn.started:
                previous = turn.segments[-2] if len(turn.segments) > 1 else None
                natural = previous is None or previous.pause_after  # no pause inside a phrase cut by a limit
                pause = self._samples(self.config.sentence_pause_ms) if first_of_segment and natural else 0
                due = turn.end_pos + pause
            else:
                due = sink.end + self._samples(self.config.sentence_pause_ms) if sink.end else 0
            gap = turn.started and sink.earliest_position(now) > due
            if first_of_segment or gap:
                audio.fade_in(samples, fade_n, inplace=True)
            if gap and not first_of_segment:
                sink.fade_tail(turn.end_pos, fade_n)
            if last:
                audio.fade_out(samples, fade_n, inplace=True)
            start = sink.place(due, samples, now)
            if turn.started and start > due:
                turn.underruns += 1
                turn.underrun_samples += start - due
                logger.info("speaker: underrun in turn %d before segment %d fragment %d: %.1f ms gap",
                            turn.turn_id, frag.segment_index, frag.fragment_index, self._ms(start - due))
            if not turn.started:
                turn.first_pos = start
                self._max_started = max(self._max_started, turn.turn_id)
                out.append(self.timing(TimingKind.PLAYBACK_STARTED, turn.turn_id, sink.position_to_ns(start),
                                       **{Key.SEGMENT_INDEX: frag.segment_index}))
            if seg.start < 0:
                seg.start = start
            seg.end = start + samples.shape[0]
            seg.samples += samples.shape[0]
            turn.end_pos = seg.end
            turn.audio_samples += samples.shape[0]
            self._note_audible(sink.position_to_ns(start), sink.position_to_ns(seg.end), now)
        elif last and seg.samples:
            sink.fade_tail(seg.end, fade_n)
        if last:
            seg.complete = True
            seg.resampler = None
            turn.next_segment += 1
            turn.next_fragment = 0
        else:
            turn.next_fragment += 1

    def _convert(self, seg: _Segment, frag: AudioFragment, last: bool) -> np.ndarray:
        """The fragment at the output rate, as an owned, writable float32 array."""
        if frag.sample_rate == self.sink.rate:
            return np.array(frag.samples, dtype=np.float32, copy=True)
        if seg.in_rate and seg.in_rate != frag.sample_rate:
            raise SchemaError(f"sample_rate changed within segment {frag.segment_index} of turn {frag.turn_id}: "
                              f"{seg.in_rate} -> {frag.sample_rate} Hz")
        if seg.resampler is None:
            seg.in_rate = frag.sample_rate
            seg.resampler = audio.resample_stream(frag.sample_rate, self.sink.rate)
        out = seg.resampler.resample_chunk(np.ascontiguousarray(frag.samples, dtype=np.float32), last=last)
        return np.array(out, dtype=np.float32, copy=True)

    # -- reports ------------------------------------------------------------------------------------------------------
    def _report(self, now: int, *, flush: bool = False) -> list[Emit]:
        """Report segments the play head has passed (all of them when ``flush``) and finish complete turns."""
        out: list[Emit] = []
        if not self.sink.rate:
            return out
        wait = self._reports_wait() and not flush
        head = self.sink.played_position(now) if wait else None
        if head is not None and self._pause is not None:
            head = min(head, self._pause.at)  # what lies after the pause point has not been heard (yet)
        for turn in list(self._turns.values()):
            for seg in turn.segments:
                if seg.reported:
                    continue
                if not seg.complete or (head is not None and seg.samples and seg.end > head):
                    break
                self._segment_played(turn, seg, now, out)
            if turn.placement_done and all(s.reported for s in turn.segments):
                self._finish(turn, now, out, interrupted=False, cancelled=turn.missing)
                continue
            break
        return out

    def _segment_played(self, turn: _Turn, seg: _Segment, now: int, out: list[Emit]) -> None:
        """Report ``seg`` as heard. A segment without audio (the TTS closed it empty) is not reported: nothing
        of it was heard."""
        seg.reported = True
        if not seg.samples:
            logger.debug("speaker: turn %d segment %d had no audio", turn.turn_id, seg.index)
            return
        turn.played += 1
        t_ns = self.sink.position_to_ns(seg.end)
        out.append(self._playback(PlaybackKind.SEGMENT_PLAYED, turn, seg.index, seg.text_index, 1.0, t_ns))
        out.append(self.timing(TimingKind.SEGMENT_PLAYED, turn.turn_id, t_ns, **{
            Key.SEGMENT_INDEX: seg.index, Key.TEXT_SEGMENT_INDEX: seg.text_index, Key.AUDIO_MS: self._ms(seg.samples)}))

    def _finish(self, turn: _Turn, now: int, out: list[Emit], *, interrupted: bool, cancelled: int,
                heard_samples: int | None = None, t_ns: int | None = None) -> None:
        heard = turn.audio_samples if heard_samples is None else heard_samples
        if t_ns is None:
            t_ns = self.sink.position_to_ns(turn.end_pos) if turn.started else now
        out.append(self._playback(PlaybackKind.TURN_DONE, turn, -1, -1,
                                  heard / turn.audio_samples if turn.audio_samples else 1.0, t_ns))
        out.append(self.timing(TimingKind.TURN_PLAYED, turn.turn_id, t_ns, **{
            Key.COUNT: turn.played, Key.UNDERRUNS: turn.underruns, Key.UNDERRUN_MS: self._ms(turn.underrun_samples),
            Key.AUDIO_MS: self._ms(heard), Key.CANCELLED: cancelled, Key.INTERRUPTED: interrupted}))
        logger.info("speaker: turn %d %s: %d segment(s) played, %d cancelled, %.0f ms audio, %d underrun(s) "
                    "(%.1f ms)", turn.turn_id, "interrupted" if interrupted else "done", turn.played, cancelled,
                    self._ms(heard), turn.underruns, self._ms(turn.underrun_samples))
        del self._turns[turn.turn_id]
        self._floor = max(self._floor, turn.turn_id + 1)
        self.turns_done += 1
        self.sink.checkpoint()

    # -- barge-in -----------------------------------------------------------------------------------------------------
    def _check_barge_in(self, now: int) -> list[Emit]:
        speech = self._speech
        if speech is None or not self._can_interrupt():
            return []
        if now - speech.onset_ns < self.config.barge_in_min_speech_ms * 1_000_000:
            return []
        pause = self._pause
        stop_at = pause.at if pause is not None else self.sink.earliest_position(now)
        victims = [t for t in self._turns.values() if t.started and (t.end_pos > stop_at or not t.placement_done)]
        if not victims:
            return []  # nothing audible to interrupt; the speech stays a candidate while it lasts
        self._speech = None
        self.barge_ins += 1
        if pause is not None:  # playback fell silent at the onset already: the barge-in stopped it there
            self._pause = None
            stop, stopped_ns = pause.at, pause.silent_ns
        else:
            stop, end = self.sink.truncate(stop_at, self._samples(self.config.barge_in_fade_ms), now)
            stopped_ns = max(now, self.sink.position_to_ns(end))
        if self._audible:
            self._audible[-1][1] = min(self._audible[-1][1], stopped_ns)
        out: list[Emit] = []
        for turn in victims:
            interrupted_segments = 0
            heard = 0
            for seg in turn.segments:
                if seg.reported:
                    heard += seg.samples
                    continue
                if seg.start < 0 or seg.start >= stop:
                    continue  # never heard: cancelled
                if seg.complete and seg.end <= stop:
                    self._segment_played(turn, seg, now, out)
                    heard += seg.samples
                    continue
                heard_here = min(stop, seg.end) - seg.start
                heard_here = min(heard_here, seg.samples)  # a segment resumed after a pause spans the gap too
                heard += heard_here
                interrupted_segments += 1
                seg.reported = True
                out.append(self._playback(PlaybackKind.SEGMENT_INTERRUPTED, turn, seg.index, seg.text_index,
                                          heard_here / seg.samples if seg.samples else 0.0, stopped_ns))
            cancelled = max(0, turn.known_segments() - turn.played - interrupted_segments)
            out.append(self._playback(PlaybackKind.TURN_INTERRUPTED, turn, -1, -1,
                                      heard / turn.audio_samples if turn.audio_samples else 0.0, stopped_ns))
            out.append(self.timing(TimingKind.BARGE_IN, turn.turn_id, stopped_ns, **{
                Key.CANCELLED: cancelled, Key.DURATION_MS: max(0.0, (stopped_ns - speech.detected_ns) / 1e6),
                Key.SPEECH_START_NS: speech.onset_ns, Key.DETECTED_NS: speech.detected_ns}))
            logger.info("speaker: barge-in on turn %d: silent %.0f ms after the speech onset, %.0f ms after it was "
                        "confirmed; %d segment(s) cancelled", turn.turn_id, (stopped_ns - speech.onset_ns) / 1e6,
                        (stopped_ns - speech.detected_ns) / 1e6, cancelled)
            self.fragments_discarded += len(turn.pending)
            turn.pending.clear()
            self._finish(turn, now, out, interrupted=True, cancelled=cancelled, heard_samples=heard, t_ns=stopped_ns)
        if pause is not None:  # fragments of a newer turn may have waited for the pause to end
            out += self._close_stalled(max(self._turns) if self._turns else 0, now) + self._place_ready(now)
        return out

    # -- pause at a speech onset ----------------------------------------------------------------------------------
    def _pause_at_onset(self, event: VadEvent, now: int) -> list[Emit]:
        """Pause the playing answer at a ``speech_onset`` (see the module docstring). Nothing is paused when nothing
        placed lies ahead of the play head (a gap, or no answer playing) or the speech is already confirmed."""
        if self._pause is not None or self._speech is not None or not self._can_interrupt():
            return []
        at = self.sink.earliest_position(now)
        if not any(t.started and t.end_pos > at for t in self._turns.values()):
            return []
        stop, silent, removed = self.sink.cut(at, self._samples(self.config.barge_in_fade_ms), now)
        if not removed.shape[0]:
            return []
        silent_ns = max(now, self.sink.position_to_ns(silent))
        self._pause = _Pause(onset_ns=event.t_ns, at=stop, silent=silent, silent_ns=silent_ns, removed=removed)
        self.pauses += 1
        if self._audible:
            self._audible[-1][1] = min(self._audible[-1][1], silent_ns)
        logger.info("speaker: paused at a speech onset: silent %.0f ms after the onset, %.0f ms after the VAD's "
                    "event; %.0f ms of audio kept aside", (silent_ns - event.t_ns) / 1e6,
                    (silent_ns - event.detected_ns) / 1e6, self._ms(removed.shape[0]))
        return []

    def _resume(self, now: int, why: str) -> list[Emit]:
        """End a pause that was no barge-in: place the audio kept aside again at the earliest position (faded in),
        move every later position by the gap, then place what waited."""
        pause = self._pause
        if pause is None:
            return []
        self._pause = None
        self.pauses_resumed += 1
        samples = pause.removed
        audio.fade_in(samples, self._samples(self.config.crossfade_ms), inplace=True)
        start = self.sink.place(self.sink.earliest_position(now), samples, now)
        delta = start - pause.at
        playing: _Turn | None = None
        for turn in self._turns.values():
            if turn.first_pos >= pause.at:
                turn.first_pos += delta
            if turn.end_pos > pause.at:
                turn.end_pos += delta
                playing = playing or turn
            for seg in turn.segments:
                if seg.start >= pause.at:
                    seg.start += delta
                if seg.end > pause.at:
                    seg.end += delta
        resumed_ns = self.sink.position_to_ns(start)
        self._note_audible(resumed_ns, self.sink.position_to_ns(start + samples.shape[0]), now)
        gap_ms = (resumed_ns - pause.silent_ns) / 1e6
        logger.info("speaker: resumed after a pause at a speech onset (%s): %.0f ms of silence heard (%d of %d "
                    "pauses resumed)", why, gap_ms, self.pauses_resumed, self.pauses)
        out: list[Emit] = []
        if playing is not None:
            out.append(self.timing(TimingKind.PLAYBACK_PAUSED, playing.turn_id, pause.silent_ns, **{
                Key.DURATION_MS: gap_ms, Key.SPEECH_START_NS: pause.onset_ns}))
        if self._turns:
            out += self._close_stalled(max(self._turns), now)
        return out + self._place_ready(now)

    # -- cooperative loop ---------------------------------------------------------------------------------------------
    def _unreported(self) -> bool:
        return any(not s.reported for t in self._turns.values() for s in t.segments if s.complete)

    def _reference_on(self) -> bool:
        return (self.reference is not None and not self._events_closed and not self._ended
                and self.reference.ready())

    def _publish_reference(self, now: int) -> list[Emit]:
        if not self._reference_on():
            return []
        assert self.reference is not None
        return [emit(Output.REFERENCE, f) for f in self.reference.poll(now, self.session_id)]

    def busy(self) -> bool:
        if self._reference_on() or self._pause is not None:
            return True
        if not self.sink.rate:
            return False
        if self._reports_wait() and self._unreported():
            return True
        return (self._speech is not None and self._can_interrupt()
                and any(t.started for t in self._turns.values()))

    def step(self) -> list[Emit]:
        now = self.clock_ns()
        out = self._device_underflows(now)
        resume_ns = self.config.barge_in_resume_ms * 1_000_000
        if self._pause is not None and self._speech is None and now - self._pause.onset_ns >= resume_ns:
            out += self._resume(now, f"no speech confirmed within BARGE_IN_RESUME_MS={self.config.barge_in_resume_ms}")
        out += self._check_barge_in(now)
        out += self._report(now)
        out += self._publish_reference(now)
        if out:
            return out
        wait_ns = int(POLL_S * _NS_PER_S)
        if self._speech is not None:
            wait_ns = min(wait_ns, self._speech.onset_ns + self.config.barge_in_min_speech_ms * 1_000_000 - now)
        elif self._pause is not None:
            wait_ns = min(wait_ns, self._pause.onset_ns + resume_ns - now)
        for turn in self._turns.values():
            for seg in turn.segments:
                if seg.complete and not seg.reported:
                    wait_ns = min(wait_ns, self.sink.position_to_ns(seg.end) - now)
                    break
            break
        # At least 1 us: a play head a rounding step short of a segment end must still move on.
        self.sleep(max(wait_ns, 1_000) / _NS_PER_S)
        return []

    def _device_underflows(self, now: int) -> list[Emit]:
        n = self.sink.take_underflows()
        if not n:
            return []
        head = self.sink.played_position(now)
        for turn in self._turns.values():
            if turn.started and turn.first_pos <= head < turn.end_pos + self._samples(DEVICE_BLOCK_MS):
                turn.underruns += n
                turn.underrun_samples += n * self._samples(DEVICE_BLOCK_MS)
                logger.warning("speaker: %d output underflow(s) in turn %d", n, turn.turn_id)
                break
        return []

    def on_end(self) -> list[Emit]:
        """The stream ended: close incomplete turns, report everything, and close the sink."""
        now = self.clock_ns()
        out: list[Emit] = self._resume(now, "end of the stream")
        self._ended = True
        if self._turns:
            newest = max(self._turns) + 1
            out += self._close_stalled(newest, now)
        out += self._report(now, flush=True)
        if self.pauses:
            logger.info("speaker: %d pause(s) at a speech onset, %d resumed (not a barge-in)", self.pauses,
                        self.pauses_resumed)
        if self.fragments_discarded or self.speech_ignored:
            logger.info("speaker: %d fragment(s) of finished turns discarded, %d speech onset(s) ignored by the "
                        "echo guard", self.fragments_discarded, self.speech_ignored)
        self.sink.close()
        return out


# ================================================================================================================
# dora adapter


def build_sink(config: SpeakerConfig, *, reference: bool = False) -> Sink:
    """The sink ``config`` asks for; a device sink is opened now (its stream start can take a second or two).

    Args:
        config: speaker settings.
        reference: the ``reference`` output is wired (the device sink then keeps the blocks it wrote).

    Raises:
        AudioDeviceError: no usable output device (the message names AUDIO_OUTPUT=out.wav).
        OSError: the AUDIO_OUTPUT file cannot be written.
    """
    if config.audio_output is not None:
        # Audio is final (reference) once no fade can reach it any more: CROSSFADE_MS behind the play head.
        sink = FileSink(config.audio_output, config.sample_rate_hz, hold_ms=config.crossfade_ms)
        sink.checkpoint()  # an unwritable path fails now, not after the first answer
        return sink
    sink = DeviceSink(config.audio_output_device, fade_ms=config.crossfade_ms or 8,
                      keep_history_ms=REFERENCE_HISTORY_MS if reference else 0)
    sink.open(config.sample_rate_hz or DeviceSink.default_rate(config.audio_output_device))
    return sink


def main(argv: list[str] | None = None) -> None:
    """Console script ``dora-voice-speaker``: ``--list-devices`` / ``--help``, else run as a dora node."""
    config, _ = node_cli(CONTRACT, __doc__, argv, list_devices=True)
    from dora import Node  # noqa: PLC0415 - only the node process needs dora

    node = Node()
    outputs = declared_outputs(node)
    reference = outputs is not None and Output.REFERENCE in outputs
    try:
        sink = build_sink(config, reference=reference)
    except (audio.AudioDeviceError, OSError) as exc:
        fatal(CONTRACT.path, str(exc))
    core = SpeakerCore(config, sink, reference=reference)
    reference = core.reference is not None
    wired = declared_inputs(node)
    if wired is not None and Output.EVENTS not in wired:
        core.on_input_closed(Output.EVENTS)  # no VAD in this dataflow: nothing can interrupt
    logger.info("speaker: %s, barge-in %s (min speech %d ms), echo guard %s, reference %s",
                f"writing {config.audio_output}" if config.audio_output else "device output",
                "on" if config.barge_in else "off", config.barge_in_min_speech_ms, core.echo_guard.value,
                "published" if reference else "not published")
    try:
        run_node(node, core)
    finally:
        sink.close()


if __name__ == "__main__":
    main(sys.argv[1:])
