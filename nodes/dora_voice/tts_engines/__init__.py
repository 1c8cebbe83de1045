"""Speech synthesizers behind one small interface, so the TTS node's core never depends on a particular engine.

An engine turns one text segment into audio chunks *as soon as they exist* (:meth:`TtsEngine.synthesize` is a
generator: the node emits the first chunk's audio before the engine has computed the rest). Tests drive the node
with a scripted fake; the real engine is Piper (:mod:`.piper`).

Adding an engine is one module in this package, defining its settings class, the engine and
``ENGINE = EngineSpec(name, SettingsClass, load)`` (see :mod:`.piper`), plus its line in :data:`ENGINES`.
``TTS_BACKEND`` accepts every registered name, and the TTS node's contract and ``--help`` list every engine's
settings.
"""

from __future__ import annotations

from typing import Mapping

from dora_voice.config import load_config
from dora_voice.tts_engines import piper
from dora_voice.tts_engines.base import WARMUP_TEXT, EngineSpec, TtsEngine

__all__ = ["ENGINES", "WARMUP_TEXT", "EngineSpec", "TtsEngine", "load_engine"]

ENGINES: dict[str, EngineSpec] = {
    piper.ENGINE.name: piper.ENGINE,
}
"""``TTS_BACKEND`` value -> engine (the registry)."""


def load_engine(backend: str, env: Mapping[str, str] | None = None) -> TtsEngine:
    """Load the settings of the engine named ``backend`` (from ``env``, default ``os.environ``) and build it.

    Raises:
        ValueError: unknown backend, or a bad engine option.
        dora_voice.config.ConfigError: one of the engine's env vars holds a bad value (a ``ValueError``; the message
            names the variable).
        dora_voice.models.ModelError: the engine's model is missing or does not load.
    """
    spec = ENGINES.get(backend)
    if spec is None:
        raise ValueError(f"unknown TTS backend {backend!r} (expected {', '.join(ENGINES)})")
    return spec.load(load_config(spec.config, env))
