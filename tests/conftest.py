"""Shared test helpers: the real recordings shipped with the tests, and a fixed clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DATA = Path(__file__).parent / "data"

TRANSCRIPTS = {
    "cards-001.wav": "ten of clubs",
    "cards-005.wav": "eight of spades four of clubs seven of hearts",
    "goforward.wav": "go forward ten meters",
    "librivox-0880.wav": "he was not an ill disposed young man",
    "librivox-0870.wav": ("and mister john dashwood had then leisure to consider how much there might be prudently in his "
                          "power to do for them"),
}


def load_clip(name: str) -> np.ndarray:
    """A test recording as float32 16 kHz mono."""
    samples, rate = sf.read(DATA / name, dtype="float32")
    assert rate == 16_000
    return samples


class FakeClock:
    """A settable ``time.time_ns`` replacement."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
