"""Answer round-trip WER: what the listener heard, transcribed back by a second Whisper, against the reply's text.

A chunk cut mid-phrase and synthesized on its own can be heard as something else ("He might have been | made
amiable himself" came back as "He might have been, ate amiable himself"); this measures it on the real output.
Each voice run's ``answer.wav`` (the speaker's whole output timeline) is transcribed with ``whisper-base``
(``dora-voice-models install whisper-base``; a larger model than the pipeline's tiny.en, so its own errors weigh
less) and compared with the replies of the run's uninterrupted turns, joined in turn order: corpus WER over the
runs (:func:`~dora_voice_tools.bench.reporting.corpus_wer`, numbers normalized as spoken). Nothing is downloaded:
when the model is not installed the measurement is skipped with a note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from dora_voice_monitor.collector import TurnRecord
from dora_voice_tools.bench.reporting import corpus_wer

logger = logging.getLogger(__name__)

ROUNDTRIP_MODEL = "whisper-base"
"""The registry model that transcribes the answers back."""

Transcriber = Callable[[np.ndarray], str]
"""16 kHz float32 mono samples -> text."""

Synthesizer = Callable[[str], np.ndarray]
"""A reply's text -> its speech, 16 kHz float32 mono, synthesized in one piece."""


@dataclass(frozen=True)
class HeardRun:
    """One voice run: its output WAV and its turns."""

    name: str
    answer_wav: Path
    turns: Sequence[TurnRecord]


def load_transcriber(model: str = ROUNDTRIP_MODEL, threads: int = 2) -> Transcriber | None:
    """faster-whisper on the installed, verified ``model`` (beam 5); ``None`` (logged) when it is not installed."""
    from dora_voice.models import get_spec, model_path, model_status  # noqa: PLC0415 - the bench's optional part

    spec = get_spec(model, "asr")
    status = model_status(spec)
    path = model_path(spec)
    if status != "ready" or path is None:
        logger.warning("answer round-trip WER skipped: %s is %s (dora-voice-models install %s)", model, status,
                       model)
        return None
    from faster_whisper import WhisperModel  # noqa: PLC0415

    whisper = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True)

    def transcribe(samples: np.ndarray) -> str:
        segments, _info = whisper.transcribe(samples, language="en", beam_size=5, condition_on_previous_text=False)
        return " ".join(segment.text.strip() for segment in segments)

    return transcribe


def load_whole_synthesizer(backend: str = "piper", env: Mapping[str, str] | None = None,
                           sample_rate: int = 16_000) -> Synthesizer | None:
    """The TTS engine the pipeline uses (``TTS_BACKEND``, its own settings from ``env``) as a :data:`Synthesizer`:
    the reply normalized for speech as the TTS node does it, then synthesized in one call and resampled to
    ``sample_rate``. ``None`` (logged) when the engine does not load."""
    from dora_voice.audio import resample  # noqa: PLC0415 - the bench's optional part
    from dora_voice.text.normalize import SpeechNormalizer  # noqa: PLC0415
    from dora_voice.tts_engines import load_engine  # noqa: PLC0415

    try:
        engine = load_engine(backend, env)
    except Exception as exc:  # noqa: BLE001 - a missing voice skips the floor, not the bench
        logger.warning("the replies synthesized whole are skipped: the %s voice did not load (%s)", backend, exc)
        return None

    def synthesize(text: str) -> np.ndarray:
        chunks = list(engine.synthesize(SpeechNormalizer().normalize(text)))
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return resample(samples.astype(np.float32), engine.sample_rate, sample_rate)

    return synthesize


def read_answer(path: Path, sample_rate: int = 16_000) -> np.ndarray:
    """The answer WAV (the speaker writes it at the TTS's rate) as ``sample_rate`` float32 mono (soxr)."""
    from dora_voice.audio import read_wav_mono, resample  # noqa: PLC0415

    samples, rate = read_wav_mono(path)
    return resample(samples, rate, sample_rate)


def roundtrip(runs: Sequence[HeardRun], transcribe: Transcriber, synthesize: Synthesizer | None = None) -> dict:
    """The round-trip entry of summary.json over ``runs``.

    Args:
        runs: the voice runs.
        transcribe: the second Whisper.
        synthesize: when given, each scored run's replies are also synthesized whole (joined in turn order, one
            call) and transcribed: ``wer_whole``, the voice's own floor.

    Returns:
        ``{"wer": corpus WER or None, "answers": runs scored, "worst": [name, WER] or None, "model": ...,
        "wer_whole": corpus WER of the replies synthesized whole, or None}``; a run is scored when its answer WAV
        exists and it has uninterrupted turns with a reply.
    """
    whole: list[tuple[str, str]] = []
    pairs: list[tuple[str, str]] = []
    worst: tuple[str, float] | None = None
    for run in runs:
        replies = [t.reply for t in sorted(run.turns, key=lambda t: t.turn_id) if t.reply and not t.interrupted]
        if not replies or not run.answer_wav.exists():
            continue
        reference, heard = " ".join(replies), transcribe(read_answer(run.answer_wav))
        pairs.append((reference, heard))
        wer = corpus_wer([(reference, heard)])
        if wer is not None and (worst is None or wer > worst[1]):
            worst = (run.name, wer)
        logger.info("%s: reply %r, heard %r (WER %s)", run.name, reference[:200], heard[:200], wer)
        if synthesize is not None:
            alone = transcribe(synthesize(reference))
            whole.append((reference, alone))
            logger.info("%s: the reply synthesized whole was heard as %r (WER %s)", run.name, alone[:200],
                        corpus_wer([(reference, alone)]))
    return {"wer": corpus_wer(pairs), "answers": len(pairs), "worst": list(worst) if worst else None,
            "model": ROUNDTRIP_MODEL, "wer_whole": corpus_wer(whole) if whole else None}
