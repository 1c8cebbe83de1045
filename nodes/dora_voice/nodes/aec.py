"""aec node: acoustic echo cancellation between the mic and the VAD, with the speaker's output as the reference,
so the user can interrupt the assistant at any moment on open speakers.

Inputs:
    ``audio`` (mic/audio, or room/audio in a simulated room): :class:`~dora_voice.schema.AudioChunk`, 16 kHz.
    ``reference`` (speaker/reference): :class:`~dora_voice.schema.ReferenceFrame`, what the speaker plays.

Outputs:
    ``audio``: :class:`~dora_voice.schema.AudioChunk` with the echo removed, contiguous ``sample_offset`` and the
        input's sample clock (``t_ns``), in blocks of whole 10 ms frames (the VAD frames them itself).
    Both mark a block ``echo_active`` while the assistant's audio or its echo tail (``AEC_ECHO_TAIL_MS`` after the
        measured delay) is in it: AEC3 may hide the user there, so the VAD does not count it as a pause.
    ``asr_audio`` (optional): the same blocks with the echo removed by a linear filter only, nothing suppressed
        (``AEC_ASR_AUDIO=linear``, :class:`~dora_voice.echo.LinearEchoCanceller`), sent just before each ``audio``
        block: the VAD decides on ``audio`` and cuts the utterance for the ASR from this one, so the user's words
        survive double talk (:mod:`dora_voice.echo` has the figures).
    ``timing``: ``aec_stats`` every ``AEC_STATS_INTERVAL_MS`` of audio: ``erle_db`` over the frames where the
        reference is audible, ``delay_ms`` (the echo delay estimate), ``cpu_percent`` (this node's process) and
        ``canceller_cpu_percent`` (the echo cancellers' own share of it), both % of one core over the wall time.

Alignment: the speaker stamps each reference frame with the instant it leaves the speaker, the mic each block with
the instant it was captured, on the same wall clock. Mic sample ``k`` is paired with the reference sample that
left at the same instant (the offset between the two sample counts is fixed at the first block, and moved only
when the speaker's clock estimate moves by more than ``REALIGN_MS``). A block waits until that reference has
arrived (the device speaker publishes it when it hands it to the device, ahead of time; the file speaker as its
clock passes), at most ``AEC_REFERENCE_WAIT_MS``; later reference counts as missing (silence) and is logged. The
echo then lags the reference by the acoustic path and whatever error the two clock estimates have: WebRTC AEC3
finds that delay itself; :func:`~dora_voice.echo.estimate_delay` measures it on the last 2 s whenever the
reference was audible, and it is logged when it changes and reported in ``aec_stats``.

``ECHO_GUARD`` (shared with the speaker): ``aec`` cancels; ``auto`` cancels with real devices when pywebrtc-audio
is installed and passes the audio through unchanged otherwise (the speaker then falls back to ``half_duplex``);
``off`` and ``half_duplex`` pass it through. ``ECHO_GUARD=aec`` without the library stops the node at start-up.
AEC3 delays its output by about 8 ms (measured); timestamps are not shifted for it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa

from dora_voice.config import env_field, parse_bool, parse_choice, parse_int, parse_optional_path
from dora_voice.contracts import NodeContract
from dora_voice.echo import (
    AEC_FRAME_MS, ECHO_GUARD_HELP, EchoCanceller, EchoGuard, LinearEchoCanceller, ReferenceBuffer,
    aec_library_available,
    estimate_delay, load_canceller, resolve_echo_guard,
)
from dora_voice.runtime import Emit, NodeCore, emit
from dora_voice.schema import (
    PIPELINE_SAMPLE_RATE_HZ, AudioChunk, Key, Output, ReferenceFrame, SchemaError, TimingKind,
)

logger = logging.getLogger(__name__)

RATE_HZ = PIPELINE_SAMPLE_RATE_HZ
FRAME = RATE_HZ * AEC_FRAME_MS // 1000
REALIGN_MS = 2.0
"""The reference is re-aligned when the speaker's clock estimate moves by more than this (ms)."""
REFERENCE_ACTIVE_DBFS = -50.0
"""A 10 ms reference frame louder than this (RMS, dBFS) counts as the assistant speaking, for ERLE."""
DELAY_WINDOW_S = 2.0
"""Length of signal the delay estimate looks at, and how often it is made (s of audio)."""
DELAY_MIN_CONFIDENCE = 8.0
"""GCC-PHAT peak over the mean of the other lags needed to accept a delay estimate."""


