"""The launcher's environment for dora run."""

from __future__ import annotations

import sys
from pathlib import Path

from dora_voice.launcher import node_env


def test_node_env_puts_this_venv_first_and_bounds_dora_idle_watchdog(monkeypatch) -> None:
    monkeypatch.delenv("DORA_FINISH_DRAIN_GRACE_SECS", raising=False)
    env = node_env({"AUDIO_INPUT": "q.wav"}, timeout_s=300)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["AUDIO_INPUT"] == "q.wav"
    assert env["DORA_FINISH_DRAIN_GRACE_SECS"] == "300"
    assert node_env({"DORA_FINISH_DRAIN_GRACE_SECS": "7"})["DORA_FINISH_DRAIN_GRACE_SECS"] == "7"
