"""Data shipped inside the package, found next to this module (a wheel install has no source checkout).

* ``dataflows/voice-chatbot.yml``: a byte-identical copy of the checkout's ``dataflows/voice-chatbot.yml``.
* ``dataflows/voice-chatbot-room.yml``: a byte-identical copy of the checkout's ``dataflows/voice-chatbot-room.yml``
  (the simulated room of the bench's echo plan).
* ``dataflows/test_streaming_pipeline.yml``: the checkout's ``examples/voice-chatbot/test_streaming_pipeline.yml``
  with the ``text-input`` node run by the ``dora-voice-text-input`` console script instead of the example script
  beside the YAML (the one difference; otherwise node for node the same).
* ``cluster/run-local-cluster.sh``: a byte-identical copy of ``examples/distributed/run-local-cluster.sh`` (the
  launcher runs a dataflow through two daemons on this host with it: the bench's ``distributed`` plan).
* ``recordings/``: byte-identical copies of ``tests/data`` (five short recordings with their README and licence):
  the quickstart's default input and the bench's voice clips.

``tests/test_packaging.py`` fails when a copy drifts from its checkout original, and checks that a built wheel
holds every file listed here.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

DATAFLOWS_DIR = PACKAGE_DIR / "dataflows"
VOICE_DATAFLOW = DATAFLOWS_DIR / "voice-chatbot.yml"
"""mic -> VAD -> ASR -> LLM -> TTS -> speaker, plus the monitor (``dora-voice run|live``, voice bench scenarios)."""
ROOM_DATAFLOW = DATAFLOWS_DIR / "voice-chatbot-room.yml"
"""The voice dataflow in a simulated room: mic -> room (+ the speaker's echo) -> aec -> VAD ... (``--plan echo``)."""
TEXT_DATAFLOW = DATAFLOWS_DIR / "test_streaming_pipeline.yml"
"""text-input -> LLM -> TTS -> speaker, plus the monitor (text bench scenarios)."""

RECORDINGS_DIR = PACKAGE_DIR / "recordings"
QUICKSTART_RECORDING = RECORDINGS_DIR / "goforward.wav"
"""``dora-voice run``'s default input: "go forward ten meters", 2.8 s, 16 kHz mono (CMU PocketSphinx test data)."""

SCENARIOS_FILE = PACKAGE_DIR / "bench" / "scenarios.yaml"
"""The bench's scenarios and plans."""
QUESTIONS_FILE = PACKAGE_DIR / "bench" / "answers.yaml"
"""The answer-quality benchmark's question set (``dora-voice-bench --plan answers``)."""

CLUSTER_SCRIPT = PACKAGE_DIR / "cluster" / "run-local-cluster.sh"
"""Coordinator and daemons ``edge`` and ``server`` on loopback, one dataflow attached, everything torn down."""

PACKAGED_FILES = (VOICE_DATAFLOW, ROOM_DATAFLOW, TEXT_DATAFLOW, QUICKSTART_RECORDING, SCENARIOS_FILE, QUESTIONS_FILE, CLUSTER_SCRIPT,
                  RECORDINGS_DIR / "README.md", RECORDINGS_DIR / "LICENSE-pocketsphinx",
                  *(RECORDINGS_DIR / name for name in ("cards-001.wav", "cards-005.wav", "librivox-0880.wav",
                                                          "librivox-0870.wav")))
"""Every data file the tools need at run time."""


def runs_dir() -> Path:
    """Where run folders go by default: ``runs/`` in the current directory (never inside the package)."""
    return Path.cwd() / "runs"
