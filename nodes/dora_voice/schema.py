"""The single source of truth for every message exchanged between dora-voice nodes.

Every output id and metadata key lives here, organised by dataflow edge, with its type and unit. Nodes never spell
a key as a bare string: they build one of the message dataclasses below and call ``encode()``, and they read
incoming messages with the matching ``decode()``. This follows HF speech-to-speech's ``pipeline/messages.py`` and
dora core's ``libraries/message/src/metadata.rs`` (one module for all streaming keys).

Conventions (``docs/architecture.md`` has the overview):
    * Audio is a 1-D ``float32`` pyarrow array in [-1, 1], mono, with ``sample_rate`` (int, Hz) in its metadata.
    * Text is a one-element ``string`` array.
    * Control and timing messages carry a one-element ``string`` array (a short label) and their fields as
      metadata. Metadata values are ``bool``, ``int``, ``float`` or ``str`` only (what dora 1.1 carries as-is).
    * ``*_ns`` values are ``time.time_ns()`` wall-clock nanoseconds stamped at the source; all nodes share that
      epoch, so the monitor can subtract timestamps taken in different processes.

Errors:
    :class:`SchemaError` (a ``ValueError``) is raised by every ``decode`` on a missing key, a value of the wrong
    type, or a payload of the wrong dtype/shape. Nodes log and count it and keep running.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

PIPELINE_SAMPLE_RATE_HZ = 16_000
"""Sample rate of audio between mic, VAD and ASR (Hz). Silero VAD and Whisper both expect 16 kHz."""

MAX_TEXT_CHARS = 20_000
"""Longest text message accepted by a node (characters); longer input is rejected as a :class:`SchemaError`."""


class SchemaError(ValueError):
    """A message does not follow this schema (missing key, wrong type, bad payload)."""


class Key:
    """Metadata keys. Types and units are given next to each key."""

    SESSION_ID = "session_id"  # str: one conversation
    TURN_ID = "turn_id"  # int: one user utterance (or typed query) and its answer, 0-based
    SEGMENT_INDEX = "segment_index"  # int: 0-based text/audio segment within a turn
    FRAGMENT_INDEX = "fragment_index"  # int: 0-based audio fragment within a segment
    TEXT_SEGMENT_INDEX = "text_segment_index"  # int: LLM chunk an audio segment was synthesized from
    IS_STREAMING = "is_streaming"  # bool: produced by the streaming path
    IS_FINAL = "is_final"  # bool: last message of the turn on this edge
    IS_LAST_FRAGMENT = "is_last_fragment"  # bool: last fragment of its segment
    ENDS_AT_PUNCTUATION = "ends_at_punctuation"  # bool: the segment's text ends at punctuation (a natural pause)
    SEGMENTS_TOTAL = "segments_total"  # int: segments the sender produced for the turn (on is_final messages)
    SAMPLE_RATE = "sample_rate"  # int, Hz
    SAMPLE_OFFSET = "sample_offset"  # int, samples since the start of the mic stream
    T_NS = "t_ns"  # int, ns: when the message's event happened (for audio: its first sample)
    STREAM_START_NS = "stream_start_ns"  # int, ns: wall-clock instant of sample 0 of the input stream
    SPEECH_START_NS = "speech_start_ns"  # int, ns: first voiced sample of the utterance
    SPEECH_END_NS = "speech_end_ns"  # int, ns: last voiced sample of the utterance
    DETECTED_NS = "detected_ns"  # int, ns: when the VAD decided
    EOT_RULE = "eot_rule"  # str: the rule that ended the turn (dora_voice.turn.TurnRule value)
    EOT_PROBABILITY = "eot_probability"  # float, 0.0-1.0: the end-of-turn model's latest P(complete)
    EOT_MODEL_MS = "eot_model_ms"  # float, ms: time spent in the end-of-turn model for this turn
    SPECULATIVE = "speculative"  # bool: an utterance (or its transcript) sent early in a pause, before the end of
    #   the turn is proposed or confirmed; on llm/text, a chunk of a reply begun then (the TTS holds its audio)
    VERDICT = "verdict"  # str: on llm/text, "confirmed" or "cancelled": what becomes of the turn's speculative chunks
    WITHDRAWN = "withdrawn"  # bool: on a speculative transcript, the one sent before for that turn is void
    PARTIAL = "partial"  # bool: an utterance (or its transcript) sent while the user is still speaking, so the LLM
    #   can evaluate its prompt ahead (TURN_PARTIAL_MS); never answered
    PREFILLED_WORDS = "prefilled_words"  # int: on llm_start, words of the user's message whose prompt was evaluated
    #   while they spoke (from a partial transcript; 0 = none)
    SPECULATION = "speculation"  # str: on asr_done, "hit" (transcript of the speculative pass reused), "miss"
    #   (a speculative pass was dropped: the audio changed) or "none"; on llm_start, "hit" (the reply began during
    #   the pause, from the speculative transcript), "miss" (a reply begun ahead was dropped) or "none"
    LLM_START_NS = "llm_start_ns"  # int, ns: prompt submitted to the LLM
    TOKENS = "tokens"  # int: LLM tokens in a chunk (or in the reply, on llm_done)
    SOURCE = "source"  # str: "device" or "file" (mic), "voice" or "text" (transcripts)
    EVENT = "event"  # str: a VadEventKind / ControlKind / TimingKind value
    TEXT = "text"  # str: transcript, chunk text or reply (timing events only)
    DURATION_MS = "duration_ms"  # float, ms
    AUDIO_MS = "audio_ms"  # float, ms of audio
    COUNT = "count"  # int: a count whose meaning the event names
    UNDERRUNS = "underruns"  # int
    UNDERRUN_MS = "underrun_ms"  # float, ms
    CANCELLED = "cancelled"  # int: segments deliberately dropped by a barge-in
    INTERRUPTED = "interrupted"  # bool
    DETAIL = "detail"  # str: free-form detail (error text, node name)
    HEARD_FRACTION = "heard_fraction"  # float, 0.0-1.0: share of a segment the listener heard
    NODE = "node"  # str: the node that stamped a timing event
    ERLE_DB = "erle_db"  # float, dB: echo return loss enhancement over a window (mic power / AEC output power)
    DELAY_MS = "delay_ms"  # float, ms: estimated echo delay of the mic behind the time-aligned reference
    CPU_PERCENT = "cpu_percent"  # float, % of one core: processing time / audio time
    CANCELLER_CPU_PERCENT = "canceller_cpu_percent"  # float, % of one core: the echo cancellers' own time (aec_stats;
    #   the rest of cpu_percent is the node around them: dora messaging, alignment, measurements)
    ECHO_ACTIVE = "echo_active"  # bool: on aec/audio, the assistant (or its echo tail) was audible in the block
    # Reliable delivery between machines (dora_voice.link); the runtime adds and removes these, cores never see them.
    LINK = "link"  # str: names one run of the sending node
    LINK_SEQ = "link_seq"  # int: 0-based message number per output; on an end_of_stream marker, messages sent
    END_OF_STREAM = "end_of_stream"  # bool: the sender's end-of-stream marker on this output
    GONE = "gone"  # bool: a retransmission asked for is no longer kept (the message is lost)
    PROBE = "probe"  # bool: a quiet output's message count (link_seq), so a lost last message is noticed


class Output:
    """Output ids, by node. The YAML ``outputs:`` lists and the node contracts use these names."""

    AUDIO = "audio"  # mic -> vad (or -> room -> aec -> vad); tts -> speaker
    STREAM_STARTED = "stream_started"  # mic -> speaker, monitor
    ASR_AUDIO = "asr_audio"  # aec -> vad: the mic with the echo removed linearly, unsuppressed (the ASR's audio)
    SPEECH = "speech"  # vad -> asr
    EVENTS = "events"  # vad -> speaker, tts, llm (barge-in), monitor
    TEXT = "text"  # asr -> llm; text-input -> llm; llm -> tts
    SEGMENT_DONE = "segment_done"  # tts -> llm (pacing feedback)
    PLAYBACK = "playback"  # speaker -> llm (what was heard), tts (barge-in), text-input (pacing), monitor
    REFERENCE = "reference"  # speaker -> aec, room: the far-end reference, exactly what the speaker plays
    TIMING = "timing"  # every node -> monitor
    ACK = "ack"  # any node -> its senders on other machines (input ack_<node>): delivery reports (dora_voice.link)


class VadEventKind(str, enum.Enum):
    """What the VAD saw. ``speech_started`` is what barge-in listens to; ``speech_onset`` (voiced frames, not yet
    ``VAD_MIN_SPEECH_MS``) lets the speaker pause the answer while the VAD decides, and ``onset_discarded`` (those
    frames were noise) resumes it."""

    SPEECH_ONSET = "speech_onset"
    ONSET_DISCARDED = "onset_discarded"
    SPEECH_STARTED = "speech_started"
    SPEECH_ENDED = "speech_ended"


class PlaybackKind(str, enum.Enum):
    """Speaker feedback about one audio segment."""

    SEGMENT_PLAYED = "segment_played"  # every sample of the segment left
    SEGMENT_INTERRUPTED = "segment_interrupted"  # playback stopped inside it by a barge-in
    TURN_DONE = "turn_done"  # the turn's final segment has been played (or the turn was cancelled)
    TURN_INTERRUPTED = "turn_interrupted"  # barge-in: playback of the turn stopped; TTS and LLM drop the rest


class TimingKind(str, enum.Enum):
    """Timing events, stamped where they happen (``t_ns``) and combined by the monitor. The fields each kind
    carries are declared in :data:`TIMING_FIELDS`."""

    STREAM_STARTED = "stream_started"  # mic: sample 0 of the input
    SPEECH_STARTED = "speech_started"  # vad: t_ns = first voiced sample; detected_ns = decision time
    SPEECH_ENDED = "speech_ended"  # vad: t_ns = last voiced sample; detected_ns = decision time; eot_rule,
    # eot_probability (absent when no model was asked), eot_model_ms, count (model evaluations)
    ASR_DONE = "asr_done"  # asr: transcript emitted; speculation = hit | miss | none
    SPECULATION_CANCELLED = "speculation_cancelled"  # asr: a speculative transcription dropped (the user went on
    #   speaking); llm: a reply begun ahead from a speculative transcript dropped (withdrawn, or the confirmed
    #   transcript differs); duration_ms = the compute it had cost. Never heard, never a lost segment.
    TEXT_INPUT = "text_input"  # text-input: a typed query emitted
    LLM_START = "llm_start"  # llm: prompt submitted
    LLM_FIRST_TOKEN = "llm_first_token"  # llm: first token generated
    LLM_CHUNK = "llm_chunk"  # llm: a speakable chunk emitted; duration_ms since the previous chunk (or llm_start)
    LLM_DONE = "llm_done"  # llm: generation finished; detail = why the reply ended
    TTS_SEGMENT_START = "tts_segment_start"  # tts: t_ns = the segment's chunk received
    TTS_FIRST_FRAGMENT = "tts_first_fragment"  # tts: a segment's first audio fragment emitted
    TTS_SEGMENT_DONE = "tts_segment_done"  # tts: a segment synthesized (interrupted: cut by a barge-in);
    #   duration_ms = synthesis time
    TTS_DONE = "tts_done"  # tts: the turn's last segment emitted (or the turn cancelled)
    PLAYBACK_STARTED = "playback_started"  # speaker: first sample of the turn left
    SEGMENT_PLAYED = "segment_played"  # speaker: a segment finished playing
    TURN_PLAYED = "turn_played"  # speaker: turn finished; count = segments played
    BARGE_IN = "barge_in"  # speaker: playback stopped by the user; t_ns = playback silent; duration_ms = detection
    #   -> silent (0 when playback had already paused at the speech onset, before the speech was confirmed)
    PLAYBACK_PAUSED = "playback_paused"  # speaker: playback paused at a speech onset that turned out not to be a
    #   barge-in, then resumed where it stopped; t_ns = silent, duration_ms = the gap heard
    INPUT_ERROR = "input_error"  # any node: a bad message was rejected
    AEC_STATS = "aec_stats"  # aec: one window of mic audio; t_ns = window start; duration_ms (window), audio_ms
    #   (reference active), erle_db (over those frames; absent without), delay_ms (-1 before an estimate), cpu_percent


# --------------------------------------------------------------------------------------------------------------
# Typed access to metadata


def _get(meta: Mapping[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    """Read ``meta[key]`` as ``kind``; raise :class:`SchemaError` if missing (and no default) or mistyped."""
    if key not in meta:
        if default is ...:
            raise SchemaError(f"metadata key {key!r} is missing")
        return default
    value = meta[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SchemaError(f"metadata key {key!r} must be bool, got {type(value).__name__} {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SchemaError(f"metadata key {key!r} must be int, got {type(value).__name__} {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise SchemaError(f"metadata key {key!r} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise SchemaError(f"metadata key {key!r} must be str, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(kind)


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values and turn numpy scalars into Python scalars (dora stringifies numpy scalars)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def audio_to_numpy(value: pa.Array) -> np.ndarray:
    """Convert an audio payload to a 1-D float32 numpy array.

    Args:
        value: pyarrow array of float32 samples in [-1, 1].

    Returns:
        1-D ``float32`` array (a copy only when the payload is not float32 already).

    Raises:
        SchemaError: wrong dtype, not 1-D, NaN/inf samples, or samples far outside [-1, 1].
    """
    if not isinstance(value, pa.Array):
        raise SchemaError(f"audio payload must be a pyarrow array, got {type(value).__name__}")
    if not pa.types.is_float32(value.type):
        raise SchemaError(f"audio payload must be float32, got {value.type}")
    if value.null_count:
        raise SchemaError("audio payload contains nulls")
    samples = value.to_numpy(zero_copy_only=False)
    if samples.size and not np.isfinite(samples).all():
        raise SchemaError("audio payload contains NaN or infinite samples")
    if samples.size and float(np.max(np.abs(samples))) > 1.5:
        raise SchemaError(f"audio samples out of range: peak {float(np.max(np.abs(samples))):.2f} > 1.5")
    return samples


def text_from_array(value: pa.Array, *, allow_empty: bool = False) -> str:
    """Read the text of a one-element string array.

    Raises:
        SchemaError: not a one-element string array, empty (unless ``allow_empty``) or longer than
            :data:`MAX_TEXT_CHARS`.
    """
    if not isinstance(value, pa.Array) or not (pa.types.is_string(value.type) or pa.types.is_large_string(value.type)):
        raise SchemaError(f"text payload must be a string array, got {getattr(value, 'type', type(value).__name__)}")
    if len(value) != 1 or value.null_count:
        raise SchemaError(f"text payload must hold exactly one string, got {len(value)}")
    text = value[0].as_py()
    if not allow_empty and not text.strip():
        raise SchemaError("text payload is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise SchemaError(f"text payload too long: {len(text)} > {MAX_TEXT_CHARS} characters")
    return text


def _audio_array(samples: np.ndarray) -> pa.Array:
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    return pa.array(samples, type=pa.float32())


def _label(text: str) -> pa.Array:
    return pa.array([text], type=pa.string())


# --------------------------------------------------------------------------------------------------------------
# mic -> vad, speaker, monitor


@dataclass(frozen=True)
class AudioChunk:
    """mic/audio: a block of captured PCM.

    Attributes:
        samples: shape ``(n,)`` float32 in [-1, 1], mono.
        sample_rate: Hz (the pipeline rate, 16 000, after resampling).
        sample_offset: index of ``samples[0]`` in the mic stream (samples since stream start).
        t_ns: wall clock of ``samples[0]``.
        session_id: conversation id.
        echo_active: set by the aec node: the assistant's audio (or its echo tail) was audible in this block, so
            the echo canceller's suppression may hide the user here (the VAD does not count it as a pause).
    """

    samples: np.ndarray
    sample_rate: int
    sample_offset: int
    t_ns: int
    session_id: str
    echo_active: bool = False

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _audio_array(self.samples), _clean({
            Key.SAMPLE_RATE: int(self.sample_rate), Key.SAMPLE_OFFSET: int(self.sample_offset),
            Key.T_NS: int(self.t_ns), Key.SESSION_ID: self.session_id,
            Key.ECHO_ACTIVE: True if self.echo_active else None,
        })

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "AudioChunk":
        return cls(
            samples=audio_to_numpy(value), sample_rate=_positive_rate(meta), sample_offset=_get(meta, Key.SAMPLE_OFFSET, int),
            t_ns=_get(meta, Key.T_NS, int), session_id=_get(meta, Key.SESSION_ID, str, ""),
            echo_active=_get(meta, Key.ECHO_ACTIVE, bool, False),
        )


def _positive_rate(meta: Mapping[str, Any]) -> int:
    rate = _get(meta, Key.SAMPLE_RATE, int)
    if not 1000 <= rate <= 384_000:
        raise SchemaError(f"sample_rate {rate} Hz is outside 1000..384000")
    return rate


@dataclass(frozen=True)
class StreamStarted:
    """mic/stream_started: sample 0 of the input stream left the source at ``stream_start_ns``.

    The speaker's file sink uses it so that output sample 0 is the instant input sample 0 started playing.
    """

    stream_start_ns: int
    sample_rate: int
    source: str  # "device" | "file"
    session_id: str

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _label("stream_started"), {
            Key.STREAM_START_NS: int(self.stream_start_ns), Key.SAMPLE_RATE: int(self.sample_rate),
            Key.SOURCE: self.source, Key.SESSION_ID: self.session_id,
        }

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "StreamStarted":
        return cls(
            stream_start_ns=_get(meta, Key.STREAM_START_NS, int), sample_rate=_positive_rate(meta),
            source=_get(meta, Key.SOURCE, str, "device"), session_id=_get(meta, Key.SESSION_ID, str, ""),
        )


# --------------------------------------------------------------------------------------------------------------
# speaker -> aec, room (the far-end reference)


REFERENCE_FRAME_MS = 20
"""Length of one speaker/reference frame (ms): 320 samples at 16 kHz."""


@dataclass(frozen=True)
class ReferenceFrame:
    """speaker/reference: the far-end reference for echo cancellation, exactly what the speaker plays.

    The speaker publishes its whole output timeline, silence included, after every fade, pause and barge-in cut,
    resampled to 16 kHz, in frames of :data:`REFERENCE_FRAME_MS`, once the samples can no longer change (they were
    handed to the device, or the file sink's clock passed them).

    Attributes:
        samples: shape ``(n,)`` float32 in [-1, 1], mono (n = 320 for 20 ms at 16 kHz).
        sample_rate: Hz (16 000).
        sample_offset: index of ``samples[0]`` on the reference timeline (16 kHz samples since the speaker's output
            sample 0); consecutive frames are contiguous.
        t_ns: wall clock at which ``samples[0]`` leaves the speaker (the device clock estimate, or the file sink's
            clock, whose origin is the mic stream's start).
        source: "device" or "file" (the sink).
    """

    samples: np.ndarray
    sample_rate: int
    sample_offset: int
    t_ns: int
    session_id: str
    source: str

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _audio_array(self.samples), _clean({
            Key.SAMPLE_RATE: int(self.sample_rate), Key.SAMPLE_OFFSET: int(self.sample_offset),
            Key.T_NS: int(self.t_ns), Key.SESSION_ID: self.session_id, Key.SOURCE: self.source,
        })

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "ReferenceFrame":
        return cls(
            samples=audio_to_numpy(value), sample_rate=_positive_rate(meta),
            sample_offset=_get(meta, Key.SAMPLE_OFFSET, int), t_ns=_get(meta, Key.T_NS, int),
            session_id=_get(meta, Key.SESSION_ID, str, ""), source=_get(meta, Key.SOURCE, str, "device"),
        )


# --------------------------------------------------------------------------------------------------------------
# vad -> asr ; vad -> speaker, tts, llm, monitor


@dataclass(frozen=True)
class Utterance:
    """vad/speech: one user utterance, end of turn detected.

    Attributes:
        samples: shape ``(n,)`` float32, 16 kHz, including the VAD's padding.
        speech_start_ns / speech_end_ns: wall clock of the first / last voiced sample.
        detected_ns: when the VAD declared the end of the turn (``speech_end_ns`` + the silence wait).
        speculative: ``True`` for the utterance so far, sent early in a pause (``TURN_SPECULATE_SILENCE_MS``),
            before the end of the turn was proposed or confirmed (the ASR may transcribe it ahead, but nothing
            downstream acts on it); the confirmed utterance of the same ``turn_id`` follows, with ``False``: it may
            hold more speech, or the same speech (same ``speech_start_ns`` / ``speech_end_ns``) with more of the
            trailing pad after these samples.
        partial: ``True`` for the utterance so far, sent while the user is still speaking (``TURN_PARTIAL_MS``), so
            the ASR can make a partial transcript and the LLM evaluate its prompt ahead; nothing answers it. The
            utterances of its turn that follow (partial, speculative or confirmed) hold at least its speech.

    Raises:
        SchemaError: (on construction) both ``speculative`` and ``partial``.
    """

    samples: np.ndarray
    sample_rate: int
    session_id: str
    turn_id: int
    speech_start_ns: int
    speech_end_ns: int
    detected_ns: int
    speculative: bool = False
    partial: bool = False

    def __post_init__(self) -> None:
        if self.speculative and self.partial:
            raise SchemaError("an utterance is either speculative (a pause proposed the end of the turn) or partial "
                              "(the user is still speaking), not both")

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _audio_array(self.samples), {
            Key.SAMPLE_RATE: int(self.sample_rate), Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id),
            Key.SPEECH_START_NS: int(self.speech_start_ns), Key.SPEECH_END_NS: int(self.speech_end_ns),
            Key.DETECTED_NS: int(self.detected_ns), Key.SPECULATIVE: bool(self.speculative),
            Key.PARTIAL: bool(self.partial),
        }

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "Utterance":
        return cls(
            samples=audio_to_numpy(value), sample_rate=_positive_rate(meta), session_id=_get(meta, Key.SESSION_ID, str, ""),
            turn_id=_get(meta, Key.TURN_ID, int), speech_start_ns=_get(meta, Key.SPEECH_START_NS, int),
            speech_end_ns=_get(meta, Key.SPEECH_END_NS, int), detected_ns=_get(meta, Key.DETECTED_NS, int),
            speculative=_get(meta, Key.SPECULATIVE, bool, False), partial=_get(meta, Key.PARTIAL, bool, False),
        )


@dataclass(frozen=True)
class VadEvent:
    """vad/events: the user started or stopped speaking.

    Attributes:
        kind: :class:`VadEventKind`.
        turn_id: the turn this speech belongs to (the one that will be emitted on ``speech``).
        t_ns: wall clock of the first voiced sample (``speech_onset``, ``speech_started``) or of the last voiced
            sample (``onset_discarded``, ``speech_ended``), ns.
        detected_ns: when the VAD decided, ns.
    """

    kind: VadEventKind
    session_id: str
    turn_id: int
    t_ns: int
    detected_ns: int

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _label(self.kind.value), {
            Key.EVENT: self.kind.value, Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id),
            Key.T_NS: int(self.t_ns), Key.DETECTED_NS: int(self.detected_ns),
        }

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "VadEvent":
        raw = _get(meta, Key.EVENT, str)
        try:
            kind = VadEventKind(raw)
        except ValueError:
            raise SchemaError(f"unknown VAD event {raw!r}") from None
        return cls(kind=kind, session_id=_get(meta, Key.SESSION_ID, str, ""), turn_id=_get(meta, Key.TURN_ID, int),
                   t_ns=_get(meta, Key.T_NS, int), detected_ns=_get(meta, Key.DETECTED_NS, int))


# --------------------------------------------------------------------------------------------------------------
# asr -> llm ; text-input -> llm


@dataclass(frozen=True)
class Transcript:
    """asr/text or text-input/text: what the user said (or typed), one per turn.

    A turn may first get *speculative* transcripts (``TURN_SPECULATION=answer``: the ASR transcribed the utterance
    so far early in a pause, before the turn was confirmed). The LLM may begin the reply to one, but nothing of it
    is heard (its first chunk goes to the TTS marked speculative, whose audio the TTS holds: :class:`TextSegment`),
    and the history does not change, until the confirmed transcript of the same turn arrives with the same text. A speculative transcript with ``withdrawn=True`` voids the one sent before for its turn (the user
    went on speaking). Every turn that is answered gets exactly one confirmed transcript.

    Attributes:
        text: the transcript, non-empty.
        speech_end_ns: last voiced sample of the utterance (0 for typed text).
        t_ns: when the transcript was emitted.
        source: "voice" or "text".
        speculative: made before the turn was confirmed; never answered by itself.
        withdrawn: (speculative only) the speculative transcript of this turn is void.
        partial: the transcript of the utterance so far, made while the user is still speaking (``TURN_PARTIAL_MS``):
            the LLM may evaluate the prompt it would make (nothing is generated, the history does not change);
            never answered. Any number of them may precede a turn's other transcripts.

    Raises:
        SchemaError: (on construction) ``withdrawn`` without ``speculative``, or both ``speculative`` and
            ``partial``.
    """

    text: str
    session_id: str
    turn_id: int
    speech_end_ns: int
    t_ns: int
    source: str = "voice"
    speculative: bool = False
    withdrawn: bool = False
    partial: bool = False

    def __post_init__(self) -> None:
        if self.withdrawn and not self.speculative:
            raise SchemaError("a withdrawn transcript must be speculative (a confirmed transcript is never withdrawn)")
        if self.speculative and self.partial:
            raise SchemaError("a transcript is either speculative or partial, not both")

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        meta: dict[str, Any] = {
            Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id), Key.SPEECH_END_NS: int(self.speech_end_ns),
            Key.T_NS: int(self.t_ns), Key.SOURCE: self.source,
        }
        if self.speculative:
            meta[Key.SPECULATIVE] = True
            meta[Key.WITHDRAWN] = bool(self.withdrawn)
        if self.partial:
            meta[Key.PARTIAL] = True
        return _label(self.text), meta

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "Transcript":
        return cls(text=text_from_array(value), session_id=_get(meta, Key.SESSION_ID, str, ""),
                   turn_id=_get(meta, Key.TURN_ID, int), speech_end_ns=_get(meta, Key.SPEECH_END_NS, int, 0),
                   t_ns=_get(meta, Key.T_NS, int, 0), source=_get(meta, Key.SOURCE, str, "voice"),
                   speculative=_get(meta, Key.SPECULATIVE, bool, False),
                   withdrawn=_get(meta, Key.WITHDRAWN, bool, False), partial=_get(meta, Key.PARTIAL, bool, False))


# --------------------------------------------------------------------------------------------------------------
# llm -> tts


class Verdict(str, enum.Enum):
    """What becomes of a turn's speculative chunks (:attr:`TextSegment.verdict`)."""

    CONFIRMED = "confirmed"  # the turn ended with the transcript the reply began from: the held audio plays now
    CANCELLED = "cancelled"  # the reply begun ahead is void: its held audio is dropped, never heard


@dataclass(frozen=True)
class TextSegment:
    """llm/text: a speakable chunk of the reply.

    A turn is a run of segments ``segment_index = 0, 1, …``; the last one has ``is_final=True`` and
    ``segments_total`` set. The final message may carry empty text when the reply ended exactly on a cut: it then
    only closes the turn and is not itself a segment (``segments_total`` counts non-empty segments).

    Speculation (``TURN_SPECULATION=answer``): the chunks of a reply begun during the pause, before the end of turn
    is confirmed, carry ``speculative=True``: the TTS synthesizes them and holds everything they produce. Then one
    message with a ``verdict`` and no text (not a segment: its ``segment_index`` is the number of chunks sent)
    says what becomes of them: ``confirmed`` (the held audio is sent at once, the reply goes on with ordinary
    chunks) or ``cancelled`` (dropped; the same ``turn_id`` may be answered again from segment 0).

    Attributes:
        tokens: LLM tokens in this chunk.
        llm_start_ns: when the prompt of this turn was submitted.
        t_ns: when the chunk was emitted.

    Raises:
        SchemaError: (on construction) a verdict with text, or on a speculative or final message.
    """

    text: str
    session_id: str
    turn_id: int
    segment_index: int
    is_streaming: bool
    is_final: bool
    tokens: int
    llm_start_ns: int
    t_ns: int
    segments_total: int | None = None
    speculative: bool = False
    verdict: Verdict | None = None

    def __post_init__(self) -> None:
        if self.verdict is not None and (self.text or self.speculative or self.is_final):
            raise SchemaError("a verdict message carries no text and is neither speculative nor final")

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _label(self.text), _clean({
            Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id), Key.SEGMENT_INDEX: int(self.segment_index),
            Key.IS_STREAMING: bool(self.is_streaming), Key.IS_FINAL: bool(self.is_final), Key.TOKENS: int(self.tokens),
            Key.LLM_START_NS: int(self.llm_start_ns), Key.T_NS: int(self.t_ns), Key.SEGMENTS_TOTAL: self.segments_total,
            Key.SPECULATIVE: True if self.speculative else None,
            Key.VERDICT: self.verdict.value if self.verdict is not None else None,
        })

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "TextSegment":
        is_final = _get(meta, Key.IS_FINAL, bool)
        verdict = _get(meta, Key.VERDICT, str, None)
        try:
            verdict = Verdict(verdict) if verdict is not None else None
        except ValueError:
            raise SchemaError(f"{Key.VERDICT} must be one of {[v.value for v in Verdict]}, got {verdict!r}") from None
        return cls(
            text=text_from_array(value, allow_empty=is_final or verdict is not None),
            session_id=_get(meta, Key.SESSION_ID, str, ""),
            turn_id=_get(meta, Key.TURN_ID, int), segment_index=_get(meta, Key.SEGMENT_INDEX, int),
            is_streaming=_get(meta, Key.IS_STREAMING, bool), is_final=is_final, tokens=_get(meta, Key.TOKENS, int, 0),
            llm_start_ns=_get(meta, Key.LLM_START_NS, int, 0), t_ns=_get(meta, Key.T_NS, int, 0),
            segments_total=_get(meta, Key.SEGMENTS_TOTAL, int, None),
            speculative=_get(meta, Key.SPECULATIVE, bool, False), verdict=verdict,
        )


# --------------------------------------------------------------------------------------------------------------
# tts -> speaker ; tts -> llm


@dataclass(frozen=True)
class AudioFragment:
    """tts/audio: a fragment of synthesized speech.

    Segments of a turn are numbered ``segment_index = 0, 1, …`` by the TTS (one LLM chunk can become several
    segments when the TTS segments it further; ``text_segment_index`` names the chunk). Fragments of a segment are
    numbered ``fragment_index = 0, 1, …``; the last has ``is_last_fragment=True``. The turn's last message has
    ``is_final=True`` and ``segments_total``; it may be an empty fragment that only closes the turn.
    ``ends_at_punctuation`` is False when the segment was cut mid-phrase (a size or token limit): the speaker then
    joins the next segment without the sentence pause.

    Attributes:
        samples: shape ``(n,)`` float32 in [-1, 1], mono, at ``sample_rate`` Hz.
        t_ns: when the fragment was emitted.
    """

    samples: np.ndarray
    sample_rate: int
    session_id: str
    turn_id: int
    segment_index: int
    fragment_index: int
    text_segment_index: int
    is_last_fragment: bool
    is_final: bool
    is_streaming: bool
    t_ns: int
    segments_total: int | None = None
    ends_at_punctuation: bool = True

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _audio_array(self.samples), _clean({
            Key.SAMPLE_RATE: int(self.sample_rate), Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id),
            Key.SEGMENT_INDEX: int(self.segment_index), Key.FRAGMENT_INDEX: int(self.fragment_index),
            Key.TEXT_SEGMENT_INDEX: int(self.text_segment_index), Key.IS_LAST_FRAGMENT: bool(self.is_last_fragment),
            Key.IS_FINAL: bool(self.is_final), Key.IS_STREAMING: bool(self.is_streaming), Key.T_NS: int(self.t_ns),
            Key.SEGMENTS_TOTAL: self.segments_total, Key.ENDS_AT_PUNCTUATION: bool(self.ends_at_punctuation),
        })

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "AudioFragment":
        return cls(
            samples=audio_to_numpy(value), sample_rate=_positive_rate(meta), session_id=_get(meta, Key.SESSION_ID, str, ""),
            turn_id=_get(meta, Key.TURN_ID, int), segment_index=_get(meta, Key.SEGMENT_INDEX, int),
            fragment_index=_get(meta, Key.FRAGMENT_INDEX, int), text_segment_index=_get(meta, Key.TEXT_SEGMENT_INDEX, int, 0),
            is_last_fragment=_get(meta, Key.IS_LAST_FRAGMENT, bool), is_final=_get(meta, Key.IS_FINAL, bool),
            is_streaming=_get(meta, Key.IS_STREAMING, bool, True), t_ns=_get(meta, Key.T_NS, int, 0),
            segments_total=_get(meta, Key.SEGMENTS_TOTAL, int, None),
            ends_at_punctuation=_get(meta, Key.ENDS_AT_PUNCTUATION, bool, True),
        )


