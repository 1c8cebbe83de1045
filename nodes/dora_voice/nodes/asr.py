"""ASR node: Whisper (CTranslate2, int8 on CPU) on each utterance, with a cost proportional to its length.

Input ``speech`` (vad/speech; a ``speculative`` utterance is transcribed ahead and kept, a ``partial`` one, the
utterance so far while the user speaks, gets a partial transcript; see :class:`AsrCore`).
Outputs ``text`` (a :class:`~dora_voice.schema.Transcript` per turn, carrying the
utterance's ``speech_end_ns``) and ``timing`` (``asr_done``). An utterance that transcribes to nothing (noise,
breath) produces no transcript and is logged.

faster-whisper's ``transcribe`` always encodes a 30 s window, whatever the utterance length (~430 ms per clip
with tiny.en here). CTranslate2's ``Whisper.generate`` also accepts shorter feature windows, so with
``ASR_WINDOW=short`` (the default) the utterance is padded with silence to ``max(ASR_MIN_WINDOW_S, clip +
ASR_WINDOW_PAD_S)`` only, and the decode is bounded (:func:`decode_bound`: 10 + 5 tokens per second of audio,
``no_repeat_ngram_size``, ``repetition_penalty``), because an unbounded decode on a short window hallucinates
repetition loops (measured here on 11 real clips). A decode that still runs into the bound,
or whose text repeats itself (:func:`looks_like_loop`), is transcribed again on the full 30 s window
(:class:`WindowedWhisper`): the loop guard. ``ASR_WINDOW=full`` keeps faster-whisper's 30 s window.
Measured here on 72 cuts of the eight shared recordings (each with 0.1-0.3 s of silence before and 0.1-0.4 s
after): corpus WER 0.073 short against 0.099 full, 194 against 730 ms per utterance (p50), 3 of 72 redone on the
full window (README, *Performance*).

Bounded work: an utterance longer than ``ASR_MAX_UTTERANCE_S`` is cut to its last ``ASR_MAX_UTTERANCE_S`` seconds
(the newest words carry the request; a warning says how much was dropped), so ten minutes of speech cannot block
the node for minutes. Whisper's own doubts are honoured: a segment it marks as no speech
(``no_speech_prob >= ASR_NO_SPEECH_THRESHOLD``), one it decoded with low confidence (``avg_logprob <
ASR_MIN_LOGPROB``) or a repetition loop (``compression_ratio > 2.4``, Whisper's own threshold) is dropped, so
silence does not become "you you you" (see :func:`keep_segment`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa

from dora_voice.config import env_field, parse_choice, parse_float, parse_int, parse_str
from dora_voice.contracts import NodeContract
from dora_voice.runtime import Emit, NodeCore, UnknownInputError, build_at_lowest_priority, emit
from dora_voice.schema import PIPELINE_SAMPLE_RATE_HZ, Key, Output, SchemaError, TimingKind, Transcript, Utterance
from dora_voice.turn import SPECULATION_MODES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsrConfig:
    """ASR settings."""

    model: str = env_field("ASR_MODEL", "whisper-tiny.en", parse_str,
                           "registered model name (dora-voice-models list)")
    model_path: str = env_field("ASR_MODEL_PATH", "", parse_str,
                                "folder of a CTranslate2 Whisper model; overrides ASR_MODEL")
    language: str = env_field("ASR_LANGUAGE", "en", parse_str, "spoken language code")
    beam_size: int = env_field("ASR_BEAM_SIZE", 1, parse_int(min_value=1, max_value=10),
                               "beam width (1 = greedy, fastest)")
    threads: int = env_field("ASR_THREADS", 2, parse_int(min_value=1, max_value=64), "CPU threads for CTranslate2")
    partial_threads: int = env_field("ASR_PARTIAL_THREADS", 1, parse_int(min_value=1, max_value=64),
                                     "CPU threads for partial transcripts (made while the user speaks, with "
                                     "ASR_WINDOW=short, on a second instance of the model), so they leave a core "
                                     "to the rest")
    window: str = env_field("ASR_WINDOW", "short", parse_choice("short", "full"),
                            "short: encode max(ASR_MIN_WINDOW_S, clip + ASR_WINDOW_PAD_S) with a bounded decode; "
                            "full: faster-whisper's 30 s window")
    min_window_s: float = env_field("ASR_MIN_WINDOW_S", 8.0, parse_float(min_value=1.0, max_value=30.0),
                                    "shortest encoder window with ASR_WINDOW=short, s")
    window_pad_s: float = env_field("ASR_WINDOW_PAD_S", 1.0, parse_float(min_value=0.0, max_value=10.0),
                                    "silence after the utterance inside the window with ASR_WINDOW=short, s")
    no_repeat_ngram_size: int = env_field("ASR_NO_REPEAT_NGRAM_SIZE", 3, parse_int(min_value=0, max_value=10),
                                          "n-grams that may not repeat in a short-window decode (0 = off)")
    repetition_penalty: float = env_field("ASR_REPETITION_PENALTY", 1.1, parse_float(min_value=1.0, max_value=2.0),
                                          "penalty on repeated tokens in a short-window decode (1.0 = off)")
    max_utterance_s: float = env_field("ASR_MAX_UTTERANCE_S", 30.0, parse_float(min_value=1.0, max_value=600.0),
                                       "longest utterance transcribed, s; longer ones keep their last part")
    no_speech_threshold: float = env_field(
        "ASR_NO_SPEECH_THRESHOLD", 0.8, parse_float(min_value=0.0, max_value=1.0),
        "drop a segment Whisper rates at least this likely to be no speech (its no_speech_prob)")
    min_logprob: float = env_field(
        "ASR_MIN_LOGPROB", -1.0, parse_float(min_value=-20.0, max_value=0.0),
        "drop a segment decoded with a lower average token log-probability (Whisper's log_prob_threshold)")
    speculation: str = env_field(
        "TURN_SPECULATION", "answer", parse_choice(*SPECULATION_MODES),
        "answer: also send the transcript of a speculative utterance to the LLM, marked speculative, so the reply "
        "can begin during the pause (withdrawn if the turn is not confirmed with it); asr: keep it until the turn "
        "is confirmed; off: the VAD sends no speculative utterances")


COMPRESSION_RATIO_MAX = 2.4
"""Whisper's ``compression_ratio_threshold``: a segment whose text gzip-compresses better than this is a loop."""