@dataclass(frozen=True)
class AecConfig:
    """aec settings, from the environment (see :func:`dora_voice.config.load_config`)."""

    echo_guard: str = env_field("ECHO_GUARD", "auto", parse_choice("auto", "off", "half_duplex", "aec"),
                                ECHO_GUARD_HELP)
    audio_input: Path | None = env_field(
        "AUDIO_INPUT", None, parse_optional_path, "the mic's input file; read only to resolve ECHO_GUARD=auto")
    audio_output: Path | None = env_field(
        "AUDIO_OUTPUT", None, parse_optional_path, "the speaker's output file; read only to resolve ECHO_GUARD=auto")
    noise_suppression: bool = env_field("AEC_NOISE_SUPPRESSION", False, parse_bool,
                                        "also run WebRTC noise suppression (alters the user's speech)")
    stream_delay_ms: int = env_field("AEC_STREAM_DELAY_MS", 0, parse_int(min_value=0, max_value=1000),
                                     "initial echo delay hint for AEC3, ms (0 = let AEC3 estimate it)")
    reference_wait_ms: int = env_field("AEC_REFERENCE_WAIT_MS", 500, parse_int(min_value=0, max_value=5000),
                                       "mic audio held waiting for its reference before the reference is taken "
                                       "as silence, ms")
    stats_interval_ms: int = env_field("AEC_STATS_INTERVAL_MS", 500, parse_int(min_value=100, max_value=60_000),
                                       "audio per aec_stats report (ERLE, delay, CPU), ms")
    asr_audio: str = env_field("AEC_ASR_AUDIO", "linear", parse_choice("linear", "suppressed"),
                               "audio the ASR transcribes: linear (echo removed by a linear filter, the user kept "
                               "whole in double talk; needs pyaec) or suppressed (AEC3's output, as the VAD hears it)")
    linear_filter_ms: int = env_field("AEC_LINEAR_FILTER_MS", 128, parse_int(min_value=16, max_value=500),
                                      "echo path length the linear filter models, ms")
    echo_tail_ms: int = env_field("AEC_ECHO_TAIL_MS", 300, parse_int(min_value=0, max_value=2000),
                                  "how long the assistant's echo may still be heard after its audio stops, ms "
                                  "(the measured echo delay is added); blocks until then are marked echo_active")

    @property
    def files(self) -> bool:
        """AUDIO_INPUT or AUDIO_OUTPUT names a file."""
        return bool(self.audio_input or self.audio_output)


CONTRACT = NodeContract(
    path="dora-voice-aec",
    inputs={
        Output.AUDIO: "mic/audio (or room/audio): AudioChunk, 16 kHz float32",
        Output.REFERENCE: "speaker/reference: ReferenceFrame, what the speaker plays",
    },
    outputs=(Output.AUDIO, Output.ASR_AUDIO, Output.TIMING),
    config=AecConfig,
)


class _Window:
    """One aec_stats window: powers over the reference-active frames, CPU."""

    def __init__(self, t_ns: int, cpu_s: float, wall_ns: int, canceller_s: float = 0.0) -> None:
        self.t_ns = t_ns
        self.cpu_s = cpu_s
        self.canceller_s = canceller_s
        self.wall_ns = wall_ns
        self.samples = 0
        self.active = 0
        self.mic_power = 0.0
        self.out_power = 0.0


