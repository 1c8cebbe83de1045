"""The echo plan's conversation and figures (dora_voice_tools.bench.echo), on constructed runs: self-interruptions,
barge-ins mid-sentence and in pauses, onset -> stop delays, ERLE windows away from the user, WER with and without
echo; and the plan's parsing."""

from __future__ import annotations

import numpy as np
import pytest

from recordings import TRANSCRIPTS, load_clip
from dora_voice.schema import Key, TimingEvent, TimingKind
from dora_voice_monitor.collector import build_turn
from dora_voice_tools.bench import echo
from dora_voice_tools.bench.plans import BenchConfigError, load_catalog, parse_plan, plan_items, resolve_plan
from dora_voice_tools.resources import SCENARIOS_FILE

T0 = 1_700_000_000_000_000_000
NS = 1_000_000_000
RATE = 22_050


def clips():
    return [(name, TRANSCRIPTS[name], load_clip(name)) for name in ("goforward.wav", "cards-001.wav",
                                                                    "librivox-0880.wav")]


def test_compose_places_each_barge_in_after_the_utterance_before() -> None:
    conv = echo.compose(clips(), 5)
    u = conv.utterances
    assert [x.name for x in u] == ["goforward.wav", "cards-001.wav", "librivox-0880.wav", "goforward.wav",
                                   "cards-001.wav"]
    assert u[0].start_s == echo.LEAD_S
    for k in range(1, 5):
        assert u[k].start_s == pytest.approx(u[k - 1].end_s + echo.BARGE_IN_GAPS_S[(k - 1) % 4], abs=1e-3)
    for x in u:  # the recording really is at its place, and its onset is where speech starts
        a = int(round(x.start_s * 16_000))
        np.testing.assert_array_equal(conv.samples[a: a + x.samples.shape[0]], x.samples)
        assert x.start_s <= x.onset_s < x.end_s <= x.start_s + x.samples.shape[0] / 16_000
    assert conv.samples.shape[0] / 16_000 == pytest.approx(u[-1].start_s + u[-1].samples.shape[0] / 16_000
                                                           + echo.TAIL_S, abs=1e-3)
    with pytest.raises(ValueError):
        echo.compose(clips(), 1)


def test_wer_normalizes_numbers_and_punctuation() -> None:
    assert echo.normalize_transcript("Go forward 10 meters.") == "go forward ten meters"
    assert echo.corpus_wer(["go forward ten meters"], ["Go forward, 10 meters!"]) == 0.0
    assert echo.corpus_wer(["ten of clubs", "go forward ten meters"], ["ten of clubs", ""]) == pytest.approx(4 / 7)


def _turn(turn_id: int, *, start_s: float, text: str, played_s: float | None = None,
          barge_onset_s: float | None = None, stop_s: float | None = None, paused_ms: tuple[float, ...] = ()):
    ms = 1_000_000
    events = [TimingEvent(TimingKind.SPEECH_STARTED, "vad", "s", turn_id, T0 + int(start_s * NS)),
              TimingEvent(TimingKind.SPEECH_ENDED, "vad", "s", turn_id, T0 + int((start_s + 1) * NS),
                          {Key.DETECTED_NS: T0 + int((start_s + 1.4) * NS)}),
              TimingEvent(TimingKind.ASR_DONE, "asr", "s", turn_id, T0 + int((start_s + 1.6) * NS), {Key.TEXT: text})]
    if played_s is not None:
        events.append(TimingEvent(TimingKind.PLAYBACK_STARTED, "speaker", "s", turn_id, T0 + int(played_s * NS)))
    for k, gap_ms in enumerate(paused_ms):  # resumed pauses at onsets that were no barge-in
        events.append(TimingEvent(TimingKind.PLAYBACK_PAUSED, "speaker", "s", turn_id,
                                  T0 + int((played_s + 0.5 + k) * NS), {Key.DURATION_MS: gap_ms}))
    if barge_onset_s is not None:
        events.append(TimingEvent(TimingKind.BARGE_IN, "speaker", "s", turn_id, T0 + int(stop_s * NS), {
            Key.CANCELLED: 1, Key.DURATION_MS: 30.0, Key.SPEECH_START_NS: T0 + int(barge_onset_s * NS)}))
        events.append(TimingEvent(TimingKind.TURN_PLAYED, "speaker", "s", turn_id, T0 + int(stop_s * NS) + ms,
                                  {Key.INTERRUPTED: True, Key.COUNT: 0}))
    return build_turn(turn_id, events, complete=True)