@dataclass(frozen=True)
class SegmentDone:
    """tts/segment_done: the TTS finished synthesizing one LLM chunk (``text_segment_index``). Drives pacing.

    Attributes:
        audio_ms: duration of the chunk's synthesized audio, ms (0 when unknown).
        synth_ms: wall time the synthesis of the chunk took, ms (0 when unknown).
    """

    session_id: str
    turn_id: int
    text_segment_index: int
    t_ns: int
    audio_ms: float = 0.0
    synth_ms: float = 0.0

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _label("segment_done"), {
            Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id),
            Key.TEXT_SEGMENT_INDEX: int(self.text_segment_index), Key.T_NS: int(self.t_ns),
            Key.AUDIO_MS: float(self.audio_ms), Key.DURATION_MS: float(self.synth_ms),
        }

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "SegmentDone":
        audio_ms, synth_ms = _get(meta, Key.AUDIO_MS, float, 0.0), _get(meta, Key.DURATION_MS, float, 0.0)
        if audio_ms < 0 or synth_ms < 0:
            raise SchemaError(f"segment_done: audio_ms and duration_ms must be >= 0, got {audio_ms}, {synth_ms}")
        return cls(session_id=_get(meta, Key.SESSION_ID, str, ""), turn_id=_get(meta, Key.TURN_ID, int),
                   text_segment_index=_get(meta, Key.TEXT_SEGMENT_INDEX, int), t_ns=_get(meta, Key.T_NS, int, 0),
                   audio_ms=audio_ms, synth_ms=synth_ms)


