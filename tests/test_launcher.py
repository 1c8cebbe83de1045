"""The launcher's environment for dora run."""

from __future__ import annotations

import sys
from pathlib import Path

from dora_voice_tools.launcher import node_env


def test_node_env_puts_this_venv_first_and_bounds_dora_idle_watchdog(monkeypatch) -> None:
    monkeypatch.delenv("DORA_FINISH_DRAIN_GRACE_SECS", raising=False)
    env = node_env({"AUDIO_INPUT": "q.wav"}, timeout_s=300)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["AUDIO_INPUT"] == "q.wav"
    assert env["DORA_FINISH_DRAIN_GRACE_SECS"] == "300"
    assert node_env({"DORA_FINISH_DRAIN_GRACE_SECS": "7"})["DORA_FINISH_DRAIN_GRACE_SECS"] == "7"


def test_a_hung_start_is_killed_and_tried_again(tmp_path, monkeypatch) -> None:
    import dora_voice_tools.launcher as launcher

    # A fake `dora` that never prints "all nodes are ready" the first time, and starts fine the second time.
    marker = tmp_path / "tried"
    fake = tmp_path / "dora"
    fake.write_text(f"""#!/bin/sh
if [ -f {marker} ]; then echo "INFO [dora]: daemon all nodes are ready, starting dataflow"; exit 0; fi
touch {marker}; echo "spawning"; sleep 60
""")
    fake.chmod(0o755)
    (tmp_path / "df.yml").write_text("nodes: []\\n")
    monkeypatch.setattr(launcher, "dora_executable", lambda: str(fake))
    monkeypatch.setattr(launcher, "START_TIMEOUT_S", 1.5)
    result = launcher.run_dataflow(tmp_path / "df.yml", tmp_path / "out", timeout_s=30)
    assert result.returncode == 0
    assert result.wall_s < 20
    log = result.log
    assert "nodes not ready" in log and log.index("nodes not ready") < log.index("all nodes are ready")
