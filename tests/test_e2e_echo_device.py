"""End to end on the real device path: the live dataflow (dataflows/voice-chatbot.yml, no files) on a PulseAudio
null sink. The speaker plays into the sink, a second stream plays the user's speech into the same sink, and the mic
records the sink's monitor: the assistant hears itself exactly as through open speakers. ECHO_GUARD=auto resolves
to aec; the user's question is answered, the user interrupts the answer mid-sentence, and the assistant never
interrupts itself.

Needs PulseAudio and PortAudio (see tests/test_audio_device.py); about 45 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import load_clip
from dora_voice import audio
from dora_voice.sinks import DeviceSink
from dora_voice_tools.launcher import run_dataflow
from test_audio_device import RATE, null_sink  # noqa: F401 - the fixture
from test_e2e_barge_in import LONG_ANSWERS
from test_e2e_voice import SMALL_MODELS

pytestmark = [pytest.mark.e2e, pytest.mark.device]

VOICE_DATAFLOW = Path(__file__).resolve().parents[1] / "dataflows" / "voice-chatbot.yml"


def test_live_dataflow_on_open_speakers(tmp_path: Path, null_sink) -> None:  # noqa: F811
    env = {**SMALL_MODELS, "LLM_MAX_TOKENS": "120", "LLM_SYSTEM_PROMPT": LONG_ANSWERS, "PULSE_SINK": null_sink,
           "PULSE_SOURCE": f"{null_sink}.monitor", "AUDIO_INPUT_DEVICE": "pulse", "AUDIO_OUTPUT_DEVICE": "pulse",
           "AUDIO_INPUT": "", "AUDIO_OUTPUT": "", "ECHO_REPORT": str(tmp_path / "echo.jsonl")}
    log = tmp_path / "dora.log"
    user = DeviceSink("pulse")
    user.open(RATE)
    said: list[tuple[int, int]] = []  # (start_ns, end_ns) of each utterance played into the room

    def talk() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and "all nodes are ready" not in (log.read_text(errors="replace")
                                                                            if log.exists() else ""):
            time.sleep(0.2)
        time.sleep(2.0)
        for clip, pause_s in (("goforward.wav", 6.0), ("librivox-0880.wav", 0.0)):
            samples = audio.resample(load_clip(clip), 16_000, RATE).astype(np.float32)
            start = user.place(0, samples, time.time_ns())
            said.append((user.position_to_ns(start), user.position_to_ns(start + samples.shape[0])))
            time.sleep(samples.shape[0] / RATE + pause_s)

    talker = threading.Thread(target=talk, daemon=True)
    talker.start()
    try:
        result = run_dataflow(VOICE_DATAFLOW, tmp_path, env, timeout_s=60)
    finally:
        talker.join(timeout=5)
        user.close()
    text = result.log
    assert "echo guard aec" in text and "WebRTC AEC3 on" in text, text[-3000:]
    assert len(said) == 2, "the dataflow never became ready"
    turns = sorted(result.turns, key=lambda t: t["turn_id"])
    assert len(turns) >= 2, text[-4000:]
    first = turns[0]
    assert first["playback_started_ns"] < said[1][0], "the answer had not started when the user spoke again"
    assert first["interrupted"] is True, "the user's barge-in was not detected"
    assert said[1][0] - 300_000_000 <= first["barge_in_onset_ns"] <= said[1][1], "interrupted, but not by the user"
    for turn in turns:  # nothing but the user's two utterances was heard as speech
        assert any(a - 300_000_000 <= turn["speech_start_ns"] <= b for a, b in said), turn["transcript"]
        if turn["interrupted"]:
            assert any(a - 300_000_000 <= turn["barge_in_onset_ns"] <= b for a, b in said)
    windows = (tmp_path / "echo.jsonl").read_text().splitlines()
    assert windows, "the aec node reported nothing"