def test_analyze_counts_barge_ins_self_interruptions_erle_and_wer() -> None:
    conv = echo.compose(clips(), 4)
    u = conv.utterances
    answer = np.zeros(int((conv.samples.shape[0] / 16_000 + 5) * RATE), dtype=np.float32)

    def play(a_s: float, b_s: float) -> None:
        answer[int(a_s * RATE): int(b_s * RATE)] = 0.3

    # answer 0 plays from 4.0 s until the barge-in by utterance 1; a phantom barge-in (echo) before it
    play(4.0, u[1].onset_s + 0.3)
    # answer 1 starts late: utterance 2 begins in silence (not counted); answer 2 is cut by utterance 3
    play(u[2].end_s + 1.0, u[3].onset_s + 0.5)
    turns = [
        _turn(0, start_s=u[0].onset_s, text="go forward 10 meters", played_s=4.0, barge_onset_s=5.0, stop_s=5.25),
        _turn(1, start_s=u[1].onset_s, text="ten of clubs", played_s=u[2].end_s + 1.0, paused_ms=(300.0, 420.0),
              barge_onset_s=u[1].onset_s + 0.02, stop_s=u[1].onset_s + 0.28),
        _turn(2, start_s=u[2].onset_s, text="he was not an ill disposed young man", played_s=u[2].end_s + 1.0,
              barge_onset_s=u[3].onset_s + 0.03, stop_s=u[3].onset_s + 0.33),
        _turn(3, start_s=u[3].onset_s, text="go back"),
        _turn(4, start_s=u[3].end_s + 2.0, text="once upon a time"),  # the assistant's own words transcribed
    ]
    windows = [{"t_ns": T0 + int(4.5 * NS), "duration_ms": 500.0, "erle_db": 30.0, "cpu_percent": 1.0,
                "canceller_cpu_percent": 0.4, "delay_ms": 60.0},
               {"t_ns": T0 + int((u[1].onset_s - 0.1) * NS), "duration_ms": 500.0, "erle_db": 5.0},  # user speaks
               {"t_ns": T0 + int(5.0 * NS), "duration_ms": 500.0, "erle_db": 40.0, "cpu_percent": 2.0},
               {"t_ns": T0 + int(6.0 * NS), "duration_ms": 500.0, "delay_ms": 61.0}]  # no ERLE in it
    clean = {"goforward.wav": "go forward ten meters", "cards-001.wav": "ten of clubs",
             "librivox-0880.wav": "he was not an ill disposed young man"}
    figures = echo.analyze(conv, turns, answer, RATE, windows, clean)
    assert list(figures)[:7] == list(echo.ECHO_KEYS)
    assert figures["self_interruptions"] == 1  # the barge-in at 5.0 s matches no user utterance
    assert figures["barge_ins"] == 2 and figures["in_pause"] == [2]  # utterances 1 and 3 were mid-sentence
    assert figures["barge_ins_detected"] == 2 and figures["missed"] == []
    onsets = [T0 + int(u[k].onset_s * NS) for k in (1, 3)]
    assert figures["barge_in_from_onset_ms"] == pytest.approx([280.0, 330.0], abs=1.0)
    assert figures["barge_in_from_onset_ms_p90"] == pytest.approx(325.0, abs=1.0) and onsets
    assert figures["erle_db_p50"] == 35.0 and figures["erle_windows"] == 2
    assert figures["wer_clean"] == 0.0
    assert figures["wer_during_playback"] == pytest.approx(3 / 7)  # "go back": 1 substitution, 2 deletions
    assert figures["echo_turns"] == 1 and figures["echo_delay_ms"] == 61.0 and figures["aec_cpu_percent"] == 1.5
    assert figures["aec_canceller_cpu_percent"] == 0.4
    assert figures["pauses_resumed"] == 2 and figures["pause_ms"] == pytest.approx(720.0)
    assert turns[1].pauses_resumed == 2 and turns[0].pauses_resumed == 0 and turns[0].pause_ms is None
    assert "(pauses resumed: 2, 720 ms)" in echo.render("aec", figures)
    assert "barge-ins detected            2/2" in echo.render("aec", figures)


def test_echo_plan_is_packaged_and_checked() -> None:
    catalog = load_catalog(SCENARIOS_FILE)
    plan, catalog = resolve_plan(catalog, "echo", [], None, None)
    assert plan.kind == "echo" and plan.repeat >= 11 and set(plan.variants) == {"aec", "aec_suppressed", "half_duplex"}
    items = plan_items(plan, catalog)
    assert items and all(item.clip is not None for item in items)
    with pytest.raises(BenchConfigError, match="voice scenarios"):
        parse_plan("bad", {"kind": "echo", "scenarios": ["one_sentence"], "stream": True}, catalog.scenarios)
