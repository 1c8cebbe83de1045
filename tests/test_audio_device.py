"""The real device path through PulseAudio: the speaker's DeviceSink plays into a null sink and the mic's
DeviceCapture records that sink's monitor.

Needs ``pulseaudio``, ``pulseaudio-utils`` (pactl) and ``libportaudio2``; the test starts a PulseAudio server if
none runs, loads its own 48 kHz null sink (``module-null-sink``; one at 16 kHz ran at half speed) and routes
sounddevice's ``pulse`` device to it with ``PULSE_SINK`` / ``PULSE_SOURCE``. Skipped, with the reason, where any of
that is missing. Takes about 4-5 s, most of it PulseAudio holding the first writes of a new stream (0.5-1.8 s)
and real-time playback.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from dora_voice.config import load_config
from dora_voice.nodes.speaker import SpeakerConfig, SpeakerCore
from dora_voice.sinks import DeviceSink
from dora_voice.schema import (
    AudioFragment, Key, Output, PlaybackEvent, PlaybackKind, TimingEvent, TimingKind, VadEvent,
    VadEventKind,
)

from pulse import DEVICE_RATE as RATE, Recorder

pytestmark = [pytest.mark.device, pytest.mark.real_time]

@pytest.fixture(scope="module")
def device(null_sink):
    """An open DeviceSink (settled past PulseAudio's start-up hold) and a running recorder."""
    sink = DeviceSink("pulse")
    sink.open(RATE)
    recorder = Recorder()
    deadline = time.monotonic() + 10
    while not sink.settled:
        assert time.monotonic() < deadline, "the null sink never started consuming audio"
        time.sleep(0.02)
    yield sink, recorder
    recorder.stop()
    sink.close()


def _fragment(samples: np.ndarray, turn: int) -> tuple:
    return AudioFragment(samples=samples, sample_rate=22_050, session_id="device-test", turn_id=turn, segment_index=0,
                         fragment_index=0, text_segment_index=0, is_last_fragment=True, is_final=True,
                         is_streaming=True, t_ns=time.time_ns(), segments_total=1).encode()


def _decode(outputs) -> tuple[list[PlaybackEvent], list[TimingEvent]]:
    playback = [PlaybackEvent.decode(v, m) for o, v, m in outputs if o == Output.PLAYBACK]
    timing = [TimingEvent.decode(v, m) for o, v, m in outputs if o == Output.TIMING]
    return playback, timing


def _active(x: np.ndarray, threshold: float = 0.05) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(x) > threshold)
    assert loud.size, "nothing was recorded from the null sink's monitor"
    return int(loud[0]), int(loud[-1])


def test_tone_through_the_null_sink_arrives_on_time(device) -> None:
    sink, recorder = device
    core = SpeakerCore(load_config(SpeakerConfig, {"BARGE_IN": "false"}), sink)
    t = np.arange(int(0.5 * 22_050)) / 22_050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    outputs = core.handle(Output.AUDIO, *_fragment(tone, 0))
    while core.busy():
        outputs += core.step()
    time.sleep(0.3)  # let the recorder catch the tail
    playback, timing = _decode(outputs)
    assert [p.kind for p in playback] == [PlaybackKind.SEGMENT_PLAYED, PlaybackKind.TURN_DONE]
    started = next(e for e in timing if e.kind is TimingKind.PLAYBACK_STARTED)
    turn = next(e for e in timing if e.kind is TimingKind.TURN_PLAYED)
    assert turn.fields[Key.UNDERRUNS] == 0 and core.input_errors == 0

    x = np.concatenate([c.samples for c in recorder.chunks])
    origin = recorder.chunks[0].t_ns
    first, last = _active(x)
    heard_ns = origin + first * 1_000_000_000 // 16_000
    heard = x[first: last + 1]
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(heard.shape[0])))
    assert abs(np.argmax(spectrum) * 16_000 / heard.shape[0] - 440) < 3
    assert 0.45 < float(np.max(np.abs(heard))) < 0.55
    assert (last - first) / 16 == pytest.approx(500, abs=30)  # ms
    offset_ms = (heard_ns - started.t_ns) / 1e6
    print(f"playback_started -> heard on the monitor: {offset_ms:+.1f} ms")
    assert abs(offset_ms) < 60  # measured about +10 ms: the two clock estimates agree


def test_barge_in_stops_the_device_quickly(device) -> None:
    sink, recorder = device
    core = SpeakerCore(load_config(SpeakerConfig, {"ECHO_GUARD": "off"}), sink)
    recorder.chunks.clear()
    t = np.arange(int(2.0 * 22_050)) / 22_050
    tone = (0.5 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    outputs = core.handle(Output.AUDIO, *_fragment(tone, 1))
    time.sleep(0.6)
    now = time.time_ns()
    outputs += core.handle(Output.EVENTS, *VadEvent(kind=VadEventKind.SPEECH_STARTED, session_id="device-test",
                                                    turn_id=2, t_ns=now - 300_000_000, detected_ns=now).encode())
    while core.busy():
        outputs += core.step()
    time.sleep(0.3)
    playback, timing = _decode(outputs)
    barge = next(e for e in timing if e.kind is TimingKind.BARGE_IN)
    assert [p.kind for p in playback] == [PlaybackKind.SEGMENT_INTERRUPTED, PlaybackKind.TURN_INTERRUPTED,
                                          PlaybackKind.TURN_DONE]
    x = np.concatenate([c.samples for c in recorder.chunks])
    first, last = _active(x)
    heard_end_ns = recorder.chunks[0].t_ns + last * 1_000_000_000 // 16_000
    print(f"barge-in: {barge.fields[Key.DURATION_MS]:.1f} ms detection -> stop (estimated), "
          f"heard stop - estimated stop {(heard_end_ns - barge.t_ns) / 1e6:+.1f} ms, "
          f"heard {(last - first) / 16:.0f} ms of a 2000 ms tone")
    assert (last - first) / 16 < 1000  # stopped well before the tone's end
    assert barge.fields[Key.DURATION_MS] < 100  # detection -> silence, including the device buffer
    assert abs(heard_end_ns - barge.t_ns) < 60 * 1_000_000
