"""Audio sinks of the speaker node: one output timeline of sample positions, to a WAV file or a sound device.

:class:`FileSink` keeps a virtual playback clock (output sample 0 is the mic stream's start, so the WAV is on the
input's clock); :class:`DeviceSink` feeds a sounddevice OutputStream from a writer thread with blocking writes of
``DEVICE_BLOCK_MS`` blocks (measured on PulseAudio: blocking writes kept real time, callbacks were less regular).
"""

from __future__ import annotations

import logging
import threading
import time
import wave
from collections import deque
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from dora_voice import audio
from dora_voice.schema import PIPELINE_SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
DEVICE_BLOCK_MS = 10
"""Device writer block (ms): the granularity of barge-in and underrun detection."""



class Sink(Protocol):
    """An output timeline of sample positions at ``rate`` Hz. Positions only grow; nothing is placed twice.

    Attributes:
        rate: output rate in Hz; 0 until :meth:`open`.
        end: position after the last placed sample.
        virtual: True when nobody listens in real time (a file): reports need not wait for the play head.
    """

    rate: int
    end: int
    virtual: bool

    def open(self, rate_hz: int) -> None:
        """Fix the output rate (Hz) and start. Called once."""

    def set_origin(self, origin_ns: int) -> bool:
        """Wall clock of position 0 (file sink); False when already set or not applicable."""

    def earliest_position(self, now_ns: int) -> int:
        """First position that has not left the speaker at ``now_ns`` (where new audio can still go)."""

    def played_position(self, now_ns: int) -> int:
        """Position the listener hears at ``now_ns``."""

    def position_to_ns(self, position: int) -> int:
        """Wall clock at which ``position`` leaves the speaker."""

    def place(self, due: int, samples: np.ndarray, now_ns: int) -> int:
        """Put ``samples`` (owned float32, shape ``(n,)``) at ``max(due, earliest_position(now_ns))``; return it."""

    def fade_tail(self, end: int, n: int) -> None:
        """Fade out the ``n`` samples before ``end``, as far as they have not left yet."""

    def truncate(self, at: int, fade: int, now_ns: int) -> tuple[int, int]:
        """Stop playback at ``at`` (raised to what has not left): fade over ``fade`` samples, drop the rest.

        Returns:
            ``(stop, end)``: the position where the fade starts and the new :attr:`end`.
        """

    def cut(self, at: int, fade: int, now_ns: int) -> tuple[int, int, np.ndarray]:
        """:meth:`truncate`, also returning what was placed from ``stop`` on, as it was before the fade: float32 of
        shape ``(old end - stop,)``, zeros where nothing was placed (to place again on a resume)."""

    def take_underflows(self) -> int:
        """Output underflows reported by the device since the last call."""

    def final_position(self, now_ns: int) -> int:
        """First position that can still change: everything before it is final (handed to the device, or passed by
        the file sink's clock), so it can be published as the echo canceller's reference."""

    def read_final(self, start: int, stop: int) -> np.ndarray:
        """The final samples ``[start, stop)`` (``stop <= final_position``), float32 of shape ``(stop - start,)``,
        zeros where nothing was placed."""

    def checkpoint(self) -> None:
        """Persist what has been placed (file sink)."""

    def close(self) -> None:
        """Let placed audio finish (device) or write it (file), then release. Idempotent."""