@dataclass(frozen=True)
class WhisperSegment:
    """What the ASR keeps of a faster-whisper segment: its text and Whisper's own confidence figures."""

    text: str
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0


def average_logprob(score: float, tokens: int) -> float:
    """Whisper's ``avg_logprob`` of a decode, as faster-whisper computes it for ``log_prob_threshold``.

    Args:
        score: CTranslate2's score of the hypothesis: the cumulative log-probability divided by ``tokens`` (length
            penalty 1).
        tokens: tokens generated (CTranslate2's ``sequences_ids``).

    Returns:
        ``score * tokens / (tokens + 1)``: the cumulative log-probability over ``tokens + 1`` (faster-whisper 1.2,
        ``transcribe.py``, ``generate_with_fallback``). Taking the score itself, as the short window once did, judged
        its decodes harsher than the full window's: a 6-token "Old Sposed Young Men." scored -1.01 and was dropped
        by ``ASR_MIN_LOGPROB=-1.0``, where faster-whisper's -0.87 keeps it.
    """
    return score * tokens / (tokens + 1)


def keep_segment(segment: WhisperSegment, config: AsrConfig) -> bool:
    """False for a segment Whisper itself marks as no speech (``no_speech_prob``), low confidence
    (``avg_logprob``) or a repetition loop (``compression_ratio``).

    Measured with tiny.en here: 30 s of digital silence gave " you" at no_speech_prob 0.95 (avg_logprob -0.40, so
    OpenAI's combined rule, no_speech > 0.6 and avg_logprob < -1, keeps it); the eight shared recordings gave
    no_speech_prob 0.03-0.53 and avg_logprob -0.08 to -0.70.
    """
    return (segment.no_speech_prob < config.no_speech_threshold and segment.avg_logprob >= config.min_logprob
            and segment.compression_ratio <= COMPRESSION_RATIO_MAX)


