"""Audio utilities shared by every node: WAV I/O, resampling, PCM conversion, fades, levels, device helpers.

Conventions (``docs/architecture.md``): audio inside the project is a 1-D ``float32`` numpy array in [-1, 1], mono, with its
sample rate in Hz carried next to it. WAV I/O uses soundfile (libsndfile), resampling uses soxr. int16 PCM is
converted by :func:`pcm16_to_float32` only (divide by 32768), so every node scales the same way.

The sounddevice module is imported lazily (:func:`import_sounddevice`): it raises at import time when PortAudio
is missing, and file-only dataflows must not need PortAudio.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

RESAMPLE_QUALITY = "HQ"
"""soxr quality used everywhere (``HQ``: 20-bit precision, ~95% bandwidth; a few ms of delay when streaming)."""


class AudioDeviceError(RuntimeError):
    """No usable audio device (PortAudio missing, no such device, or none of the needed kind)."""


# ----------------------------------------------------------------------------------------------------------------
# WAV I/O


def read_wav_mono(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file (WAV or anything libsndfile reads) as mono float32.

    Args:
        path: file to read; any sample rate, any channel count, int16/int24/int32/float samples.

    Returns:
        ``(samples, sample_rate)``: ``samples`` has shape ``(n,)``, dtype ``float32``, in [-1, 1] (integer PCM is
        scaled like :func:`pcm16_to_float32`); multi-channel files are averaged to mono. ``sample_rate`` in Hz.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as audio (also a headerless raw PCM file: it carries no rate).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except TypeError:  # soundfile asks for the rate and format of a headerless file (.raw, .pcm) instead of reading
        raise ValueError(f"cannot read audio file {path}: headerless (raw) PCM gives no sample rate or sample format; "
                         f"convert it to WAV first, e.g. `sox -t raw -r 16000 -e signed -b 16 -c 1 {path.name} "
                         f"{path.stem}.wav`") from None
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from None
    if data.shape[1] == 1:
        samples = np.ascontiguousarray(data[:, 0])
    else:
        samples = data.mean(axis=1, dtype=np.float32)
    return samples, int(rate)


def wav_truncation(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """For a RIFF/WAVE file whose ``data`` chunk is shorter than its header says: ``(declared_bytes,
    present_bytes)``; ``None`` when the file is complete, not a WAV, or written by a streaming writer that leaves
    the size open (0 or 0xFFFFFFFF). Reads the chunk headers only (RIFF layout: ``RIFF`` size ``WAVE``, then
    ``id``/size chunks, each padded to an even length)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                present = size - pos - 8
                if declared in (0, 0xFFFFFFFF) or present >= declared:
                    return None
                return declared, present
            pos += 8 + declared + (declared & 1)
    return None


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int, *, subtype: str = "PCM_16") -> None:
    """Write mono audio to a WAV file, atomically (a reader never sees a half-written file).

    Args:
        path: destination; parent folders are created.
        samples: shape ``(n,)`` float in [-1, 1]; values outside are clipped.
        rate: sample rate in Hz.
        subtype: libsndfile subtype, ``PCM_16`` (default) or ``FLOAT``.

    Raises:
        ValueError: ``samples`` is not 1-D or ``rate`` is not positive.
        OSError: the file cannot be written.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"write_wav expects mono samples of shape (n,), got {samples.shape}")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), np.clip(samples, -1.0, 1.0), int(rate), subtype=subtype, format="WAV")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Conversion and resampling


def pcm16_to_float32(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Convert signed 16-bit PCM to float32 in [-1, 1) by dividing by 32768 (the project's one int16 scale).

    Args:
        data: little-endian int16 PCM bytes, or an ``int16`` numpy array of any shape.

    Returns:
        ``float32`` array, shape ``(n,)`` for bytes, else the input's shape.

    Raises:
        ValueError: an odd number of bytes, or an array whose dtype is not int16.
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.int16:
            raise ValueError(f"pcm16_to_float32 expects int16 samples, got {data.dtype}")
        pcm = data
    else:
        if len(data) % 2:
            raise ValueError(f"int16 PCM needs an even number of bytes, got {len(data)}")
        pcm = np.frombuffer(data, dtype="<i2")
    return pcm.astype(np.float32) * np.float32(1.0 / 32768.0)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample a whole signal with soxr (quality :data:`RESAMPLE_QUALITY`).

    Args:
        samples: shape ``(n,)`` (or ``(n, channels)``), float or int16.
        from_hz: input sample rate, Hz.
        to_hz: output sample rate, Hz.

    Returns:
        ``float32`` array of about ``n * to_hz / from_hz`` frames (a copy even when the rates are equal).

    Raises:
        ValueError: a rate is not positive.
    """
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        samples = pcm16_to_float32(samples)
    samples = samples.astype(np.float32, copy=from_hz == to_hz)
    if from_hz == to_hz or samples.shape[0] == 0:
        return samples
    return np.asarray(soxr.resample(samples, from_hz, to_hz, quality=RESAMPLE_QUALITY), dtype=np.float32)


