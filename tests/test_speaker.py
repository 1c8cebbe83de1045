"""speaker node: ordering, the file sink's clock, pauses, fades, underruns, barge-in, echo guard, bad input,
and the device sink's writer against a fake output stream."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from dora_voice import audio
from dora_voice.config import ConfigError, load_config
from dora_voice.nodes import speaker
from dora_voice.nodes.speaker import EchoGuard, SpeakerConfig, SpeakerCore
from dora_voice.sinks import DeviceSink, FileSink
from dora_voice.schema import (
    Key, Output, PlaybackEvent, PlaybackKind, TimingEvent, TimingKind, VadEventKind,
)
from fakes import RATE, T0, FakeOutputStream, dc, fragment, max_jump, sine, vad, wait_for
from fakes import SpeakerHarness as Harness

MS = 1_000_000


def test_shuffled_fragments_play_in_order(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0", "SENTENCE_PAUSE_MS": "0"})
    rng = np.random.default_rng(1)
    parts, messages = [], []
    for seg in range(3):
        for idx in range(4):
            samples = rng.uniform(-0.5, 0.5, 800 + 37 * idx).astype(np.float32)
            parts.append(samples)
            messages.append(fragment(0, seg, idx, samples, last=idx == 3, final=(seg, idx) == (2, 3), total=3 if
                                     (seg, idx) == (2, 3) else None))
    order = rng.permutation(len(messages))
    assert order[0] != 0
    h.audio(*(messages[k] for k in order))
    h.end()
    np.testing.assert_array_equal(h.out(), np.concatenate(parts))  # in order, no gap, no overlap
    played = [(p.kind, p.segment_index) for p in h.playback]
    assert played == [(PlaybackKind.SEGMENT_PLAYED, 0), (PlaybackKind.SEGMENT_PLAYED, 1),
                      (PlaybackKind.SEGMENT_PLAYED, 2), (PlaybackKind.TURN_DONE, -1)]
    (turn_played,) = h.events(TimingKind.TURN_PLAYED)
    assert turn_played.fields[Key.COUNT] == 3 and turn_played.fields[Key.UNDERRUNS] == 0
    assert turn_played.fields[Key.AUDIO_MS] == pytest.approx(sum(p.shape[0] for p in parts) / 16)
    assert h.core.input_errors == 0


def test_fragment_arriving_at_2s_lands_at_sample_2s_and_wav_matches(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0"})
    h.at(2.0)
    tone = sine(440, 0.5)
    h.audio(fragment(0, 0, 0, tone, final=True, total=1))
    (started,) = h.events(TimingKind.PLAYBACK_STARTED)
    assert started.t_ns == T0 + 2_000_000_000
    h.end()
    out = h.out()
    assert out.shape[0] == 2 * RATE + tone.shape[0]
    assert not out[: 2 * RATE].any()
    np.testing.assert_array_equal(out[2 * RATE:], tone)
    written, rate = audio.read_wav_mono(h.path)
    assert rate == RATE
    np.testing.assert_allclose(written, out, atol=1 / 32768)
    (seg_played,) = h.events(TimingKind.SEGMENT_PLAYED)
    assert seg_played.t_ns == T0 + 2_500_000_000 and seg_played.fields[Key.AUDIO_MS] == pytest.approx(500)


def test_without_mic_the_first_fragment_is_the_origin(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0"}, mic=False)
    h.at(5.0)
    h.audio(fragment(0, 0, 0, dc(0.25, 0.1), final=True, total=1))
    h.end()
    assert h.out().shape[0] == 1600 and h.out()[0] == 0.25
    assert h.events(TimingKind.PLAYBACK_STARTED)[0].t_ns == T0 + 5_000_000_000


def test_pause_between_segments_and_fades_at_joins(tmp_path) -> None:
    h = Harness(tmp_path)  # SENTENCE_PAUSE_MS=120, CROSSFADE_MS=8 by default
    h.audio(fragment(0, 0, 0, dc(0.5, 0.5), last=True), fragment(0, 1, 0, dc(0.5, 0.3), final=True, total=2))
    h.end()
    out = h.out()
    pause, fade = 1920, 128
    assert out.shape[0] == 8000 + pause + 4800
    assert out[0] == 0.0 and out[7999] == 0.0  # segment 0 faded in and out
    assert np.all(out[fade:8000 - fade] == 0.5)
    assert not out[8000:8000 + pause].any()  # the pause
    assert out[8000 + pause] == 0.0 and out[8000 + pause + fade] == 0.5 and out[-1] == 0.0
    ends = [t.t_ns for t in h.events(TimingKind.SEGMENT_PLAYED)]
    assert ends == [T0 + 500 * MS, T0 + (500 + 120 + 300) * MS]


def test_underrun_is_counted_and_the_gap_faded(tmp_path) -> None:
    h = Harness(tmp_path)
    tone = sine(300, 1.0)
    h.audio(fragment(0, 0, 0, tone[:8000]))  # 0.5 s, placed at 0
    h.at(0.8)
    h.audio(fragment(0, 0, 1, tone[8000:], last=True))  # arrives 300 ms after the first ran out
    h.at(1.9)
    h.audio(fragment(0, 1, 0, tone[:4000], final=True, total=2))  # due at 1.3 + 0.12 s: 480 ms late
    h.end()
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.UNDERRUNS] == 2
    assert turn.fields[Key.UNDERRUN_MS] == pytest.approx(300 + 480)
    out = h.out()
    assert not out[8000:12_800].any()  # the gap is silence
    # no click: the audio before the gap fades out, the audio after it fades in
    assert max_jump(out) <= max_jump(tone) + 1e-6
    assert abs(out[7999]) < 1e-6 and abs(out[12_800]) < 1e-6


def test_click_detector_at_every_join(tmp_path) -> None:
    def render(crossfade_ms: str) -> tuple[np.ndarray, np.ndarray]:
        h = Harness(tmp_path, {"CROSSFADE_MS": crossfade_ms, "SENTENCE_PAUSE_MS": "50"})
        tone = sine(500, 1.2, amplitude=0.8)  # cut into fragments of odd sizes; segment 1 starts at 9000
        h.audio(fragment(0, 0, 0, tone[0:3001]), fragment(0, 0, 1, tone[3001:7777]))
        h.at(0.6)  # 0.114 s late: a gap inside segment 0
        h.audio(fragment(0, 0, 2, tone[7777:9000], last=True))
        h.audio(fragment(0, 1, 0, tone[9000:19_200], final=True, total=2))
        h.end()
        return h.out(), tone

    out, tone = render("8")
    assert max_jump(out) <= max_jump(tone) + 1e-6
    clicky, _ = render("0")  # the detector finds the clicks when fades are off
    assert max_jump(clicky) > 5 * max_jump(tone)


def test_no_overlap_and_nothing_dropped_across_turns(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0", "SENTENCE_PAUSE_MS": "0", "BARGE_IN": "false"})
    values, arrivals = [], [0.0, 0.05, 0.1, 0.9, 0.95, 3.0]
    plan = [(0, 0, 0, False), (0, 0, 1, True), (1, 0, 0, False), (1, 0, 1, True), (2, 0, 0, False),
            (2, 0, 1, True)]
    for k, ((turn, seg, idx, final), t) in enumerate(zip(plan, arrivals, strict=True)):
        h.at(t)
        value = 0.1 + 0.05 * k
        values.append(value)
        h.audio(fragment(turn, seg, idx, dc(value, 0.4), final=final, total=1 if final else None))
    h.end()
    out = h.out()
    for value in values:
        assert np.count_nonzero(np.isclose(out, value)) == 6400  # each fragment whole, nothing overwritten
    assert np.count_nonzero(out) == 6400 * len(values)
    starts = [t.t_ns for t in h.events(TimingKind.PLAYBACK_STARTED)]
    assert starts == [T0, T0 + 800 * MS, T0 + 1600 * MS]  # each turn queued right after the one before
    turns = h.events(TimingKind.TURN_PLAYED)
    assert [t.fields[Key.COUNT] for t in turns] == [1, 1, 1]
    assert [t.fields[Key.UNDERRUN_MS] for t in turns] == [0.0, 0.0, pytest.approx(1000)]  # turn 2: 2.0 s -> 3.0 s


def test_resampling_to_the_first_fragments_rate_is_seamless(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0", "SPEAKER_SAMPLE_RATE": "48000"})
    tone = sine(440, 1.0, rate=22_050)
    cuts = [0, 5000, 11_025, 17_000, 22_050]
    for k in range(4):
        h.audio(fragment(0, 0, k, tone[cuts[k]:cuts[k + 1]], rate=22_050, final=k == 3, total=1 if k == 3 else None))
    h.end()
    out = h.out()
    assert h.sink.rate == 48_000 and abs(out.shape[0] - 48_000) <= 2
    expected = sine(440, 1.0, rate=48_000)[: out.shape[0]]
    assert np.max(np.abs(out[500:-500] - expected[500:-500])) < 0.01  # continuous across fragment joins


# ---------------------------------------------------------------------------------------------------------------
# barge-in and echo guard


def three_segments(h: Harness) -> None:
    """Turn 0: segments of 1.0 s at 0.0, 1.12 and 2.24 s, all arriving at once."""
    h.audio(fragment(0, 0, 0, dc(0.5, 1.0), last=True), fragment(0, 1, 0, dc(0.5, 1.0), last=True),
            fragment(0, 2, 0, dc(0.5, 1.0), final=True, total=3))


def test_barge_in_stops_at_the_decision_with_a_fade(tmp_path) -> None:
    h = Harness(tmp_path)
    three_segments(h)
    h.run(until_s=1.35)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 1.30, 1.35))
    assert not h.events(TimingKind.BARGE_IN)  # 50 ms of speech so far
    h.run(until_s=2.0)
    (barge,) = h.events(TimingKind.BARGE_IN)
    stop = int(1.5 * RATE)
    assert barge.t_ns == T0 + 1_520 * MS  # decision at onset + 200 ms, then a 20 ms fade
    assert barge.fields[Key.DURATION_MS] == pytest.approx(170)  # detection (1.35 s) -> silent (1.52 s)
    assert barge.fields[Key.CANCELLED] == 1
    out = h.out()
    assert out.shape[0] == stop + 320 and out[stop - 1] == 0.5 and abs(out[-1]) < 1e-3
    assert np.all(np.diff(out[stop:]) <= 0)
    kinds = [(p.kind, p.segment_index) for p in h.playback]
    assert kinds == [(PlaybackKind.SEGMENT_PLAYED, 0), (PlaybackKind.SEGMENT_INTERRUPTED, 1),
                     (PlaybackKind.TURN_INTERRUPTED, -1), (PlaybackKind.TURN_DONE, -1)]
    assert h.playback[2].heard_fraction == pytest.approx(1.38 / 3, abs=0.001)
    assert h.playback[1].heard_fraction == pytest.approx(0.38, abs=0.001)
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.INTERRUPTED] is True and turn.fields[Key.COUNT] == 1
    assert turn.fields[Key.CANCELLED] == 1 and turn.fields[Key.AUDIO_MS] == pytest.approx(1000 + 380)
    # late fragments of the cancelled turn are discarded and counted; a new turn plays normally
    h.audio(fragment(0, 2, 1, dc(0.5, 0.1)))
    assert h.core.fragments_discarded == 1 and len(h.playback) == 4
    h.at(3.0)
    h.audio(fragment(1, 0, 0, dc(0.3, 0.2), final=True, total=1))
    h.end()
    assert h.events(TimingKind.PLAYBACK_STARTED)[-1].t_ns == T0 + 3_000 * MS
    written, _ = audio.read_wav_mono(h.path)
    assert written.shape[0] == 3 * RATE + 3200 and not written[stop + 320: 3 * RATE].any()


def test_speech_shorter_than_the_minimum_does_not_interrupt(tmp_path) -> None:
    h = Harness(tmp_path)
    three_segments(h)
    h.run(until_s=0.55)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 0.50, 0.55))
    h.run(until_s=0.65)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_ENDED, 0.60, 0.65))
    h.end()
    assert not h.events(TimingKind.BARGE_IN)
    assert [p.kind for p in h.playback].count(PlaybackKind.SEGMENT_PLAYED) == 3
    assert h.out().shape[0] == 3 * RATE + 2 * 1920


def test_barge_in_needs_something_playing(tmp_path) -> None:
    h = Harness(tmp_path)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 0.0, 0.05))
    assert not h.core.busy()  # nothing to interrupt: no polling
    h.at(1.0)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_ENDED, 0.9, 1.0))
    h.audio(fragment(0, 0, 0, dc(0.5, 0.5), final=True, total=1))
    h.end()
    assert not h.events(TimingKind.BARGE_IN) and h.out().shape[0] == RATE + 8000


def test_half_duplex_ignores_speech_while_playing(tmp_path) -> None:
    h = Harness(tmp_path, {"ECHO_GUARD": "half_duplex"})
    three_segments(h)
    h.run(until_s=1.05)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 1.0, 1.05))  # the speaker's own echo
    h.end()
    assert not h.events(TimingKind.BARGE_IN) and h.core.speech_ignored == 1
    assert [p.kind for p in h.playback].count(PlaybackKind.SEGMENT_PLAYED) == 3

    off = Harness(tmp_path, {"ECHO_GUARD": "off"})  # the same speech interrupts without the guard
    three_segments(off)
    off.run(until_s=1.05)
    off.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 1.0, 1.05))
    off.end()
    assert len(off.events(TimingKind.BARGE_IN)) == 1


def test_half_duplex_tail_and_after(tmp_path) -> None:
    h = Harness(tmp_path, {"ECHO_GUARD": "half_duplex"})
    h.audio(fragment(0, 0, 0, dc(0.5, 0.5), final=True, total=1))  # audible 0.0-0.5 s
    h.run(until_s=0.75)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 0.70, 0.75))  # within the 300 ms tail
    assert h.core.speech_ignored == 1
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 0.85, 0.90))  # after the tail: a real candidate
    assert h.core.speech_ignored == 1 and h.core._speech is not None


def test_echo_guard_auto() -> None:
    def guard(env, aec_ready=False):
        return load_config(SpeakerConfig, env).resolved_echo_guard(aec_ready)

    assert guard({}) is EchoGuard.HALF_DUPLEX  # real devices, no echo canceller: half duplex
    assert guard({}, aec_ready=True) is EchoGuard.AEC  # real devices with the aec node and its library
    assert guard({"AUDIO_OUTPUT": "o.wav"}, aec_ready=True) is EchoGuard.OFF
    assert guard({"AUDIO_INPUT": "q.wav"}) is EchoGuard.OFF
    assert guard({"AUDIO_INPUT": "q.wav", "ECHO_GUARD": "half_duplex"}) is EchoGuard.HALF_DUPLEX
    assert guard({"AUDIO_INPUT": "q.wav", "ECHO_GUARD": "aec"}) is EchoGuard.AEC
    with pytest.raises(ConfigError, match="ECHO_GUARD"):
        load_config(SpeakerConfig, {"ECHO_GUARD": "full"})
    with pytest.raises(ConfigError, match="SPEAKER_SAMPLE_RATE"):
        load_config(SpeakerConfig, {"SPEAKER_SAMPLE_RATE": "100"})


def test_reports_wait_for_the_play_head_until_nothing_can_interrupt(tmp_path) -> None:
    h = Harness(tmp_path)
    three_segments(h)
    assert h.core.busy() and not h.playback  # barge-in possible: wait for the (virtual) listener
    h.collect(h.core.on_input_closed(Output.EVENTS))  # the VAD finished: nothing can interrupt any more
    assert not h.core.busy()
    assert [p.kind for p in h.playback].count(PlaybackKind.SEGMENT_PLAYED) == 3
    assert h.events(TimingKind.TURN_PLAYED)[0].t_ns == T0 + 3_240 * MS  # stamped when it will have played
    assert h.clock.t_ns == T0

    nb = Harness(tmp_path, {"BARGE_IN": "false"})
    three_segments(nb)
    assert not nb.core.busy() and len(nb.events(TimingKind.TURN_PLAYED)) == 1


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_rejected_counted_and_the_core_keeps_working(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0"})
    good = dc(0.5, 0.1)
    nan = good.copy()
    nan[3] = np.nan
    value, meta = fragment(0, 0, 0, good)
    bad_messages = [
        (Output.AUDIO, *fragment(0, 0, 0, nan)),
        (Output.AUDIO, pa.array(good.astype(np.float64)), meta),  # wrong dtype
        (Output.AUDIO, value, {k: v for k, v in meta.items() if k != Key.TURN_ID}),  # missing metadata
        (Output.AUDIO, value, {**meta, Key.SAMPLE_RATE: "16000"}),  # sample_rate as a string
        (Output.AUDIO, *fragment(0, -1, 0, good)),  # negative index
        ("microphone", value, meta),  # unknown input id
        (Output.EVENTS, *vad(VadEventKind.SPEECH_STARTED, 0, 0)[:1], {Key.EVENT: "cough"}),
        (Output.STREAM_STARTED, pa.array(["x"]), {}),
    ]
    for input_id, v, m in bad_messages:
        h.send(input_id, (v, m)) if input_id != "microphone" else h.collect(h.core.handle(input_id, v, m))
    assert h.core.input_errors == len(bad_messages)
    errors = h.events(TimingKind.INPUT_ERROR)
    assert len(errors) == len(bad_messages) and "NaN" in errors[0].fields[Key.DETAIL]
    h.audio(fragment(0, 0, 0, good))
    h.audio(fragment(0, 0, 0, good))  # duplicate
    h.audio(fragment(0, 0, 1, good, final=True, total=1))
    h.audio(fragment(0, 3, 0, good))  # beyond segments_total
    assert h.core.input_errors == len(bad_messages) + 2
    h.end()
    np.testing.assert_array_equal(h.out(), np.concatenate([good, good]))
    assert len(h.events(TimingKind.TURN_PLAYED)) == 1


def test_a_newer_turn_closes_an_incomplete_one(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0", "SENTENCE_PAUSE_MS": "0"})
    h.audio(fragment(0, 0, 0, dc(0.5, 0.2)), fragment(0, 0, 2, dc(0.5, 0.2)))  # fragment 1 never comes
    h.at(1.0)
    h.audio(fragment(1, 0, 0, dc(0.25, 0.2), final=True, total=1))
    h.end()
    turns = h.events(TimingKind.TURN_PLAYED)
    assert [t.turn_id for t in turns] == [0, 1]
    assert turns[0].fields[Key.COUNT] == 1 and turns[1].fields[Key.COUNT] == 1
    assert h.core.fragments_discarded == 1  # the buffered fragment that could not be placed
    assert h.out().shape[0] == RATE + 3200


def test_on_end_closes_an_unfinished_turn_and_writes_the_wav(tmp_path) -> None:
    h = Harness(tmp_path)
    h.audio(fragment(0, 0, 0, dc(0.5, 0.3), last=True), fragment(0, 1, 0, dc(0.5, 0.3)))  # no final
    h.end()
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.COUNT] == 2
    assert [p.kind for p in h.playback][-1] is PlaybackKind.TURN_DONE
    assert h.path.exists() and audio.read_wav_mono(h.path)[0].shape[0] == h.out().shape[0]


def test_empty_closing_fragments(tmp_path) -> None:
    h = Harness(tmp_path)
    h.audio(fragment(0, 0, 0, dc(0.5, 0.2), last=True))
    h.audio(fragment(0, 1, 0, np.zeros(0, np.float32), final=True, total=1))  # empty marker closes the turn
    h.audio(fragment(1, 0, 0, np.zeros(0, np.float32), final=True, total=0))  # a reply with no speech
    # the TTS cut a segment before its first fragment: it closes that segment empty; nothing of it was heard
    h.audio(fragment(2, 0, 0, dc(0.5, 0.2), last=True))
    h.audio(fragment(2, 1, 0, np.zeros(0, np.float32), final=True, total=2))
    h.end()
    assert [t.fields[Key.COUNT] for t in h.events(TimingKind.TURN_PLAYED)] == [1, 0, 1]
    played = [(p.turn_id, p.segment_index) for p in h.playback if p.kind is PlaybackKind.SEGMENT_PLAYED]
    assert played == [(0, 0), (2, 0)]
    assert h.core.input_errors == 0


def test_a_bad_final_fragment_does_not_corrupt_its_turn(tmp_path) -> None:
    h = Harness(tmp_path, {"CROSSFADE_MS": "0"})
    h.audio(fragment(0, 0, 0, dc(0.5, 0.1), last=True))
    h.audio(fragment(0, 3, 0, dc(0.5, 0.1), final=True, total=2))  # segment 3 of 2: rejected
    assert h.core.input_errors == 1
    h.audio(fragment(0, 1, 0, dc(0.5, 0.1), final=True, total=2))
    h.end()
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.COUNT] == 2 and turn.fields[Key.CANCELLED] == 0


def test_build_sink_fails_early_on_an_unwritable_output(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        speaker.build_sink(load_config(SpeakerConfig, {"AUDIO_OUTPUT": str(blocker / "out.wav")}))
    sink = speaker.build_sink(load_config(SpeakerConfig, {"AUDIO_OUTPUT": str(tmp_path / "out.wav")}))
    assert isinstance(sink, FileSink) and (tmp_path / "out.wav").exists()  # an empty WAV from the start


# ---------------------------------------------------------------------------------------------------------------
# device sink against a fake output stream


def open_device_sink(rate: int = RATE) -> tuple[DeviceSink, FakeOutputStream]:
    streams: list[FakeOutputStream] = []

    def factory(rate_hz: int, block: int) -> FakeOutputStream:
        streams.append(FakeOutputStream(rate_hz, block))
        return streams[0]

    sink = DeviceSink(stream_factory=factory, block_ms=10, fade_ms=8)
    sink.open(rate)
    return sink, streams[0]


@pytest.mark.real_time
def test_device_sink_plays_placed_audio_contiguously_and_truncates() -> None:
    sink, stream = open_device_sink()
    try:
        assert stream.started and stream.block == 160
        wait_for(lambda: len(stream.written) >= 3)
        tone = sine(440, 0.3)
        start = sink.place(0, tone.copy(), time.time_ns())
        assert start >= 480 and start % 160 == 0  # at the writer's head, never in the past
        later = sink.place(start + tone.shape[0], tone.copy(), time.time_ns())
        assert later == start + tone.shape[0]
        wait_for(lambda: sink.earliest_position(0) >= start + 1600)
        stop, end = sink.truncate(sink.earliest_position(0), 320, time.time_ns())
        assert end == stop + 320 and sink.end == end
        wait_for(lambda: stream.output().shape[0] >= end + 800)
        out = stream.output()
        np.testing.assert_array_equal(out[start:stop], np.concatenate([tone, tone])[: stop - start])
        assert np.all(np.abs(out[stop:end]) <= np.abs(np.concatenate([tone, tone])[stop - start: end - start]))
        assert not out[end:].any()  # everything after the fade was flushed
        assert sink.played_position(time.time_ns()) <= sink.earliest_position(0)
    finally:
        sink.close()
    assert stream.closed


@pytest.mark.real_time
def test_device_sink_cut_returns_what_was_placed_after_it_for_a_resume() -> None:
    sink, stream = open_device_sink()
    try:
        wait_for(lambda: len(stream.written) >= 3)
        tone = sine(440, 0.3)
        start = sink.place(0, tone.copy(), time.time_ns())
        sink.place(start + tone.shape[0] + 800, tone.copy(), time.time_ns())  # a 50 ms gap between the two
        placed = np.concatenate([tone, np.zeros(800, np.float32), tone])
        wait_for(lambda: sink.earliest_position(0) >= start + 1600)
        stop, end, removed = sink.cut(sink.earliest_position(0), 320, time.time_ns())
        assert end == stop + 320 and sink.end == end
        np.testing.assert_array_equal(removed, placed[stop - start:])  # unfaded, the gap as zeros
        resumed = sink.place(end + 1600, removed.copy(), time.time_ns())
        wait_for(lambda: stream.output().shape[0] >= resumed + removed.shape[0] + 160)
        out = stream.output()
        assert not out[end:resumed].any()
        np.testing.assert_array_equal(out[resumed: resumed + removed.shape[0]], removed)
    finally:
        sink.close()


@pytest.mark.real_time
def test_device_sink_fades_audio_that_runs_dry_mid_block() -> None:
    sink, stream = open_device_sink()
    try:
        wait_for(lambda: len(stream.written) >= 2)
        start = sink.place(0, dc(0.5, 0.1025), time.time_ns())  # ends 40 samples into a 160-sample block
        end = start + 1640
        wait_for(lambda: stream.output().shape[0] >= end + 320)
        out = stream.output()
        assert out[start + 1000] == 0.5 and abs(out[end - 1]) < 1e-6 and not out[end:].any()
    finally:
        sink.close()


@pytest.mark.real_time
def test_speaker_core_over_the_device_sink_reports_after_playing() -> None:
    sink, stream = open_device_sink()
    config = load_config(SpeakerConfig, {"BARGE_IN": "false"})
    core = SpeakerCore(config, sink)
    outputs = core.handle(Output.AUDIO, *fragment(0, 0, 0, sine(440, 0.2), final=True, total=1))
    started = [TimingEvent.decode(v, m) for o, v, m in outputs if o == Output.TIMING]
    assert started[0].kind is TimingKind.PLAYBACK_STARTED
    assert core.busy()  # a device listener: reports wait for the play head
    while core.busy():
        outputs += core.step()
    # Causality, not timing: by the time the reports are out, the tone (faded ends) has reached the stream.
    assert np.count_nonzero(stream.output()) >= 3100
    kinds = [PlaybackEvent.decode(v, m).kind for o, v, m in outputs if o == Output.PLAYBACK]
    assert kinds == [PlaybackKind.SEGMENT_PLAYED, PlaybackKind.TURN_DONE]
    outputs += core.on_end()  # closes the sink once everything placed has been written


@pytest.mark.real_time
def test_device_underflows_count_as_underruns_of_the_playing_turn() -> None:
    sink, stream = open_device_sink()
    core = SpeakerCore(load_config(SpeakerConfig, {"BARGE_IN": "false"}), sink)
    stream.underflow_after_samples = 800  # 50 ms into the turn's audio
    outputs = core.handle(Output.AUDIO, *fragment(0, 0, 0, sine(440, 0.3), final=True, total=1))
    while core.busy():
        outputs += core.step()
    outputs += core.on_end()
    (turn,) = [TimingEvent.decode(v, m) for o, v, m in outputs if o == Output.TIMING
               and TimingEvent.decode(v, m).kind is TimingKind.TURN_PLAYED]
    assert turn.fields[Key.UNDERRUNS] == 1 and turn.fields[Key.UNDERRUN_MS] == pytest.approx(10)


def test_device_errors_name_the_file_alternative(monkeypatch) -> None:
    def no_device(spec, kind):
        raise audio.AudioDeviceError(f"no usable default {kind} device")

    monkeypatch.setattr(speaker.audio, "find_device", no_device)
    with pytest.raises(audio.AudioDeviceError, match="AUDIO_OUTPUT=out.wav"):
        DeviceSink().open(48_000)
    with pytest.raises(audio.AudioDeviceError, match="AUDIO_OUTPUT=out.wav"):
        DeviceSink.default_rate()


# ---------------------------------------------------------------------------------------------------------------
# CLI and contract


def test_cli_help_and_list_devices(monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        speaker.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("AUDIO_OUTPUT", "AUDIO_OUTPUT_DEVICE", "SPEAKER_SAMPLE_RATE", "SENTENCE_PAUSE_MS", "CROSSFADE_MS",
                 "BARGE_IN", "BARGE_IN_MIN_SPEECH_MS", "BARGE_IN_FADE_MS", "ECHO_GUARD", "--list-devices"):
        assert name in text
    monkeypatch.setattr(speaker.audio, "describe_devices", lambda: "  1 default, ALSA (32 in, 32 out)")
    with pytest.raises(SystemExit) as stop:
        speaker.main(["--list-devices"])
    assert stop.value.code == 0
    assert "default" in capsys.readouterr().out


def test_contract() -> None:
    contract = speaker.CONTRACT
    assert contract.path == "dora-voice-speaker"
    assert set(contract.inputs) == {Output.AUDIO, Output.STREAM_STARTED, Output.EVENTS}
    assert set(contract.outputs) == {Output.PLAYBACK, Output.REFERENCE, Output.TIMING}
    assert {"AUDIO_OUTPUT", "ECHO_GUARD", "BARGE_IN_MIN_SPEECH_MS"} <= set(contract.env())


def test_no_sentence_pause_after_a_mid_phrase_cut(tmp_path) -> None:
    def second_segment_start(ends_at_punctuation: bool) -> int:
        h = Harness(tmp_path, {"SENTENCE_PAUSE_MS": "100", "CROSSFADE_MS": "0"})
        value, meta = fragment(0, 0, 0, dc(0.5, 0.5), last=True)
        meta[Key.ENDS_AT_PUNCTUATION] = ends_at_punctuation
        h.audio((value, meta), fragment(0, 1, 0, dc(0.5, 0.5), last=True, final=True, total=2))
        h.end()
        played = {e.fields[Key.SEGMENT_INDEX]: e for e in h.events(TimingKind.SEGMENT_PLAYED)}
        return round((played[1].t_ns - T0) * RATE / 1e9) - RATE // 2  # end minus its length

    assert second_segment_start(True) == RATE // 2 + RATE // 10  # a 100 ms pause after "Hello."
    assert second_segment_start(False) == RATE // 2  # joined directly after "The capital of"


# ---------------------------------------------------------------------------------------------------------------
# pause at a speech onset (BARGE_IN_PAUSE_MS in the VAD)


def paused_at_1_35(tmp_path, env: dict | None = None) -> Harness:
    """Three segments playing; a speech onset at 1.30 s announced at 1.35 s pauses them."""
    h = Harness(tmp_path, env)
    three_segments(h)
    h.run(until_s=1.35)
    h.at(1.35)  # run() may pass it by a poll step
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_ONSET, 1.30, 1.35))
    return h


def uninterrupted(tmp_path) -> np.ndarray:
    h = Harness(tmp_path / "plain")
    three_segments(h)
    h.end()
    return h.out()


def test_pause_at_the_onset_then_barge_in_stops_where_the_pause_began(tmp_path) -> None:
    h = paused_at_1_35(tmp_path)
    at = int(1.35 * RATE)
    assert h.core.pauses == 1 and not h.events(TimingKind.BARGE_IN)
    assert [p.segment_index for p in h.playback] == [0]  # segment 0 ended at 1.0 s
    assert h.sink.end == at + 320  # faded out over BARGE_IN_FADE_MS, nothing placed after
    h.run(until_s=1.48)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_STARTED, 1.30, 1.48))  # confirmed (6 frames)
    h.run(until_s=2.0)
    (barge,) = h.events(TimingKind.BARGE_IN)
    assert barge.t_ns == T0 + 1_370 * MS  # silent at the pause, not at the decision (1.50 s)
    assert barge.fields[Key.DURATION_MS] == 0  # silent (1.37 s) before the detection (1.48 s)
    assert barge.fields[Key.SPEECH_START_NS] == T0 + 1_300 * MS
    kinds = [(p.kind, p.segment_index) for p in h.playback]
    assert kinds == [(PlaybackKind.SEGMENT_PLAYED, 0), (PlaybackKind.SEGMENT_INTERRUPTED, 1),
                     (PlaybackKind.TURN_INTERRUPTED, -1), (PlaybackKind.TURN_DONE, -1)]
    assert h.playback[1].heard_fraction == pytest.approx(0.23, abs=0.001)
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.CANCELLED] == 1 and turn.fields[Key.AUDIO_MS] == pytest.approx(1000 + 230)
    h.end()
    out = h.out()
    assert out.shape[0] == at + 320 and out[at - 1] == 0.5 and np.all(np.diff(out[at:]) <= 0)
    assert h.core.pauses_resumed == 0 and not h.events(TimingKind.PLAYBACK_PAUSED)


def test_a_discarded_onset_resumes_where_the_pause_began_and_nothing_is_lost(tmp_path) -> None:
    plain = uninterrupted(tmp_path)
    h = paused_at_1_35(tmp_path)
    at, resume = int(1.35 * RATE), int(1.70 * RATE)
    h.run(until_s=1.70)
    assert [p.segment_index for p in h.playback] == [0]  # segment 1 is not reported while paused
    h.send(Output.EVENTS, vad(VadEventKind.ONSET_DISCARDED, 1.36, 1.70))
    h.end()
    (paused,) = h.events(TimingKind.PLAYBACK_PAUSED)
    assert paused.t_ns == T0 + 1_370 * MS and paused.fields[Key.DURATION_MS] == pytest.approx(330)
    assert paused.fields[Key.SPEECH_START_NS] == T0 + 1_300 * MS
    assert h.core.pauses == h.core.pauses_resumed == 1 and not h.events(TimingKind.BARGE_IN)
    played = [(p.kind, p.segment_index, p.t_ns) for p in h.playback if p.kind is PlaybackKind.SEGMENT_PLAYED]
    assert played == [(PlaybackKind.SEGMENT_PLAYED, 0, T0 + 1_000 * MS),
                      (PlaybackKind.SEGMENT_PLAYED, 1, T0 + 2_470 * MS),  # 2.12 s + the 350 ms gap
                      (PlaybackKind.SEGMENT_PLAYED, 2, T0 + 3_590 * MS)]
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.UNDERRUNS] == 0 and turn.fields[Key.INTERRUPTED] is False
    out = h.out()
    assert out.shape[0] == plain.shape[0] + resume - at
    np.testing.assert_array_equal(out[:at], plain[:at])
    assert not out[at + 320: resume].any()  # the gap heard
    fade = 128  # CROSSFADE_MS: the resumed audio fades in
    np.testing.assert_array_equal(out[resume + fade:], plain[at + fade:])
    assert np.all(np.diff(out[resume: resume + fade]) >= 0) and max_jump(out) < 0.05


def test_a_pause_without_a_verdict_resumes_after_barge_in_resume_ms(tmp_path) -> None:
    h = paused_at_1_35(tmp_path, {"BARGE_IN_RESUME_MS": "300"})
    assert h.core.busy()  # the resume deadline is polled
    h.run(until_s=1.9)
    (paused,) = h.events(TimingKind.PLAYBACK_PAUSED)  # onset 1.30 s + 300 ms
    assert paused.fields[Key.DURATION_MS] == pytest.approx(1_600 - 1_370, abs=1)
    h.end()
    assert [p.kind for p in h.playback].count(PlaybackKind.SEGMENT_PLAYED) == 3


def test_fragments_arriving_during_a_pause_follow_the_resumed_audio(tmp_path) -> None:
    h = Harness(tmp_path)
    h.audio(fragment(0, 0, 0, dc(0.5, 1.0)))  # the rest of the segment is still being synthesized
    h.run(until_s=0.5)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_ONSET, 0.45, 0.5))
    h.at(0.7)
    h.audio(fragment(0, 0, 1, dc(0.5, 0.5), last=True), fragment(0, 1, 0, dc(0.5, 0.5), final=True, total=2))
    assert h.sink.end == int(0.5 * RATE) + 320  # they wait in the reorder buffer
    h.at(0.9)
    h.send(Output.EVENTS, vad(VadEventKind.ONSET_DISCARDED, 0.5, 0.9))
    h.end()
    (turn,) = h.events(TimingKind.TURN_PLAYED)
    assert turn.fields[Key.UNDERRUNS] == 0 and turn.fields[Key.COUNT] == 2
    out = h.out()
    # 0.5 s heard, a 0.4 s gap, the other 1.0 s of segment 0 contiguous, the sentence pause, segment 1
    assert out.shape[0] == int((0.5 + 0.4 + 1.0 + 0.12 + 0.5) * RATE)
    assert np.all(out[int(0.9 * RATE) + 128: int(1.9 * RATE) - 128] == 0.5)


def test_the_stream_ending_during_a_pause_plays_the_rest(tmp_path) -> None:
    h = paused_at_1_35(tmp_path)
    h.collect(h.core.on_end())
    assert h.core.pauses_resumed == 1 and not h.events(TimingKind.BARGE_IN)
    assert [p.kind for p in h.playback].count(PlaybackKind.SEGMENT_PLAYED) == 3


def test_no_pause_when_nothing_plays_or_under_the_half_duplex_guard(tmp_path) -> None:
    h = Harness(tmp_path)
    h.send(Output.EVENTS, vad(VadEventKind.SPEECH_ONSET, 0.0, 0.05))
    assert h.core.pauses == 0 and not h.core.busy()
    guarded = paused_at_1_35(tmp_path / "guarded", {"ECHO_GUARD": "half_duplex"})
    assert guarded.core.pauses == 0 and guarded.sink.end == 3 * RATE + 2 * 1920
    off = paused_at_1_35(tmp_path / "off", {"BARGE_IN": "false"})
    assert off.core.pauses == 0
