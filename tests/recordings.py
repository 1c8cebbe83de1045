"""The real recordings shipped with the tests (tests/data, see its README) and what is said in them, and helpers
that compose an input WAV from them for end-to-end runs."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
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
    "librivox-0870.wav": ("and mister john dashwood had then leisure to consider how much there might be prudently in his "
                          "power to do for them"),
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


REQUIRED = ("turn_id", "transcript", "reply", "asr_latency_ms", "llm_ttft_ms", "tts_ttfb_ms", "first_audio_ms",
            "llm_start_to_first_audio_ms", "segments")
_NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
            "8": "eight", "9": "nine", "10": "ten", "11": "eleven", "12": "twelve"}


def normalize(text: str) -> str:
    words = re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()
    return " ".join(_NUMBERS.get(w, w) for w in words)


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalize(reference), normalize(hypothesis))


def check_turn(turn: dict) -> None:
    missing = [key for key in REQUIRED if turn.get(key) is None]
    assert not missing, f"turn {turn.get('turn_id')} lacks {missing}: {turn}"
    assert turn["reply"].strip()
    # Causality: speech end < transcript < first token < first audio played.
    assert turn["speech_end_ns"] < turn["transcript_ns"] < turn["llm_first_token_ns"] < turn["playback_started_ns"]
    assert turn["segments"] >= 1
    assert turn["segments_lost"] == 0
    assert turn["segments_played"] == turn["tts_segments"] >= turn["segments"]


LONG_ANSWERS = "You are a storyteller. Whatever the user says, answer with a long story of at least ten sentences."
