"""End of turn: the policy with a scripted model, the VAD driving it, and Smart Turn v3.2 on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from recordings import load_clip
from dora_voice.config import ConfigError, load_config
from dora_voice.nodes.vad import FRAME_MS, FRAME_SAMPLES, VadConfig, VadCore, load_silero
from dora_voice.schema import AudioChunk, Key, Output, TimingEvent, TimingKind, Utterance
from dora_voice.turn import EndOfTurnPolicy, TurnRule, load_smart_turn

RATE = 16_000
T0 = 1_700_000_000_000_000_000


class ScriptedModel:
    """Returns the scripted probabilities in order; records the length of the audio it was given."""

    def __init__(self, *probabilities: float) -> None:
        self.probabilities = list(probabilities)
        self.heard: list[int] = []

    def __call__(self, samples: np.ndarray) -> float:
        self.heard.append(len(samples))
        return self.probabilities.pop(0)


def audio() -> np.ndarray:
    return np.zeros(RATE, dtype=np.float32)


def run_pause(policy: EndOfTurnPolicy, until_ms: float, step_ms: float = 32.0):
    """Feed silent frames until a decision or ``until_ms``; returns ``(decision, silence_ms at decision)``."""
    silence = step_ms
    while silence <= until_ms:
        decision = policy.on_silence(silence, audio)
        if decision is not None:
            return decision, silence
        silence += step_ms
    return None, None


def test_complete_at_the_proposal_ends_the_turn_at_once() -> None:
    model = ScriptedModel(0.9)
    policy = EndOfTurnPolicy("smart_turn", model, propose_silence_ms=200, max_wait_ms=1000)
    decision, at = run_pause(policy, 2000)
    assert decision.rule is TurnRule.MODEL and decision.probability == 0.9 and decision.evaluations == 1
    assert 200 <= at < 232 and len(model.heard) == 1


def test_incomplete_waits_until_the_maximum_then_ends_anyway() -> None:
    model = ScriptedModel(0.2)
    policy = EndOfTurnPolicy("smart_turn", model, propose_silence_ms=200, max_wait_ms=1000)
    decision, at = run_pause(policy, 2000)
    assert decision.rule is TurnRule.MAX_WAIT and decision.probability == 0.2
    assert 1000 <= at < 1032 and decision.evaluations == 1  # asked once per pause by default


def test_resuming_speech_starts_a_new_pause_and_asks_again() -> None:
    model = ScriptedModel(0.1, 0.95)
    policy = EndOfTurnPolicy("smart_turn", model, propose_silence_ms=200, max_wait_ms=1000)
    assert run_pause(policy, 700) == (None, None)  # a 700 ms mid-sentence pause: nothing ends
    policy.reset()  # the user speaks again
    decision, at = run_pause(policy, 2000)
    assert decision.rule is TurnRule.MODEL and decision.probability == 0.95 and at < 232


def test_recheck_asks_again_as_the_pause_grows() -> None:
    model = ScriptedModel(0.2, 0.3, 0.8)
    policy = EndOfTurnPolicy("smart_turn", model, propose_silence_ms=200, max_wait_ms=2000, recheck_ms=200)
    decision, at = run_pause(policy, 3000)
    assert decision.rule is TurnRule.MODEL and decision.evaluations == 3 and 600 <= at < 640


def test_threshold_is_inclusive_and_configurable() -> None:
    policy = EndOfTurnPolicy("smart_turn", ScriptedModel(0.7), threshold=0.7)
    assert run_pause(policy, 2000)[0].rule is TurnRule.MODEL
    policy = EndOfTurnPolicy("smart_turn", ScriptedModel(0.69), threshold=0.7)
    assert run_pause(policy, 2000)[0].rule is TurnRule.MAX_WAIT


def test_silence_detector_never_asks_a_model() -> None:
    policy = EndOfTurnPolicy("silence", None, min_silence_ms=400)
    decision, at = run_pause(policy, 2000)
    assert decision.rule is TurnRule.SILENCE and decision.probability is None and 400 <= at < 432


def test_a_model_that_returns_no_probability_is_an_error() -> None:
    policy = EndOfTurnPolicy("smart_turn", ScriptedModel(1.7))
    with pytest.raises(ValueError, match="not a probability"):
        run_pause(policy, 2000)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="needs an end-of-turn model"):
        EndOfTurnPolicy("smart_turn", None)
    with pytest.raises(ValueError, match="unknown end-of-turn detector"):
        EndOfTurnPolicy("maybe", None)
    with pytest.raises(ConfigError, match="TURN_MAX_WAIT_MS"):
        load_config(VadConfig, {"TURN_MAX_WAIT_MS": "100", "TURN_PROPOSE_SILENCE_MS": "200"})
    with pytest.raises(ConfigError, match="TURN_DETECTOR"):
        load_config(VadConfig, {"TURN_DETECTOR": "vibes"})


# -- the VAD with a scripted model ---------------------------------------------------------------------------


class StreamClock:
    """The wall clock of a live stream: the time of the end of the latest block fed."""

    now_ns = T0

    def __call__(self) -> int:
        return self.now_ns


def feed(core: VadCore, samples: np.ndarray, block: int = FRAME_SAMPLES) -> list:
    from dora_voice.schema import AudioChunk

    out = []
    for offset in range(0, len(samples), block):
        chunk = AudioChunk(samples[offset:offset + block], RATE, offset, T0 + offset * 10**9 // RATE, "s1")
        core.clock_ns.now_ns = T0 + (offset + block) * 10**9 // RATE
        out += core.handle("audio", *chunk.encode())
        while core.busy():  # as the runtime does when no input is waiting
            out += core.step()
    return out


def speech_ended(out: list) -> list[TimingEvent]:
    events = [TimingEvent.decode(v, m) for (oid, v, m) in out if oid == Output.TIMING]
    return [e for e in events if e.kind is TimingKind.SPEECH_ENDED]


def scripted_vad(pattern: str):
    """Silero replaced by a per-frame script: '#' voiced, '.' silent."""
    frames = iter(pattern)
    return lambda frame: 0.9 if next(frames) == "#" else 0.0


def test_vad_pause_shorter_than_the_wait_keeps_one_turn_and_reports_the_rule() -> None:
    # 10 silent frames, 20 voiced, a 22-frame (704 ms) pause the model calls incomplete, 20 voiced, 40 silent.
    pattern = "." * 10 + "#" * 20 + "." * 22 + "#" * 20 + "." * 40
    model = ScriptedModel(0.1, 0.97)
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(model))
    out = feed(core, np.full(len(pattern) * FRAME_SAMPLES, 0.1, dtype=np.float32))
    utterances = [u for u in (Utterance.decode(v, m) for (oid, v, m) in out if oid == Output.SPEECH)
                  if not u.speculative and not u.partial]
    assert len(utterances) == 1
    assert utterances[0].speech_end_ns == T0 + 72 * FRAME_SAMPLES * 10**9 // RATE  # after the second part
    (ended,) = speech_ended(out)
    assert ended.fields[Key.EOT_RULE] == "model" and ended.fields[Key.EOT_PROBABILITY] == pytest.approx(0.97)
    # Proposed after 6 silent frames (TURN_PROPOSE_SILENCE_MS=200 to the nearest frame: 192 ms).
    assert ended.fields[Key.DETECTED_NS] - ended.t_ns == pytest.approx(6 * FRAME_MS * 1e6, abs=1e6)
    # The model heard the utterance from its padded onset to the proposal, trailing silence included.
    assert model.heard[1] == (72 + 6) * FRAME_SAMPLES - (10 * FRAME_SAMPLES - config.speech_pad_ms * RATE // 1000)


def test_vad_speculates_early_in_each_pause_before_the_model_is_asked_and_confirms_with_the_same_speech() -> None:
    # Speech, a pause the model calls incomplete (the user then resumes), speech, a pause it calls complete.
    pattern = "." * 10 + "#" * 20 + "." * 22 + "#" * 20 + "." * 40
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64"})
    clock = StreamClock()
    asked_at: list[int] = []

    class TimedModel(ScriptedModel):
        """Takes 50 ms of the stream's clock per call: what is stamped after a call shows it."""

        def __call__(self, samples):
            asked_at.append(clock.now_ns)
            clock.now_ns += 50_000_000
            return super().__call__(samples)

    core = VadCore(config, scripted_vad(pattern), clock, end_of_turn=config.policy(TimedModel(0.1, 0.97)))
    out = feed(core, np.full(len(pattern) * FRAME_SAMPLES, 0.1, dtype=np.float32))
    speculative = [u for u in (Utterance.decode(v, m) for (oid, v, m) in out if oid == Output.SPEECH) if u.speculative]
    # In each pause the speculative utterance left after 3 silent frames (TURN_SPECULATE_SILENCE_MS, 96 ms), 3
    # frames before the model was asked at the proposal (6 frames, TURN_PROPOSE_SILENCE_MS=200 to the nearest frame).
    assert len(speculative) == len(asked_at) == 2
    assert [u.detected_ns + 3 * FRAME_SAMPLES * 10**9 // RATE for u in speculative] == asked_at
    speech = [u for u in (Utterance.decode(v, m) for (oid, v, m) in out if oid == Output.SPEECH) if not u.partial]
    assert [u.turn_id for u in speech] == [0, 0, 0]
    first, second, confirmed = speech
    assert len(first.samples) < len(second.samples)  # the user went on speaking after the first pause
    # Nothing was said since the second: the same speech, and the confirmed utterance has the rest of the trailing
    # pad (160 ms, of which 96 ms had been heard when the speculative one left).
    assert np.array_equal(second.samples, confirmed.samples[: len(second.samples)])
    assert len(confirmed.samples) - len(second.samples) == (160 - 96) * RATE // 1000
    assert (second.speech_start_ns, second.speech_end_ns) == (confirmed.speech_start_ns, confirmed.speech_end_ns)
    assert core.speculations == 2


def test_vad_without_speculation_sends_only_confirmed_utterances() -> None:
    pattern = "#" * 20 + "." * 40
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_SPECULATION": "off"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(ScriptedModel(0.9)))
    speech = [Utterance.decode(v, m) for (oid, v, m) in feed(core, np.full(len(pattern) * FRAME_SAMPLES, 0.1,
                                                                           dtype=np.float32)) if oid == Output.SPEECH]
    assert [u.speculative for u in speech] == [False]


def test_vad_speculates_with_the_silence_detector_too() -> None:
    """The silence rule waits VAD_MIN_SILENCE_MS (400 ms): the speculative utterance leaves after 96 ms of it."""
    pattern = "#" * 20 + "." * 40
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_DETECTOR": "silence"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(None))
    speech = [Utterance.decode(v, m) for (oid, v, m) in feed(core, np.full(len(pattern) * FRAME_SAMPLES, 0.1,
                                                                           dtype=np.float32)) if oid == Output.SPEECH]
    assert [u.speculative for u in speech] == [True, False]
    speculative, confirmed = speech
    # VAD_MIN_SILENCE_MS=400 to the nearest frame: 12 frames (384 ms); the speculation after 3 (96 ms).
    assert confirmed.detected_ns - speculative.detected_ns == (12 - 3) * FRAME_SAMPLES * 10**9 // RATE
    assert np.array_equal(speculative.samples, confirmed.samples[: len(speculative.samples)])


def test_pauses_are_counted_in_whole_vad_frames_rounded_to_the_nearest() -> None:
    from dora_voice.nodes.vad import frames_ms

    assert [frames_ms(ms) for ms in (200, 96, 1000, 800, 10, 47, 49)] == [192, 96, 992, 800, 32, 32, 64]
    policy = load_config(VadConfig, {}).policy(ScriptedModel())
    assert (policy.propose_silence_ms, policy.max_wait_ms, policy.min_silence_ms) == (192, 992, 384)


def test_vad_max_wait_ends_a_turn_the_model_misjudges() -> None:
    pattern = "#" * 20 + "." * 40
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_MAX_WAIT_MS": "800"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(ScriptedModel(0.2)))
    (ended,) = speech_ended(feed(core, np.full(len(pattern) * FRAME_SAMPLES, 0.1, dtype=np.float32)))
    assert ended.fields[Key.EOT_RULE] == "max_wait" and ended.fields[Key.EOT_PROBABILITY] == pytest.approx(0.2)
    assert 800e6 <= ended.fields[Key.DETECTED_NS] - ended.t_ns < 832e6


def test_vad_silence_detector_reports_no_probability() -> None:
    pattern = "#" * 20 + "." * 20
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_DETECTOR": "silence"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(None))
    (ended,) = speech_ended(feed(core, np.full(len(pattern) * FRAME_SAMPLES, 0.1, dtype=np.float32)))
    assert ended.fields[Key.EOT_RULE] == "silence" and Key.EOT_PROBABILITY not in ended.fields


# -- Smart Turn v3.2 on real speech ----------------------------------------------------------------------------

PAUSE_AT_S = 4.18
"""A word boundary mid-sentence in librivox-0870: "... to consider how much | there might be prudently ..."."""


@pytest.fixture(scope="module")
def smart_turn():
    return load_smart_turn()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def test_real_model_calls_finished_sentences_complete_and_a_cut_one_incomplete(smart_turn) -> None:
    for name in ("goforward.wav", "cards-005.wav"):
        clip = load_clip(name)
        assert smart_turn(np.concatenate([clip, silence(0.2)])) >= 0.5, name
    clip = load_clip("librivox-0870.wav")
    assert smart_turn(np.concatenate([clip[: int(PAUSE_AT_S * RATE)], silence(0.2)])) < 0.5


def test_real_700_ms_mid_sentence_pause_gives_one_turn_with_the_whole_sentence(smart_turn) -> None:
    clip = load_clip("librivox-0870.wav")
    cut = int(PAUSE_AT_S * RATE)
    paused = np.concatenate([silence(0.3), clip[:cut], silence(0.7), clip[cut:], silence(1.5)])
    config = load_config(VadConfig, {})
    core = VadCore(config, load_silero(), StreamClock(), end_of_turn=config.policy(smart_turn))
    out = feed(core, paused, block=320)
    speech = [u for u in (Utterance.decode(v, m) for (oid, v, m) in out if oid == Output.SPEECH) if not u.partial]
    utterances = [u for u in speech if not u.speculative]
    assert len(utterances) == 1
    # The pause was speculated on (and the speculation superseded), the end too: the turn confirmed after both.
    assert [u.speculative for u in speech] == [True, True, False]
    assert np.array_equal(speech[1].samples, utterances[0].samples[: len(speech[1].samples)])
    assert speech[1].speech_end_ns == utterances[0].speech_end_ns
    # The turn ends after the second half of the sentence, not at the pause.
    assert utterances[0].speech_end_ns > T0 + int((0.3 + PAUSE_AT_S + 0.7 + 1.0) * 1e9)
    assert len(utterances[0].samples) / RATE > len(clip) / RATE


def test_the_speculative_utterance_leaves_before_the_model_is_asked() -> None:
    """The runtime sends what handle() returns, then calls step(): the ASR gets the utterance while the model
    decides. Asked inside handle(), the model would hold the utterance back until its decision."""
    pattern = "." * 4 + "#" * 10 + "." * 30
    model = ScriptedModel(0.97)
    # Speculation at the proposal itself: the utterance and the question to the model fall on the same frame.
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_SPECULATE_SILENCE_MS": "200"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(model))
    samples = np.full(len(pattern) * FRAME_SAMPLES, 0.1, dtype=np.float32)
    out: list = []
    frame = 0
    while not any(oid == Output.SPEECH for oid, _v, _m in out):
        chunk = AudioChunk(samples[frame * FRAME_SAMPLES:(frame + 1) * FRAME_SAMPLES], RATE, frame * FRAME_SAMPLES,
                           T0 + frame * FRAME_SAMPLES * 10**9 // RATE, "s1")
        out = core.handle("audio", *chunk.encode())
        frame += 1
    (speculative,) = [Utterance.decode(v, m) for oid, v, m in out if oid == Output.SPEECH]
    assert speculative.speculative and model.heard == [] and core.busy()
    decided = list(core.step())
    assert len(model.heard) == 1 and not core.busy()
    (confirmed,) = [Utterance.decode(v, m) for oid, v, m in decided if oid == Output.SPEECH]
    assert not confirmed.speculative and np.array_equal(confirmed.samples, speculative.samples)
    # A block that arrives before step() runs gets the decision first, and its own frames after it.
    core2 = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(ScriptedModel(0.97)))
    handled = [core2.handle("audio", *AudioChunk(samples[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES], RATE,
                                                    k * FRAME_SAMPLES, T0, "s1").encode()) for k in range(frame + 1)]
    kinds = [Utterance.decode(v, m).speculative for out_k in handled for oid, v, m in out_k if oid == Output.SPEECH]
    assert kinds == [True, False]


def test_the_stream_ending_with_a_decision_due_takes_it_before_closing_the_turn() -> None:
    """Two proposals left in the buffered frames when the input closes: both decisions are taken in order, then
    the end of the stream; one confirmed utterance per turn, none twice."""
    pattern = "." * 2 + "#" * 8 + "." * 8 + "#" * 8 + "." * 8
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_SPECULATE_SILENCE_MS": "200"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(),
                   end_of_turn=config.policy(ScriptedModel(0.97, 0.97)))
    samples = np.full(len(pattern) * FRAME_SAMPLES, 0.1, dtype=np.float32)
    out = list(core.handle("audio", *AudioChunk(samples, RATE, 0, T0, "s1").encode()))  # one block: stops at a proposal
    assert core.busy()
    out += core.on_input_closed("audio")
    confirmed = [u for u in (Utterance.decode(v, m) for oid, v, m in out if oid == Output.SPEECH) if not u.speculative]
    assert [u.turn_id for u in confirmed] == [0, 1] and not core.busy()


