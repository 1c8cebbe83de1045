"""room node: a simulated acoustic path for file runs, so echo cancellation and barge-in can be tested without a
loudspeaker: the assistant's own output comes back into the microphone signal.

Inputs:
    ``audio`` (mic/audio): :class:`~dora_voice.schema.AudioChunk`, the user's recording (16 kHz).
    ``reference`` (speaker/reference): :class:`~dora_voice.schema.ReferenceFrame`, what the speaker plays.

Outputs:
    ``audio``: the same chunks (same ``sample_offset`` and ``t_ns``) with the echo added:
    ``mic[t] + gain * (h * reference)[t - delay]`` plus optional background noise, clipped to [-1, 1].

The speaker stamps each reference frame with the instant it plays (the file sink's clock, whose origin is the mic
stream's start), so reference sample ``k`` and mic sample ``k`` are the same instant. A chunk is held until the
reference it needs has arrived (the speaker publishes it as its clock passes, a few tens of ms late); the rest of
the dataflow sees the chunk that much later, as it would see a device's input buffer. If the reference stops
coming for ``ROOM_MAX_WAIT_MS`` of mic audio, the missing part is taken as silence, counted and logged. When the
mic's stream ends the held chunks are sent and the node finishes.

Impulse response: ``ROOM_RIR`` (a WAV, any rate), or a synthetic one: a direct path followed by exponentially
decaying Gaussian noise (Polack's statistical model of late reverberation, J.-D. Polack, Acustica 1993) that
falls by 60 dB in ``ROOM_RT60_MS``, with ``ROOM_DRR_DB`` between the two; either is scaled to unit energy, so ``ROOM_ECHO_GAIN_DB`` is the echo's level
relative to the played signal.
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
from scipy.signal import fftconvolve

from dora_voice import audio
from dora_voice.config import env_field, parse_float, parse_int, parse_optional_path
from dora_voice.contracts import NodeContract
from dora_voice.echo import ReferenceBuffer
from dora_voice.runtime import Emit, NodeCore, emit
from dora_voice.schema import PIPELINE_SAMPLE_RATE_HZ, AudioChunk, Output, ReferenceFrame, SchemaError

logger = logging.getLogger(__name__)

RATE_HZ = PIPELINE_SAMPLE_RATE_HZ


@dataclass(frozen=True)
class RoomConfig:
    """room settings, from the environment (see :func:`dora_voice.config.load_config`)."""

    delay_ms: float = env_field("ROOM_ECHO_DELAY_MS", 60.0, parse_float(min_value=0.0, max_value=1000.0),
                                "delay of the echo behind the played sound, ms (sound travel + device buffers)")
    gain_db: float = env_field("ROOM_ECHO_GAIN_DB", -6.0, parse_float(min_value=-80.0, max_value=12.0),
                               "echo level relative to the played signal, dB")
    rt60_ms: float = env_field("ROOM_RT60_MS", 250.0, parse_float(min_value=0.0, max_value=2000.0),
                               "reverberation time of the synthetic impulse response (60 dB decay), ms; 0 = a "
                               "single delayed copy")
    drr_db: float = env_field("ROOM_DRR_DB", 0.0, parse_float(min_value=-20.0, max_value=40.0),
                              "direct-to-reverberant energy ratio of the synthetic impulse response, dB (a laptop's "
                              "mic near its speaker: 0 to +10; across a living room: -5 to -10)")
    rir_path: Path | None = env_field("ROOM_RIR", None, parse_optional_path,
                                      "WAV of a measured room impulse response; replaces the synthetic one")
    noise_dbfs: float = env_field("ROOM_NOISE_DBFS", -70.0, parse_float(min_value=-120.0, max_value=-20.0),
                                  "background noise level, dBFS RMS (white); -120 = none")
    seed: int = env_field("ROOM_SEED", 0, parse_int(min_value=0), "seed of the synthetic impulse response and noise")
    max_wait_ms: int = env_field("ROOM_MAX_WAIT_MS", 1000, parse_int(min_value=0, max_value=10_000),
                                 "mic audio held waiting for the reference before it is taken as silence, ms")


CONTRACT = NodeContract(
    path="dora-voice-room",
    inputs={
        Output.AUDIO: "mic/audio: AudioChunk, the user's recording at 16 kHz",
        Output.REFERENCE: "speaker/reference: ReferenceFrame, what the speaker plays",
    },
    outputs=(Output.AUDIO,),
    config=RoomConfig,
)


def synthetic_rir(rt60_ms: float, rate_hz: int = RATE_HZ, *, drr_db: float = 0.0, seed: int = 0) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then decaying noise (Polack's model).

    Args:
        rt60_ms: time for the tail to decay by 60 dB, ms; 0 gives the single tap ``[1.0]``.
        rate_hz: sample rate, Hz.
        drr_db: energy of the direct path over the energy of the tail, dB.
        seed: random seed of the tail.

    Returns:
        float32 array of ``max(1, rt60_ms * rate_hz / 1000)`` samples with unit energy (sum of squares 1) whose
        first sample is the largest (the direct path).
    """
    n = max(1, int(rt60_ms * rate_hz / 1000))
    if n == 1:
        return np.ones(1, dtype=np.float32)
    t = np.arange(n) / rate_hz
    envelope = np.exp(-3.0 * np.log(10.0) * t / (rt60_ms / 1000.0))  # -60 dB at rt60
    tail = np.random.default_rng(seed).standard_normal(n) * envelope
    tail[: max(1, rate_hz // 500)] = 0.0  # 2 ms before the first reflection
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail ** 2))).astype(np.float32)


