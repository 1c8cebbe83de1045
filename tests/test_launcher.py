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


def test_a_packaged_dataflow_runs_from_a_copy_in_the_run_folder(tmp_path, monkeypatch) -> None:
    # dora writes out/ beside the YAML it runs: never into the installed package.
    import dora_voice_tools.launcher as launcher
    from dora_voice_tools.resources import VOICE_DATAFLOW

    seen = tmp_path / "seen"
    fake = tmp_path / "dora"
    fake.write_text(f"""#!/bin/sh
echo "$2" > {seen}; pwd >> {seen}; echo "all nodes are ready"; exit 0
""")
    fake.chmod(0o755)
    monkeypatch.setattr(launcher, "dora_executable", lambda: str(fake))
    out = tmp_path / "run"
    assert launcher.run_dataflow(VOICE_DATAFLOW, out, timeout_s=30).returncode == 0
    yaml_arg, cwd = seen.read_text().split()
    assert yaml_arg == str(out / "voice-chatbot.yml") and cwd == str(out)
    assert (out / "voice-chatbot.yml").read_bytes() == VOICE_DATAFLOW.read_bytes()
    own = tmp_path / "mine.yml"
    own.write_bytes(VOICE_DATAFLOW.read_bytes())
    launcher.run_dataflow(own, tmp_path / "run2", timeout_s=30)
    assert seen.read_text().split() == [str(own), str(tmp_path)]  # a YAML of the user's runs where it is