# --------------------------------------------------------------------------------------------------------------
# speaker -> llm, monitor


@dataclass(frozen=True)
class PlaybackEvent:
    """speaker/playback: what the listener actually heard.

    Attributes:
        kind: :class:`PlaybackKind`.
        segment_index / text_segment_index: the audio segment and the LLM chunk it came from (-1 for turn_done).
        heard_fraction: share of the segment's samples that were played, 0.0–1.0.
    """

    kind: PlaybackKind
    session_id: str
    turn_id: int
    segment_index: int
    text_segment_index: int
    heard_fraction: float
    t_ns: int

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        return _label(self.kind.value), {
            Key.EVENT: self.kind.value, Key.SESSION_ID: self.session_id, Key.TURN_ID: int(self.turn_id),
            Key.SEGMENT_INDEX: int(self.segment_index), Key.TEXT_SEGMENT_INDEX: int(self.text_segment_index),
            Key.HEARD_FRACTION: float(self.heard_fraction), Key.T_NS: int(self.t_ns),
        }

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "PlaybackEvent":
        raw = _get(meta, Key.EVENT, str)
        try:
            kind = PlaybackKind(raw)
        except ValueError:
            raise SchemaError(f"unknown playback event {raw!r}") from None
        return cls(kind=kind, session_id=_get(meta, Key.SESSION_ID, str, ""), turn_id=_get(meta, Key.TURN_ID, int),
                   segment_index=_get(meta, Key.SEGMENT_INDEX, int), text_segment_index=_get(meta, Key.TEXT_SEGMENT_INDEX, int),
                   heard_fraction=_get(meta, Key.HEARD_FRACTION, float), t_ns=_get(meta, Key.T_NS, int))