Transcriber = Callable[[np.ndarray], str]
"""A model: float32 16 kHz samples -> text."""

FULL_WINDOW_S = 30.0
"""Whisper's own input window (s): 3000 feature frames, what faster-whisper's ``transcribe`` always encodes."""
FRAMES_PER_S = 100
"""Whisper feature frames per second (hop of 160 samples at 16 kHz)."""
PARTIAL_POLL_S = 0.01
"""While a partial transcript decodes on its worker thread, the node waits at most this long (s) for it between
polls for input, so it neither spins nor delays an utterance that arrives meanwhile by more than this."""
BOUND_BASE_TOKENS = 10
BOUND_TOKENS_PER_S = 5.0
"""The decode bound of a short window: 10 + 5 tokens per second of audio (measured here: removed
the repetition loops of unbounded short-window decodes on 11 real clips). Fluent speech is about 2.5-4 tokens per
second; a decode that reaches the bound is taken for a loop and redone on the full window."""


def window_frames(audio_s: float, min_window_s: float, pad_s: float) -> int:
    """Encoder window of a short-window decode, in feature frames (even, at most 3000).

    Args:
        audio_s: utterance duration, s.
        min_window_s: shortest window, s (shorter windows lose accuracy, measured here).
        pad_s: silence kept after the utterance inside the window, s.

    Returns:
        ``max(min_window_s, audio_s + pad_s)`` seconds as frames (100 per second), rounded up to an even count
        (the encoder's convolution halves it) and capped at :data:`FULL_WINDOW_S`.
    """
    seconds = min(FULL_WINDOW_S, max(min_window_s, audio_s + pad_s))
    frames = math.ceil(seconds * FRAMES_PER_S)
    return min(int(FULL_WINDOW_S * FRAMES_PER_S), frames + frames % 2)


def decode_bound(audio_s: float) -> int:
    """Most tokens a short-window decode may generate for ``audio_s`` seconds of audio: ``10 + 5 * audio_s``,
    rounded up (see :data:`BOUND_TOKENS_PER_S`)."""
    if audio_s < 0 or not math.isfinite(audio_s):
        raise ValueError(f"audio duration must be a finite number of seconds >= 0, got {audio_s}")
    return BOUND_BASE_TOKENS + math.ceil(BOUND_TOKENS_PER_S * audio_s)


MAX_WORDS_PER_S = 6.0
"""Faster than this (words per second of audio) a short-window transcript is taken for a hallucination: fast
conversational English is about 3-4 words per second."""

_WORD = re.compile(r"[\w']+")


def looks_like_loop(text: str, audio_s: float) -> bool:
    """True when a short-window transcript shows the signs of a repetition loop.

    Signs: a word trigram that occurs twice, a word bigram that occurs three times, or more than
    :data:`MAX_WORDS_PER_S` words per second of audio (counted over at least 1 s). A single repeated word
    ("five five") is not a sign. A false alarm only costs a full-window transcription.

    Args:
        text: the transcript.
        audio_s: the utterance duration, s.
    """
    words = _WORD.findall(text.lower())
    if len(words) > MAX_WORDS_PER_S * max(audio_s, 1.0):
        return True
    bigrams: dict[tuple[str, ...], int] = {}
    trigrams: set[tuple[str, ...]] = set()
    for i in range(len(words) - 1):
        bigram = tuple(words[i:i + 2])
        bigrams[bigram] = bigrams.get(bigram, 0) + 1
        if bigrams[bigram] >= 3:
            return True
        if i + 3 <= len(words):
            trigram = tuple(words[i:i + 3])
            if trigram in trigrams:
                return True
            trigrams.add(trigram)
    return False


BoundedDecode = Callable[[np.ndarray, int, int], tuple[str, int]]
"""``(samples, window_frames, max_new_tokens) -> (text, tokens generated)``: one Whisper decode of 16 kHz float32
samples on a window of ``window_frames`` feature frames, generating at most ``max_new_tokens`` tokens."""


