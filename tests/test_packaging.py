"""The package works installed from a wheel: the data the tools need is inside it, the packaged copies match
their checkout originals, and the CLI and the bench find their defaults without the checkout.

(The full proof, a fresh venv with ``pip install .`` running the quickstart, takes minutes and is not part of the
suite; see README "Install without the checkout".)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import yaml

from dora_voice_tools import resources

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("dora-voice", "dora-voice-mic", "dora-voice-vad", "dora-voice-asr", "dora-voice-llm", "dora-voice-tts",
           "dora-voice-speaker", "dora-voice-text-input", "dora-voice-room", "dora-voice-aec", "dora-voice-monitor", "monitor_streaming_timing",
           "dora-voice-bench", "dora-voice-models")


def test_packaged_voice_dataflow_is_the_checkouts() -> None:
    original = ROOT / "dataflows" / "voice-chatbot.yml"
    assert resources.VOICE_DATAFLOW.read_bytes() == original.read_bytes(), (
        f"{resources.VOICE_DATAFLOW} differs from {original}: copy the checkout's YAML over the packaged one "
        "(dora-voice run uses the packaged copy)")


def test_packaged_room_dataflow_is_the_checkouts() -> None:
    original = ROOT / "dataflows" / "voice-chatbot-room.yml"
    assert resources.ROOM_DATAFLOW.read_bytes() == original.read_bytes(), (
        f"{resources.ROOM_DATAFLOW} differs from {original}: copy the checkout's YAML over the packaged one "
        "(dora-voice-bench --plan echo uses the packaged copy)")


def test_packaged_text_dataflow_is_the_examples_with_the_console_script() -> None:
    example = yaml.safe_load((ROOT / "examples" / "voice-chatbot" / "test_streaming_pipeline.yml").read_text())
    packaged = yaml.safe_load(resources.TEXT_DATAFLOW.read_text())
    for node in example["nodes"]:
        if node["path"] == "test_streaming_llm_tts.py":
            node["path"] = "dora-voice-text-input"
    assert packaged == example, (f"{resources.TEXT_DATAFLOW} differs from the example's dataflow (other than the "
                                 "text-input node's path): make the same change in both")


def test_packaged_dataflows_name_only_console_scripts() -> None:
    # The launcher runs them from a copy in the run folder: a node script beside the YAML would not be found.
    for path in (resources.VOICE_DATAFLOW, resources.TEXT_DATAFLOW):
        paths = {node["path"] for node in yaml.safe_load(path.read_text())["nodes"]}
        assert paths <= set(SCRIPTS) | {"dynamic"}, (path.name, paths - set(SCRIPTS))


def test_packaged_recordings_are_the_test_recordings() -> None:
    originals = {p.name: p.read_bytes() for p in (ROOT / "tests" / "data").iterdir()}
    packaged = {p.name: p.read_bytes() for p in resources.RECORDINGS_DIR.iterdir() if p.is_file()}
    assert packaged == originals


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources (no build folder left in the checkout)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "out")
    for name in ("nodes", "monitor"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path / "dist"
    # The PEP 517 hook pip calls for `pip wheel .`, without pip's own start-up (about 0.7 s instead of 6 s).
    build = f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("dora_voice-*.whl")
    return wheel


def test_wheel_holds_the_data_and_the_tools_find_it_without_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        archive.extractall(tmp_path / "site")
    for path in resources.PACKAGED_FILES:
        assert path.relative_to(ROOT / "monitor").as_posix() in names, f"{path.name} is not in the wheel"
    for script in SCRIPTS:
        assert f"\n{script} = " in entry_points, f"console script {script} missing"
    assert not any(n.startswith(("tests/", "dataflows/", "examples/")) for n in names)

    # The unpacked wheel first on sys.path, run from a folder outside the checkout.
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = textwrap.dedent(f"""
        from pathlib import Path
        import dora_voice_tools, dora_voice_monitor, dora_voice
        from dora_voice_tools import cli, resources
        from dora_voice_tools.bench import plans
        site = Path({str(tmp_path / "site")!r})
        for module in (dora_voice_tools, dora_voice_monitor, dora_voice):
            assert Path(module.__file__).is_relative_to(site), module.__file__
        args = cli.build_parser().parse_args(["run"])
        assert Path(args.input).is_relative_to(site) and Path(args.input).is_file(), args.input
        assert Path(args.dataflow).is_relative_to(site) and Path(args.dataflow).is_file(), args.dataflow
        assert resources.runs_dir() == Path.cwd() / "runs"
        catalog = plans.load_catalog()
        clips = plans.plan_items(catalog.plan("voice"), catalog)
        assert len(clips) == 5 and all(item.clip.path.is_relative_to(site) for item in clips)
        assert resources.TEXT_DATAFLOW.is_relative_to(site) and resources.TEXT_DATAFLOW.is_file()
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
