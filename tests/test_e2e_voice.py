"""End to end: real recordings through the real voice-chatbot dataflow with ``dora run`` and small real models.

Models: SmolLM2-135M (LLM), Whisper tiny.en (ASR), Piper joe (TTS) — the test set of ``dora-voice-models``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import soundfile as sf

from dora_voice_tools.launcher import run_dataflow
from recordings import E2E_SETTINGS, TRANSCRIPTS, active_seconds, check_turn, compose, load_clip, silence, wer

VOICE_DATAFLOW = Path(__file__).resolve().parents[1] / "dataflows" / "voice-chatbot.yml"

pytestmark = pytest.mark.e2e

def test_one_question_streamed_answer(tmp_path: Path) -> None:
    clip = "goforward.wav"
    spans = compose(tmp_path / "in.wav", [silence(0.5), load_clip(clip), silence(0.3)])
    out_wav = tmp_path / "answer.wav"
    result = run_dataflow(VOICE_DATAFLOW, tmp_path,
                          {**E2E_SETTINGS, "AUDIO_INPUT": str(tmp_path / "in.wav"), "AUDIO_OUTPUT": str(out_wav)},
                          timeout_s=240)
    assert result.returncode == 0, result.log[-4000:]
    assert len(result.turns) == 1, result.log[-4000:]
    turn = result.turns[0]
    check_turn(turn)
    assert wer(TRANSCRIPTS[clip], turn["transcript"]) <= 0.20, turn["transcript"]
    # No pause inside the request: the transcript made at the proposed end of turn is the one used.
    assert turn["speculation"] == "hit" and turn["speculation_cancelled"] == 0, result.log[-4000:]
    # The reply began from the speculative transcript and was sent at the confirmation (TURN_SPECULATION=answer).
    assert turn["llm_speculation"] == "hit" and turn["llm_speculation_cancelled"] == 0, result.log[-4000:]

    answer, rate = sf.read(out_wav, dtype="float32")
    loud_s, first_loud_s = active_seconds(answer, rate)
    assert loud_s >= 0.5
    # The output WAV is on the input's clock: the answer starts after the user stopped speaking, and the gap
    # matches the monitor's voice-to-voice figure (first_audio_ms) within a few frames.
    clip_start_s, clip_end_s = spans[0]
    assert first_loud_s is not None and first_loud_s > clip_end_s - 0.3
    measured_ms = (turn["playback_started_ns"] - turn["speech_end_ns"]) / 1e6
    assert measured_ms == pytest.approx(turn["first_audio_ms"], abs=1.0)
    # Where the VAD put the end of speech, seen from the output WAV: it must fall inside the spoken clip.
    implied_speech_end_s = first_loud_s - turn["first_audio_ms"] / 1000
    assert clip_start_s < implied_speech_end_s < clip_end_s + 0.1


def test_two_utterances_two_turns_nothing_lost(tmp_path: Path) -> None:
    a, b = "librivox-0880.wav", "cards-005.wav"
    compose(tmp_path / "in.wav", [silence(0.5), load_clip(a), silence(2.0), load_clip(b), silence(0.3)])
    result = run_dataflow(VOICE_DATAFLOW, tmp_path,
                          {**E2E_SETTINGS, "AUDIO_INPUT": str(tmp_path / "in.wav"),
                           "AUDIO_OUTPUT": str(tmp_path / "out.wav"), "BARGE_IN": "false"}, timeout_s=300)
    assert result.returncode == 0, result.log[-4000:]
    turns = sorted(result.turns, key=lambda t: t["turn_id"])
    assert [t["turn_id"] for t in turns] == [0, 1], result.log[-4000:]
    for turn in turns:
        check_turn(turn)
    # Corpus WER over both utterances (Whisper tiny.en, greedy: 5.9-7.9 % on these recordings, README).
    reference = TRANSCRIPTS[a] + " " + TRANSCRIPTS[b]
    hypothesis = turns[0]["transcript"] + " " + turns[1]["transcript"]
    assert wer(reference, hypothesis) <= 0.20, hypothesis
    assert turns[0]["playback_started_ns"] < turns[1]["playback_started_ns"]
    # A reply that reached its first chunk before the confirmation (the sentence Smart Turn misjudges waits the
    # full TURN_MAX_WAIT_MS: there is time) sent it to the TTS ahead; the confirmed verdict released the audio
    # synthesized during the pause, none of it was dropped, and the turn's audio is whole (check_turn above).
    ahead = [t["turn_id"] for t in turns if re.search(
        rf"turn {t['turn_id']}: confirmed with the speculative transcript: [1-9]\d* chunk", result.log)]
    assert ahead or not any(t["eot_rule"] == "max_wait" for t in turns), result.log[-4000:]
    for turn_id in ahead:
        assert f"turn {turn_id}: confirmed: " in result.log, result.log[-4000:]
    assert all(t["tts_speculation_cancelled"] == 0 for t in turns), result.log[-4000:]


PAUSE_AT_S = 4.18
"""A word boundary mid-sentence in librivox-0870: "... to consider how much | there might be prudently ..."."""


def test_a_700_ms_pause_mid_sentence_is_not_the_end_of_the_turn(tmp_path: Path) -> None:
    """Smart Turn (the default end-of-turn detector) hears the pause as incomplete: one turn, the whole sentence,
    and no answer audio before the sentence ends. The end of turn is decided by the model, with its probability."""
    clip = load_clip("librivox-0870.wav")
    cut = int(PAUSE_AT_S * 16_000)
    result, turn, first_loud_s, spans = answer_one_sentence(
        tmp_path, [silence(0.5), clip[:cut], silence(0.7), clip[cut:], silence(0.3)])
    assert turn["eot_rule"] in ("model", "max_wait") and turn["eot_probability"] is not None
    # The user resumed during speculation: the pause's speculative transcript was dropped and counted (and so was
    # the reply begun from it, if the ASR had finished before the user went on), and the LLM answered once, to the
    # whole sentence (its history holds one user turn).
    assert turn["speculation_cancelled"] >= 1, result.log[-4000:]
    answered = result.log.count("generating a reply to") + result.log.count("confirmed with the speculative")
    assert answered == 1, result.log[-4000:]
    assert result.log.count("reply begun during the pause dropped") == turn["llm_speculation_cancelled"]
    # A first chunk sent ahead was synthesized and its audio dropped unheard: at most one per reply dropped.
    assert result.log.count("speculative audio dropped") == turn["tts_speculation_cancelled"]
    assert turn["tts_speculation_cancelled"] <= turn["llm_speculation_cancelled"]
    second_part_end_s = spans[1][1]
    assert first_loud_s is not None and first_loud_s > second_part_end_s - 0.3


def test_the_same_sentence_without_the_pause_is_answered_from_the_speculation(tmp_path: Path) -> None:
    """The recording of the test above without its inserted pause: one turn, whose transcript and the beginning of
    whose reply were both made during the final pause and used at the confirmation, and whose prompt was in part
    evaluated while the sentence was still being spoken (partial transcripts)."""
    result, turn, first_loud_s, spans = answer_one_sentence(
        tmp_path, [silence(0.5), load_clip("librivox-0870.wav"), silence(0.3)])
    assert turn["speculation"] == "hit" and turn["speculation_cancelled"] == 0, result.log[-4000:]
    assert turn["llm_speculation"] == "hit" and turn["llm_speculation_cancelled"] == 0, result.log[-4000:]
    assert turn["prefilled_words"] > 0, result.log[-4000:]
    assert first_loud_s is not None and first_loud_s > spans[0][1] - 0.3


def answer_one_sentence(tmp_path: Path, parts: list) -> tuple:
    """librivox-0870 composed from ``parts`` through the voice dataflow: exactly one complete turn whose transcript
    is the sentence. Returns the run, the turn, when the answer became audible (s) and the parts' spans."""
    spans = compose(tmp_path / "in.wav", parts)
    out_wav = tmp_path / "answer.wav"
    result = run_dataflow(VOICE_DATAFLOW, tmp_path,
                          {**E2E_SETTINGS, "AUDIO_INPUT": str(tmp_path / "in.wav"), "AUDIO_OUTPUT": str(out_wav)},
                          timeout_s=240)
    assert result.returncode == 0, result.log[-4000:]
    assert len(result.turns) == 1, result.log[-4000:]
    turn = result.turns[0]
    check_turn(turn)
    assert wer(TRANSCRIPTS["librivox-0870.wav"], turn["transcript"]) <= 0.20, turn["transcript"]
    answer, rate = sf.read(out_wav, dtype="float32")
    _loud_s, first_loud_s = active_seconds(answer, rate)
    return result, turn, first_loud_s, spans
