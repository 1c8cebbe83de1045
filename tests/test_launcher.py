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


def test_run_refuses_an_unreadable_recording_before_dora_starts(tmp_path, monkeypatch, capsys) -> None:
    import numpy as np
    import pytest

    import dora_voice_tools.cli as cli
    from dora_voice import audio

    started = []
    monkeypatch.setattr(cli, "run_dataflow", lambda *a, **k: started.append(a))
    raw = tmp_path / "q.raw"
    raw.write_bytes(np.zeros(1600, np.int16).tobytes())
    empty = tmp_path / "empty.wav"
    audio.write_wav(empty, np.zeros(0, np.float32), 16_000)
    for path, problem in ((raw, "headerless"), (empty, "holds no audio samples"),
                          (tmp_path / "missing.wav", "not found")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["run", "--input", str(path), "--out-dir", str(tmp_path / "run")])
        assert str(exc.value).startswith("dora-voice: --input: ") and problem in str(exc.value)
        assert str(path) in str(exc.value)
    assert started == []


def test_run_says_when_a_recording_held_no_speech(tmp_path, monkeypatch, capsys) -> None:
    import numpy as np

    import dora_voice_tools.cli as cli
    from dora_voice import audio
    from dora_voice_tools.launcher import RunResult

    quiet = tmp_path / "quiet.wav"
    audio.write_wav(quiet, np.full(8_000, 0.01, np.float32), 16_000)  # 0.5 s at -40 dBFS
    out = tmp_path / "run"
    monkeypatch.setattr(cli, "run_dataflow", lambda yaml, out_dir, env, **k: RunResult(
        0, 1.0, out_dir, out_dir / "timing.jsonl", Path(env["AUDIO_OUTPUT"])))
    try:
        cli.main(["run", "--input", str(quiet), "--out-dir", str(out)])
    except SystemExit as exc:
        assert exc.code == 0
    text = capsys.readouterr().out
    assert "no turn: the VAD heard no speech in" in text and "(0.50 s of audio, peak -40 dBFS)" in text
    assert "VAD_THRESHOLD" in text


def test_run_points_to_a_larger_asr_model_when_utterances_got_no_transcript(tmp_path, monkeypatch, capsys) -> None:
    import numpy as np

    import dora_voice_tools.cli as cli
    from dora_voice import audio
    from dora_voice_monitor.sinks import write_session
    from dora_voice_tools.launcher import RunResult

    speech = tmp_path / "q.wav"
    audio.write_wav(speech, np.full(8_000, 0.5, np.float32), 8_000)

    def fake_run(yaml, out_dir, env, **_kwargs):
        out_dir.mkdir(parents=True)
        report = out_dir / "timing.jsonl"
        report.write_text("")
        write_session(report, [0, 1], [])  # what the monitor writes when the ASR kept no words
        return RunResult(0, 1.0, out_dir, report, Path(env["AUDIO_OUTPUT"]))

    monkeypatch.setattr(cli, "run_dataflow", fake_run)
    try:
        cli.main(["run", "--input", str(speech), "--out-dir", str(tmp_path / "run")])
    except SystemExit as exc:
        assert exc.code == 0
    text = capsys.readouterr().out
    assert "utterances without a transcript: 2 (turns 0, 1)" in text
    assert "2 utterance(s) got no transcript" in text and "--set ASR_MODEL=whisper-base" in text
    assert "no turn: the VAD heard no speech" not in text
