"""Every node stops the same way when it cannot start: one line naming the problem on stderr, exit status 2
(dora_voice.nodes: 0 finished, 2 cannot start, 1 crashed)."""

from __future__ import annotations

import pytest

from dora_voice.nodes import EXIT_CANNOT_START, fatal, mic, text_input, vad
from dora_voice_monitor import node as monitor


def test_fatal_writes_one_line_and_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        fatal("dora-voice-x", "X_PATH=/nope: no such file")
    assert stop.value.code == EXIT_CANNOT_START == 2
    assert capsys.readouterr().err == "dora-voice-x: X_PATH=/nope: no such file\n"


@pytest.mark.parametrize("main, env, message", [
    (vad.main, {"VAD_MIN_SILENCE_MS": "soon"}, "dora-voice-vad: VAD_MIN_SILENCE_MS"),
    (monitor.main, {"MONITOR_VERBOSE": "maybe"}, "dora-voice-monitor: MONITOR_VERBOSE"),
    (mic.main, {"AUDIO_INPUT": "/no/such/question.wav"}, "dora-voice-mic: AUDIO_INPUT: "),
    (text_input.main, {"TEXT_INPUT_QUERIES": "", "TEXT_INPUT_FILE": ""}, "dora-voice-text-input: no queries"),
], ids=["bad setting", "monitor setting", "missing input file", "nothing to send"])
def test_a_node_that_cannot_start_says_why_and_exits_2(main, env, message, monkeypatch, capsys) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
