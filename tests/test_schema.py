"""Schema: every message round-trips through encode/decode; bad payloads and metadata raise SchemaError."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dora_voice.schema import (
    TIMING_FIELD_TYPES, TIMING_FIELDS, AudioChunk, AudioFragment, Key, PlaybackEvent, PlaybackKind, SchemaError,
    SegmentDone, StreamStarted, TextSegment, TimingEvent, TimingKind, Transcript, Utterance, VadEvent, VadEventKind,
    Verdict, audio_to_numpy, text_from_array,
)

AUDIO = np.linspace(-0.5, 0.5, 2048, dtype=np.float32)
MESSAGES = [
    AudioChunk(AUDIO, 16000, 512, 10**18, "s"),
    StreamStarted(10**18, 16000, "file", "s"),
    Utterance(AUDIO, 16000, "s", 3, 1, 2, 3),
    VadEvent(VadEventKind.SPEECH_STARTED, "s", 2, 5, 6),
    Transcript("hello there", "s", 1, 10, 11, "voice"),
    TextSegment("Hi.", "s", 1, 0, True, False, 3, 100, 200),
    TextSegment("", "s", 1, 2, True, True, 0, 100, 300, segments_total=2),
    TextSegment("Sure,", "s", 1, 0, True, False, 2, 100, 200, speculative=True),
    TextSegment("", "s", 1, 1, True, False, 0, 100, 300, verdict=Verdict.CONFIRMED),
    AudioFragment(AUDIO, 22050, "s", 1, 0, 1, 0, False, False, True, 400),
    AudioFragment(AUDIO[:0], 22050, "s", 1, 2, 0, 1, True, True, True, 500, segments_total=2),
    SegmentDone("s", 1, 0, 600),
    PlaybackEvent(PlaybackKind.SEGMENT_INTERRUPTED, "s", 1, 0, 0, 0.25, 700),
    TimingEvent(TimingKind.LLM_CHUNK, "llm", "s", 1, 800,
                {Key.SEGMENT_INDEX: 0, Key.TOKENS: 4, Key.TEXT: "Hi.", Key.DURATION_MS: 1.5, Key.IS_FINAL: False}),
]


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message) -> None:
    value, meta = message.encode()
    assert isinstance(value, pa.Array)
    assert all(isinstance(v, (bool, int, float, str)) for v in meta.values())
    decoded = type(message).decode(value, meta)
    for name in message.__dataclass_fields__:
        assert _equal(getattr(decoded, name), getattr(message, name)), name


def test_a_verdict_carries_no_text_and_names_a_known_outcome() -> None:
    with pytest.raises(SchemaError, match="verdict"):
        TextSegment("Sure,", "s", 1, 0, True, False, 2, 100, 200, verdict=Verdict.CANCELLED)
    with pytest.raises(SchemaError, match="verdict"):
        TextSegment("", "s", 1, 0, True, True, 0, 100, 200, verdict=Verdict.CANCELLED)  # not final either
    value, meta = TextSegment("", "s", 1, 1, True, False, 0, 100, 300, verdict=Verdict.CANCELLED).encode()
    assert TextSegment.decode(value, meta).verdict is Verdict.CANCELLED
    with pytest.raises(SchemaError, match="verdict"):
        TextSegment.decode(value, {**meta, Key.VERDICT: "maybe"})
    with pytest.raises(SchemaError):
        TextSegment.decode(value, {k: v for k, v in meta.items() if k != Key.VERDICT})  # an empty ordinary chunk


def test_sample_rate_is_an_int_on_every_audio_message() -> None:
    for message in MESSAGES:
        value, meta = message.encode()
        if pa.types.is_float32(value.type):
            assert type(meta[Key.SAMPLE_RATE]) is int


def test_numpy_scalars_become_python_scalars() -> None:
    _, meta = TimingEvent(TimingKind.TTS_SEGMENT_DONE, "tts", "s", 1, 5,
                          {Key.SEGMENT_INDEX: np.int64(0), Key.AUDIO_MS: np.float32(2.5)}).encode()
    assert type(meta[Key.AUDIO_MS]) is float


@pytest.mark.parametrize("value,match", [
    (pa.array([0.1], type=pa.float64()), "float32"),
    (pa.array([np.nan], type=pa.float32()), "NaN"),
    (pa.array([3.0], type=pa.float32()), "range"),
    (pa.array([None, 0.1], type=pa.float32()), "null"),
])
def test_bad_audio_payloads(value, match) -> None:
    with pytest.raises(SchemaError, match=match):
        audio_to_numpy(value)


@pytest.mark.parametrize("value,match", [
    (pa.array([""]), "empty"), (pa.array(["a", "b"]), "exactly one"), (pa.array(["x" * 20001]), "too long"),
    (pa.array([1]), "string"),
])
def test_bad_text_payloads(value, match) -> None:
    with pytest.raises(SchemaError, match=match):
        text_from_array(value)


@pytest.mark.parametrize("meta,match", [
    ({}, "turn_id"), ({Key.TURN_ID: "1"}, "int"), ({Key.TURN_ID: True}, "int"),
])
def test_bad_metadata(meta, match) -> None:
    with pytest.raises(SchemaError, match=match):
        Transcript.decode(pa.array(["hi"]), meta)


def test_unknown_event_kinds_raise() -> None:
    with pytest.raises(SchemaError, match="unknown"):
        VadEvent.decode(pa.array(["x"]), {Key.EVENT: "sneeze", Key.TURN_ID: 1, Key.T_NS: 1, Key.DETECTED_NS: 1})
    with pytest.raises(SchemaError, match="unknown"):
        TimingEvent.decode(pa.array(["x"]), {Key.EVENT: "nope", Key.TURN_ID: 1, Key.T_NS: 1})


def test_sample_rate_out_of_range() -> None:
    value, meta = AudioChunk(AUDIO, 16000, 0, 1, "s").encode()
    meta[Key.SAMPLE_RATE] = 0
    with pytest.raises(SchemaError, match="sample_rate"):
        AudioChunk.decode(value, meta)


# -- timing events: fields declared per kind, checked where built (the sender) and where decoded (the reader) ------


@pytest.mark.parametrize("fields, message", [
    ({Key.TOKENS: 3}, "lacks 'segment_index'"),
    ({Key.SEGMENT_INDEX: 0, Key.TOKENS: "3"}, "'tokens' of 'llm_chunk' must be int"),
    ({Key.SEGMENT_INDEX: 0, Key.DURATION_MS: True}, "'duration_ms' of 'llm_chunk' must be float"),
    ({Key.SEGMENT_INDEX: 0, Key.UNDERRUNS: 1}, "'underruns' is not declared for 'llm_chunk'"),
])
def test_timing_events_are_checked_where_sent(fields, message) -> None:
    with pytest.raises(SchemaError, match=message):
        TimingEvent(TimingKind.LLM_CHUNK, "llm", "s", 0, 1, fields)


@pytest.mark.parametrize("change, message", [
    (lambda meta: meta.pop(Key.SEGMENT_INDEX), "lacks 'segment_index'"),
    (lambda meta: meta.update({Key.TOKENS: "3"}), "'tokens' of 'llm_chunk' must be int"),
])
def test_timing_events_are_checked_where_read(change, message) -> None:
    value, meta = TimingEvent(TimingKind.LLM_CHUNK, "llm", "s", 0, 1, {Key.SEGMENT_INDEX: 0, Key.TOKENS: 3}).encode()
    change(meta)
    with pytest.raises(SchemaError, match=message):
        TimingEvent.decode(value, meta)


def test_a_field_a_newer_sender_added_is_dropped_where_read() -> None:
    value, meta = TimingEvent(TimingKind.LLM_FIRST_TOKEN, "llm", "s", 0, 1).encode()
    meta["future_field"] = 1
    assert TimingEvent.decode(value, meta).fields == {}


def test_every_timing_kind_declares_its_fields() -> None:
    assert set(TIMING_FIELDS) == set(TimingKind)
    for spec in TIMING_FIELDS.values():
        assert spec.allowed <= set(TIMING_FIELD_TYPES)


def test_timing_get_reads_a_non_finite_duration_as_missing() -> None:
    value, meta = TimingEvent(TimingKind.TTS_SEGMENT_DONE, "tts", "s", 1, 5, {
        Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 2.5, Key.DURATION_MS: float("inf")}).encode()
    event = TimingEvent.decode(value, meta)
    assert event.get(Key.AUDIO_MS) == 2.5 and event.get(Key.DURATION_MS) is None
    assert event.get(Key.TEXT_SEGMENT_INDEX, -1) == -1
    with pytest.raises(KeyError, match="not a field of timing event 'tts_segment_done'"):
        event.get(Key.TOKENS)
