"""End to end: the user interrupts the answer (barge-in), through the real dataflow with ``dora run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dora_voice_tools.launcher import run_dataflow
from recordings import LONG_ANSWERS, E2E_SETTINGS, active_seconds, compose, load_clip, silence

VOICE_DATAFLOW = Path(__file__).resolve().parents[1] / "dataflows" / "voice-chatbot.yml"

pytestmark = pytest.mark.e2e



def test_user_interrupts_the_answer(tmp_path: Path) -> None:
    # A question, then a second utterance 6 s later, while the (long) answer to the first is playing.
    spans = compose(tmp_path / "in.wav", [silence(0.5), load_clip("goforward.wav"), silence(6.0),
                                          load_clip("librivox-0880.wav"), silence(0.3)])
    out_wav = tmp_path / "out.wav"
    # The first answer must still be playing when the second utterance starts (about 6 s into it): the model runs
    # to LLM_MAX_WORDS (E2E_SETTINGS), about 14 s of speech.
    env = {**E2E_SETTINGS, "LLM_MAX_TOKENS": "200", "LLM_MAX_WORDS": "40", "LLM_SYSTEM_PROMPT": LONG_ANSWERS,
           "AUDIO_INPUT": str(tmp_path / "in.wav"), "AUDIO_OUTPUT": str(out_wav), "BARGE_IN": "true"}
    result = run_dataflow(VOICE_DATAFLOW, tmp_path, env, timeout_s=300)
    assert result.returncode == 0, result.log[-4000:]
    turns = sorted(result.turns, key=lambda t: t["turn_id"])
    assert [t["turn_id"] for t in turns] == [0, 1], result.log[-4000:]
    first, second = turns

    # Preconditions: the answer was playing when the user spoke again.
    if not first["playback_started_ns"] < second["speech_start_ns"]:
        pytest.fail(f"precondition not met: the first answer had not started playing when the second utterance "
                    f"began ({first['first_audio_ms']} ms to first audio): nothing to interrupt")
    if first["turn_played_ns"] < second["speech_start_ns"] and not first["interrupted"]:
        pytest.fail(f"precondition not met: the first answer ({first['audio_s']} s of audio: {first['reply']!r}) "
                    "ended before the second utterance began: nothing to interrupt")
    assert first["interrupted"] is True
    assert first["barge_in_ms"] is not None and first["barge_in_ms"] <= 150
    assert first["segments_lost"] == 0
    assert second["interrupted"] is False and second["reply"].strip()
    assert second["playback_started_ns"] > first["barge_in_ns"]
    assert second["segments_lost"] == 0

    # The output WAV, on the input's clock: nothing of turn 0 after the stop point + 150 ms, until turn 1 speaks.
    audio, rate = sf.read(out_wav, dtype="float32")
    _, first_loud_s = active_seconds(audio, rate)
    origin_ns = first["playback_started_ns"] - int(first_loud_s * 1e9)  # output sample 0, from turn 0's start
    stop_s = (first["barge_in_ns"] - origin_ns) / 1e9
    resume_s = (second["playback_started_ns"] - origin_ns) / 1e9
    assert spans[1][0] < stop_s < spans[1][1], "playback stopped outside the second utterance"
    gap = audio[int((stop_s + 0.15) * rate): int((resume_s - 0.05) * rate)]
    assert len(gap) > 0
    assert float(np.max(np.abs(gap))) < 0.01, "audio of the interrupted turn kept playing"