class AecCore(NodeCore):
    """Aligns the reference with the mic, runs the echo canceller in 10 ms frames, measures ERLE and delay.

    Args:
        config: aec settings.
        canceller: the echo canceller (:func:`~dora_voice.echo.load_canceller`); ``None`` passes audio through.
        clock_ns: wall clock (for the CPU share).
        cpu_clock: process CPU time in s (``time.process_time``): the node's whole share.
        thread_clock: this thread's CPU time in s (``time.thread_time``): the cancellers' own share. Both libraries
            compute in the calling thread; the process clock would also count what the node's other threads (dora's
            receive and send threads) did during each call.

    Counters: ``frames`` (10 ms frames processed), ``missing_reference_ms``, ``realignments``,
    ``delay_ms`` (latest accepted estimate, or None).
    """

    node_id = "aec"

    def __init__(self, config: AecConfig, canceller: EchoCanceller | None, *,
                 linear: EchoCanceller | None = None,
                 clock_ns: Callable[[], int] = time.time_ns,
                 cpu_clock: Callable[[], float] = time.process_time,
                 thread_clock: Callable[[], float] = time.thread_time) -> None:
        super().__init__(clock_ns)
        self.config = config
        self.canceller = canceller
        self.linear = linear
        self._last_active_end: int | None = None  # mic sample index just after the last audible reference frame
        self.cpu_clock = cpu_clock
        self.thread_clock = thread_clock
        self.reference = ReferenceBuffer(RATE_HZ, keep_ms=4000)
        self._held: deque[AudioChunk] = deque()
        self._lag: int | None = None
        self._reference_closed = False
        self._audio_closed = False
        self._mic = np.zeros(0, dtype=np.float32)  # not yet processed (less than a frame)
        self._ref = np.zeros(0, dtype=np.float32)
        self._offset = 0  # mic sample index of _mic[0]
        self._clock: tuple[int, int] | None = None  # (sample index, t_ns) of the newest chunk
        self._history_mic: deque[np.ndarray] = deque()
        self._history_ref: deque[np.ndarray] = deque()
        self._history_len = 0
        self._window: _Window | None = None
        self.frames = 0
        self.missing_reference_ms = 0.0
        self.realignments = 0
        self.delay_ms: float | None = None
        self.process_s = 0.0
        self._next_estimate = 0  # frame count at which the next delay estimate may be made

    # -- inputs ---------------------------------------------------------------------------------------------------
    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id == Output.AUDIO:
            chunk = AudioChunk.decode(value, metadata)
            if chunk.sample_rate != RATE_HZ:
                raise SchemaError(f"audio must be {RATE_HZ} Hz, got {chunk.sample_rate} Hz (the mic resamples)")
            self.session_id = chunk.session_id or self.session_id
            if self.canceller is None:
                return [emit(Output.AUDIO, chunk)]
            self._held.append(chunk)
            return self._release()
        if input_id == Output.REFERENCE:
            frame = ReferenceFrame.decode(value, metadata)
            if frame.sample_rate != RATE_HZ:
                raise SchemaError(f"reference must be {RATE_HZ} Hz, got {frame.sample_rate} Hz")
            if self.canceller is None:
                return []
            self.reference.add(frame.samples, frame.sample_offset, frame.t_ns)
            return self._release()
        return super().on_input(input_id, value, metadata)

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        if input_id == Output.REFERENCE:
            self._reference_closed = True
        elif input_id == Output.AUDIO:
            self._audio_closed = True
        return self._release()

    def finished(self) -> bool:
        # The reference comes from downstream (a feedback edge): finish when the mic's stream has ended.
        return self._audio_closed and not self._held

    def on_end(self) -> Iterable[Emit]:
        self._audio_closed = True
        out = self._release()
        out += self._flush()
        if self.canceller is not None:
            audio_s = self.frames * AEC_FRAME_MS / 1000
            logger.info("aec: %.1f s processed, echo canceller %.2f%% of a core, delay %s, %.0f ms without reference, "
                        "%d re-alignments, %d reference gaps", audio_s,
                        100 * self.process_s / audio_s if audio_s else 0.0,
                        "unknown" if self.delay_ms is None else f"{self.delay_ms:.1f} ms",
                        self.missing_reference_ms, self.realignments, self.reference.gaps)
        return out

    # -- alignment ------------------------------------------------------------------------------------------------
    def _align(self, chunk: AudioChunk) -> int | None:
        """Reference index minus mic index of the same instant (None before any reference)."""
        if self.reference.anchor_ns is None:
            return None
        lag = self.reference.index_at(chunk.t_ns) - chunk.sample_offset
        if self._lag is None:
            self._lag = lag
            logger.info("aec: mic sample k is reference sample k%+d", lag)
        elif abs(lag - self._lag) > REALIGN_MS * RATE_HZ / 1000:
            logger.info("aec: speaker clock moved: reference re-aligned by %+.1f ms", (lag - self._lag) * 1000 / RATE_HZ)
            self._lag = lag
            self.realignments += 1
        return self._lag

    def _release(self) -> list[Emit]:
        out: list[Emit] = []
        while self._held:
            chunk = self._held[0]
            lag = self._align(chunk)
            n = chunk.samples.shape[0]
            start = None if lag is None else chunk.sample_offset + lag
            waiting = start is None or start + n > self.reference.end
            held_ms = sum(c.samples.shape[0] for c in self._held) * 1000 / RATE_HZ
            if waiting and not (self._reference_closed or self._audio_closed
                                or held_ms > self.config.reference_wait_ms):
                break
            self._held.popleft()
            if start is None:
                ref = np.zeros(n, dtype=np.float32)
                missing = n
            else:
                ref = self.reference.read(start, n)
                missing = max(0, start + n - max(self.reference.end, start))
            if missing and self.reference.frames:
                self.missing_reference_ms += missing * 1000 / RATE_HZ
                if not (self._reference_closed or self._audio_closed):
                    logger.warning("aec: %.0f ms of mic audio without its reference (the speaker's reference is "
                                   "late); cancelled against silence", missing * 1000 / RATE_HZ)
            out += self._process(chunk, ref)
        return out

    # -- processing -----------------------------------------------------------------------------------------------
    def _t_ns(self, index: int) -> int:
        assert self._clock is not None
        base, t_ns = self._clock
        return t_ns + (index - base) * 1_000_000_000 // RATE_HZ

    def _process(self, chunk: AudioChunk, ref: np.ndarray) -> list[Emit]:
        expected = self._offset + self._mic.shape[0]
        if self._clock is not None and chunk.sample_offset != expected:
            logger.warning("aec: audio gap or overlap: expected sample %d, got %d", expected, chunk.sample_offset)
            out = self._flush()
            self._offset = chunk.sample_offset
        else:
            out = []
            if self._clock is None:
                self._offset = chunk.sample_offset
        self._clock = (chunk.sample_offset, chunk.t_ns)
        self._mic = np.concatenate([self._mic, chunk.samples])
        self._ref = np.concatenate([self._ref, ref])
        n = (self._mic.shape[0] // FRAME) * FRAME
        if n:
            out += self._cancel(n)
        return out

    def _flush(self) -> list[Emit]:
        """Process what is left, padded to a whole frame with silence (the padding is not sent)."""
        n = self._mic.shape[0]
        if not n or self.canceller is None:
            return []
        pad = -n % FRAME
        self._mic = np.concatenate([self._mic, np.zeros(pad, dtype=np.float32)])
        self._ref = np.concatenate([self._ref, np.zeros(pad, dtype=np.float32)])
        return self._cancel(n + pad, keep=n)

    def _cancel(self, n: int, keep: int | None = None) -> list[Emit]:
        assert self.canceller is not None
        mic, ref = self._mic[:n], self._ref[:n]
        self._mic, self._ref = self._mic[n:], self._ref[n:]
        start = self._offset
        self._offset += n
        before = self.thread_clock()
        cleaned = np.asarray(self.canceller.process(mic, ref), dtype=np.float32)
        linear = None if self.linear is None else np.asarray(self.linear.process(mic, ref), dtype=np.float32)
        self.process_s += self.thread_clock() - before
        self.frames += n // FRAME
        frames = mic.shape[0] // FRAME
        active = np.mean(ref[: frames * FRAME].astype(np.float64).reshape(frames, FRAME) ** 2, axis=1) \
            > 10 ** (REFERENCE_ACTIVE_DBFS / 10)  # per 10 ms frame: the assistant audible
        out = self._measure(start, mic, ref, cleaned, active)
        keep = n if keep is None else keep
        np.clip(cleaned, -1.0, 1.0, out=cleaned)
        echo_active = self._echo_active(start, active)
        blocks = [emit(Output.AUDIO, AudioChunk(samples=cleaned[:keep], sample_rate=RATE_HZ, sample_offset=start,
                                                t_ns=self._t_ns(start), session_id=self.session_id,
                                                echo_active=echo_active))]
        if linear is not None:  # first, so the VAD holds it before it decides on the block
            blocks.insert(0, emit(Output.ASR_AUDIO, AudioChunk(samples=linear[:keep], sample_rate=RATE_HZ,
                                                               sample_offset=start, t_ns=self._t_ns(start),
                                                               session_id=self.session_id, echo_active=echo_active)))
        return blocks + out

    def _echo_active(self, start: int, active: np.ndarray) -> bool:
        """True when the assistant's audio, or its echo (the measured delay plus ``AEC_ECHO_TAIL_MS``), reaches into
        the block of mic samples from ``start`` (``active``: per 10 ms frame, the reference audible): AEC3 may then
        suppress the user there."""
        audible = np.flatnonzero(active)
        if audible.size:
            self._last_active_end = start + int(audible[-1] + 1) * FRAME
        if self._last_active_end is None:
            return False
        hold = int((self.config.echo_tail_ms + (self.delay_ms or 0.0)) * RATE_HZ / 1000)
        return start < self._last_active_end + hold

    # -- measurements ---------------------------------------------------------------------------------------------
    def _measure(self, start: int, mic: np.ndarray, ref: np.ndarray, cleaned: np.ndarray,
                 active: np.ndarray) -> list[Emit]:
        frames = mic.shape[0] // FRAME
        m = mic[: frames * FRAME].astype(np.float64).reshape(frames, FRAME)
        c = cleaned[: frames * FRAME].astype(np.float64).reshape(frames, FRAME)
        if self._window is None:
            self._window = _Window(self._t_ns(start), self.cpu_clock(), self.clock_ns(), self.process_s)
        w = self._window
        w.samples += mic.shape[0]
        w.active += int(active.sum()) * FRAME
        w.mic_power += float(np.sum(m[active] ** 2))
        w.out_power += float(np.sum(c[active] ** 2))
        self._history_mic.append(mic)
        self._history_ref.append(ref)
        self._history_len += mic.shape[0]
        while self._history_len - self._history_mic[0].shape[0] >= DELAY_WINDOW_S * RATE_HZ:
            self._history_len -= self._history_mic.popleft().shape[0]
            self._history_ref.popleft()
        if w.samples * 1000 < self.config.stats_interval_ms * RATE_HZ:
            return []
        self._window = None
        return [self._report(w)]

    def _estimate_delay(self) -> None:
        if self._history_len < DELAY_WINDOW_S * RATE_HZ or self.frames < self._next_estimate:
            return
        ref = np.concatenate(self._history_ref)
        if float(np.mean(ref * ref)) < 10 ** (REFERENCE_ACTIVE_DBFS / 10):
            return
        self._next_estimate = self.frames + int(DELAY_WINDOW_S * 1000 / AEC_FRAME_MS)
        delay_ms, confidence = estimate_delay(np.concatenate(self._history_mic), ref, RATE_HZ)
        if confidence < DELAY_MIN_CONFIDENCE:
            return
        if self.delay_ms is None or abs(delay_ms - self.delay_ms) > 5.0:
            logger.info("aec: echo delay %.1f ms behind the time-aligned reference (confidence %.0f)", delay_ms,
                        confidence)
        self.delay_ms = delay_ms

    def _report(self, w: _Window) -> Emit:
        self._estimate_delay()
        wall_s = (self.clock_ns() - w.wall_ns) / 1e9
        fields: dict[str, Any] = {
            Key.DURATION_MS: w.samples * 1000 / RATE_HZ, Key.AUDIO_MS: w.active * 1000 / RATE_HZ,
            Key.DELAY_MS: -1.0 if self.delay_ms is None else float(self.delay_ms),
            Key.CPU_PERCENT: 100 * (self.cpu_clock() - w.cpu_s) / wall_s if wall_s > 0 else 0.0,
            Key.CANCELLER_CPU_PERCENT: 100 * (self.process_s - w.canceller_s) / wall_s if wall_s > 0 else 0.0,
        }
        if w.active * 10 >= RATE_HZ and w.out_power > 0:  # at least 100 ms of reference-active audio
            fields[Key.ERLE_DB] = 10 * float(np.log10(w.mic_power / w.out_power)) if w.mic_power > 0 else 0.0
        return self.timing(TimingKind.AEC_STATS, -1, w.t_ns, **fields)


def build_core(config: AecConfig, reference_wired: bool, asr_audio_wired: bool = True) -> AecCore:
    """The core with the canceller ``ECHO_GUARD`` asks for, and the linear one for ``asr_audio`` when that output is
    wired and ``AEC_ASR_AUDIO=linear``.

    Raises:
        SystemExit: ``ECHO_GUARD=aec`` without pywebrtc-audio, or without the ``reference`` input wired;
            ``AEC_ASR_AUDIO=linear`` without pyaec.
    """
    guard = resolve_echo_guard(config.echo_guard, files=config.files,
                               aec_ready=reference_wired and aec_library_available())
    if guard is not EchoGuard.AEC:
        logger.info("aec: ECHO_GUARD=%s resolves to %s: audio passes through unchanged", config.echo_guard,
                    guard.value)
        return AecCore(config, None)
    if not reference_wired:
        raise SystemExit("dora-voice-aec: ECHO_GUARD=aec needs the speaker's reference: wire "
                         "`reference: {source: speaker/reference, ...}` into the aec node")
    try:
        canceller = load_canceller(RATE_HZ, noise_suppression=config.noise_suppression,
                                   stream_delay_ms=config.stream_delay_ms)
    except ImportError as exc:
        raise SystemExit(f"dora-voice-aec: ECHO_GUARD=aec: {exc}") from None
    linear = None
    if config.asr_audio == "linear" and asr_audio_wired:
        try:
            linear = LinearEchoCanceller(RATE_HZ, filter_ms=config.linear_filter_ms)
        except ImportError as exc:
            raise SystemExit(f"dora-voice-aec: AEC_ASR_AUDIO=linear: {exc}") from None
    logger.info("aec: WebRTC AEC3 on, noise suppression %s; the ASR hears %s", "on" if config.noise_suppression
                else "off", f"a linear canceller's output ({config.linear_filter_ms} ms filter)" if linear is not None
                else "AEC3's output")
    return AecCore(config, canceller, linear=linear)


def main(argv: list[str] | None = None) -> None:
    """Console script ``dora-voice-aec``: ``--help``, else run as a dora node."""
    from dora import Node  # noqa: PLC0415 - only the node process needs dora

    from dora_voice.nodes import node_cli
    from dora_voice.runtime import declared_inputs, declared_outputs, run_node

    config, _ = node_cli(CONTRACT, __doc__, argv)
    node = Node()
    wired, outputs = declared_inputs(node), declared_outputs(node)
    run_node(node, build_core(config, reference_wired=wired is None or Output.REFERENCE in wired,
                              asr_audio_wired=outputs is None or Output.ASR_AUDIO in outputs))


if __name__ == "__main__":
    main(sys.argv[1:])