class WindowedWhisper:
    """Transcriber whose cost follows the utterance: a short window and a bounded decode, with a loop guard.

    Args:
        decode: the bounded short-window decode (the real one is built by :func:`load_whisper`; tests inject fakes).
        full: the full-window transcriber, used for utterances that fill the window and when the guard trips.
        partial_decode: the bounded decode for :meth:`partial` (the real one runs on ``ASR_PARTIAL_THREADS``);
            default ``decode``.
        min_window_s / pad_s: see :func:`window_frames`.

    Attributes:
        fallbacks: decodes that reached their bound (taken for a repetition loop) and were redone on the full window.
        last_window_s: the window used by the latest call, s (:data:`FULL_WINDOW_S` after a fallback).
    """

    def __init__(self, decode: BoundedDecode, full: Transcriber, *, min_window_s: float = 8.0,
                 pad_s: float = 1.0, partial_decode: BoundedDecode | None = None) -> None:
        self.decode = decode
        self.partial_decode = partial_decode or decode
        self.full = full
        self.min_window_s = min_window_s
        self.pad_s = pad_s
        self.fallbacks = 0
        self.last_window_s = FULL_WINDOW_S

    def __call__(self, samples: np.ndarray) -> str:
        """Transcribe ``samples`` (shape ``(n,)``, float32, 16 kHz). Returns the text (may be empty)."""
        audio_s = len(samples) / PIPELINE_SAMPLE_RATE_HZ
        frames = window_frames(audio_s, self.min_window_s, self.pad_s)
        if audio_s + self.pad_s >= FULL_WINDOW_S:
            self.last_window_s = FULL_WINDOW_S
            return self.full(samples)
        bound = decode_bound(audio_s)
        text, generated = self.decode(samples, frames, bound)
        if generated >= bound or looks_like_loop(text, audio_s):
            self.fallbacks += 1
            why = f"reached its bound of {bound} tokens" if generated >= bound else "repeats itself"
            logger.warning("short-window decode of %.2f s %s (a repetition loop?): transcribing on the full %.0f s "
                           "window (%d fallbacks so far); text was %r",
                           audio_s, why, FULL_WINDOW_S, self.fallbacks, text[:120])
            self.last_window_s = FULL_WINDOW_S
            return self.full(samples)
        self.last_window_s = frames / FRAMES_PER_S
        return text

    def partial(self, samples: np.ndarray) -> str:
        """The bounded short-window decode alone, for a partial transcript (the utterance so far, which is cut
        mid-word and only primes the LLM's prompt): no full-window fallback, so it never costs a 30 s pass while the
        user speaks. Returns ``""`` when the audio is too long for a short window or the decode looks like a loop."""
        audio_s = len(samples) / PIPELINE_SAMPLE_RATE_HZ
        if audio_s + self.pad_s >= FULL_WINDOW_S:
            return ""
        bound = decode_bound(audio_s)
        text, generated = self.partial_decode(samples, window_frames(audio_s, self.min_window_s, self.pad_s), bound)
        return "" if generated >= bound or looks_like_loop(text, audio_s) else text

_NON_SPEECH = re.compile(r"^[\s\W]*$|^\s*[\[(].*[\])]\s*$")


@dataclass
class _Speculation:
    """A speculative utterance transcribed ahead of its turn's confirmation."""

    turn_id: int
    samples: np.ndarray
    text: str
    elapsed_ms: float
    speech_end_ns: int = 0
    speech_start_ns: int = 0
    sent: bool = False  # its transcript went to the LLM, marked speculative (TURN_SPECULATION=answer)

    def holds_the_speech_of(self, utterance: Utterance) -> bool:
        """Whether the confirmed ``utterance`` is this one's speech: same turn, same first and last voiced samples,
        and these samples at its start (the VAD sent this one early in the pause: the confirmed utterance may carry
        more of the trailing pad, which is not speech)."""
        n = self.samples.shape[0]
        return (self.turn_id == utterance.turn_id and self.speech_start_ns == utterance.speech_start_ns
                and self.speech_end_ns == utterance.speech_end_ns and n <= utterance.samples.shape[0]
                and np.array_equal(self.samples, utterance.samples[:n]))


