"""The repository's own docs stay true to the code, and docstrings cite nothing outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from dora_voice import schema
from dora_voice.schema import TimingKind

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_architecture_names_every_timing_kind_and_message() -> None:
    text = ARCHITECTURE.read_text()
    missing = [kind.value for kind in TimingKind if f"`{kind.value}`" not in text and kind.value not in text]
    assert not missing, f"docs/architecture.md lacks timing kinds {missing}"
    messages = ["AudioChunk", "StreamStarted", "Utterance", "VadEvent", "Transcript", "TextSegment", "AudioFragment",
                "SegmentDone", "PlaybackEvent", "TimingEvent"]
    assert all(hasattr(schema, name) for name in messages)
    assert not [name for name in messages if f"`{name}`" not in text]


def test_no_source_cites_a_file_outside_the_repository() -> None:
    outside = re.compile(r"\b(?:DESIGN|MODELS|STYLE)\.md\b")
    offenders = [str(path.relative_to(ROOT)) for folder in ("nodes", "monitor", "dataflows", "examples")
                 for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".yml", ".yaml", ".sh")
                 and outside.search(path.read_text())]
    assert not offenders, offenders
