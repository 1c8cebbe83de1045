"""The test kit: fakes for the parts a core is given (clock, LLM backend, TTS engine) and harnesses that feed a
core encoded messages and return what it emitted, decoded.

Unit tests drive the pure cores with these (as LiveKit's ``tests/fake_tts.py`` and pipecat's frame-processor
tests do); end-to-end tests run the real dataflow instead. Nothing here sleeps: time moves only when a test
advances the :class:`FakeClock` or a core sleeps on it.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from dora_voice.config import load_config
from dora_voice_monitor.collector import TurnRecord
from dora_voice.nodes.speaker import SpeakerConfig, SpeakerCore
from dora_voice.nodes.tts import TtsConfig, TtsCore
from dora_voice.runtime import NodeCore
from dora_voice.schema import (
    AudioFragment, Output, PlaybackEvent, SegmentDone, StreamStarted, TextSegment, TimingEvent, TimingKind,
    VadEvent, VadEventKind, Verdict,
)
from dora_voice.sinks import FileSink

T0 = 1_700_000_000_000_000_000
"""Where a :class:`FakeClock` starts (ns since the epoch, like ``time.time_ns``)."""
RATE = 16_000
"""The pipeline's sample rate (Hz): mic, VAD, ASR, and the speaker tests' audio."""
TTS_RATE = 1000
"""The :class:`FakeEngine`'s sample rate (Hz): one sample per millisecond keeps the arithmetic readable."""


class FakeClock:
    """A ``time.time_ns`` replacement that moves only when the test advances it or a core sleeps on it.

    Args:
        t_ns: the start (ns).

    Attributes:
        t_ns: now (ns).
        sleeps: every :meth:`sleep` duration asked for (s), in order.
    """

    def __init__(self, t_ns: int = T0) -> None:
        self.t_ns = t_ns
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.t_ns

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.t_ns += int(round(seconds * 1e9))

    def sleep(self, seconds: float) -> None:
        """A ``time.sleep`` replacement: records the request and lets the time pass (at least 1 ns, so a loop that
        sleeps always makes progress)."""
        self.sleeps.append(seconds)
        self.t_ns += max(1, int(round(seconds * 1e9)))


# -- LLM ---------------------------------------------------------------------------------------------------------


class ScriptedBackend:
    """Yields a fixed reply token by token and records the prompts it was given."""

    name = "scripted"

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.prompts: list[list[dict]] = []
        self.warmups: list[list[dict]] = []
        self.closed = 0

    def stream(self, messages, max_tokens):
        self.prompts.append(messages)
        try:
            yield from self.tokens[:max_tokens]
        finally:
            self.closed += 1

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def warmup(self, messages) -> None:
        self.warmups.append(messages)


def run_all(core: NodeCore) -> list:
    """Step ``core`` until it is idle; its raw emits."""
    out = []
    while core.busy():
        out += core.step()
    return out


def segments(out: list) -> list[TextSegment]:
    """The LLM chunks among raw emits, decoded (verdict messages left out: :func:`verdicts`)."""
    decoded = [TextSegment.decode(v, m) for (oid, v, m) in out if oid == Output.TEXT]
    return [s for s in decoded if s.verdict is None]


def verdicts(out: list) -> list[TextSegment]:
    """The LLM's verdict messages on speculative chunks among raw emits, decoded."""
    decoded = [TextSegment.decode(v, m) for (oid, v, m) in out if oid == Output.TEXT]
    return [s for s in decoded if s.verdict is not None]


def timings(out: list) -> list[TimingEvent]:
    """The timing events among raw emits, decoded."""
    return [TimingEvent.decode(v, m) for (oid, v, m) in out if oid == Output.TIMING]


# -- TTS ---------------------------------------------------------------------------------------------------------


@dataclass
class FakeEngine:
    """Scripted synthesizer.

    Each sentence of the text (split after ``.!?``) becomes one chunk of ``ms_per_char`` ms of audio per character,
    unless ``script`` gives the chunk durations (s) for that exact text. Pulling a chunk advances ``clock`` by
    ``synth_s`` (the engine's compute time for it). ``fail_on`` makes synthesis raise after the first chunk.
    """

    clock: FakeClock
    sample_rate: int = TTS_RATE
    ms_per_char: float = 50.0
    synth_s: float = 0.05
    script: dict[str, list[float]] = field(default_factory=dict)
    fail_on: str | None = None
    texts: list[str] = field(default_factory=list)
    pulls: int = 0

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        self.texts.append(text)
        durations = self.script.get(text)
        if durations is None:
            durations = [len(s) * self.ms_per_char / 1000 for s in re.split(r"(?<=[.!?])\s+", text) if s]
        for i, seconds in enumerate(durations):
            if self.fail_on == text and i == 1:
                raise RuntimeError("engine exploded")
            self.clock.advance(self.synth_s)
            self.pulls += 1
            yield np.full(round(seconds * self.sample_rate), 0.25, np.float32)

    def warmup(self) -> None:
        pass