class FileSink:
    """Writes what the listener hears to a WAV file, on the same wall clock as the mic input, as it is heard.

    Position 0 is the origin: the mic's ``stream_start_ns``, or the first fragment's arrival when no mic stream
    exists. A fragment arriving at wall time ``t`` can start no earlier than ``(t - origin) * rate``: the virtual
    play head. The WAV (16-bit PCM) is written progressively: a writer thread appends, every
    :attr:`COMMIT_INTERVAL_S`, the audio the play head passed more than :attr:`COMMIT_LAG_S` ago (nothing placed can
    change there any more), with the header patched after each append (Python's ``wave``), so a crash, even
    ``kill -9``, leaves a valid file holding what was heard up to about half a second before. Only audio not yet
    written is kept in memory. :meth:`close` writes the rest. When nothing can change placed audio any more (no
    barge-in: :attr:`commit_placed`), it is written as soon as it is placed (less the lag), so a session that
    synthesizes faster than real time does not pile its future audio up in memory.

    The fade before an underrun gap is applied even when its samples are behind the virtual play head: this sink
    stands for a device with at least ``CROSSFADE_MS`` of output buffer (less than :attr:`COMMIT_LAG_S`).

    For the same reason audio is final (:meth:`final_position`) only ``hold_ms`` behind the virtual play head: set
    it to at least the longest fade the speaker may still apply behind the play head (``CROSSFADE_MS``).

    Args:
        path: the WAV to write.
        rate_hz: output rate (Hz), or 0 to :meth:`open` it at the first fragment's rate.
        keep_samples: also keep every placed sample in memory as float32 (:meth:`samples` then returns it exactly;
            for tests and analysis; a session grows it by about 5 MB per minute at 22 kHz).
        clock_ns: wall clock of the writer thread.
        hold_ms: how far behind the virtual play head audio becomes final, ms.
    """

    virtual = True
    COMMIT_INTERVAL_S = 0.2
    COMMIT_LAG_S = 0.3

    def __init__(self, path: str | Path, rate_hz: int = 0, *, keep_samples: bool = False,
                 clock_ns: Callable[[], int] = time.time_ns, hold_ms: float = 0.0) -> None:
        self.path = Path(path)
        self.rate = 0
        self.end = 0
        self.hold_ms = float(hold_ms)
        self.origin_ns: int | None = None
        self.keep_samples = keep_samples
        self.clock_ns = clock_ns
        self._base = 0  # position of _buf[0]: everything before it is in the file
        self._buf = np.zeros(0, dtype=np.float32)
        self._kept: list[np.ndarray] = []  # committed float samples, with keep_samples
        self._lock = threading.Lock()
        self._wav: wave.Wave_write | None = None
        self._file: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self.write_error: OSError | None = None
        self.commit_placed = False
        if rate_hz:
            self.open(rate_hz)

    def open(self, rate_hz: int) -> None:
        self.rate = int(rate_hz)
        self._buf = np.zeros(self.rate * 30, dtype=np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(self.rate)
        self._wav.writeframes(b"")  # the header: a valid, empty WAV from now on
        self._file.flush()
        self._thread = threading.Thread(target=self._writer, name="wav-writer", daemon=True)
        self._thread.start()

    def set_origin(self, origin_ns: int) -> bool:
        if self.origin_ns is not None:
            return False
        self.origin_ns = int(origin_ns)
        return True

    def earliest_position(self, now_ns: int) -> int:
        return max(0, (now_ns - (self.origin_ns or 0)) * self.rate // _NS_PER_S)

    played_position = earliest_position

    def position_to_ns(self, position: int) -> int:
        return (self.origin_ns or 0) + position * _NS_PER_S // self.rate

    def place(self, due: int, samples: np.ndarray, now_ns: int) -> int:
        with self._lock:
            start = max(due, self.earliest_position(now_ns), self.end, self._base)
            stop = start + samples.shape[0]
            if stop - self._base > self._buf.shape[0]:
                grown = np.zeros(max(stop - self._base, 2 * self._buf.shape[0]), dtype=np.float32)
                grown[: self.end - self._base] = self._buf[: self.end - self._base]
                self._buf = grown
            self._buf[start - self._base: stop - self._base] = samples
            self.end = max(self.end, stop)
            return start

    def fade_tail(self, end: int, n: int) -> None:
        with self._lock:
            lo = max(self._base, end - n)
            if end > lo:
                curve = audio.fade_curve(n, rising=False)[n - (end - lo):]
                self._buf[lo - self._base: end - self._base] *= curve

    def truncate(self, at: int, fade: int, now_ns: int) -> tuple[int, int]:
        stop, end, _removed = self.cut(at, fade, now_ns)
        return stop, end

    def cut(self, at: int, fade: int, now_ns: int) -> tuple[int, int, np.ndarray]:
        with self._lock:
            at = max(at, self.earliest_position(now_ns), self._base)
            if at >= self.end:
                return at, self.end, np.zeros(0, dtype=np.float32)
            removed = self._buf[at - self._base: self.end - self._base].copy()
            hi = min(self.end, at + fade)
            if hi > at:
                self._buf[at - self._base: hi - self._base] *= audio.fade_curve(fade, rising=False)[: hi - at]
            self._buf[hi - self._base: self.end - self._base] = 0.0
            self.end = hi
            return at, hi, removed

    def take_underflows(self) -> int:
        return 0

    def final_position(self, now_ns: int) -> int:
        return max(0, self.earliest_position(now_ns) - int(self.hold_ms * self.rate / 1000))

    def read_final(self, start: int, stop: int) -> np.ndarray:
        """Final samples from memory; positions already written to the WAV and dropped (the reader fell more than
        ``COMMIT_LAG_S`` behind the play head) read as zeros, logged."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        with self._lock:
            lo, hi = max(start, self._base), min(stop, self.end)
            if hi > lo:
                out[lo - start: hi - start] = self._buf[lo - self._base: hi - self._base]
        if start < min(self._base, stop):
            logger.warning("speaker: reference read %d samples already written out", min(self._base, stop) - start)
        return out

    def samples(self) -> np.ndarray:
        """What has been placed so far: shape ``(end,)`` float32. Exact with ``keep_samples``; otherwise the
        written part is read back from the WAV (16-bit)."""
        with self._lock:
            tail = self._buf[: self.end - self._base].copy()
            if self.keep_samples:
                return np.concatenate([*self._kept, tail]) if self._kept else tail
            base = self._base
        if base == 0:
            return tail
        written, _rate = audio.read_wav_mono(self.path)
        return np.concatenate([written[:base], tail])

    def _commit(self, upto: int) -> None:
        """Append positions ``[_base, upto)`` to the WAV and drop them from memory. Lock held."""
        n = min(upto, self.end) - self._base
        if n <= 0 or self._wav is None or self.write_error is not None:
            return
        chunk = self._buf[:n]
        pcm = np.round(np.clip(chunk, -1.0, 1.0) * 32767.0).astype("<i2")
        try:
            self._wav.writeframes(pcm.tobytes())  # patches the header's sizes after the data
            self._file.flush()
        except OSError as exc:
            self.write_error = exc
            logger.error("speaker: cannot write %s: %s", self.path, exc)
            return
        if self.keep_samples:
            self._kept.append(chunk.copy())
        rest = self.end - self._base - n
        self._buf[:rest] = self._buf[n: n + rest]
        self._buf[rest: rest + n] = 0.0
        self._base += n

    def _writer(self) -> None:
        lag = int(self.COMMIT_LAG_S * self.rate)
        while not self._stop.wait(self.COMMIT_INTERVAL_S):
            if self.origin_ns is None:
                continue
            with self._lock:
                heard = self.earliest_position(self.clock_ns())
                self._commit((max(heard, self.end) if self.commit_placed else heard) - lag)

    def checkpoint(self) -> None:
        if self.write_error is not None:
            raise self.write_error
        if self._wav is None:  # not opened yet: an empty WAV, so an unwritable path fails now
            audio.write_wav(self.path, np.zeros(0, np.float32), self.rate or PIPELINE_SAMPLE_RATE_HZ)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._lock:
            if self._wav is not None:
                self._commit(self.end)
                try:
                    self._wav.close()
                    self._file.close()
                except OSError as exc:
                    logger.error("speaker: cannot finish %s: %s", self.path, exc)
            else:
                audio.write_wav(self.path, np.zeros(0, np.float32), self.rate or PIPELINE_SAMPLE_RATE_HZ)
        logger.info("speaker: wrote %s (%.2f s at %d Hz)", self.path, self.end / max(self.rate, 1), self.rate)


class DeviceSink:
    """Plays on a sounddevice ``OutputStream`` from a writer thread doing blocking ``write`` of 10 ms blocks.

    The writer writes continuously (silence when nothing is placed), so output position ``p`` leaves at
    ``anchor + p / rate`` with one anchor. The anchor is estimated after each blocking write: the device buffer
    is then full, so the block just written leaves after ``stream.latency``; the smallest estimate wins. A write
    that blocks for more than 3 blocks (PulseAudio holds the first writes 0.5-1.8 s on a null sink before it
    starts consuming), or an output underflow, restarts the estimate. Placed audio is a queue of
    ``(start, samples)`` chunks that the writer copies into its block under a lock; barge-in fades and truncates
    that queue under the same lock, so it takes effect at the next block (audio already in the device buffer,
    ``stream.latency``, still plays). When the queued audio ends inside a block (a gap follows), the writer fades
    it out so a late fragment does not click.

    Measured on a PulseAudio null sink (tests/test_audio_device.py, loopback through the monitor): a tone is heard
    ~12 ms after its ``playback_started`` estimate; barge-in goes silent ~42 ms after the decision (20 ms fade +
    20 ms device latency), within ~6 ms of its estimate.

    Args:
        device: ``AUDIO_OUTPUT_DEVICE`` value ("" = default).
        block_ms: writer block, ms.
        fade_ms: fade applied by the writer when placed audio stops mid-block, ms.
        stream_factory: ``factory(rate_hz, block_frames) -> stream`` with ``start/write/stop/close`` and
            ``latency`` (s); default opens a sounddevice ``OutputStream`` (tests pass a fake).
        clock_ns: wall clock.
        keep_history_ms: keep copies of the blocks written in the last this many ms, for :meth:`read_final` (the
            echo canceller's reference); 0 keeps none.

    Raises:
        AudioDeviceError (from :meth:`open`): no output device; the message names ``AUDIO_OUTPUT=out.wav``.
    """

    virtual = False
    STALL_BLOCKS = 3

    def __init__(self, device: str = "", *, block_ms: int = DEVICE_BLOCK_MS, fade_ms: int = 8,
                 stream_factory: Callable[[int, int], Any] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, keep_history_ms: int = 0) -> None:
        self.device = device
        self.keep_history_ms = keep_history_ms
        self._history: deque[tuple[int, np.ndarray]] = deque()  # (start, block copy) of written blocks
        self._history_blocks = 0
        self.block_ms = block_ms
        self.fade_ms = fade_ms
        self.stream_factory = stream_factory or self._open_stream
        self.clock_ns = clock_ns
        self.rate = 0
        self.end = 0
        self.stream: Any = None
        self._lock = threading.Lock()
        self._chunks: deque[list[Any]] = deque()  # [start, samples]
        self._head = 0  # next position the writer copies
        self._anchor_ns: int | None = None
        self._provisional_anchor_ns = 0
        self._steady_writes = 0
        self._underflows = 0
        self._underflows_total = 0
        self._running = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _open_stream(self, rate_hz: int, block: int) -> Any:
        try:
            device, info = audio.find_device(self.device, "output")
            sd = audio.import_sounddevice()
            try:
                return sd.OutputStream(samplerate=rate_hz, channels=1, dtype="float32", device=device,
                                       blocksize=block, latency="low")
            except sd.PortAudioError as exc:
                raise audio.AudioDeviceError(f"cannot open output device {info.get('name')!r}: {exc}") from None
        except audio.AudioDeviceError as exc:
            raise audio.AudioDeviceError(
                f"{exc}. List the devices with `python -m sounddevice` (or `dora-voice-speaker --list-devices`) "
                "and set AUDIO_OUTPUT_DEVICE, or write the answer to a file with AUDIO_OUTPUT=out.wav."
            ) from None

    @staticmethod
    def default_rate(device: str = "") -> int:
        """The output device's default sample rate in Hz. Raises AudioDeviceError like :meth:`open`."""
        try:
            _device, info = audio.find_device(device, "output")
        except audio.AudioDeviceError as exc:
            raise audio.AudioDeviceError(f"{exc}; or write the answer to a file with AUDIO_OUTPUT=out.wav") from None
        return int(info["default_samplerate"])

    def open(self, rate_hz: int) -> None:
        self.rate = int(rate_hz)
        self._block = max(1, self.rate * self.block_ms // 1000)
        self._history_blocks = -(-self.keep_history_ms // self.block_ms) if self.keep_history_ms else 0
        self.stream = self.stream_factory(self.rate, self._block)
        self.stream.start()
        self._provisional_anchor_ns = self.clock_ns() + int(self._latency_s() * _NS_PER_S)
        self._running = True
        self._thread = threading.Thread(target=self._writer, name="speaker-writer", daemon=True)
        self._thread.start()
        logger.info("speaker: playing at %d Hz, %d-sample blocks, device latency %.1f ms", self.rate, self._block,
                    self._latency_s() * 1000)

    def _latency_s(self) -> float:
        latency = getattr(self.stream, "latency", 0.0)
        return float(latency[1] if isinstance(latency, (tuple, list)) else latency)

    # -- writer thread --------------------------------------------------------------------------------------------
    def _fill(self, block: np.ndarray) -> None:
        """Copy the placed audio for ``[head, head + len(block))`` into ``block`` (zeros elsewhere). Lock held."""
        block.fill(0.0)
        lo, hi = self._head, self._head + block.shape[0]
        chunks = self._chunks
        while chunks and chunks[0][0] + chunks[0][1].shape[0] <= lo:
            chunks.popleft()
        data_end = lo
        for start, samples in chunks:
            if start >= hi:
                break
            a, b = max(start, lo), min(start + samples.shape[0], hi)
            block[a - lo: b - lo] = samples[a - start: b - start]
            data_end = b
        more = bool(chunks) and chunks[-1][0] + chunks[-1][1].shape[0] > hi
        if lo < data_end < hi and not more:
            n = min(self.rate * self.fade_ms // 1000, data_end - lo)
            if n > 0 and abs(block[data_end - lo - 1]) > 1e-4:
                audio.fade_out(block[data_end - lo - n: data_end - lo], n, inplace=True)

    def _writer(self) -> None:
        block = np.zeros(self._block, dtype=np.float32)
        block_ns = self._block * _NS_PER_S // self.rate
        latency_ns = int(self._latency_s() * _NS_PER_S)
        reanchor = False
        try:
            while self._running:
                with self._lock:
                    self._fill(block)
                    if self._history_blocks:
                        self._history.append((self._head, block.copy()))
                        while len(self._history) > self._history_blocks:
                            self._history.popleft()
                    self._head += block.shape[0]
                    head = self._head
                before = self.clock_ns()
                underflowed = self.stream.write(block)
                after = self.clock_ns()
                if underflowed:  # the device ran dry: its timeline slipped, re-anchor on the next blocking write
                    self._underflows += 1
                    self._underflows_total += 1
                    reanchor = True
                if after - before >= block_ns // 2:  # blocked: the device buffer is full
                    estimate = after + latency_ns - head * _NS_PER_S // self.rate
                    if self._anchor_ns is None or reanchor or after - before > self.STALL_BLOCKS * block_ns:
                        if self._anchor_ns is not None:
                            logger.info("speaker: output clock re-anchored by %+.1f ms (%s)",
                                        (estimate - self._anchor_ns) / 1e6,
                                        "after an underflow" if reanchor else "the device held a write")
                        self._anchor_ns = estimate
                        self._steady_writes = 0
                        reanchor = False
                    else:
                        self._anchor_ns = min(self._anchor_ns, estimate)
                        self._steady_writes += 1
        except BaseException as exc:  # noqa: BLE001 - reported by close() and the core
            self._error = exc
            logger.error("speaker: device writer stopped: %s", exc)

    # -- Sink interface -------------------------------------------------------------------------------------------
    def set_origin(self, origin_ns: int) -> bool:
        return False

    @property
    def settled(self) -> bool:
        """True once the device consumes blocks steadily (10 blocking writes since the start or the last stall)."""
        return self._steady_writes >= 10

    @property
    def anchor_ns(self) -> int:
        """Wall clock at which position 0 left (estimated)."""
        return self._anchor_ns if self._anchor_ns is not None else self._provisional_anchor_ns

    def earliest_position(self, now_ns: int) -> int:
        with self._lock:
            return self._head

    def played_position(self, now_ns: int) -> int:
        return max(0, (now_ns - self.anchor_ns) * self.rate // _NS_PER_S)

    def position_to_ns(self, position: int) -> int:
        return self.anchor_ns + position * _NS_PER_S // self.rate

    def place(self, due: int, samples: np.ndarray, now_ns: int) -> int:
        with self._lock:
            start = max(due, self._head, self.end)
            if samples.shape[0]:
                self._chunks.append([start, samples])
                self.end = start + samples.shape[0]
            return start

    def fade_tail(self, end: int, n: int) -> None:
        with self._lock:
            lo = max(end - n, self._head)
            for start, samples in self._chunks:
                a, b = max(start, lo), min(start + samples.shape[0], end)
                if b > a:
                    curve = audio.fade_curve(n, rising=False)[n - (end - a): n - (end - b)]
                    samples[a - start: b - start] *= curve

    def truncate(self, at: int, fade: int, now_ns: int) -> tuple[int, int]:
        stop, end, _removed = self.cut(at, fade, now_ns)
        return stop, end

    def cut(self, at: int, fade: int, now_ns: int) -> tuple[int, int, np.ndarray]:
        with self._lock:
            at = max(at, self._head)
            if at >= self.end:
                return at, self.end, np.zeros(0, dtype=np.float32)
            removed = np.zeros(self.end - at, dtype=np.float32)
            for start, samples in self._chunks:
                a, b = max(start, at), start + samples.shape[0]
                if b > a:
                    removed[a - at: b - at] = samples[a - start:]
            hi = min(self.end, at + fade)
            curve = audio.fade_curve(fade, rising=False)
            kept: deque[list[Any]] = deque()
            for start, samples in self._chunks:
                if start >= hi:
                    break
                stop = start + samples.shape[0]
                if stop > at:
                    a, b = max(start, at), min(stop, hi)
                    samples = samples[: b - start]
                    samples[a - start: b - start] *= curve[a - at: b - at]
                kept.append([start, samples])
            self._chunks = kept
            self.end = hi
            return at, hi, removed

    def take_underflows(self) -> int:
        n, self._underflows = self._underflows, 0
        return n

    def final_position(self, now_ns: int) -> int:
        with self._lock:
            return self._head

    def read_final(self, start: int, stop: int) -> np.ndarray:
        """Blocks already written, from the history kept with ``keep_history_ms``; older positions read as zeros
        (logged: the reader fell behind the history)."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        with self._lock:
            history = list(self._history)
        if history and start < history[0][0]:
            logger.warning("speaker: reference read %d samples behind the kept history", history[0][0] - start)
        for block_start, samples in history:
            a, b = max(start, block_start), min(stop, block_start + samples.shape[0])
            if b > a:
                out[a - start: b - start] = samples[a - block_start: b - block_start]
        return out

    def checkpoint(self) -> None:
        if self._error is not None:
            raise audio.AudioDeviceError(f"the output stream failed: {self._error}")

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait until the placed audio has been written and has left (at most ``timeout_s``), then stop the writer
        and the stream."""
        if self._closed or self.stream is None:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            with self._lock:
                written = self._head >= self.end + self._block
            if written and self.played_position(self.clock_ns()) >= self.end + self._block:
                break
            time.sleep(0.01)
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        try:
            self.stream.stop()
            self.stream.close()
        finally:
            logger.info("speaker: device closed (%d output underflows)", self._underflows_total)