# --------------------------------------------------------------------------------------------------------------
# every node -> monitor


TIMING_FIELD_TYPES: Mapping[str, type] = {
    Key.SEGMENT_INDEX: int, Key.TEXT_SEGMENT_INDEX: int, Key.SEGMENTS_TOTAL: int, Key.TOKENS: int, Key.COUNT: int,
    Key.UNDERRUNS: int, Key.CANCELLED: int, Key.DETECTED_NS: int, Key.SPEECH_START_NS: int, Key.SPEECH_END_NS: int,
    Key.TEXT: str, Key.DETAIL: str, Key.DURATION_MS: float, Key.AUDIO_MS: float, Key.UNDERRUN_MS: float,
    Key.INTERRUPTED: bool, Key.IS_FINAL: bool, Key.EOT_RULE: str, Key.EOT_PROBABILITY: float, Key.EOT_MODEL_MS: float,
    Key.ERLE_DB: float, Key.DELAY_MS: float, Key.CPU_PERCENT: float, Key.CANCELLER_CPU_PERCENT: float,
    Key.SPECULATION: str, Key.PREFILLED_WORDS: int,
}
"""Type of every field a timing event may carry (``float`` fields also accept an int). Float fields are durations
(ms, >= 0): a non-finite value is sent as ``-1.0`` and :meth:`TimingEvent.get` reads it as missing."""