@dataclass
class Out:
    """The decoded outputs of a core (the TTS's and the LLM's), in emission order per output."""

    audio: list[AudioFragment] = field(default_factory=list)
    done: list[SegmentDone] = field(default_factory=list)
    text: list[TextSegment] = field(default_factory=list)
    timing: list[TimingEvent] = field(default_factory=list)

    def add(self, emits: Iterable[tuple[str, pa.Array, Mapping[str, Any]]]) -> "Out":
        for output_id, value, meta in emits:
            if output_id == Output.AUDIO:
                self.audio.append(AudioFragment.decode(value, meta))
            elif output_id == Output.SEGMENT_DONE:
                self.done.append(SegmentDone.decode(value, meta))
            elif output_id == Output.TEXT:
                self.text.append(TextSegment.decode(value, meta))
            else:
                assert output_id == Output.TIMING, output_id
                self.timing.append(TimingEvent.decode(value, meta))
        return self

    def events(self, kind: TimingKind) -> list[TimingEvent]:
        return [e for e in self.timing if e.kind is kind]

    def segments(self, turn_id: int = 1) -> dict[int, list[AudioFragment]]:
        by_segment: dict[int, list[AudioFragment]] = {}
        for f in self.audio:
            if f.turn_id == turn_id:
                by_segment.setdefault(f.segment_index, []).append(f)
        return by_segment


def chunk(text: str, index: int, *, turn: int = 1, final: bool = False,
          speculative: bool = False) -> tuple[pa.Array, dict[str, Any]]:
    return TextSegment(text=text, session_id="s1", turn_id=turn, segment_index=index, is_streaming=True,
                       is_final=final, tokens=4, llm_start_ns=0, t_ns=0, speculative=speculative).encode()


def verdict(kind: Verdict, index: int = 1, *, turn: int = 1) -> tuple[pa.Array, dict[str, Any]]:
    """The LLM's verdict on ``turn``'s speculative chunks (``index``: the number of chunks it sent)."""
    return TextSegment(text="", session_id="s1", turn_id=turn, segment_index=index, is_streaming=True,
                       is_final=False, tokens=0, llm_start_ns=0, t_ns=0, verdict=kind).encode()


def speech_started(turn: int) -> tuple[pa.Array, dict[str, Any]]:
    return VadEvent(VadEventKind.SPEECH_STARTED, "s1", turn, 0, 0).encode()


def make_tts(clock: FakeClock, **env: str) -> tuple[TtsCore, FakeEngine]:
    """A TTS core with a :class:`FakeEngine` on ``clock`` (settings from ``env``)."""
    engine = FakeEngine(clock)
    return TtsCore(load_config(TtsConfig, env), engine, clock_ns=clock), engine


def drain(core: NodeCore, out: Out | None = None) -> Out:
    """Step ``core`` until it is idle; its outputs, decoded (added to ``out`` when given)."""
    out = out or Out()
    while core.busy():
        out.add(core.step())
    return out


def send(core: NodeCore, *messages: tuple[str, tuple[pa.Array, dict[str, Any]]]) -> Out:
    """Feed ``(input_id, encoded message)`` pairs to ``core`` (through :meth:`NodeCore.handle`, like the node
    loop); what it emitted, decoded."""
    out = Out()
    for input_id, (value, meta) in messages:
        out.add(core.handle(input_id, value, meta))
    return out


def check_turn(out: Out, turn_id: int = 1) -> None:
    """Invariants of one turn's audio: contiguous indices, last flags, exactly one is_final at the very end."""
    fragments = [f for f in out.audio if f.turn_id == turn_id]
    assert sum(f.is_final for f in fragments) == 1 and fragments[-1].is_final
    segments = out.segments(turn_id)
    assert list(segments) == list(range(len(segments)))
    for frags in segments.values():
        assert [f.fragment_index for f in frags] == list(range(len(frags)))
        assert [f.is_last_fragment for f in frags] == [False] * (len(frags) - 1) + [True]
    assert all(f.sample_rate == TTS_RATE and f.session_id == "s1" for f in fragments)


# -- speaker -----------------------------------------------------------------------------------------------------


def fragment(turn: int, seg: int, idx: int, samples, *, last: bool = False, final: bool = False,
             total: int | None = None, rate: int = RATE) -> tuple[pa.Array, dict]:
    return AudioFragment(samples=np.asarray(samples, dtype=np.float32), sample_rate=rate, session_id="s",
                         turn_id=turn, segment_index=seg, fragment_index=idx, text_segment_index=seg,
                         is_last_fragment=last or final, is_final=final, is_streaming=True, t_ns=0,
                         segments_total=total).encode()


