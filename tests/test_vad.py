"""VAD core: real Silero model on real speech, and the state machine with a scripted model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recordings import load_clip
from dora_voice.config import ConfigError, load_config
from dora_voice.nodes.vad import FRAME_SAMPLES, SideStream, VadConfig, VadCore, load_silero
from dora_voice.schema import AudioChunk, Output, TimingEvent, TimingKind, Utterance, VadEvent, VadEventKind

RATE = 16_000
T0 = 1_700_000_000_000_000_000


def feed(core: VadCore, samples: np.ndarray, block: int = 512, clock=None) -> list:
    out = []
    for offset in range(0, len(samples), block):
        chunk = AudioChunk(samples[offset:offset + block], RATE, offset, T0 + offset * 10**9 // RATE, "s1")
        if clock is not None:
            clock.t_ns = T0 + (offset + block) * 10**9 // RATE
        out += core.handle("audio", *chunk.encode())
        while core.busy():  # as the runtime does when no input is waiting
            out += core.step()
    return out


def outputs(out: list, output_id: str) -> list:
    decoders = {Output.SPEECH: Utterance, Output.EVENTS: VadEvent, Output.TIMING: TimingEvent}
    return [decoders[output_id].decode(v, m) for (oid, v, m) in out if oid == output_id]


def confirmed(out: list) -> list[Utterance]:
    """The utterances that end a turn (not the partial ones sent while the user speaks, nor the speculative ones sent
    early in a pause)."""
    return [u for u in outputs(out, Output.SPEECH) if not u.partial and not u.speculative]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


@pytest.mark.real_model
def test_real_speech_gives_one_utterance_with_sample_times(clock) -> None:
    clip = load_clip("goforward.wav")
    core = VadCore(load_config(VadConfig, {}), load_silero(), clock_ns=clock)
    out = feed(core, np.concatenate([silence(0.5), clip, silence(1.0)]), block=320, clock=clock)
    utterances = confirmed(out)
    assert len(utterances) == 1
    u = utterances[0]
    # Speech lies inside the clip, and the decision came after the end of speech plus the silence wait.
    assert T0 + int(0.5e9) <= u.speech_start_ns < u.speech_end_ns <= T0 + int((0.5 + len(clip) / RATE) * 1e9)
    assert u.detected_ns - u.speech_end_ns >= 400 * 10**6
    assert 1.0 < len(u.samples) / RATE < len(clip) / RATE + 0.5
    events = outputs(out, Output.EVENTS)
    # announced after 2 voiced frames (BARGE_IN_PAUSE_MS), confirmed after 6, the same onset
    assert [e.kind for e in events] == [VadEventKind.SPEECH_ONSET, VadEventKind.SPEECH_STARTED,
                                        VadEventKind.SPEECH_ENDED]
    assert events[0].t_ns == events[1].t_ns == u.speech_start_ns and events[0].detected_ns < events[1].detected_ns
    timing = [e.kind for e in outputs(out, Output.TIMING)]
    assert timing == [TimingKind.SPEECH_STARTED, TimingKind.SPEECH_ENDED]


def test_real_long_sentence_sends_growing_partials_that_start_the_confirmed_utterance() -> None:
    clip = load_clip("librivox-0870.wav")  # 7 s, one sentence
    core = VadCore(load_config(VadConfig, {}), load_silero())
    out = feed(core, np.concatenate([silence(0.3), clip, silence(1.0)]))
    speech = outputs(out, Output.SPEECH)
    partials, (final,) = [u for u in speech if u.partial], confirmed(out)
    assert len(partials) >= 4 and not speech[-1].partial  # about one per second of speech, all before the end
    assert [len(u.samples) for u in partials] == sorted(len(u.samples) for u in partials)
    for u in partials:
        assert u.turn_id == final.turn_id and np.array_equal(u.samples, final.samples[: len(u.samples)])


@pytest.mark.real_model
def test_two_utterances_two_turns() -> None:
    a, b = load_clip("goforward.wav"), load_clip("librivox-0880.wav")
    core = VadCore(load_config(VadConfig, {}), load_silero())
    out = feed(core, np.concatenate([silence(0.3), a, silence(2.0), b, silence(1.0)]))
    assert [u.turn_id for u in confirmed(out)] == [0, 1]


def scripted(probs: list[float]):
    it = iter(probs)
    return lambda frame: next(it)


def test_short_blip_is_noise_and_speech_shorter_than_silence_gap_is_one_turn() -> None:
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "96", "VAD_MIN_SILENCE_MS": "96"})
    # 1 voiced frame (noise), 5 silent, 6 voiced, 2 silent (gap < min silence), 4 voiced, 4 silent.
    probs = [0.9] + [0.0] * 5 + [0.9] * 6 + [0.0] * 2 + [0.9] * 4 + [0.0] * 4
    core = VadCore(config, scripted(probs))
    out = feed(core, np.full(len(probs) * FRAME_SAMPLES, 0.1, dtype=np.float32), block=FRAME_SAMPLES)
    utts = confirmed(out)
    assert len(utts) == 1
    assert utts[0].speech_start_ns == T0 + 6 * FRAME_SAMPLES * 10**9 // RATE
    assert utts[0].speech_end_ns == T0 + 18 * FRAME_SAMPLES * 10**9 // RATE


def test_end_of_stream_closes_an_open_turn() -> None:
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64"})
    core = VadCore(config, scripted([0.9] * 10))
    out = feed(core, np.full(10 * FRAME_SAMPLES, 0.1, dtype=np.float32))
    assert outputs(out, Output.SPEECH) == []
    assert len(outputs(core.on_input_closed("audio"), Output.SPEECH)) == 1


@pytest.mark.parametrize("value,meta", [
    (pa.array([0.1] * 512, type=pa.float64()), {"sample_rate": 16000, "sample_offset": 0, "t_ns": T0}),
    (pa.array([float("nan")] * 512, type=pa.float32()), {"sample_rate": 16000, "sample_offset": 0, "t_ns": T0}),
    (pa.array([0.1] * 512, type=pa.float32()), {"sample_rate": 44100, "sample_offset": 0, "t_ns": T0}),
    (pa.array([0.1] * 512, type=pa.float32()), {"sample_rate": 16000, "t_ns": T0}),
    (pa.array([0.1] * 512, type=pa.float32()), {"sample_rate": "16000", "sample_offset": 0, "t_ns": T0}),
])
def test_bad_audio_is_rejected_and_counted(value, meta) -> None:
    core = VadCore(load_config(VadConfig, {}), scripted([0.0] * 100))
    out = core.handle("audio", value, meta)
    assert core.input_errors == 1
    assert [TimingEvent.decode(v, m).kind for (_, v, m) in out] == [TimingKind.INPUT_ERROR]
    ok = AudioChunk(np.zeros(512, np.float32), RATE, 0, T0, "s").encode()
    core.handle("audio", *ok)
    assert core.input_errors == 1


def test_unknown_input_is_rejected() -> None:
    core = VadCore(load_config(VadConfig, {}), scripted([]))
    core.handle("bogus", pa.array([1]), {})
    assert core.input_errors == 1


def test_config_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="VAD_MIN_SILENCE_MS"):
        load_config(VadConfig, {"VAD_MIN_SILENCE_MS": "soon"})
    with pytest.raises(ConfigError, match="VAD_THRESHOLD"):
        load_config(VadConfig, {"VAD_THRESHOLD": "2"})


@pytest.mark.parametrize("voiced_frames,started", [(4, False), (5, False), (6, True), (7, True)])
def test_short_noises_do_not_start_speech(voiced_frames: int, started: bool) -> None:
    # Default VAD_MIN_SPEECH_MS = 200, to the nearest frame: 5 frames (160 ms) of a cough stay noise, 6 frames
    # (192 ms) are speech.
    probs = [0.0] * 3 + [0.9] * voiced_frames + [0.0] * 20
    core = VadCore(load_config(VadConfig, {}), scripted(probs))
    out = feed(core, np.full(len(probs) * FRAME_SAMPLES, 0.1, dtype=np.float32), block=FRAME_SAMPLES)
    kinds = [e.kind for e in outputs(out, Output.EVENTS)]
    assert (VadEventKind.SPEECH_STARTED in kinds) is started
    assert (len(confirmed(out)) == 1) is started
    # the onset is announced after 2 voiced frames either way; noise then discards it (the speaker resumes)
    assert kinds[:2] == [VadEventKind.SPEECH_ONSET,
                         VadEventKind.SPEECH_STARTED if started else VadEventKind.ONSET_DISCARDED]


def test_the_onset_announcement_follows_barge_in_pause_ms() -> None:
    def events(env: dict, probs: list[float], *, close: bool = False) -> list[VadEvent]:
        core = VadCore(load_config(VadConfig, env), scripted(probs))
        out = feed(core, np.full(len(probs) * FRAME_SAMPLES, 0.1, dtype=np.float32), block=FRAME_SAMPLES)
        if close:
            out += core.on_input_closed("audio")
        return outputs(out, Output.EVENTS)

    cough = [0.0] * 2 + [0.9, 0.4, 0.9] + [0.0] * 20  # 3 voiced frames (0.4 is above the negative threshold)
    onset, discarded = events({}, cough)
    frame_ns = FRAME_SAMPLES * 10**9 // RATE
    assert onset.kind is VadEventKind.SPEECH_ONSET and onset.t_ns == T0 + 2 * frame_ns
    assert discarded.kind is VadEventKind.ONSET_DISCARDED and discarded.t_ns == T0 + 5 * frame_ns
    assert discarded.detected_ns > onset.detected_ns
    assert [e.kind for e in events({"BARGE_IN_PAUSE_MS": "96"}, cough)] == [
        VadEventKind.SPEECH_ONSET, VadEventKind.ONSET_DISCARDED]
    assert events({"BARGE_IN_PAUSE_MS": "128"}, cough) == []  # 4 frames: never reached
    assert events({"BARGE_IN_PAUSE_MS": "0"}, cough) == []
    speech = [0.9] * 10 + [0.0] * 20
    assert [e.kind for e in events({"BARGE_IN_PAUSE_MS": "200"}, speech)][:1] == [VadEventKind.SPEECH_STARTED]
    # the input ends during an announced onset: it is discarded
    assert [e.kind for e in events({}, [0.0, 0.9, 0.9], close=True)] == [
        VadEventKind.SPEECH_ONSET, VadEventKind.ONSET_DISCARDED]


def test_utterances_are_cut_from_the_asr_audio_stream_when_it_covers_them() -> None:
    """The VAD decides on ``audio`` (AEC3's output) and cuts the utterance from ``asr_audio`` (the linear
    canceller's), sample for sample; where ``asr_audio`` does not cover the span it falls back to ``audio``."""
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "96", "VAD_MIN_SILENCE_MS": "96", "VAD_SPEECH_PAD_MS": "0"})
    probs = [0.0] * 4 + [0.9] * 6 + [0.0] * 4
    n = len(probs) * FRAME_SAMPLES
    heard = np.full(n, 0.1, dtype=np.float32)  # what the VAD judges
    kept = np.arange(n, dtype=np.float32) / n  # what the ASR should get: every sample distinct
    core = VadCore(config, scripted(probs))
    out = []
    for offset in range(0, n, 320):  # the aec's 20 ms blocks: asr_audio first, then audio
        t_ns = T0 + offset * 10**9 // RATE
        out += core.handle("asr_audio", *AudioChunk(kept[offset:offset + 320], RATE, offset, t_ns, "s1").encode())
        out += core.handle("audio", *AudioChunk(heard[offset:offset + 320], RATE, offset, t_ns, "s1").encode())
    (utterance,) = confirmed(out)
    np.testing.assert_array_equal(utterance.samples, kept[4 * FRAME_SAMPLES:10 * FRAME_SAMPLES])
    assert core.asr_audio.used == 2 and core.input_errors == 0  # the speculative utterance, then the confirmed one

    core = VadCore(config, scripted(probs))  # no asr_audio at all: the VAD's own audio, as before
    (utterance,) = confirmed(feed(core, heard, block=320))
    np.testing.assert_array_equal(utterance.samples, heard[4 * FRAME_SAMPLES:10 * FRAME_SAMPLES])


