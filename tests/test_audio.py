"""Audio utilities: WAV I/O, resampling, PCM conversion, fades, crossfade, levels."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dora_voice import audio


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum) * rate / samples.shape[0])


@pytest.mark.parametrize("rate", [44_100, 48_000, 8_000, 22_050])
def test_resample_to_16k_keeps_duration_and_pitch(rate: int) -> None:
    x = tone(440.0, 2.0, rate)
    y = audio.resample(x, rate, 16_000)
    assert y.dtype == np.float32
    assert abs(y.shape[0] - 32_000) <= 1
    assert abs(peak_hz(y, 16_000) - 440.0) < 1.0
    # amplitude preserved away from the edges
    assert np.max(np.abs(y[1000:-1000])) == pytest.approx(0.5, abs=0.01)


def test_resample_same_rate_is_a_float32_copy() -> None:
    x = tone(440.0, 0.1, 16_000)
    y = audio.resample(x, 16_000, 16_000)
    assert y is not x and np.array_equal(x, y)
    assert audio.resample(np.array([0, 16384], dtype=np.int16), 16_000, 16_000).tolist() == [0.0, 0.5]


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        audio.resample(np.zeros(10, np.float32), 0, 16_000)


def test_read_wav_mono_mixes_stereo_and_reads_int16(tmp_path) -> None:
    left = tone(440.0, 0.5, 44_100, 0.4)
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 44_100, subtype="PCM_16")
    samples, rate = audio.read_wav_mono(path)
    assert rate == 44_100
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.shape[0] == left.shape[0]
    np.testing.assert_allclose(samples, left / 2, atol=2 / 32768)


def test_read_wav_mono_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        audio.read_wav_mono(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="cannot read"):
        audio.read_wav_mono(bad)
    raw = tmp_path / "numbers.raw"  # headerless PCM: soundfile asks for a rate instead of reading it
    raw.write_bytes(np.zeros(1600, np.int16).tobytes())
    with pytest.raises(ValueError, match=r"raw\) PCM .*sox -t raw -r 16000 .* numbers.raw numbers.wav"):
        audio.read_wav_mono(raw)


def test_write_wav_roundtrip_and_clipping(tmp_path) -> None:
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    path = tmp_path / "sub" / "out.wav"
    audio.write_wav(path, x, 16_000)
    y, rate = audio.read_wav_mono(path)
    assert rate == 16_000
    np.testing.assert_allclose(y, [0.0, 0.5, -0.5, 32767 / 32768, -1.0], atol=1 / 32768)
    assert not (tmp_path / "sub" / "out.wav.part").exists()
    with pytest.raises(ValueError):
        audio.write_wav(path, np.zeros((2, 2), np.float32), 16_000)


def test_pcm16_to_float32_is_the_one_scale() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    expected = [0.0, 0.5, -1.0, 32767 / 32768]
    assert audio.pcm16_to_float32(pcm).tolist() == pytest.approx(expected)
    assert audio.pcm16_to_float32(pcm.astype("<i2").tobytes()).tolist() == pytest.approx(expected)
    assert audio.pcm16_to_float32(pcm).dtype == np.float32
    with pytest.raises(ValueError):
        audio.pcm16_to_float32(b"\x00\x01\x02")
    with pytest.raises(ValueError):
        audio.pcm16_to_float32(np.zeros(3, dtype=np.int32))


def test_fades_start_and_end_at_zero() -> None:
    x = np.ones(1000, dtype=np.float32)
    faded_in = audio.fade_in(x, 100)
    faded_out = audio.fade_out(x, 100)
    assert faded_in[0] == 0.0 and faded_in[99] == pytest.approx(1.0) and np.all(faded_in[100:] == 1.0)
    assert faded_out[-1] == 0.0 and faded_out[-100] == pytest.approx(1.0) and np.all(faded_out[:900] == 1.0)
    assert np.all(np.diff(faded_in[:100]) >= 0) and np.all(np.diff(faded_out[-100:]) <= 0)
    assert np.all(x == 1.0)  # copies by default
    audio.fade_out(x, 10, inplace=True)
    assert x[-1] == 0.0
    short = audio.fade_in(np.ones(5, np.float32), 100)  # fade longer than the signal is clipped
    assert short[0] == 0.0 and short[-1] == pytest.approx(1.0)


def test_parse_device() -> None:
    assert audio.parse_device("") is None
    assert audio.parse_device(" 3 ") == 3
    assert audio.parse_device("pulse") == "pulse"