@dataclass(frozen=True)
class TimingFields:
    """The fields one :class:`TimingKind` carries: ``required`` ones place the event (which chunk or segment it is
    about) and must be present; ``optional`` ones may be left out (readers then fall back, e.g. to counting)."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self.required + self.optional)


TIMING_FIELDS: Mapping[TimingKind, TimingFields] = {
    TimingKind.STREAM_STARTED: TimingFields(),
    TimingKind.SPEECH_STARTED: TimingFields(optional=(Key.DETECTED_NS,)),
    TimingKind.SPEECH_ENDED: TimingFields(optional=(Key.DETECTED_NS, Key.SPEECH_START_NS, Key.EOT_RULE,
                                                    Key.EOT_PROBABILITY, Key.EOT_MODEL_MS, Key.COUNT)),
    TimingKind.ASR_DONE: TimingFields(optional=(Key.TEXT, Key.DURATION_MS, Key.AUDIO_MS, Key.SPEECH_END_NS,
                                                Key.SPECULATION)),
    TimingKind.SPECULATION_CANCELLED: TimingFields(optional=(Key.DURATION_MS, Key.AUDIO_MS, Key.TOKENS)),
    TimingKind.TEXT_INPUT: TimingFields(optional=(Key.TEXT,)),
    TimingKind.LLM_START: TimingFields(optional=(Key.TEXT, Key.SPECULATION, Key.DURATION_MS, Key.PREFILLED_WORDS)),
    TimingKind.LLM_FIRST_TOKEN: TimingFields(),
    TimingKind.LLM_CHUNK: TimingFields(required=(Key.SEGMENT_INDEX,),
                                       optional=(Key.TOKENS, Key.TEXT, Key.DURATION_MS, Key.IS_FINAL)),
    TimingKind.LLM_DONE: TimingFields(optional=(Key.TOKENS, Key.TEXT, Key.SEGMENTS_TOTAL, Key.DURATION_MS,
                                                Key.INTERRUPTED, Key.DETAIL)),
    TimingKind.TTS_SEGMENT_START: TimingFields(required=(Key.SEGMENT_INDEX,),
                                               optional=(Key.TEXT_SEGMENT_INDEX, Key.TEXT)),
    TimingKind.TTS_FIRST_FRAGMENT: TimingFields(required=(Key.SEGMENT_INDEX,), optional=(Key.TEXT_SEGMENT_INDEX,)),
    TimingKind.TTS_SEGMENT_DONE: TimingFields(required=(Key.SEGMENT_INDEX,),
                                              optional=(Key.TEXT_SEGMENT_INDEX, Key.AUDIO_MS, Key.DURATION_MS,
                                                        Key.INTERRUPTED)),
    TimingKind.TTS_DONE: TimingFields(optional=(Key.SEGMENTS_TOTAL, Key.AUDIO_MS, Key.CANCELLED, Key.INTERRUPTED)),
    TimingKind.PLAYBACK_STARTED: TimingFields(optional=(Key.SEGMENT_INDEX,)),
    TimingKind.SEGMENT_PLAYED: TimingFields(required=(Key.SEGMENT_INDEX,),
                                            optional=(Key.TEXT_SEGMENT_INDEX, Key.AUDIO_MS)),
    TimingKind.TURN_PLAYED: TimingFields(optional=(Key.COUNT, Key.UNDERRUNS, Key.UNDERRUN_MS, Key.AUDIO_MS,
                                                   Key.CANCELLED, Key.INTERRUPTED)),
    TimingKind.BARGE_IN: TimingFields(optional=(Key.CANCELLED, Key.DURATION_MS, Key.SPEECH_START_NS,
                                                Key.DETECTED_NS)),
    TimingKind.PLAYBACK_PAUSED: TimingFields(optional=(Key.DURATION_MS, Key.SPEECH_START_NS)),
    TimingKind.INPUT_ERROR: TimingFields(optional=(Key.DETAIL,)),
    TimingKind.AEC_STATS: TimingFields(optional=(Key.DURATION_MS, Key.AUDIO_MS, Key.ERLE_DB, Key.DELAY_MS,
                                                 Key.CPU_PERCENT, Key.CANCELLER_CPU_PERCENT)),
}
"""The fields of every timing kind (their meaning: :class:`Key` and :class:`TimingKind`). A new field or kind is
declared here first: :class:`TimingEvent` rejects an undeclared field where it is built (the sender) and drops one
where it is decoded (a newer sender), and checks the types of the others both ways."""


def _timing_field_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, (int, np.integer))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating))
    return isinstance(value, kind)


@dataclass(frozen=True)
class TimingEvent:
    """*/timing: one timestamped event for the monitor.

    Attributes:
        kind: :class:`TimingKind`.
        node: the node id that stamped it.
        turn_id: the turn it belongs to (-1 when none).
        t_ns: wall clock of the event.
        fields: the kind's fields (:data:`TIMING_FIELDS`), keyed by :class:`Key` names (e.g. ``Key.TOKENS``);
            read them with :meth:`get`.

    Raises:
        SchemaError: (on construction) a required field is missing, a field is not declared for the kind, or a
            field has the wrong type (e.g. ``tokens`` as a string).
    """

    kind: TimingKind
    node: str
    session_id: str
    turn_id: int
    t_ns: int
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = TIMING_FIELDS[self.kind]
        for key in spec.required:
            if key not in self.fields:
                raise SchemaError(f"timing event {self.kind.value!r} from {self.node!r} lacks {key!r}")
        for key, value in self.fields.items():
            if key not in spec.allowed:
                raise SchemaError(f"timing field {key!r} is not declared for {self.kind.value!r} "
                                  "(declare it in dora_voice.schema.TIMING_FIELDS)")
            kind = TIMING_FIELD_TYPES[key]
            if not _timing_field_ok(value, kind):
                raise SchemaError(f"timing field {key!r} of {self.kind.value!r} must be {kind.__name__}, "
                                  f"got {type(value).__name__} {value!r}")

    def get(self, key: str, default: Any = None) -> Any:
        """The value of field ``key``, or ``default`` when the event does not carry it (or carries the encoding of
        a non-finite duration, ``-1.0``).

        Raises:
            KeyError: ``key`` is not a field of this kind (a reader's typo, not a sender's omission).
        """
        if key not in TIMING_FIELDS[self.kind].allowed:
            raise KeyError(f"{key!r} is not a field of timing event {self.kind.value!r}")
        if key not in self.fields:
            return default
        value = self.fields[key]
        if TIMING_FIELD_TYPES[key] is float and value < 0:
            return default
        return value

    def encode(self) -> tuple[pa.Array, dict[str, Any]]:
        meta = _clean(dict(self.fields))
        for key, value in meta.items():
            if isinstance(value, float) and not math.isfinite(value):
                meta[key] = -1.0
        meta.update({Key.EVENT: self.kind.value, Key.NODE: self.node, Key.SESSION_ID: self.session_id,
                     Key.TURN_ID: int(self.turn_id), Key.T_NS: int(self.t_ns)})
        return _label(self.kind.value), meta

    @classmethod
    def decode(cls, value: pa.Array, meta: Mapping[str, Any]) -> "TimingEvent":
        raw = _get(meta, Key.EVENT, str)
        try:
            kind = TimingKind(raw)
        except ValueError:
            raise SchemaError(f"unknown timing event {raw!r}") from None
        allowed = TIMING_FIELDS[kind].allowed  # a field a newer sender added is dropped, not an error
        return cls(kind=kind, node=_get(meta, Key.NODE, str, ""), session_id=_get(meta, Key.SESSION_ID, str, ""),
                   turn_id=_get(meta, Key.TURN_ID, int), t_ns=_get(meta, Key.T_NS, int),
                   fields={k: v for k, v in meta.items() if k in allowed})
