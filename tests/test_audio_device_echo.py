"""The real device path of echo cancellation through PulseAudio: the speaker's DeviceSink plays an answer into a
null sink and publishes its reference; the user's speech is played into the same sink by a second stream; the
mic's DeviceCapture records the sink's monitor (echo + user); the AEC core, aligning the two by their device
clock estimates, removes the echo and keeps the user.

Needs PulseAudio and PortAudio like tests/test_audio_device.py (its ``null_sink`` fixture); skipped without them.
About 8 s, most of it real-time playback.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from recordings import load_clip
from dora_voice import audio
from dora_voice.config import load_config
from dora_voice.echo import load_canceller
from dora_voice.nodes.aec import AecConfig, AecCore
from dora_voice.nodes.speaker import SpeakerConfig, SpeakerCore
from dora_voice.schema import AudioChunk, AudioFragment, Key, Output, ReferenceFrame, TimingEvent, TimingKind
from dora_voice.sinks import DeviceSink
from pulse import DEVICE_RATE as RATE, Recorder

pytestmark = pytest.mark.device


def _fragment(samples: np.ndarray, turn: int) -> tuple:
    return AudioFragment(samples=samples, sample_rate=16_000, session_id="echo-test", turn_id=turn, segment_index=0,
                         fragment_index=0, text_segment_index=0, is_last_fragment=True, is_final=True,
                         is_streaming=True, t_ns=time.time_ns(), segments_total=1).encode()


def _power_db(x: np.ndarray) -> float:
    return 10 * float(np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20))


def test_echo_of_the_device_speaker_is_cancelled_and_the_user_kept(null_sink) -> None:  # noqa: F811
    sink = DeviceSink("pulse", keep_history_ms=2000)
    sink.open(RATE)
    user_stream = DeviceSink("pulse")  # the user, talking into the same room
    user_stream.open(RATE)
    recorder = Recorder()
    try:
        deadline = time.monotonic() + 10
        while not (sink.settled and user_stream.settled):
            assert time.monotonic() < deadline, "the null sink never started consuming audio"
            time.sleep(0.02)
        recorder.chunks.clear()
        core = SpeakerCore(load_config(SpeakerConfig, {"BARGE_IN": "false", "ECHO_GUARD": "aec"}), sink,
                           reference=True, aec_ready=True)
        assert core.reference is not None
        answer = np.concatenate([load_clip("librivox-0880.wav"), load_clip("cards-005.wav")]) * 0.8
        outputs = core.handle(Output.AUDIO, *_fragment(answer.astype(np.float32), 0))
        started = time.monotonic()
        user = audio.resample(load_clip("goforward.wav"), 16_000, RATE) * 0.5
        user_at = None
        while time.monotonic() - started < answer.shape[0] / 16_000 + 3.5:
            outputs += core.step()
            if user_at is None and time.monotonic() - started > answer.shape[0] / 16_000 + 0.5:
                user_at = time.time_ns()
                user_stream.place(0, user.astype(np.float32), user_at)  # after the answer: the user alone
        references = [ReferenceFrame.decode(v, m) for o, v, m in outputs if o == Output.REFERENCE]
        chunks = list(recorder.chunks)
    finally:
        recorder.stop()
        user_stream.close()
        sink.close()

    assert references and all(r.source == "device" for r in references)
    aec = AecCore(load_config(AecConfig, {"ECHO_GUARD": "aec"}), load_canceller(16_000))
    out = []
    pending = list(references)
    for chunk in chunks:  # in arrival order: the reference arrives ahead of its echo (the device buffer's latency)
        while pending and pending[0].t_ns <= chunk.t_ns + 100_000_000:
            out += aec.handle(Output.REFERENCE, *pending.pop(0).encode())
        out += aec.handle(Output.AUDIO, *chunk.encode())
    out += aec.on_end()
    assert aec.input_errors == 0
    cleaned = np.concatenate([AudioChunk.decode(v, m).samples for o, v, m in out if o == Output.AUDIO])
    mic = np.concatenate([c.samples for c in chunks])[: cleaned.shape[0]]
    t0 = chunks[0].t_ns

    def index(t_ns: int) -> int:
        return int((t_ns - t0) * 16_000 // 1_000_000_000)

    played = [e for e in (TimingEvent.decode(v, m) for o, v, m in outputs if o == Output.TIMING)
              if e.kind is TimingKind.PLAYBACK_STARTED]
    a = index(played[0].t_ns) + 16_000  # after AEC3's first second
    b = index(played[0].t_ns) + answer.shape[0] - 1600
    assert _power_db(mic[a:b]) > -45, "the answer was not heard on the monitor"
    erle = _power_db(mic[a:b]) - _power_db(cleaned[a:b])
    u = index(user_at) + 1600
    user_kept = _power_db(cleaned[u: u + 16_000]) - _power_db(mic[u: u + 16_000])
    stats = [TimingEvent.decode(v, m) for o, v, m in out if o == Output.TIMING]
    delays = [e.fields[Key.DELAY_MS] for e in stats if e.fields[Key.DELAY_MS] >= 0]
    print(f"device path: ERLE {erle:.1f} dB, user kept {user_kept:+.1f} dB, echo delay {delays[-1] if delays else '-'} "
          f"ms behind the reference's timestamps, {len(references)} reference frames")
    assert erle > 20
    assert user_kept > -3  # the user alone passes (AEC3 only suppresses while there is echo)
    assert delays and 0 <= delays[-1] < 150  # the device clocks agree to within the monitor's latency
