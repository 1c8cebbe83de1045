"""End to end in a simulated room (dataflows/voice-chatbot-room.yml): the assistant hears its own answer through the
room node, the aec node removes it, and the user interrupts mid-sentence. No self-interruption; the barge-in is
detected, and its transcript survives the echo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recordings import TRANSCRIPTS, load_clip
from dora_voice_tools.bench.echo import speech_bounds
from dora_voice_tools.launcher import run_dataflow
from recordings import LONG_ANSWERS, E2E_SETTINGS, compose, normalize, silence

pytestmark = pytest.mark.e2e

ROOM_DATAFLOW = Path(__file__).resolve().parents[1] / "dataflows" / "voice-chatbot-room.yml"


def test_barge_in_through_the_simulated_room(tmp_path: Path) -> None:
    # A question, then a second utterance 7 s after it, while the long answer to the first plays into the room.
    # The interruption is a 7 s sentence: AEC3's suppressor can hide the first second or two of a user who talks
    # over the answer, depending on what the answer says at that moment (README, issue 12: onset to stop 0.3-2.2 s
    # in the echo plan), and a 3 s one was once never heard at all in CI. How soon it is heard is the bench's
    # figure; this test checks that it is, with no self-interruption and the user's words through the echo.
    question, interruption = load_clip("goforward.wav"), load_clip("librivox-0870.wav")
    spans = compose(tmp_path / "in.wav", [silence(0.5), question, silence(7.0), interruption, silence(0.3)])
    env = {**E2E_SETTINGS, "LLM_MAX_TOKENS": "120", "LLM_SYSTEM_PROMPT": LONG_ANSWERS,
           "AUDIO_INPUT": str(tmp_path / "in.wav"), "AUDIO_OUTPUT": str(tmp_path / "out.wav"),
           "ECHO_REPORT": str(tmp_path / "echo.jsonl")}
    result = run_dataflow(ROOM_DATAFLOW, tmp_path, env, timeout_s=300)
    assert result.returncode == 0, result.log[-4000:]
    turns = sorted(result.turns, key=lambda t: t["turn_id"])
    # Two turns with words: the question and the interruption. While the answer plays, any utterance the VAD makes
    # (of echo or of the user) is a barge-in (VAD_MIN_SPEECH_MS = BARGE_IN_MIN_SPEECH_MS), so an utterance made of
    # echo would interrupt before the user's onset: the barge-in time check below catches it. A turn id skipped
    # between the two is the start of the user's speech cut off by double talk and transcribed to no words; it
    # comes after the barge-in (checked on the second turn's start).
    assert len(turns) == 2 and turns[0]["turn_id"] == 0, result.log[-4000:]
    first, second = turns
    assert second["speech_start_ns"] >= first["barge_in_onset_ns"], "a turn began before the barge-in: echo?"
    assert first["playback_started_ns"] < second["speech_start_ns"], "the answer had not started: no barge-in"
    assert first["interrupted"] is True, "the user's speech in the echo was not detected"
    # Input sample 0 on the wall clock, from the question's speech onset (the VAD's onset is within a frame of it).
    origin_ns = first["speech_start_ns"] - int((spans[0][0] + speech_bounds(question)[0]) * 1e9)
    onset_s = spans[1][0] + speech_bounds(interruption)[0]
    barge_s = (first["barge_in_onset_ns"] - origin_ns) / 1e9
    assert onset_s - 0.3 <= barge_s <= spans[1][1], f"interrupted at {barge_s:.2f} s: not by the user ({onset_s:.2f} s)"
    assert first["barge_in_from_onset_ms"] > 0 and first["barge_in_ns"] < second["playback_started_ns"]
    assert first["segments_lost"] == 0 and second["segments_lost"] == 0
    heard = set(normalize(second["transcript"]).split()) & set(TRANSCRIPTS["librivox-0870.wav"].split())
    assert heard, f"none of the user's words came through the echo: {second['transcript']!r}"
    # ERLE while only the assistant speaks: windows from 0.5 s after its start to 0.2 s before the user speaks.
    user_ns = origin_ns + int(onset_s * 1e9)
    windows = [json.loads(line) for line in (tmp_path / "echo.jsonl").read_text().splitlines()]
    far_only = [w["erle_db"] for w in windows if "erle_db" in w and
                first["playback_started_ns"] + 500_000_000 <= w["t_ns"] and
                w["t_ns"] + int(w["duration_ms"] * 1e6) <= user_ns - 200_000_000]
    assert far_only and sorted(far_only)[len(far_only) // 2] > 10, windows
    assert any(w["delay_ms"] >= 0 for w in windows)
    assert all(0 < w["canceller_cpu_percent"] <= w["cpu_percent"] for w in windows if w["audio_ms"] > 0)