class AsrCore(NodeCore):
    """Transcribes utterances.

    Speculation: an utterance marked ``speculative`` (the utterance so far, early in a pause) is transcribed at
    once and its transcript kept. When the confirmed utterance of that turn arrives with the same speech (the same
    first and last voiced samples, the kept samples at its start: :meth:`_Speculation.holds_the_speech_of`), the
    kept transcript is sent without transcribing again (``asr_done`` with ``speculation=hit``); when its audio differs
    (the user went on speaking), or another speculative utterance replaces it, the kept one is dropped and counted
    (``speculation_cancelled``; the confirmed utterance is transcribed as usual, ``speculation=miss``).
    An utterance marked ``partial`` (the user is still speaking) is transcribed with ``transcribe.partial`` (no slow
    fallback) and sent marked ``partial``, or ignored when the transcriber has none (``ASR_WINDOW=full``); it voids
    a kept speculation of its turn either way.
    With ``speculative_text`` (``TURN_SPECULATION=answer``) the kept transcript is also sent at once, marked
    ``speculative``, so the LLM can begin the reply during the pause; dropping it then also sends it again marked
    ``withdrawn``, before anything else of that turn.

    Args:
        transcribe: the model (injected; tests pass a fake).
        clock_ns: wall clock.
        max_utterance_s: longest utterance transcribed, s.
        speculative_text: send speculative transcripts (and their withdrawals) on ``text``.

    Attributes:
        speculation_hits / speculation_cancelled: speculative transcripts reused / dropped so far.
        partials / partial_ms: partial utterances transcribed, and the time they took (ms, in all).
    """

    node_id = "asr"

    def __init__(self, transcribe: Transcriber, clock_ns=time.time_ns, *,
                 max_utterance_s: float = AsrConfig.max_utterance_s, speculative_text: bool = False) -> None:
        super().__init__(clock_ns)
        self.transcribe = transcribe
        self.speculative_text = speculative_text
        self.max_samples = int(max_utterance_s * PIPELINE_SAMPLE_RATE_HZ)
        self.speculation: _Speculation | None = None
        self.speculation_hits = 0
        self.speculation_cancelled = 0
        self.transcribe_partial: Transcriber | None = getattr(transcribe, "partial", None)
        self.partials = 0
        self.partial_ms = 0.0
        self.partials_dropped = 0  # partial transcripts made too late to matter (their turn had moved on)
        self._partial_pool: ThreadPoolExecutor | None = None
        self._partial_job: tuple[Future[str], Utterance, float] | None = None  # (decode, utterance, start s)
        self._partial_next: Utterance | None = None  # the newest partial waiting for the running one
        self._settled_turn = -1  # newest turn with a confirmed utterance: its partials are too late

    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id != "speech":
            raise UnknownInputError(f"unknown input id {input_id!r} (expected 'speech')")
        utterance = Utterance.decode(value, metadata)
        if utterance.sample_rate != PIPELINE_SAMPLE_RATE_HZ:
            raise SchemaError(f"speech must be {PIPELINE_SAMPLE_RATE_HZ} Hz, got {utterance.sample_rate} Hz")
        if len(utterance.samples) < PIPELINE_SAMPLE_RATE_HZ // 10:
            raise SchemaError(f"utterance too short to transcribe: {len(utterance.samples)} samples")
        self.session_id = utterance.session_id or self.session_id
        samples = utterance.samples
        if samples.shape[0] > self.max_samples:
            logger.warning("turn %d: a %.1f s utterance is longer than ASR_MAX_UTTERANCE_S=%.0f s: only its last "
                           "%.0f s are transcribed", utterance.turn_id, samples.shape[0] / PIPELINE_SAMPLE_RATE_HZ,
                           self.max_samples / PIPELINE_SAMPLE_RATE_HZ, self.max_samples / PIPELINE_SAMPLE_RATE_HZ)
            samples = samples[-self.max_samples:]
        audio_s = len(utterance.samples) / utterance.sample_rate
        out: list[Emit] = []
        kept = self.speculation
        if utterance.partial:
            return self._partial(utterance, samples, kept)
        self._partial_next = None  # older audio than this utterance's
        if not utterance.speculative:  # (after a speculative one the user may still resume: partials go on)
            self._settled_turn = max(self._settled_turn, utterance.turn_id)
        if kept is not None and (utterance.speculative or not kept.holds_the_speech_of(utterance)):
            out += self._cancel(kept)  # replaced, or the turn ended with other audio: it was for nothing
            kept = None
        if kept is not None:  # the confirmed utterance is the one transcribed ahead
            self.speculation = None
            self.speculation_hits += 1
            text, elapsed_ms, speculation = kept.text, kept.elapsed_ms, "hit"
        else:
            started = time.perf_counter()
            text = " ".join(self.transcribe(samples).split())
            elapsed_ms = (time.perf_counter() - started) * 1000
            speculation = "miss" if out else "none"
        if utterance.speculative:
            kept = _Speculation(utterance.turn_id, utterance.samples, text, elapsed_ms, utterance.speech_end_ns,
                                utterance.speech_start_ns)
            self.speculation = kept
            logger.debug("turn %d: speculative transcript %r (%.0f ms); kept until the turn is confirmed",
                         utterance.turn_id, text, elapsed_ms)
            if self.speculative_text and not _NON_SPEECH.match(text):
                kept.sent = True
                out.append(emit(Output.TEXT, Transcript(text, utterance.session_id, utterance.turn_id,
                                                        utterance.speech_end_ns, self.clock_ns(), "voice",
                                                        speculative=True)))
            return out
        if _NON_SPEECH.match(text):
            logger.info("turn %d: no words in %.2f s of audio (%r); no transcript", utterance.turn_id, audio_s, text)
            return out
        now = self.clock_ns()
        logger.info("turn %d: %r (%.0f ms for %.2f s of audio; speculation %s)", utterance.turn_id, text, elapsed_ms,
                    audio_s, speculation)
        transcript = Transcript(text, utterance.session_id, utterance.turn_id, utterance.speech_end_ns, now, "voice")
        return out + [
            emit(Output.TEXT, transcript),
            self.timing(TimingKind.ASR_DONE, utterance.turn_id, now,
                        **{Key.TEXT: text, Key.DURATION_MS: elapsed_ms, Key.AUDIO_MS: audio_s * 1000,
                           Key.SPEECH_END_NS: utterance.speech_end_ns, Key.SPECULATION: speculation}),
        ]

    def _partial(self, utterance: Utterance, samples: np.ndarray, kept: _Speculation | None) -> list[Emit]:
        """The utterance so far (the user is still speaking): its transcript, marked partial, for the LLM to evaluate
        the prompt ahead. It also voids a speculative transcript of its turn: the user went on after that pause.

        The decode runs on a worker thread (CTranslate2 releases the GIL), so an utterance that ends the turn is
        transcribed at once instead of waiting behind it; a partial that arrives while one is decoding replaces any
        other waiting, and a result whose turn has been confirmed meanwhile is dropped."""
        out = self._cancel(kept) if kept is not None else []
        if self.transcribe_partial is None:  # ASR_WINDOW=full: a 30 s pass per partial would cost more than it saves
            return out
        if utterance.turn_id <= self._settled_turn:
            self.partials_dropped += 1
            return out
        utterance = dataclasses.replace(utterance, samples=samples)
        if self._partial_job is not None:
            self._partial_next = utterance
            return out
        self._start_partial(utterance)
        return out

    def _start_partial(self, utterance: Utterance) -> None:
        if self._partial_pool is None:
            self._partial_pool = ThreadPoolExecutor(1, thread_name_prefix="asr-partial")
        assert self.transcribe_partial is not None
        self._partial_job = (self._partial_pool.submit(self.transcribe_partial, utterance.samples), utterance,
                             time.perf_counter())

    def busy(self) -> bool:
        return self._partial_job is not None

    def step(self) -> Iterable[Emit]:
        """Collect a finished partial decode (waits at most :data:`PARTIAL_POLL_S` for it), start the next."""
        assert self._partial_job is not None
        future, utterance, started = self._partial_job
        try:
            text = " ".join(future.result(timeout=PARTIAL_POLL_S).split())
        except FuturesTimeout:
            return []
        except Exception as exc:  # noqa: BLE001 - a failed partial only loses a head start
            logger.warning("turn %d: partial transcript failed (%s: %s)", utterance.turn_id, type(exc).__name__,
                           str(exc)[:200])
            text = ""
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._partial_job = None
        self.partials += 1
        self.partial_ms += elapsed_ms
        if self._partial_next is not None:
            self._start_partial(self._partial_next)
            self._partial_next = None
        if utterance.turn_id <= self._settled_turn:
            self.partials_dropped += 1
            return []
        if _NON_SPEECH.match(text):
            return []
        logger.debug("turn %d: partial transcript %r (%.0f ms for %.2f s)", utterance.turn_id, text, elapsed_ms,
                     len(utterance.samples) / PIPELINE_SAMPLE_RATE_HZ)
        return [emit(Output.TEXT, Transcript(text, utterance.session_id, utterance.turn_id, utterance.speech_end_ns,
                                             self.clock_ns(), "voice", partial=True))]

    def on_end(self) -> Iterable[Emit]:
        self._partial_next = None
        if self._partial_job is not None:
            self._partial_job[0].cancel()
            self._partial_job = None
        if self._partial_pool is not None:
            self._partial_pool.shutdown(wait=True)
        if self.partials:
            logger.info("%d partial transcripts made while the user spoke, %.0f ms each on average, %d too late to "
                        "send", self.partials, self.partial_ms / self.partials, self.partials_dropped)
        # A speculative transcript whose turn was never confirmed (the stream ended first) was for nothing.
        return self._cancel(self.speculation) if self.speculation is not None else []

    def _cancel(self, kept: _Speculation) -> list[Emit]:
        """Drop the kept speculation: withdraw its transcript if it was sent, and count it."""
        self.speculation = None
        self.speculation_cancelled += 1
        logger.info("turn %d: speculative transcript %r dropped (its turn was not confirmed with that audio); "
                    "%d dropped so far", kept.turn_id, kept.text[:80], self.speculation_cancelled)
        out: list[Emit] = []
        if kept.sent:
            out.append(emit(Output.TEXT, Transcript(kept.text, self.session_id, kept.turn_id, kept.speech_end_ns,
                                                    self.clock_ns(), "voice", speculative=True, withdrawn=True)))
        out.append(self.timing(TimingKind.SPECULATION_CANCELLED, kept.turn_id, **{
            Key.DURATION_MS: kept.elapsed_ms, Key.AUDIO_MS: len(kept.samples) * 1000 / PIPELINE_SAMPLE_RATE_HZ}))
        return out