# -- partial utterances (TURN_PARTIAL_MS) ----------------------------------------------------------------------


def test_vad_sends_the_utterance_so_far_every_partial_interval_of_voiced_speech() -> None:
    # 10 silent frames, 50 voiced, a 15-frame (480 ms) pause the model calls incomplete, 25 voiced, 40 silent.
    pattern = "." * 10 + "#" * 50 + "." * 15 + "#" * 25 + "." * 40
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_PARTIAL_MS": "960"})  # 30 frames
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(ScriptedModel(0.1, 0.97)))
    out = feed(core, np.arange(len(pattern) * FRAME_SAMPLES, dtype=np.float32) / 1e6)
    speech = [Utterance.decode(v, m) for (oid, v, m) in out if oid == Output.SPEECH]
    partials = [u for u in speech if u.partial]
    (confirmed,) = [u for u in speech if not u.partial and not u.speculative]
    # Due 30 frames after the onset (frame 10): at the end of frame 39; then 30 frames later, in the pause: at the
    # first voiced frame after it (75, ending at 76); the next (frame 106) is after the end of speech (100).
    ends = [round((u.speech_end_ns - T0) * RATE / 1e9 / FRAME_SAMPLES) for u in partials]
    assert ends == [40, 76] and all(u.turn_id == confirmed.turn_id == 0 for u in partials)
    # In order: a partial, the speculative utterance of the pause, the partial that follows the user resuming.
    assert [(u.partial, u.speculative) for u in speech] == [(True, False), (False, True), (True, False),
                                                            (False, True), (False, False)]
    assert all(u.detected_ns <= confirmed.detected_ns for u in partials)
    for u in partials:  # each is the start of the confirmed utterance: what the ASR hears grows, never changes
        assert np.array_equal(u.samples, confirmed.samples[: len(u.samples)])
        assert len(u.samples) < len(confirmed.samples)
    assert core.partials == 2
    off = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64", "TURN_PARTIAL_MS": "0"})
    core = VadCore(off, scripted_vad(pattern), StreamClock(), end_of_turn=off.policy(ScriptedModel(0.1, 0.97)))
    out = feed(core, np.zeros(len(pattern) * FRAME_SAMPLES, dtype=np.float32))
    assert not any(Utterance.decode(v, m).partial for (oid, v, m) in out if oid == Output.SPEECH)


def test_a_short_utterance_gets_no_partial() -> None:
    pattern = "." * 5 + "#" * 25 + "." * 40  # 800 ms of speech, under the 1000 ms default
    config = load_config(VadConfig, {"VAD_MIN_SPEECH_MS": "64"})
    core = VadCore(config, scripted_vad(pattern), StreamClock(), end_of_turn=config.policy(ScriptedModel(0.97)))
    out = feed(core, np.zeros(len(pattern) * FRAME_SAMPLES, dtype=np.float32))
    speech = [Utterance.decode(v, m) for (oid, v, m) in out if oid == Output.SPEECH]
    assert [u.partial for u in speech if not u.speculative] == [False]
