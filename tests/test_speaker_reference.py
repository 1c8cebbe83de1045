"""speaker/reference: the far-end reference is exactly what the speaker plays (file and device sinks), on the
output clock, in 20 ms frames at 16 kHz, silence and barge-in cuts included."""

from __future__ import annotations

import time

import numpy as np

from dora_voice import audio
from dora_voice.config import load_config
from dora_voice.nodes.speaker import EchoGuard, SpeakerConfig, SpeakerCore
from dora_voice.schema import Output, ReferenceFrame, VadEventKind
from dora_voice.sinks import DeviceSink
from fakes import T0, FakeOutputStream, fragment, sine, vad, wait_for
from fakes import SpeakerHarness as Harness

FRAME = 320


class ReferenceHarness(Harness):
    """The speaker harness with the reference output on; keeps the reference frames."""

    def __init__(self, tmp_path, env: dict | None = None, **kwargs) -> None:
        self.reference: list[ReferenceFrame] = []
        super().__init__(tmp_path, {"SPEAKER_REFERENCE": "on", **(env or {})}, **kwargs)  # sends stream_started: the sink's origin is the mic's start
        self.core = SpeakerCore(self.config, self.sink, clock_ns=self.clock, sleep=self.clock.sleep, reference=True,
                                aec_ready=True)

    def collect(self, outputs) -> None:
        rest = []
        for output_id, value, meta in outputs:
            if output_id == Output.REFERENCE:
                self.reference.append(ReferenceFrame.decode(value, meta))
            else:
                rest.append((output_id, value, meta))
        super().collect(rest)

    def signal(self) -> np.ndarray:
        return np.concatenate([f.samples for f in self.reference])


def test_reference_is_the_played_timeline_on_the_mic_clock(tmp_path) -> None:
    h = ReferenceHarness(tmp_path, {"ECHO_GUARD": "aec"})
    assert h.core.echo_guard is EchoGuard.AEC
    h.at(0.5)
    tone = sine(300, 0.6)
    h.audio(fragment(0, 0, 0, tone, final=True, total=1))
    h.run(until_s=2.0)
    frames = h.reference
    assert frames and all(f.samples.shape == (FRAME,) and f.sample_rate == 16_000 for f in frames)
    assert [f.sample_offset for f in frames] == [i * FRAME for i in range(len(frames))]  # contiguous from 0
    assert all(f.t_ns == T0 + f.sample_offset * 1_000_000_000 // 16_000 for f in frames)  # the mic's clock
    assert all(f.source == "file" for f in frames)
    ref = h.signal()
    played = h.out()
    assert ref.shape[0] >= played.shape[0]
    np.testing.assert_array_equal(ref[: played.shape[0]], played)  # exactly what the listener hears, fades included
    assert not ref[played.shape[0]:].any()  # silence after it
    assert np.flatnonzero(ref)[0] >= int(0.5 * 16_000)  # nothing before the answer started (at 0.5 s)
    # Published once final: never ahead of the (fake) clock.
    assert frames[-1].t_ns + FRAME * 62_500 <= h.clock.t_ns


def test_reference_carries_the_barge_in_cut(tmp_path) -> None:
    h = ReferenceHarness(tmp_path, {"ECHO_GUARD": "aec", "BARGE_IN_FADE_MS": "20"})
    tone = sine(200, 2.0)
    h.audio(fragment(0, 0, 0, tone, final=True, total=1))
    h.run(until_s=0.8)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 0.6, 0.8))  # onset while the speaker is audible: aec
    h.run(until_s=1.5)                                                 # mode does not ignore it
    assert h.core.barge_ins == 1
    ref = h.signal()
    played = h.out()
    np.testing.assert_array_equal(ref[: played.shape[0]], played)
    stop = np.flatnonzero(ref)[-1]
    assert 0.8 * 16_000 <= stop <= 0.85 * 16_000  # cut at the barge-in with a 20 ms fade
    assert not ref[stop + 1:].any()