CONTRACT = NodeContract(
    path="dora-voice-asr",
    inputs={"speech": "vad/speech: Utterance, 16 kHz float32"},
    outputs=(Output.TEXT, Output.TIMING),
    config=AsrConfig,
)


def load_whisper(config: AsrConfig) -> Transcriber:
    """Load Whisper from a local folder (never downloads) and warm it up.

    Returns the full-window faster-whisper transcriber with ``ASR_WINDOW=full``, else a :class:`WindowedWhisper`
    over CTranslate2's ``Whisper.generate`` (same model, same features as faster-whisper, greedy or
    ``ASR_BEAM_SIZE``) that falls back to the full window.

    Raises:
        dora_voice.models.ModelError: the model is missing; the message names the command that installs it.
    """
    from faster_whisper import WhisperModel

    from dora_voice.models import resolve_asr

    path = resolve_asr(config.model_path or None, config.model)
    logger.info("loading Whisper from %s (%d threads, beam %d, %s window)", path, config.threads, config.beam_size,
                config.window)
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=config.threads,
                         local_files_only=True)

    def full(samples: np.ndarray) -> str:
        segments, _info = model.transcribe(
            samples, language=config.language, beam_size=config.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True,
        )
        kept = []
        for segment in segments:
            found = WhisperSegment(segment.text.strip(), segment.no_speech_prob, segment.avg_logprob,
                                   segment.compression_ratio)
            if keep_segment(found, config):
                kept.append(found.text)
            else:
                logger.info("dropped %r: Whisper marks it no speech / low confidence / a loop (no_speech_prob %.2f, "
                            "avg_logprob %.2f, compression_ratio %.2f)", found.text[:80], found.no_speech_prob,
                            found.avg_logprob, found.compression_ratio)
        return " ".join(kept)

    transcribe: Transcriber = full
    if config.window == "short":
        # Its own instance: a partial still decoding on it never delays the utterance that ends the turn; and at the
        # lowest CPU priority: a partial decode still running when the user stops yields the cores to the utterance
        # that ends the turn, to the end-of-turn model and to the reply, instead of slowing them.
        partial_model = build_at_lowest_priority(
            lambda: WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=config.partial_threads,
                                 local_files_only=True), "partial-whisper")
        transcribe = WindowedWhisper(_bounded_decode(model, config), full, min_window_s=config.min_window_s,
                                     pad_s=config.window_pad_s, partial_decode=_bounded_decode(partial_model, config))
    started = time.perf_counter()
    transcribe(np.zeros(PIPELINE_SAMPLE_RATE_HZ, dtype=np.float32))
    if isinstance(transcribe, WindowedWhisper):
        transcribe.partial(np.zeros(PIPELINE_SAMPLE_RATE_HZ, dtype=np.float32))
    logger.info("Whisper warm-up took %.0f ms", (time.perf_counter() - started) * 1000)
    return transcribe


