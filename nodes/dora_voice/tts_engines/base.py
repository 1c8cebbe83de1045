"""What every TTS engine provides: the :class:`TtsEngine` interface and its :class:`EngineSpec` registry entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

WARMUP_TEXT = "Hello there."
"""Synthesized once at start-up so the first real turn does not pay the engine's first-run cost."""


@runtime_checkable
class TtsEngine(Protocol):
    """What the TTS node needs from a synthesizer.

    Attributes:
        sample_rate: rate of every chunk :meth:`synthesize` yields, Hz.
    """

    sample_rate: int

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Synthesize ``text`` (one segment, already normalized for speech).

        Yields:
            1-D ``float32`` arrays in [-1, 1] at :attr:`sample_rate`, in playback order, each as soon as it is
            computed (Piper: one per sentence). A text with nothing to say may yield nothing.
        """
        ...

    def warmup(self) -> None:
        """Run one short synthesis so later calls are at steady-state speed."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """One engine in the registry.

    Attributes:
        name: the ``TTS_BACKEND`` value that selects it.
        config: its settings class (a frozen dataclass of :func:`dora_voice.config.env_field`\\ s, loaded from the
            environment only when this engine is selected; listed by ``dora-voice-tts --help``).
        load: builds the engine from a loaded ``config``; raises ``ValueError`` for a bad option and
            :class:`dora_voice.models.ModelError` for a missing or unreadable model.
    """

    name: str
    config: type
    load: Callable[[Any], TtsEngine]