def resample_stream(from_hz: int, to_hz: int) -> soxr.ResampleStream:
    """A streaming mono float32 soxr resampler (``resample_chunk(x, last=False)``) for audio that arrives in blocks.

    Output sample ``k`` corresponds to input time ``k / to_hz`` s: the filter delay is compensated, the output
    only arrives a few ms later (flush with ``last=True``).
    """
    return soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32", quality=RESAMPLE_QUALITY)


# ----------------------------------------------------------------------------------------------------------------
# Fades and levels


def fade_curve(n: int, *, rising: bool) -> np.ndarray:
    """A raised-cosine gain curve of ``n`` samples, float32.

    Rising: 0.0 at index 0 up to 1.0 at index ``n - 1``; falling is its mirror (1.0 down to exactly 0.0).
    """
    if n <= 0:
        return np.ones(0, dtype=np.float32)
    if n == 1:
        return np.zeros(1, dtype=np.float32)
    curve = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))).astype(np.float32)
    return curve if rising else curve[::-1].copy()


def _fade(samples: np.ndarray, n: int, *, rising: bool, inplace: bool) -> np.ndarray:
    out = samples if inplace else np.array(samples, dtype=np.float32, copy=True)
    n = min(int(n), out.shape[0])
    if n > 0:
        if rising:
            out[:n] *= fade_curve(n, rising=True)
        else:
            out[out.shape[0] - n:] *= fade_curve(n, rising=False)
    return out


def fade_in(samples: np.ndarray, n: int, *, inplace: bool = False) -> np.ndarray:
    """Fade the first ``n`` samples in (raised cosine: the first sample becomes 0).

    Args:
        samples: shape ``(m,)`` float32.
        n: fade length in samples; clipped to ``m``.
        inplace: modify ``samples`` instead of a copy (it must be writable).

    Returns:
        The faded array (``samples`` itself when ``inplace``).
    """
    return _fade(samples, n, rising=True, inplace=inplace)


def fade_out(samples: np.ndarray, n: int, *, inplace: bool = False) -> np.ndarray:
    """Fade the last ``n`` samples out (raised cosine: the last sample becomes 0); arguments as :func:`fade_in`."""
    return _fade(samples, n, rising=False, inplace=inplace)


# ----------------------------------------------------------------------------------------------------------------
# Devices (sounddevice / PortAudio)


def import_sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio library into :class:`AudioDeviceError`."""
    try:
        import sounddevice  # noqa: PLC0415 - lazy: raises OSError at import without PortAudio
    except OSError as exc:
        raise AudioDeviceError(
            f"sounddevice cannot load PortAudio ({exc}); install it (Debian: apt-get install libportaudio2)"
        ) from None
    return sounddevice


def parse_device(spec: str) -> int | str | None:
    """Turn an ``AUDIO_*_DEVICE`` value into a sounddevice device: ``""`` -> default, digits -> index, else name."""
    spec = spec.strip()
    if not spec:
        return None
    return int(spec) if spec.isdigit() else spec


def describe_devices() -> str:
    """The device table of ``python -m sounddevice``, as text.

    Raises:
        AudioDeviceError: PortAudio is missing.
    """
    sd = import_sounddevice()
    return str(sd.query_devices())


def find_device(spec: str, kind: str) -> tuple[int | str | None, dict[str, Any]]:
    """Resolve a device for ``kind`` (``"input"`` or ``"output"``).

    Args:
        spec: ``AUDIO_INPUT_DEVICE`` / ``AUDIO_OUTPUT_DEVICE`` value: empty for the default device, an index or a
            (sub)string of a device name.
        kind: ``"input"`` or ``"output"``.

    Returns:
        ``(device, info)``: the value to pass to sounddevice and its ``query_devices`` record (``name``,
        ``default_samplerate`` in Hz, channel counts, default latencies in s).

    Raises:
        AudioDeviceError: PortAudio is missing, or no device of that kind matches.
    """
    sd = import_sounddevice()
    device = parse_device(spec)
    try:
        info = sd.query_devices(device, kind=kind)
    except (ValueError, sd.PortAudioError) as exc:
        which = f"{kind} device {spec!r}" if spec else f"default {kind} device"
        raise AudioDeviceError(f"no usable {which}: {exc}") from None
    channels = info.get(f"max_{kind}_channels", 0)
    if channels < 1:
        raise AudioDeviceError(f"device {info.get('name')!r} has no {kind} channels")
    return device, dict(info)


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (a full-scale sine is -3.01 dBFS).

    Args:
        samples: any shape, float in [-1, 1].

    Returns:
        Level in dBFS; ``-inf`` for empty or all-zero input.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return float("-inf")
    power = float(np.mean(np.square(samples)))
    return 10.0 * np.log10(power) if power > 0.0 else float("-inf")