def load_rir(config: RoomConfig) -> np.ndarray:
    """The configured impulse response at 16 kHz, unit energy.

    Raises:
        FileNotFoundError / ValueError: ``ROOM_RIR`` is missing, unreadable, or silent.
    """
    if config.rir_path is None:
        return synthetic_rir(config.rt60_ms, drr_db=config.drr_db, seed=config.seed)
    samples, rate = audio.read_wav_mono(config.rir_path)
    if rate != RATE_HZ:
        samples = audio.resample(samples, rate, RATE_HZ)
    energy = float(np.sum(samples.astype(np.float64) ** 2))
    if energy <= 0.0:
        raise ValueError(f"ROOM_RIR {config.rir_path} is silent")
    return (samples / np.sqrt(energy)).astype(np.float32)


class AcousticPath:
    """The echo at the microphone from the reference: ``gain * (h * reference)`` delayed by ``delay`` samples.

    Args:
        rir: impulse response, float32 ``(m,)``.
        delay_samples: extra delay before the impulse response, samples.
        gain: linear gain.
    """

    def __init__(self, rir: np.ndarray, delay_samples: int, gain: float) -> None:
        self.rir = np.asarray(rir, dtype=np.float32)
        self.delay = int(delay_samples)
        self.gain = float(gain)

    @property
    def lookback(self) -> int:
        """Reference samples before ``start - delay`` that the echo at ``start`` depends on."""
        return self.rir.shape[0] - 1

    def echo(self, reference: ReferenceBuffer, start: int, n: int) -> np.ndarray:
        """The echo at mic samples ``[start, start + n)``, where mic sample ``k`` is reference sample ``k``.

        Needs reference up to ``start + n - delay`` (missing samples read as silence).
        """
        first = start - self.delay - self.lookback
        x = reference.read(first, n + self.lookback)
        if not x.any():
            return np.zeros(n, dtype=np.float32)
        return (self.gain * fftconvolve(x, self.rir, mode="valid")).astype(np.float32)