def dc(value: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return np.full(int(round(seconds * rate)), value, dtype=np.float32)


class SpeakerHarness:
    """Drives a SpeakerCore with a FileSink in tmp_path and a fake clock; decodes what it emits."""

    def __init__(self, tmp_path, env: dict | None = None, *, mic: bool = True) -> None:
        self.clock = FakeClock()
        self.path = tmp_path / "out.wav"
        self.config = load_config(SpeakerConfig, {"AUDIO_OUTPUT": str(self.path), **(env or {})})
        self.sink = FileSink(self.config.audio_output, self.config.sample_rate_hz, keep_samples=True,
                             clock_ns=self.clock)
        self.core = SpeakerCore(self.config, self.sink, clock_ns=self.clock, sleep=self.clock.sleep)
        self.playback: list[PlaybackEvent] = []
        self.timing: list[TimingEvent] = []
        if mic:
            self.send(Output.STREAM_STARTED, StreamStarted(stream_start_ns=T0, sample_rate=RATE, source="file",
                                                           session_id="s").encode())

    def at(self, seconds: float) -> None:
        self.clock.t_ns = T0 + int(round(seconds * 1e9))

    def collect(self, outputs) -> None:
        for output_id, value, meta in outputs:
            if output_id == Output.PLAYBACK:
                self.playback.append(PlaybackEvent.decode(value, meta))
            else:
                assert output_id == Output.TIMING
                self.timing.append(TimingEvent.decode(value, meta))

    def send(self, input_id: str, encoded) -> None:
        self.collect(self.core.handle(input_id, *encoded))

    def audio(self, *encoded_fragments) -> None:
        for encoded in encoded_fragments:
            self.send(Output.AUDIO, encoded)

    def run(self, until_s: float | None = None) -> None:
        """Let (fake) time pass while the core has work, up to ``until_s``."""
        while self.core.busy():
            if until_s is not None and self.clock.t_ns >= T0 + until_s * 1e9:
                return
            self.collect(self.core.step())
        if until_s is not None:
            self.at(max(until_s, (self.clock.t_ns - T0) / 1e9))

    def end(self) -> None:
        self.run()
        self.collect(self.core.on_end())

    def events(self, kind: TimingKind) -> list[TimingEvent]:
        return [t for t in self.timing if t.kind is kind]

    def out(self) -> np.ndarray:
        return self.sink.samples()


def max_jump(x: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(x)))) if x.shape[0] > 1 else 0.0


def vad(kind: VadEventKind, t_s: float, detected_s: float, turn: int = 1) -> tuple[pa.Array, dict]:
    return VadEvent(kind=kind, session_id="s", turn_id=turn, t_ns=T0 + int(t_s * 1e9),
                    detected_ns=T0 + int(detected_s * 1e9)).encode()


def sine(freq: float, seconds: float, rate: int = RATE, amplitude: float = 0.5, start: int = 0) -> np.ndarray:
    n = np.arange(start, start + int(round(seconds * rate)))
    return (amplitude * np.sin(2 * np.pi * freq * n / rate)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# ordering and placement


class FakeOutputStream:
    """sounddevice.OutputStream stand-in: keeps what is written; ``write`` blocks for the block's duration."""

    def __init__(self, rate: int, block: int, latency: float = 0.02) -> None:
        self.rate, self.block, self.latency = rate, block, latency
        self.written: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.started = self.closed = False
        self.underflow_after_samples: int | None = None  # report one underflow once this much audio went out

    def start(self) -> None:
        self.started = True

    def write(self, data: np.ndarray) -> bool:
        with self.lock:
            self.written.append(np.array(data, copy=True))
            audible = sum(int(np.count_nonzero(b)) for b in self.written)
        time.sleep(data.shape[0] / self.rate)
        if self.underflow_after_samples is not None and audible >= self.underflow_after_samples:
            self.underflow_after_samples = None
            return True
        return False

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def output(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.written) if self.written else np.zeros(0, np.float32)


def wait_for(predicate, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def make_turn(turn_id: int = 0, **values) -> TurnRecord:
    """A complete, uninterrupted typed turn; every latency unknown unless given."""
    fields = {f.name: None for f in dataclasses.fields(TurnRecord)}
    fields.update(turn_id=turn_id, session_id="s", source="text", complete=True, transcript="q", reply="an answer",
                  segments=1, tts_segments=1, segments_played=1, segments_cancelled=0, segments_lost=0,
                  interrupted=False, input_errors=0, chunks=())
    fields.update(values)
    return TurnRecord(**fields)