def test_side_stream_reads_only_spans_it_covers_and_restarts_after_a_gap() -> None:
    side = SideStream()
    side.add(100, np.arange(100, 200, dtype=np.float32))
    side.add(200, np.arange(200, 300, dtype=np.float32))
    np.testing.assert_array_equal(side.read(150, 250), np.arange(150, 250))
    assert side.read(50, 150) is None and side.read(250, 350) is None
    side.trim(200)
    assert side.read(150, 250) is None and side.read(200, 300) is not None
    side.add(400, np.arange(400, 500, dtype=np.float32))  # a gap: what was kept no longer lines up
    assert side.read(200, 300) is None and side.read(400, 500) is not None


def test_a_pause_while_the_echo_may_hide_the_user_is_not_a_pause() -> None:
    """Double talk: AEC3 suppresses the user while the assistant's echo is in the room, so the VAD hears gaps in
    their speech that are not pauses. Frames of blocks marked echo_active do not count towards the end-of-turn
    silence; the same gap without the mark ends the turn."""
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "96", "VAD_MIN_SILENCE_MS": "96"})
    # 6 voiced, a 5-frame gap (longer than the 3-frame silence rule), 6 voiced, 4 silent.
    probs = [0.9] * 6 + [0.0] * 5 + [0.9] * 6 + [0.0] * 4

    def run(echo_frames: range) -> list:
        core = VadCore(config, scripted(probs))
        out = []
        for k in range(len(probs)):
            chunk = AudioChunk(np.full(FRAME_SAMPLES, 0.1, np.float32), RATE, k * FRAME_SAMPLES,
                               T0 + k * FRAME_SAMPLES * 10**9 // RATE, "s1", echo_active=k in echo_frames)
            out += core.handle("audio", *chunk.encode())
        return confirmed(out)

    assert len(run(range(0))) == 2  # a plain gap: two turns
    (one,) = run(range(6, 11))  # the gap is echo: one turn, from the first voiced frame to the last
    assert one.speech_start_ns == T0 and one.speech_end_ns == T0 + 17 * FRAME_SAMPLES * 10**9 // RATE
    # Echo before the user speaks changes nothing: the mark only holds a pause inside speech.
    assert len(run(range(0, 6))) == 2
