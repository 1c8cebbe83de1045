"""End of turn: when has the user finished speaking?

The VAD sees silence after speech; this module decides whether that silence ends the user's turn (see
docs/architecture.md):

* ``TURN_DETECTOR=silence``: the turn ends after ``VAD_MIN_SILENCE_MS`` of silence (the classic endpointer).
* ``TURN_DETECTOR=smart_turn`` (default): a short pause (``TURN_PROPOSE_SILENCE_MS``, 200 ms) *proposes* an end of
  turn and an end-of-turn model (Smart Turn v3.2, :class:`SmartTurnModel`) judges from the audio whether the
  utterance is complete. Complete (probability >= ``TURN_COMPLETE_THRESHOLD``) ends the turn at once; incomplete
  keeps waiting; after ``TURN_MAX_WAIT_MS`` of silence the turn ends anyway, so a complete turn the model misjudges
  never waits long. A user who resumes before that continues the same turn. By default the model is asked once per
  pause, as pipecat and LiveKit do: measured here on a read sentence cut at word boundaries, P(complete) of a cut
  mid-clause grew with the silence it heard (0.27 at 200 ms, 0.74 at 400 ms, 0.80 at 600 ms), so asking again during
  a pause (``TURN_RECHECK_MS``) answers people who only paused.

The policy (:class:`EndOfTurnPolicy`) is pure: it gets the silence so far and a way to read the utterance's audio,
and returns a :class:`TurnDecision` naming the rule that ended the turn and the model's probability, which the VAD
reports per turn. Tests drive it with a scripted model.

Smart Turn v3.2 (BSD-2-Clause, Daily; https://github.com/pipecat-ai/smart-turn) ships inside the ``pipecat-ai``
wheel, which the model registry installs as a data package (``--no-deps``): the ONNX file and its numpy
Whisper-feature front end (``_whisper_features.py``) are loaded from their files, sha256-checked, without
importing the pipecat framework. Input: the last 8 s of 16 kHz audio, zero-padded at the start, as 80x800 log-mel
features; output: P(turn complete). Its authors report 10-65 ms per decision on CPUs; measured here 52-76 ms.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

SPECULATION_MODES = ("answer", "asr", "off")
"""``TURN_SPECULATION`` values, read by the VAD (whether to send speculative utterances) and the ASR (whether to pass
their transcripts on to the LLM): ``answer`` (transcript, the beginning of the reply and its audio made during the
pause), ``asr`` (only the transcript), ``off``."""

SMART_TURN_SAMPLE_RATE_HZ = 16_000
SMART_TURN_WINDOW_S = 8
"""Smart Turn v3 hears the last 8 s of the utterance (pipecat's ``local_smart_turn_v3.py``)."""


class TurnRule(str, enum.Enum):
    """Which rule ended a turn (reported per turn as ``eot_rule``)."""

    MODEL = "model"  # the end-of-turn model judged the utterance complete
    MAX_WAIT = "max_wait"  # the model kept judging it incomplete; TURN_MAX_WAIT_MS of silence ended it
    SILENCE = "silence"  # TURN_DETECTOR=silence: VAD_MIN_SILENCE_MS of silence
    MAX_SPEECH = "max_speech"  # the utterance reached VAD_MAX_SPEECH_S
    END_OF_STREAM = "end_of_stream"  # the audio input ended during speech


@dataclass(frozen=True)
class TurnDecision:
    """The end of a turn.

    Attributes:
        rule: the rule that ended it.
        probability: the model's latest P(complete), 0.0-1.0; ``None`` when the model was not asked.
        evaluations: how many times the model was asked during this pause.
        model_ms: time spent in the model during this pause, ms (features included).
    """

    rule: TurnRule
    probability: float | None = None
    evaluations: int = 0
    model_ms: float = 0.0


TurnModel = Callable[[np.ndarray], float]
"""An end-of-turn model: the utterance so far (shape ``(n,)``, float32, 16 kHz, trailing silence included) ->
P(the turn is complete), 0.0-1.0."""


class EndOfTurnPolicy:
    """Decides, frame by frame of silence, whether the user's turn is over.

    Args:
        detector: ``"smart_turn"`` (propose, then the model decides) or ``"silence"`` (silence timeout only).
        model: the end-of-turn model (required with ``smart_turn``).
        min_silence_ms: the silence that ends a turn with ``silence``, ms.
        propose_silence_ms: the pause that proposes an end of turn with ``smart_turn``, ms.
        max_wait_ms: the longest silence before a turn ends whatever the model says, ms (>= ``propose_silence_ms``).
        threshold: P(complete) at or above which the model ends the turn.
        recheck_ms: ask the model again after this much further silence, ms (0: ask once, at the proposal).
        clock: ``time.perf_counter``-like clock for ``model_ms`` (injected in tests).

    Raises:
        ValueError: unknown detector, no model for ``smart_turn``, or ``max_wait_ms < propose_silence_ms``.
    """

    def __init__(self, detector: str, model: TurnModel | None, *, min_silence_ms: float = 400,
                 propose_silence_ms: float = 200, max_wait_ms: float = 1000, threshold: float = 0.5,
                 recheck_ms: float = 0, clock: Callable[[], float] = time.perf_counter) -> None:
        if detector not in ("smart_turn", "silence"):
            raise ValueError(f"unknown end-of-turn detector {detector!r} (expected smart_turn or silence)")
        if detector == "smart_turn" and model is None:
            raise ValueError("the smart_turn detector needs an end-of-turn model")
        if max_wait_ms < propose_silence_ms:
            raise ValueError(f"the maximum wait ({max_wait_ms} ms) is shorter than the proposal pause "
                             f"({propose_silence_ms} ms)")
        self.detector = detector
        self.model = model
        self.min_silence_ms = min_silence_ms
        self.propose_silence_ms = propose_silence_ms
        self.max_wait_ms = max_wait_ms
        self.threshold = threshold
        self.recheck_ms = recheck_ms
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Speech (re)started: forget the current pause."""
        self.probability: float | None = None
        self.evaluations = 0
        self.model_ms = 0.0
        self._next_check_ms: float | None = None

    @property
    def proposes_at_ms(self) -> float:
        """Silence after which an end of turn is proposed (work may start speculatively), ms."""
        return self.propose_silence_ms if self.detector == "smart_turn" else self.min_silence_ms

    def on_silence(self, silence_ms: float, audio: Callable[[], np.ndarray]) -> TurnDecision | None:
        """Called for every silent VAD frame after speech.

        Args:
            silence_ms: silence since the last voiced sample, ms.
            audio: returns the utterance so far (float32, 16 kHz, trailing silence included); called only when the
                model is asked.

        Returns:
            A :class:`TurnDecision` when the turn is over, else ``None`` (keep listening).
        """
        if self.detector == "silence":
            return TurnDecision(TurnRule.SILENCE) if silence_ms >= self.min_silence_ms else None
        if silence_ms >= self.max_wait_ms:
            return self._decision(TurnRule.MAX_WAIT)
        if silence_ms < self.propose_silence_ms:
            return None
        if self._next_check_ms is not None and silence_ms < self._next_check_ms:
            return None
        self._evaluate(audio())
        self._next_check_ms = (self.propose_silence_ms + self.evaluations * self.recheck_ms if self.recheck_ms > 0
                               else float("inf"))
        if self.probability is not None and self.probability >= self.threshold:
            return self._decision(TurnRule.MODEL)
        return None

    def forced(self, rule: TurnRule) -> TurnDecision:
        """The decision for a turn ended by something else (``max_speech``, ``end_of_stream``)."""
        return self._decision(rule)

    def _evaluate(self, samples: np.ndarray) -> None:
        assert self.model is not None
        started = self.clock()
        probability = float(self.model(samples))
        self.model_ms += (self.clock() - started) * 1000
        self.evaluations += 1
        if not 0.0 <= probability <= 1.0 or probability != probability:
            raise ValueError(f"end-of-turn model returned {probability}, not a probability")
        self.probability = probability
        logger.debug("end-of-turn model: P(complete)=%.3f (evaluation %d)", probability, self.evaluations)

    def _decision(self, rule: TurnRule) -> TurnDecision:
        decision = TurnDecision(rule, self.probability, self.evaluations, self.model_ms)
        self.reset()
        return decision


# ---------------------------------------------------------------------------------------------------------------
# Smart Turn v3.2 on onnxruntime


def _load_module_from_file(name: str, path: Path):
    """Execute one Python file as a module of its own (no parent package is imported)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SmartTurnModel:
    """Smart Turn v3.2 (ONNX) with its numpy Whisper-feature front end: a :data:`TurnModel`.

    Args:
        onnx_path: ``smart-turn-v3.2-cpu.onnx``.
        features_path: ``_whisper_features.py`` from the same wheel (numpy only; defines
            ``compute_whisper_log_mel_features(audio, do_normalize=True) -> float32 (80, 800)``).
        threads: onnxruntime intra-op threads.

    Raises:
        ImportError / onnxruntime errors: a file cannot be loaded.
    """

    def __init__(self, onnx_path: Path, features_path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        features = _load_module_from_file("dora_voice_smart_turn_features", features_path)
        self._features = features.compute_whisper_log_mel_features
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, samples: np.ndarray) -> float:
        """P(complete) for ``samples`` (shape ``(n,)``, float32, 16 kHz): the last 8 s, zero-padded at the start."""
        window = SMART_TURN_WINDOW_S * SMART_TURN_SAMPLE_RATE_HZ
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)[-window:]
        if len(samples) < window:
            samples = np.pad(samples, (window - len(samples), 0))
        features = self._features(samples, do_normalize=True)[np.newaxis]
        output = self._session.run(None, {self._input: features.astype(np.float32)})[0]
        return float(np.asarray(output).reshape(-1)[0])


def load_smart_turn(path_override: str | None = None, threads: int = 1) -> SmartTurnModel:
    """Load Smart Turn v3.2 from the model registry (sha256-checked), or from ``TURN_MODEL_PATH``.

    Args:
        path_override: an explicit ``.onnx`` path; the feature front end is then looked for beside it
            (``_whisper_features.py``), else taken from the registry.
        threads: onnxruntime intra-op threads.

    Raises:
        dora_voice.models.ModelError: the model is missing (the message names the install command) or corrupt.
    """
    from dora_voice.models import resolve_smart_turn

    onnx_path, features_path = resolve_smart_turn(path_override)
    model = SmartTurnModel(onnx_path, features_path, threads)
    started = time.perf_counter()
    model(np.zeros(SMART_TURN_SAMPLE_RATE_HZ, dtype=np.float32))
    logger.info("Smart Turn loaded from %s; warm-up %.0f ms", onnx_path, (time.perf_counter() - started) * 1000)
    return model