def _bounded_decode(model: Any, config: AsrConfig) -> BoundedDecode:
    """A :data:`BoundedDecode` over a loaded faster-whisper ``WhisperModel``'s CTranslate2 model.

    Features are faster-whisper's own log-mel front end on the utterance padded with silence to the window (the
    same normalization as its 30 s path); the prompt is ``<|startoftranscript|>`` (+ language and task on a
    multilingual model) + ``<|notimestamps|>``, as faster-whisper's ``without_timestamps=True``.
    """
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    multilingual = model.model.is_multilingual
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe" if multilingual else None,
                          language=config.language if multilingual else None)
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    hop = PIPELINE_SAMPLE_RATE_HZ // FRAMES_PER_S

    def decode(samples: np.ndarray, frames: int, max_new_tokens: int) -> tuple[str, int]:
        audio = np.zeros(frames * hop, dtype=np.float32)
        clip = samples[: len(audio)]
        audio[: len(clip)] = clip
        features = model.feature_extractor(audio, padding=0)[:, :frames]
        if features.shape[1] < frames:
            features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[np.newaxis], dtype=np.float32))
        # CTranslate2's Whisper caps the decode at min(max_length / 2, max_length - prompt length) tokens
        # (whisper.cc; OpenNMT/CTranslate2 issue #1856): twice the bound lets it generate exactly the bound, so a decode
        # that needs more reaches it and the loop guard sees it. Passing prompt + bound silently ended long
        # utterances at half the bound, mid-sentence ("... to do for" for "... to do for them").
        result = model.model.generate(
            storage, [prompt], beam_size=config.beam_size, max_length=2 * max(max_new_tokens, len(prompt)),
            no_repeat_ngram_size=config.no_repeat_ngram_size, repetition_penalty=config.repetition_penalty,
            suppress_blank=True, suppress_tokens=[-1], return_scores=True, return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        text = tokenizer.decode(tokens).strip()
        # The same doubts as the full window's (keep_segment), on the same scale.
        found = WhisperSegment(text, float(result.no_speech_prob),
                               average_logprob(float(result.scores[0]), len(result.sequences_ids[0]))
                               if result.scores else 0.0)
        if text and not keep_segment(found, config):
            logger.info("dropped %r: Whisper marks it no speech / low confidence (no_speech_prob %.2f, avg_logprob "
                        "%.2f)", text[:80], found.no_speech_prob, found.avg_logprob)
            return "", len(tokens)
        return text, len(tokens)

    return decode


def main(argv: list[str] | None = None) -> None:
    """Run the ASR node inside a dora dataflow."""
    from dora import Node

    from dora_voice.models import ModelError
    from dora_voice.nodes import fatal, node_cli
    from dora_voice.runtime import run_node

    config, _ = node_cli(CONTRACT, __doc__, argv)
    try:
        transcribe = load_whisper(config)
    except ModelError as exc:
        fatal(CONTRACT.path, str(exc))
    run_node(Node(), AsrCore(transcribe, max_utterance_s=config.max_utterance_s,
                             speculative_text=config.speculation == "answer"))

if __name__ == "__main__":
    main()
