"""The real recordings shipped with the tests (tests/data, see its README) and what is said in them, and helpers
that compose an input WAV from them for end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from dora_voice.models import TEST_ASR, TEST_LLM

DATA = Path(__file__).parent / "data"
RATE = 16_000

TRANSCRIPTS = {
    "cards-001.wav": "ten of clubs",
    "cards-005.wav": "eight of spades four of clubs seven of hearts",
    "goforward.wav": "go forward ten meters",
    "librivox-0880.wav": "he was not an ill disposed young man",
}

E2E_SETTINGS = {"LLM_MODEL": TEST_LLM, "ASR_MODEL": TEST_ASR, "LLM_MAX_TOKENS": "60", "LOG_LEVEL": "INFO",
                "LLM_IGNORE_EOS": "true", "LLM_REPETITION_GUARD": "false"}
"""The end-to-end tests' models and settings. What a 135M model says is not the test's business, so its reply
is made certain to be long enough: it cannot end it (``LLM_IGNORE_EOS``) and no sentence of it is dropped as a
repeat (``LLM_REPETITION_GUARD``); it always runs to ``LLM_MAX_TOKENS`` (or ``LLM_MAX_WORDS``)."""


def load_clip(name: str) -> np.ndarray:
    """A test recording as float32 16 kHz mono."""
    samples, rate = sf.read(DATA / name, dtype="float32")
    assert rate == RATE
    return samples


def compose(path: Path, parts: list[np.ndarray]) -> list[tuple[float, float]]:
    """Write the parts one after another; return (start_s, end_s) of each non-silent part."""
    spans, t = [], 0.0
    for part in parts:
        if np.any(part):
            spans.append((t, t + len(part) / RATE))
        t += len(part) / RATE
    sf.write(path, np.concatenate(parts), RATE, subtype="PCM_16")
    return spans


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def active_seconds(samples: np.ndarray, rate: int, threshold_dbfs: float = -40.0) -> tuple[float, float | None]:
    """Seconds of 20 ms frames louder than ``threshold_dbfs``, and the time of the first such frame."""
    frame = int(0.02 * rate)
    n = len(samples) // frame
    if n == 0:
        return 0.0, None
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = 20 * np.log10(rms) > threshold_dbfs
    first = float(np.argmax(loud)) * frame / rate if loud.any() else None
    return float(loud.sum()) * frame / rate, first
