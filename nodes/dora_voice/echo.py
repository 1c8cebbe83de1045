"""Acoustic echo: the echo guard setting shared by the speaker and the AEC node, the echo canceller library, and
the echo delay estimate.

The echo canceller is WebRTC's AEC3 through the ``pywebrtc-audio`` wheel (Apache-2.0; WebRTC's audio processing
module, the one Chrome runs). Chosen after measuring the three maintained wheels with prebuilt binaries on the same
synthetic room here (LibriVox speech as the far end, 60 ms delay, -6 dB, a 150 ms decaying tail, 10 ms frames at
16 kHz; user speech mixed in for the double-talk check):

==============  =========  ===========================================  ===================
library         ERLE (dB)  user speech kept in double talk (corr.)      CPU (% of one core)
==============  =========  ===========================================  ===================
pywebrtc-audio  27.5       0.68 (output 8 ms behind its input)          1.1-1.7
livekit APM     28.1       0.45 (same AEC3; 28 MB FFI runtime)          1.7-2.0
pyaec (Speex)   28.2       0.53                                         3.0-3.4
==============  =========  ===========================================  ===================

(ERLE over the far-end-only part after 1.5 s; "kept" is the correlation of the output with the user's speech
alone, at the best lag; CPU varies with the other load on this shared 2-core machine.)
pywebrtc-audio takes float32 numpy arrays directly, releases the GIL, and ships a 2026 build of the module.

Two outputs, two jobs. AEC3's residual echo suppressor is what gives it 45 dB of ERLE, and it also suppresses the
user while the assistant talks over them (double talk): measured on the e2e room test's recordings, only 13-63 % of
the user's voiced 32 ms frames kept a Silero probability above 0.5, and Whisper tiny.en heard "", "And the old
suppose young man." and "Those young men." for "He was not an ill-disposed young man". The VAD needs the
suppression (no self-interruption); the ASR needs the words. So the AEC node also runs a linear canceller without
any suppressor (:class:`LinearEchoCanceller`: Speex's MDF adaptive filter through the ``pyaec`` wheel, BSD), which
takes out 10-15 dB of echo and leaves the user's speech whole: on the same three recordings Whisper heard "He
was not an old-sposed young man." each time, as it does on the clean recording. The VAD decides on AEC3's output
and cuts the utterance it sends to the ASR from the linear one (``AEC_ASR_AUDIO``). Speex high-passes its input
(measured: -11 dB at 200 Hz, -2.5 dB at 400 Hz, flat above 800 Hz); that left Whisper's WER on the five test
recordings without any echo unchanged (0.087 on the raw audio and on the linear output; 0.109 on AEC3's output).

Delay: the AEC node aligns the reference to the microphone by their wall-clock stamps (the speaker stamps each
reference frame with the instant it leaves, the mic each block with its capture instant), so what remains is the
acoustic path plus the error of the two clock estimates. AEC3 finds that remainder itself (its delay estimator
covers several hundred ms); :func:`estimate_delay` measures it independently, by GCC-PHAT (generalized cross
correlation with phase transform, Knapp & Carter 1976, IEEE Trans. ASSP 24(4)), so it can be reported.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
from typing import Protocol

import numpy as np
import scipy.fft

logger = logging.getLogger(__name__)

AEC_LIBRARY = "pywebrtc_audio"
"""Import name of the echo canceller library (PyPI: ``pywebrtc-audio``)."""
AEC_FRAME_MS = 10
"""AEC3 works on 10 ms frames; the AEC node feeds it whole frames only."""


class EchoGuard(str, enum.Enum):
    """How the assistant avoids hearing itself (``ECHO_GUARD``)."""

    AUTO = "auto"  # aec with real devices when the library is installed, half_duplex without it, off with files
    OFF = "off"  # no guard: headphones, or files (no acoustic path)
    HALF_DUPLEX = "half_duplex"  # ignore speech that starts while the speaker is audible (+ECHO_TAIL_MS)
    AEC = "aec"  # echo cancellation before the VAD: barge-in at any moment


ECHO_GUARD_HELP = ("auto|off|half_duplex|aec: aec cancels the speaker's echo before the VAD (barge-in at any "
                   "moment); half_duplex ignores speech starting while the speaker plays (+300 ms); auto = off with "
                   "a file input or output, else aec when pywebrtc-audio is installed and the dataflow has the aec "
                   "node, else half_duplex")


def aec_library_available() -> bool:
    """True when the echo canceller library can be imported (checked without importing it)."""
    return importlib.util.find_spec(AEC_LIBRARY) is not None


def resolve_echo_guard(value: str | EchoGuard, *, files: bool, aec_ready: bool) -> EchoGuard:
    """Resolve ``auto``.

    Args:
        value: the ``ECHO_GUARD`` setting.
        files: AUDIO_INPUT or AUDIO_OUTPUT names a file (no acoustic path between speaker and microphone).
        aec_ready: the dataflow cancels echo before the VAD (the aec node is wired to the speaker's reference and
            the library is installed).

    Returns:
        ``off`` with files, ``aec`` when ready, else ``half_duplex``; any other value unchanged.
    """
    guard = EchoGuard(value)
    if guard is not EchoGuard.AUTO:
        return guard
    if files:
        return EchoGuard.OFF
    return EchoGuard.AEC if aec_ready else EchoGuard.HALF_DUPLEX


class EchoCanceller(Protocol):
    """``process(near, far)``: the microphone block and the time-aligned reference, float32 of the same shape
    ``(n,)`` with ``n`` a multiple of 10 ms, in [-1, 1]; returns the microphone block with the echo removed."""

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray: ...


REFERENCE_DITHER_DBFS = -110.0
"""Level of the white noise added to AEC3's reference, dBFS (RMS re full scale 1.0). AEC3 (this build) slowed down
10-20 times once the reference fell silent after speech, as the assistant's does at the end of every answer: its
filter states decay towards zero into denormal floats, which x86 computes in microcode (that this dither cures it
says as much). Measured here on 30 s (7 s of speech as the far end, then silence): 1 % of a core while the reference
was speech, 9-21 % per 3 s after it, 13.7 % over the 30 s; in the echo bench the cancellers took 10-11 % of a core.
With this dither: 1.0-1.5 % throughout offline, 3.6 % for both cancellers in the bench. It is 14 dB below 16-bit
PCM's quantization floor: nothing AEC3 models or removes, nothing anyone hears (the same cure as an audio plug-in's
denormal-prevention noise)."""


class Aec3Canceller:
    """WebRTC AEC3 with a reference kept out of the denormal range (:data:`REFERENCE_DITHER_DBFS`): an
    :class:`EchoCanceller`.

    Args:
        processor: pywebrtc-audio's ``AudioProcessor`` (``process(near, far)``: float32 arrays of whole 10 ms frames).
        rate_hz: sample rate, Hz (the dither is one second of noise at this rate, reused in turn).
    """

    def __init__(self, processor, rate_hz: int) -> None:
        self.processor = processor
        rng = np.random.default_rng(0)
        self._dither = (10 ** (REFERENCE_DITHER_DBFS / 20) * rng.standard_normal(int(rate_hz))).astype(np.float32)
        self._pos = 0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """``near`` with the echo of ``far`` removed (float32, same shape; see :class:`EchoCanceller`)."""
        n = far.shape[0]
        ends = self._pos + n
        if ends <= self._dither.shape[0]:
            dither = self._dither[self._pos:ends]
        else:
            dither = np.resize(np.roll(self._dither, -self._pos), n)
        self._pos = ends % self._dither.shape[0]
        return self.processor.process(near, np.asarray(far, dtype=np.float32) + dither)


def load_canceller(rate_hz: int, *, noise_suppression: bool = False, stream_delay_ms: int = 0) -> EchoCanceller:
    """WebRTC AEC3 (with its high-pass filter) from pywebrtc-audio, its reference dithered (:class:`Aec3Canceller`).

    Args:
        rate_hz: sample rate, Hz (16 000 in the pipeline).
        noise_suppression: also run WebRTC's noise suppressor (changes the user's speech; off by default).
        stream_delay_ms: initial delay hint, ms (0: AEC3 estimates it).

    Raises:
        ImportError: pywebrtc-audio is not installed; the message says how to install it.
    """
    try:
        from pywebrtc_audio import AudioProcessor  # noqa: PLC0415 - optional native library, loaded in main()
    except ImportError as exc:
        raise ImportError(f"the echo canceller needs pywebrtc-audio ({exc}); install it with "
                          "`pip install pywebrtc-audio`, or set ECHO_GUARD=half_duplex") from None
    return Aec3Canceller(AudioProcessor(sample_rate=int(rate_hz), echo_cancellation=True,
                                        noise_suppression=noise_suppression, high_pass_filter=True,
                                        stream_delay_ms=int(stream_delay_ms)), rate_hz)


LINEAR_LIBRARY = "pyaec"
"""Import name of the linear canceller's library (PyPI: ``pyaec``, Speex MDF; BSD)."""