def test_reference_resampled_from_the_tts_rate(tmp_path) -> None:
    h = ReferenceHarness(tmp_path)
    tone = sine(440, 1.0, rate=22_050)
    h.audio(fragment(0, 0, 0, tone, final=True, total=1, rate=22_050))
    h.run(until_s=1.5)
    ref = h.signal()
    expected = audio.resample(h.out(), 22_050, 16_000)
    n = min(ref.shape[0], expected.shape[0]) - 400
    assert n > 15_000
    # one continuous stream resampler vs the whole-signal one: the same signal up to the filters' edges
    assert float(np.max(np.abs(ref[200:n] - expected[200:n]))) < 0.02


def test_reference_is_silence_before_the_first_answer_and_stops_with_the_vad(tmp_path) -> None:
    h = ReferenceHarness(tmp_path)
    assert h.sink.rate == 0  # the file sink opens at the first fragment's rate
    h.run(until_s=0.3)
    assert h.reference and not h.signal().any()
    assert h.reference[-1].sample_offset + FRAME >= int(0.25 * 16_000)
    h.collect(h.core.on_input_closed(Output.EVENTS))  # nobody listens for the echo any more
    assert not h.core.busy()
    count = len(h.reference)
    h.at(1.0)
    h.collect(h.core.step())
    assert len(h.reference) == count


def test_no_reference_without_the_output_or_an_echo_canceller(tmp_path) -> None:
    h = Harness(tmp_path)
    outputs = h.core.handle(Output.AUDIO, *fragment(0, 0, 0, sine(300, 0.2), final=True, total=1))
    while h.core.busy():
        outputs += h.core.step()
    assert not any(o == Output.REFERENCE for o, _v, _m in outputs)
    # wired, but SPEAKER_REFERENCE=auto and the guard resolves to off (files): nobody needs it
    config = load_config(SpeakerConfig, {"AUDIO_OUTPUT": str(tmp_path / "o.wav")})
    assert SpeakerCore(config, h.sink, reference=True).reference is None
    config = load_config(SpeakerConfig, {"AUDIO_OUTPUT": str(tmp_path / "o.wav"), "ECHO_GUARD": "aec"})
    assert SpeakerCore(config, h.sink, reference=True).reference is not None


def test_device_sink_reference_is_what_was_written() -> None:
    streams = []

    def factory(rate_hz, block):
        streams.append(FakeOutputStream(rate_hz, block))
        return streams[-1]

    sink = DeviceSink(stream_factory=factory, block_ms=10, fade_ms=8, keep_history_ms=2000)
    sink.open(16_000)
    config = load_config(SpeakerConfig, {"BARGE_IN": "false"})
    core = SpeakerCore(config, sink, reference=True)
    frames: list[ReferenceFrame] = []
    try:
        wait_for(lambda: len(streams[0].written) >= 3)
        outputs = core.handle(Output.AUDIO, *fragment(0, 0, 0, sine(500, 0.3), final=True, total=1))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sum(f.samples.shape[0] for f in frames) < 16_000:
            outputs = core.step()
            frames += [ReferenceFrame.decode(v, m) for o, v, m in outputs if o == Output.REFERENCE]
        assert all(f.source == "device" for f in frames)
        assert [f.sample_offset for f in frames] == [i * FRAME for i in range(len(frames))]
        ref = np.concatenate([f.samples for f in frames])
        written = streams[0].output()
        n = min(ref.shape[0], written.shape[0])
        np.testing.assert_array_equal(ref[:n], written[:n])  # the blocks handed to the device, exactly
        assert np.abs(ref).max() > 0.4
        # stamped on the device clock estimate: frame k leaves at anchor + k / 16 kHz (the anchor settles)
        assert all(abs(f.t_ns - sink.position_to_ns(f.sample_offset)) < 20_000_000 for f in frames)
    finally:
        sink.close()