class RoomCore(NodeCore):
    """Adds the echo of the reference to the mic chunks, in order, waiting for the reference they need.

    Args:
        config: room settings.
        rir: impulse response at 16 kHz (:func:`load_rir`).
        clock_ns: wall clock.

    Counters: ``chunks`` (sent), ``missing_reference_ms`` (mic audio whose echo was computed without all of its
    reference).
    """

    node_id = "room"

    def __init__(self, config: RoomConfig, rir: np.ndarray, clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(clock_ns)
        self.config = config
        self.path = AcousticPath(rir, round(config.delay_ms * RATE_HZ / 1000), 10 ** (config.gain_db / 20))
        self.reference = ReferenceBuffer(RATE_HZ, keep_ms=3000 + int(rir.shape[0] * 1000 / RATE_HZ))
        self._held: deque[AudioChunk] = deque()
        self._lag: int | None = None  # reference index - mic index of the same instant
        self._reference_closed = False
        self._audio_closed = False
        self._noise = np.random.default_rng(config.seed + 1)
        self._noise_rms = 10 ** (config.noise_dbfs / 20) if config.noise_dbfs > -120 else 0.0
        self.chunks = 0
        self.missing_reference_ms = 0.0

    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id == Output.AUDIO:
            chunk = AudioChunk.decode(value, metadata)
            if chunk.sample_rate != RATE_HZ:
                raise SchemaError(f"audio must be {RATE_HZ} Hz, got {chunk.sample_rate} Hz")
            self.session_id = chunk.session_id or self.session_id
            self._held.append(chunk)
            return self._release()
        if input_id == Output.REFERENCE:
            frame = ReferenceFrame.decode(value, metadata)
            if frame.sample_rate != RATE_HZ:
                raise SchemaError(f"reference must be {RATE_HZ} Hz, got {frame.sample_rate} Hz")
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
        logger.info("room: %d chunks sent, %.0f ms of mic audio without all of its reference, %d reference gaps",
                    self.chunks, self.missing_reference_ms, self.reference.gaps)
        return out

    def _needed_end(self, chunk: AudioChunk) -> int | None:
        """Reference index after the last sample the chunk's echo needs (None before any reference)."""
        if self._lag is None:
            if self.reference.anchor_ns is None:
                return None
            self._lag = self.reference.index_at(chunk.t_ns) - chunk.sample_offset
            logger.info("room: mic sample k is reference sample k%+d", self._lag)
        return chunk.sample_offset + self._lag + chunk.samples.shape[0] - self.path.delay

    def _release(self) -> list[Emit]:
        out: list[Emit] = []
        while self._held:
            chunk = self._held[0]
            needed = self._needed_end(chunk)
            held_ms = sum(c.samples.shape[0] for c in self._held) * 1000 / RATE_HZ
            waiting = needed is None or needed > self.reference.end
            if waiting and not (self._reference_closed or self._audio_closed
                                or held_ms > self.config.max_wait_ms):
                break
            self._held.popleft()
            n = chunk.samples.shape[0]
            if waiting:
                have = 0 if needed is None else max(0, n - (needed - self.reference.end))
                self.missing_reference_ms += (n - have) * 1000 / RATE_HZ
                if held_ms > self.config.max_wait_ms and not (self._reference_closed or self._audio_closed):
                    logger.warning("room: no reference for %.0f ms of mic audio: echo taken as silence there",
                                   held_ms)
            mixed = chunk.samples.astype(np.float32, copy=True)
            if self._lag is not None:
                mixed += self.path.echo(self.reference, chunk.sample_offset + self._lag, n)
            if self._noise_rms:
                mixed += (self._noise.standard_normal(n) * self._noise_rms).astype(np.float32)
            np.clip(mixed, -1.0, 1.0, out=mixed)
            self.chunks += 1
            out.append(emit(Output.AUDIO, AudioChunk(samples=mixed, sample_rate=RATE_HZ,
                                                     sample_offset=chunk.sample_offset, t_ns=chunk.t_ns,
                                                     session_id=chunk.session_id)))
        return out


def main(argv: list[str] | None = None) -> None:
    """Console script ``dora-voice-room``: ``--help``, else run as a dora node."""
    from dora import Node  # noqa: PLC0415 - only the node process needs dora

    from dora_voice.nodes import node_cli
    from dora_voice.runtime import run_node

    config, _ = node_cli(CONTRACT, __doc__, argv)
    try:
        rir = load_rir(config)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"dora-voice-room: ROOM_RIR: {exc}") from None
    logger.info("room: echo %.0f ms behind, %.1f dB, impulse response %.0f ms (%s), noise %.0f dBFS",
                config.delay_ms, config.gain_db, rir.shape[0] * 1000 / RATE_HZ,
                config.rir_path or f"synthetic, RT60 {config.rt60_ms:.0f} ms, DRR {config.drr_db:.0f} dB",
                config.noise_dbfs)
    run_node(Node(), RoomCore(config, rir))


if __name__ == "__main__":
    main(sys.argv[1:])
