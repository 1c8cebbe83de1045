"""mic node: the audio source of the pipeline, from a WAV file replayed in real time or from an input device.

Outputs (no inputs):
    ``audio``: :class:`~dora_voice.schema.AudioChunk` blocks of ``MIC_BLOCK_MS`` at 16 kHz, ``t_ns`` = wall clock
        of the block's first sample.
    ``stream_started``: one :class:`~dora_voice.schema.StreamStarted`, sent before the first block; the speaker's
        file sink puts its output sample 0 there.
    ``timing``: ``stream_started``.

File mode (``AUDIO_INPUT=question.wav``): the file is read, mixed to mono and resampled to 16 kHz with soxr, then
sent block by block on an absolute schedule: block ``k`` (samples ``[a, b)``) is stamped
``stream_start_ns + a / 16000 s`` and sent once ``stream_start_ns + b / 16000 s`` has passed, as a real microphone
would deliver it. The schedule never drifts (each send time is computed from the start, not from the previous
send). ``MIC_TRAILING_SILENCE_MS`` of silence follows so that the VAD closes the last turn; then the node exits.

Device mode (``AUDIO_INPUT`` empty): a sounddevice ``InputStream`` (mono float32, the device's native rate) read
with blocking ``read`` (measured on PulseAudio: more regular than callbacks), resampled to 16 kHz with a streaming soxr
resampler, until the dataflow stops. Timestamps: see :class:`DeviceCapture`.

``dora-voice-mic --list-devices`` prints the audio devices; ``--help`` lists the env vars.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from dora_voice import audio
from dora_voice.config import (
    env_field, parse_bool, parse_int, parse_optional_path, parse_str,
)
from dora_voice.contracts import NodeContract
from dora_voice.nodes import fatal, node_cli
from dora_voice.runtime import Emit, NodeCore, emit, run_node
from dora_voice.schema import PIPELINE_SAMPLE_RATE_HZ, AudioChunk, Output, StreamStarted, TimingKind

logger = logging.getLogger(__name__)

RATE_HZ = PIPELINE_SAMPLE_RATE_HZ
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class MicConfig:
    """mic settings, from the environment (see :func:`dora_voice.config.load_config`)."""

    audio_input: Path | None = env_field(
        "AUDIO_INPUT", None, parse_optional_path,
        "WAV (or any libsndfile format) to replay in real time instead of a device; empty = use AUDIO_INPUT_DEVICE")
    audio_input_device: str = env_field(
        "AUDIO_INPUT_DEVICE", "", parse_str,
        "sounddevice input device, index or name (substring); empty = the system default input")
    block_ms: int = env_field(
        "MIC_BLOCK_MS", 32, parse_int(min_value=1, max_value=1000),
        "block length in ms (32 ms = 512 samples at 16 kHz, Silero's frame)")
    trailing_silence_ms: int = env_field(
        "MIC_TRAILING_SILENCE_MS", 1500, parse_int(min_value=0, max_value=600_000),
        "silence in ms appended after a file so the VAD closes the turn")
    session_id: str = env_field(
        "SESSION_ID", "", parse_str, "conversation id stamped on every message; empty = a random 12-hex-digit id")
    realtime: bool = env_field(
        "MIC_REALTIME", True, parse_bool,
        "pace a file at real time (false = as fast as possible; only for tests of the pure logic)")

    def __post_init__(self) -> None:
        if not self.session_id:
            object.__setattr__(self, "session_id", uuid.uuid4().hex[:12])

    @property
    def block_samples(self) -> int:
        """Samples per block at the pipeline rate (16 kHz)."""
        return max(1, round(self.block_ms * RATE_HZ / 1000))


CONTRACT = NodeContract(
    path="dora-voice-mic",
    inputs={},
    outputs=(Output.AUDIO, Output.STREAM_STARTED, Output.TIMING),
    config=MicConfig,
)


def _ns_at(stream_start_ns: int, sample_offset: int, rate_hz: int = RATE_HZ) -> int:
    """Wall clock of sample ``sample_offset`` of a stream whose sample 0 is at ``stream_start_ns``."""
    return stream_start_ns + sample_offset * _NS_PER_S // rate_hz


class FileReplay(NodeCore):
    """Replays a 16 kHz signal as real-time-paced :class:`AudioChunk` blocks (the pure part of file mode).

    Args:
        samples: shape ``(n,)`` float32 at 16 kHz, mono.
        block_samples: samples per block; the last block of the file may be shorter.
        trailing_silence_samples: zeros sent after the file, in blocks of ``block_samples``.
        session_id: stamped on every message.
        realtime: wait for each block's real-time arrival instant; ``False`` sends as fast as the consumer pulls.
        clock_ns: wall clock (``time.time_ns``); tests inject a fake.
        sleep: ``sleep(seconds)``; tests inject one that advances the fake clock.

    Iterating :meth:`run` yields the outputs in order and sleeps in between. As a node core (a source: no inputs)
    it is :meth:`busy` until the last block is out or the dataflow stops it, and each :meth:`step` produces the next
    output.
    """

    node_id = "mic"

    def __init__(self, samples: np.ndarray, *, block_samples: int, trailing_silence_samples: int, session_id: str,
                 realtime: bool = True, clock_ns: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(clock_ns)
        if block_samples < 1:
            raise ValueError(f"block_samples must be >= 1, got {block_samples}")
        self.samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        self.block_samples = int(block_samples)
        self.trailing_silence_samples = max(0, int(trailing_silence_samples))
        self.session_id = session_id
        self.realtime = realtime
        self.sleep = sleep
        self.stream_start_ns: int | None = None
        self.blocks_sent = 0
        self.max_lateness_ms = 0.0
        self.done = False
        self.stopped = False
        self._outputs: Iterator[Emit] | None = None

    @property
    def total_samples(self) -> int:
        """File samples plus trailing silence."""
        return self.samples.shape[0] + self.trailing_silence_samples

    def run(self) -> Iterator[Emit]:
        """Yield ``stream_started`` (output and timing), then every block at its real-time instant.

        The block of samples ``[a, b)`` is yielded no earlier than ``stream_start + b / 16000 s``; lateness (a slow
        consumer) is absorbed by the absolute schedule and reported as ``max_lateness_ms``.
        """
        start = self.clock_ns()
        self.stream_start_ns = start
        yield emit(Output.STREAM_STARTED, StreamStarted(stream_start_ns=start, sample_rate=RATE_HZ, source="file",
                                                        session_id=self.session_id))
        yield self.timing(TimingKind.STREAM_STARTED, -1, start)
        n_file = self.samples.shape[0]
        silence = np.zeros(self.block_samples, dtype=np.float32)
        offset = 0
        while offset < self.total_samples:
            end = min(offset + self.block_samples, self.total_samples)
            if end <= n_file:
                block = self.samples[offset:end]
            elif offset >= n_file:
                block = silence[: end - offset]
            else:  # the block where the file ends and the silence begins
                block = np.concatenate([self.samples[offset:], silence[: end - n_file]])
            if self.realtime:
                due = _ns_at(start, end)
                now = self.clock_ns()
                if now < due:
                    self.sleep((due - now) / _NS_PER_S)
                else:
                    self.max_lateness_ms = max(self.max_lateness_ms, (now - due) / 1e6)
            yield emit(Output.AUDIO, AudioChunk(samples=block, sample_rate=RATE_HZ, sample_offset=offset,
                                                t_ns=_ns_at(start, offset), session_id=self.session_id))
            self.blocks_sent += 1
            offset = end
        logger.info("mic: file replay done: %d blocks, %.2f s (%.2f s trailing silence), max lateness %.1f ms",
                    self.blocks_sent, self.total_samples / RATE_HZ, self.trailing_silence_samples / RATE_HZ,
                    self.max_lateness_ms)

    # -- the node core (runtime.run_node) -------------------------------------------------------------------------
    def busy(self) -> bool:
        return not (self.done or self.stopped)

    def step(self) -> list[Emit]:
        """The next output of :meth:`run` (after waiting for its real-time instant)."""
        if self._outputs is None:
            self._outputs = self.run()
        try:
            return [next(self._outputs)]
        except StopIteration:
            self.done = True
            return []

    def finished(self) -> bool:
        return self.done or self.stopped

    def on_stop(self) -> list[Emit]:
        if not self.done:
            logger.info("mic: stop requested after %d blocks", self.blocks_sent)
        self.stopped = True
        return []


def check_input_samples(path: Path, samples: np.ndarray, rate: int) -> np.ndarray:
    """Refuse or repair an input file's samples, saying what was wrong.

    * no samples (a header without data): ``ValueError``;
    * NaN or infinite samples: ``ValueError``;
    * a truncated WAV (its data chunk shorter than its header says): a warning naming both lengths; what is there
      is replayed;
    * float samples outside [-1, 1] (the VAD and Whisper expect full scale 1.0): the signal is scaled so its peak
      is 1.0, with a warning naming the peak. Scaling, not clipping: the waveform keeps its shape.

    Returns:
        ``samples`` (scaled when needed), shape ``(n,)`` float32.

    Raises:
        ValueError: no samples, or non-finite samples; the message names the file and the problem.
    """
    if samples.shape[0] == 0:
        raise ValueError(f"{path} holds no audio samples (a header without data): record or export it again")
    if not np.isfinite(samples).all():
        raise ValueError(f"{path} has NaN or infinite samples: export it again (16-bit PCM is safest)")
    cut = audio.wav_truncation(path)
    if cut is not None:
        declared, present = cut
        logger.warning("mic: AUDIO_INPUT %s is truncated: its header announces %d bytes of audio, the file holds %d "
                       "(%.0f %%, %.2f s); replaying what is there", path, declared, present, 100 * present / declared,
                       samples.shape[0] / rate)
    peak = float(np.max(np.abs(samples)))
    if peak > 1.0:
        logger.warning("mic: AUDIO_INPUT %s has float samples up to %.2f, outside [-1, 1]: scaled by %.3f so the "
                       "peak is 1.0", path, peak, 1.0 / peak)
        samples = (samples / peak).astype(np.float32)
    return samples


def load_file_replay(config: MicConfig, **kwargs: Any) -> FileReplay:
    """Read ``config.audio_input``, mix to mono, resample to 16 kHz and build its :class:`FileReplay`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, or holds no usable samples (see :func:`check_input_samples`).
    """
    assert config.audio_input is not None
    samples, rate = audio.read_wav_mono(config.audio_input)
    samples = check_input_samples(config.audio_input, samples, rate)
    if rate != RATE_HZ:
        samples = audio.resample(samples, rate, RATE_HZ)
    logger.info("mic: replaying %s (%d Hz -> %d Hz, %.2f s)", config.audio_input, rate, RATE_HZ,
                samples.shape[0] / RATE_HZ)
    return FileReplay(samples, block_samples=config.block_samples,
                      trailing_silence_samples=round(config.trailing_silence_ms * RATE_HZ / 1000),
                      session_id=config.session_id, realtime=config.realtime, **kwargs)


class DeviceCapture(NodeCore):
    """Reads blocks from an input stream, resamples them to 16 kHz and stamps them (the core of device mode).

    Args:
        stream: a started sounddevice ``InputStream`` (mono float32) or a fake with ``read(frames) -> (data,
            overflowed)``, ``read_available`` (frames) and ``samplerate`` (Hz).
        block_ms: output block length, ms.
        session_id: stamped on every message.
        clock_ns: wall clock; tests inject a fake.

    Timestamps: blocking reads carry no ADC time, so each read gives an estimate of when its first sample was
    captured, ``now - (frames just read + frames still buffered) / rate``; it is never early, only late by
    scheduling delay. The stream's sample 0 is placed at the smallest estimate seen (minus the block's position),
    and every output sample ``k`` is stamped ``anchor + k / 16000 s``: a sample clock, free of read jitter. If all
    estimates for ``REANCHOR_BLOCKS`` blocks in a row are later than the clock by more than ``REANCHOR_MS`` (the
    device clock runs slow, or an overflow lost samples), the anchor moves to the earliest of them.
    Blocking reads give no ADC time (PortAudio only passes it to callbacks), and the stream's reported input
    latency is not subtracted: on the PulseAudio null sink (loopback through its monitor) subtracting it (64 ms)
    put sounds ~50 ms before the speaker played them; without it they land ~12 ms after the speaker's
    ``playback_started`` estimate.
    """

    node_id = "mic"
    REANCHOR_MS = 20.0
    REANCHOR_BLOCKS = 16

    def __init__(self, stream: Any, *, block_ms: int, session_id: str,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(clock_ns)
        self.stream = stream
        self.session_id = session_id
        self.native_rate = int(round(stream.samplerate))
        self.native_block = max(1, round(block_ms * self.native_rate / 1000))
        self.block_samples = max(1, round(block_ms * RATE_HZ / 1000))
        self._resampler = audio.resample_stream(self.native_rate, RATE_HZ) if self.native_rate != RATE_HZ else None
        self._pending = np.zeros(self.block_samples * 4, dtype=np.float32)
        self._pending_len = 0
        self.native_frames = 0
        self.sample_offset = 0
        self.anchor_ns: int | None = None
        self._late_run_min: int | None = None
        self._late_run = 0
        self.overflows = 0
        self.reanchors = 0
        self._started = False
        self.stopped = False

    def _update_anchor(self, estimate_ns: int) -> None:
        if self.anchor_ns is None or estimate_ns < self.anchor_ns:
            self.anchor_ns = estimate_ns
            self._late_run, self._late_run_min = 0, None
            return
        if estimate_ns - self.anchor_ns > self.REANCHOR_MS * 1e6:
            self._late_run += 1
            self._late_run_min = estimate_ns if self._late_run_min is None else min(self._late_run_min, estimate_ns)
            if self._late_run >= self.REANCHOR_BLOCKS:
                logger.info("mic: input clock re-anchored by %+.1f ms", (self._late_run_min - self.anchor_ns) / 1e6)
                self.anchor_ns = self._late_run_min
                self.reanchors += 1
                self._late_run, self._late_run_min = 0, None
        else:
            self._late_run, self._late_run_min = 0, None

    def read_block(self) -> list[Emit]:
        """Read one native block (blocking) and return the outputs it completes.

        Returns:
            ``stream_started`` (output and timing) before the first chunk, then zero or more
            :class:`AudioChunk` of exactly ``block_samples`` samples (the resampler's delay means the first
            reads may complete none).
        """
        data, overflowed = self.stream.read(self.native_block)
        now = self.clock_ns()
        if overflowed:
            self.overflows += 1
            logger.warning("mic: input overflow (%d so far): samples were lost", self.overflows)
        frames = data.shape[0]
        block = data[:, 0] if data.ndim == 2 else data
        buffered = int(getattr(self.stream, "read_available", 0) or 0)
        first_sample_ns = now - (frames + buffered) * _NS_PER_S // self.native_rate
        self._update_anchor(first_sample_ns - self.native_frames * _NS_PER_S // self.native_rate)
        self.native_frames += frames
        out: list[Emit] = []
        if not self._started:
            self._started = True
            out.append(emit(Output.STREAM_STARTED, StreamStarted(stream_start_ns=self.anchor_ns, sample_rate=RATE_HZ,
                                                                 source="device", session_id=self.session_id)))
            out.append(self.timing(TimingKind.STREAM_STARTED, -1, self.anchor_ns))
        if self._resampler is not None:
            block = self._resampler.resample_chunk(np.ascontiguousarray(block, dtype=np.float32))
        self._append(block)
        n = self.block_samples
        while self._pending_len >= n:
            chunk = self._pending[:n].copy()
            self._pending_len -= n
            self._pending[: self._pending_len] = self._pending[n: n + self._pending_len]
            out.append(emit(Output.AUDIO, AudioChunk(
                samples=chunk, sample_rate=RATE_HZ, sample_offset=self.sample_offset,
                t_ns=_ns_at(self.anchor_ns, self.sample_offset), session_id=self.session_id)))
            self.sample_offset += n
        return out

    # -- the node core (runtime.run_node): capture until the dataflow stops ----------------------------------------
    def busy(self) -> bool:
        return not self.stopped

    def step(self) -> list[Emit]:
        """One blocking read (:meth:`read_block`)."""
        return self.read_block()

    def finished(self) -> bool:
        return self.stopped

    def on_stop(self) -> list[Emit]:
        self.stopped = True
        return []

    def _append(self, samples: np.ndarray) -> None:
        n = samples.shape[0]
        if self._pending_len + n > self._pending.shape[0]:
            grown = np.zeros(2 * (self._pending_len + n), dtype=np.float32)
            grown[: self._pending_len] = self._pending[: self._pending_len]
            self._pending = grown
        self._pending[self._pending_len: self._pending_len + n] = samples
        self._pending_len += n


def open_input_stream(config: MicConfig) -> Any:
    """Open and start a mono float32 sounddevice ``InputStream`` at the device's native rate.

    Raises:
        AudioDeviceError: PortAudio is missing, there is no input device, or it cannot be opened. The message says
            how to list devices and how to use a file instead.
    """
    try:
        device, info = audio.find_device(config.audio_input_device, "input")
        sd = audio.import_sounddevice()
        rate = int(info["default_samplerate"])
        block = max(1, round(config.block_ms * rate / 1000))
        try:
            stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32", device=device, blocksize=block,
                                    latency="low")
            stream.start()
        except sd.PortAudioError as exc:
            raise audio.AudioDeviceError(f"cannot open input device {info.get('name')!r}: {exc}") from None
    except audio.AudioDeviceError as exc:
        raise audio.AudioDeviceError(
            f"{exc}. List the devices with `python -m sounddevice` (or `dora-voice-mic --list-devices`) and set "
            "AUDIO_INPUT_DEVICE, or replay a recording with AUDIO_INPUT=file.wav."
        ) from None
    logger.info("mic: capturing from %r at %d Hz (latency %.1f ms), resampled to %d Hz", info.get("name"), rate,
                stream.latency * 1000, RATE_HZ)
    return stream


# ----------------------------------------------------------------------------------------------------------------
# dora adapter


def main(argv: list[str] | None = None) -> None:
    """Console script ``dora-voice-mic``: ``--list-devices`` / ``--help``, else run as a dora node."""
    config, _ = node_cli(CONTRACT, __doc__, argv, list_devices=True)
    from dora import Node  # noqa: PLC0415 - only the node process needs dora

    if config.audio_input is not None:
        try:
            replay = load_file_replay(config)
        except (FileNotFoundError, ValueError) as exc:
            fatal(CONTRACT.path, f"AUDIO_INPUT: {exc}")
        run_node(Node(), replay)
        return

    node = Node()
    try:
        stream = open_input_stream(config)
    except audio.AudioDeviceError as exc:
        fatal(CONTRACT.path, str(exc))
    capture = DeviceCapture(stream, block_ms=config.block_ms, session_id=config.session_id)
    try:
        run_node(node, capture)
    finally:
        stream.stop()
        stream.close()
        logger.info("mic: device capture stopped after %.1f s (%d overflows, %d re-anchors)",
                    capture.sample_offset / RATE_HZ, capture.overflows, capture.reanchors)


if __name__ == "__main__":
    main(sys.argv[1:])
