"""Short phrases synthesized once: a cache in front of any :class:`~dora_voice.tts_engines.base.TtsEngine`.

A reply's first chunk is often a short opener ("Sure,", "Yes,", "I'm sorry,"): the LLM cuts its first chunk at the
first clause boundary so that it is spoken early, and when that chunk is only ready after the end of turn is
confirmed, its synthesis is the last step before the listener hears anything (Piper: 80-130 ms for "Sure," on the
2-core machine, about as long as for a whole short sentence). :class:`PhraseCache` synthesizes a list of such
phrases at start-up (``TTS_CACHED_PHRASES``) and keeps every segment of at most ``TTS_CACHE_MAX_WORDS`` words that
it synthesizes during the session (least recently used first out, :data:`CACHE_ENTRIES` entries), so the same text
is voiced at once from then on. The cached audio is the engine's own output for that exact text, so a cached
segment sounds as it would have: the same voice, speed and text normalization, one fixed rendition (Piper samples
its durations and noise, so a live synthesis of the same text differs slightly every time).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import numpy as np

from dora_voice.tts_engines.base import TtsEngine

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 64
"""Segments kept from the session (the start-up phrases are always kept)."""

DEFAULT_PHRASES = ("Sure,", "Sure!", "Sure.", "Yes,", "Yes.", "No,", "No.", "Okay,", "Okay.", "Of course!",
                   "Of course,", "Certainly!", "Absolutely!", "Hello!", "Hi!", "Hi there!", "Well,", "I'm sorry,",
                   "Thank you!", "Great question!")
"""``TTS_CACHED_PHRASES`` by default: openers of assistant replies, as the LLM's first-chunk rule cuts them."""


class PhraseCache:
    """A :class:`TtsEngine` that voices cached texts at once and everything else through ``engine``.

    Args:
        engine: the synthesizer.
        max_words: segments of at most this many words synthesized during the session are kept (0: none).
        capacity: session segments kept, least recently used first out.

    Attributes:
        hits / misses: segments voiced from the cache / synthesized.
    """

    def __init__(self, engine: TtsEngine, *, max_words: int = 3, capacity: int = CACHE_ENTRIES) -> None:
        if max_words < 0 or capacity < 0:
            raise ValueError(f"max_words and capacity must be >= 0, got {max_words} and {capacity}")
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.max_words = max_words
        self.capacity = capacity
        self._fixed: dict[str, np.ndarray] = {}
        self._session: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def prepare(self, phrases: Iterable[str], normalize: Callable[[str], str]) -> None:
        """Synthesize ``phrases`` now (each as the TTS node would voice it: ``normalize`` first) and keep them for
        the whole session. Logs how long it took."""
        started = time.perf_counter()
        for phrase in phrases:
            text = normalize(phrase)
            if text and text not in self._fixed:
                self._fixed[text] = self._synthesize_all(text)
        logger.info("%d phrase(s) synthesized ahead in %.0f ms (TTS_CACHED_PHRASES)", len(self._fixed),
                    (time.perf_counter() - started) * 1000)

    def cached(self, text: str) -> bool:
        """Whether ``text`` would be voiced from the cache."""
        return text in self._fixed or text in self._session

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Yield ``text``'s audio: the cached samples (a copy, as one chunk) or the engine's chunks as they come
        (see :meth:`TtsEngine.synthesize`). A short text synthesized to its end is kept for next time; one whose
        synthesis was abandoned (a barge-in closes the generator) is not."""
        samples = self._fixed.get(text)
        if samples is None and text in self._session:
            samples = self._session[text]
            self._session.move_to_end(text)
        if samples is not None:
            self.hits += 1
            logger.debug("cached audio for %r (%d samples)", text, samples.shape[0])
            if samples.shape[0]:
                yield samples.copy()
            return
        self.misses += 1
        keep = self.capacity > 0 and 0 < len(text.split()) <= self.max_words
        chunks: list[np.ndarray] = []
        for chunk in self.engine.synthesize(text):
            if keep:
                chunks.append(np.asarray(chunk, dtype=np.float32).reshape(-1).copy())
            yield chunk
        if keep:
            self._session[text] = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
            while len(self._session) > self.capacity:
                self._session.popitem(last=False)

    def warmup(self) -> None:
        """The engine's own warm-up."""
        self.engine.warmup()

    def _synthesize_all(self, text: str) -> np.ndarray:
        chunks = [np.asarray(c, dtype=np.float32).reshape(-1) for c in self.engine.synthesize(text)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