def linear_library_available() -> bool:
    """True when ``pyaec`` can be imported (without importing it)."""
    return importlib.util.find_spec(LINEAR_LIBRARY) is not None


class LinearEchoCanceller:
    """Speex's MDF adaptive filter (multidelay block frequency domain, J.-M. Valin 2007) without its residual echo
    suppressor: the echo estimate is subtracted, nothing else. Double talk keeps the user's speech; the echo is
    reduced by about 10 dB only (measured on the simulated room), which the ASR tolerates and the VAD does not.

    Args:
        rate_hz: sample rate, Hz.
        filter_ms: length of the echo path it models, ms (Speex suggests about a third of the room's reverberation
            time; longer costs CPU and converges more slowly).

    Raises:
        ImportError: pyaec is not installed; the message says how to install it.
    """

    def __init__(self, rate_hz: int, *, filter_ms: int = 128) -> None:
        try:
            import ctypes  # noqa: PLC0415

            from pyaec import lib  # noqa: PLC0415 - optional native library, loaded in main()
        except ImportError as exc:
            raise ImportError(f"the linear echo canceller needs pyaec ({exc}); install it with `pip install pyaec`, "
                              "or set AEC_ASR_AUDIO=suppressed") from None
        self._ctypes, self._lib = ctypes, lib
        self.frame = rate_hz * AEC_FRAME_MS // 1000
        self._state = lib.AecNew(self.frame, rate_hz * filter_ms // 1000, rate_hz, False)
        if not self._state:
            raise RuntimeError("pyaec could not create a Speex echo canceller")
        self._out = np.zeros(self.frame, dtype=np.int16)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel ``far``'s echo from ``near``: float32 arrays of equal length, a whole number of 10 ms frames;
        returns float32 of the same shape (Speex works on 16-bit PCM: values are clipped to [-1, 1))."""
        if near.shape != far.shape or near.shape[0] % self.frame:
            raise ValueError(f"need equal lengths in whole {self.frame}-sample frames, got {near.shape} and {far.shape}")
        ptr = self._ctypes.POINTER(self._ctypes.c_int16)
        mic = np.clip(near * 32768.0, -32768, 32767).astype(np.int16)
        ref = np.clip(far * 32768.0, -32768, 32767).astype(np.int16)
        out = np.empty_like(mic)
        for k in range(0, mic.shape[0], self.frame):
            self._lib.AecCancelEcho(self._state, mic[k:].ctypes.data_as(ptr), ref[k:].ctypes.data_as(ptr),
                                    out[k:].ctypes.data_as(ptr), self.frame)
        return out.astype(np.float32) / 32768.0

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._lib.AecDestroy(self._state)
            self._state = None


def estimate_delay(mic: np.ndarray, reference: np.ndarray, rate_hz: int, *,
                   max_delay_ms: float = 500.0) -> tuple[float, float]:
    """Delay of the echo in ``mic`` behind ``reference``, by GCC-PHAT.

    Args:
        mic: shape ``(n,)`` float32, the raw microphone signal.
        reference: shape ``(n,)`` float32, the reference over the same sample times (as aligned by timestamps).
        rate_hz: sample rate, Hz.
        max_delay_ms: longest delay searched, ms; only non-negative delays are searched (an echo cannot come
            before its sound), so an error of the clock estimates that makes it look early is not found.

    Returns:
        ``(delay_ms, confidence)``: the delay in ms, and the height of the correlation peak over the mean of the
        others (about 1 for no echo; a clear echo gives 10 and more).

    Raises:
        ValueError: the two signals differ in length or are shorter than ``max_delay_ms``.
    """
    mic = np.asarray(mic, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if mic.shape != reference.shape or mic.ndim != 1:
        raise ValueError(f"mic and reference must be 1-D and equally long, got {mic.shape} and {reference.shape}")
    max_lag = int(max_delay_ms * rate_hz / 1000)
    if mic.shape[0] <= max_lag:
        raise ValueError(f"need more than {max_delay_ms} ms of signal, got {mic.shape[0] * 1000 / rate_hz:.0f} ms")
    n = scipy.fft.next_fast_len(mic.shape[0] + max_lag, real=True)  # no circular wrap into the lags searched
    cross = scipy.fft.rfft(mic, n) * np.conj(scipy.fft.rfft(reference, n))
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = np.abs(scipy.fft.irfft(cross, n)[: max_lag + 1])
    lag = int(np.argmax(corr))
    others = np.delete(corr, lag)
    confidence = float(corr[lag] / (np.mean(others) + 1e-12)) if others.size else 0.0
    return lag * 1000.0 / rate_hz, confidence


class ReferenceBuffer:
    """The far-end reference (speaker/reference frames) indexed by reference sample, with its wall clock.

    Frames are contiguous by ``sample_offset``; a gap (a frame the speaker never sent) reads as silence and is
    counted. ``anchor_ns`` is the wall clock of reference sample 0 according to the newest frame (the device sink's
    clock estimate may move; the file sink's does not).

    Args:
        rate_hz: reference sample rate, Hz.
        keep_ms: how much reference to keep behind the newest sample, ms (older samples read as silence).
    """

    def __init__(self, rate_hz: int, *, keep_ms: int = 3000) -> None:
        self.rate = int(rate_hz)
        self.keep = max(1, int(keep_ms * rate_hz / 1000))
        self._buf = np.zeros(2 * self.keep, dtype=np.float32)  # _buf[:_n] holds reference [start, start + _n)
        self._n = 0
        self.start = 0  # reference index of _buf[0]
        self.anchor_ns: int | None = None
        self.gaps = 0
        self.frames = 0

    @property
    def end(self) -> int:
        """Reference index after the newest sample received (0 before any)."""
        return self.start + self._n

    def add(self, samples: np.ndarray, sample_offset: int, t_ns: int) -> None:
        """Append one frame (amortised O(frame): the buffer moves only when it is full).

        Raises:
            ValueError: the frame overlaps samples already received (a duplicate or a reordered frame).
        """
        if self.frames and sample_offset < self.end:
            raise ValueError(f"reference frame at sample {sample_offset} overlaps what was received "
                             f"(up to {self.end})")
        samples = np.asarray(samples, dtype=np.float32)
        if not self.frames:
            self.start = sample_offset
        elif sample_offset > self.end:
            self.gaps += 1
            logger.warning("reference gap: %d samples missing before sample %d (read as silence)",
                           sample_offset - self.end, sample_offset)
            samples = np.concatenate([np.zeros(sample_offset - self.end, dtype=np.float32), samples])
        n = samples.shape[0]
        if self._n + n > self._buf.shape[0]:
            keep = min(self._n, max(0, self.keep - n))
            drop = self._n - keep
            self._buf[:keep] = self._buf[drop: self._n]
            self._n = keep
            self.start += drop
            if n > self._buf.shape[0] - keep:
                self._buf = np.concatenate([self._buf[:keep], np.zeros(n, dtype=np.float32)])
        self._buf[self._n: self._n + n] = samples
        self._n += n
        self.anchor_ns = t_ns - sample_offset * 1_000_000_000 // self.rate
        self.frames += 1

    def index_at(self, t_ns: int) -> int:
        """Reference index of the sample that left the speaker at wall clock ``t_ns`` (needs a frame first)."""
        assert self.anchor_ns is not None
        return int(round((t_ns - self.anchor_ns) * self.rate / 1e9))

    def read(self, start: int, n: int) -> np.ndarray:
        """Reference samples ``[start, start + n)``: float32 ``(n,)``, zeros outside what is kept or received."""
        out = np.zeros(n, dtype=np.float32)
        lo, hi = max(start, self.start), min(start + n, self.end)
        if hi > lo:
            out[lo - start: hi - start] = self._buf[lo - self.start: hi - self.start]
        return out
