"""LLM node: streams the reply and cuts it into speakable chunks as tokens arrive.

Inputs:
    * ``text`` — a :class:`~dora_voice.schema.Transcript` per user turn (from asr or text-input).
    * ``segment_done`` — optional TTS feedback, used when ``LLM_PACING=tts``.
    * ``playback`` — optional speaker feedback: what was heard, and barge-ins (``turn_interrupted``) that stop
      generation and trim the history to what the listener actually heard.

Outputs ``text`` (:class:`~dora_voice.schema.TextSegment` chunks with ``segment_index``, ``is_streaming``,
``is_final``) and ``timing`` (llm_start, llm_first_token, llm_chunk, llm_done).

Speculation: a speculative transcript (the ASR's, early in the pause) begins the reply before the end of turn is
confirmed. Its first chunk goes to the TTS at once, marked ``speculative`` (synthesized, but held there, never heard);
generation then waits. The confirmed transcript with the same text confirms it: a ``confirmed`` verdict releases the
held audio and the reply goes on; otherwise (another text, the user went on speaking) a ``cancelled`` verdict drops
it, the history is unchanged, and the turn is answered again from its confirmed transcript.

Chunking (the pause strategy "max_tokens first, sentence_boundary after", :attr:`LlmConfig.segmentation` applied
by :class:`~dora_voice.text.segmenter.TextSegmenter`): the first chunk ends at the first clause or sentence
boundary or after ``LLM_FIRST_CHUNK_MAX_TOKENS`` tokens; later chunks end at sentence boundaries, at least
``LLM_CHUNK_MIN_CHARS`` and at most ``LLM_CHUNK_MAX_CHARS`` long.
``LLM_ENABLE_STREAMING=false`` is the batch baseline: one chunk holding the whole reply, sent when it is complete.

Replies that fit speech:

* **No loops.** ``LLM_REPEAT_PENALTY`` is passed to the runtime (llama.cpp's repeat penalty over its last 64
  tokens; mlx-lm's ``repetition_penalty``). As the last line, every chunk passes a
  :class:`~dora_voice.text.repetition.RepetitionGuard` before it is sent: when a sentence would repeat the reply
  (a word 4-gram's third occurrence, or a sentence said again), generation stops and the reply ends after the
  last sentence that did not repeat (``LLM_REPETITION_GUARD``).
* **A length cap that ends on a finished sentence.** Once the reply has ``LLM_MAX_WORDS`` words, the sentence in
  progress is finished and generation stops. When ``LLM_MAX_TOKENS`` cuts the reply anyway, its unfinished last
  sentence is dropped, unless the text before it does not end a sentence either (then nothing would be gained).
  ``llm_done`` carries the reason in ``detail``: ``""`` (the model ended), ``word_cap``, ``max_tokens``,
  ``repetition``, ``code_block``, ``barge_in``, ``runtime_error``, ``tts_gone`` or ``speaker_gone`` (see below).
* **No silence for code.** A fenced code block is not spoken (the TTS says "Code block omitted."), so while the model
  wrote one the listener heard nothing: about 5 s per code answer in the 200-turn soak. With ``LLM_CODE_BLOCKS=stop``
  (default) the reply ends where a code block opens; the history keeps it as generated, up to the fence.

Bounded input: every prompt is fitted to ``LLM_CONTEXT_TOKENS`` minus ``LLM_MAX_TOKENS`` (oldest exchanges dropped,
an over-long user message shortened to its end; see :meth:`~dora_voice.history.ConversationHistory.fit`). A turn id
that is not newer than the last one, or impossibly far ahead, is an ``input_error``.

Failures: a runtime error while a turn generates is that turn's error: the text not yet sent is dropped, the turn is
closed with an empty final chunk, an ``input_error`` timing event names it, the history does not keep it, and the
next turn is served. Dead peers: when the TTS (``segment_done``) or the speaker (``playback``) input closes while
text can still come, nobody will speak what the LLM generates: it stops at once, drops what is queued and exits.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import pyarrow as pa

from dora_voice.config import (
    ConfigError, env_field, parse_bool, parse_choice, parse_float, parse_int, parse_str,
)
from dora_voice.contracts import NodeContract
from dora_voice.history import ConversationHistory, HistoryStrategy
from dora_voice.llm_backends import LlmBackend, Message, default_backend_name
from dora_voice.runtime import Emit, NodeCore, UnknownInputError, emit
from dora_voice.schema import (
    Key, Output, PlaybackEvent, PlaybackKind, SchemaError, SegmentDone, TextSegment, TimingKind, Transcript, Verdict,
)
from dora_voice.text.normalize import CODE_FENCE
from dora_voice.text.repetition import RepetitionGuard, split_sentences
from dora_voice.text.segmenter import SegmentationPolicy, SegmentRule, TextSegmenter
from dora_voice.turns import TurnSequence

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your answers are spoken aloud, so answer in one to three short, "
    "conversational sentences. Use plain words only: no lists, no markdown, no code, no emoji."
)


@dataclass(frozen=True)
class LlmConfig:
    """LLM settings."""

    enable_streaming: bool = env_field("LLM_ENABLE_STREAMING", True, parse_bool,
                                       "stream chunks as tokens arrive (false = batch baseline: one chunk)")
    backend: str = env_field("LLM_BACKEND", "auto", parse_choice("auto", "llama_cpp", "mlx"),
                             "runtime: llama_cpp (Linux default) or mlx (macOS default)")
    model: str = env_field("LLM_MODEL", "qwen2.5-0.5b", parse_str,
                           "registered model name (dora-voice-models list); with LLM_BACKEND=mlx, its MLX folder "
                           "built by 'dora-voice-models mlx NAME'")
    model_path: str = env_field("LLM_MODEL_PATH", "", parse_str, "GGUF file (or MLX model folder); overrides LLM_MODEL")
    system_prompt: str = env_field("LLM_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT, parse_str, "system prompt")
    max_tokens: int = env_field("LLM_MAX_TOKENS", 160, parse_int(min_value=1, max_value=8192),
                                "longest reply, tokens (hard cap; an unfinished last sentence is dropped)")
    max_words: int = env_field("LLM_MAX_WORDS", 70, parse_int(min_value=0, max_value=10000),
                               "soft cap, words: past it the sentence in progress is finished, then the reply "
                               "ends (0 = off)")
    repeat_penalty: float = env_field("LLM_REPEAT_PENALTY", 1.0, parse_float(min_value=0.5, max_value=2.0),
                                      "penalty on tokens of the last 64 (llama.cpp repeat_penalty; 1.0 = off)")
    ignore_eos: bool = env_field("LLM_IGNORE_EOS", False, parse_bool,
                                 "for tests and benchmarks: the model cannot end its reply, which runs to "
                                 "LLM_MAX_TOKENS or LLM_MAX_WORDS (llama.cpp --ignore-eos; llama_cpp only)")
    repetition_guard: bool = env_field("LLM_REPETITION_GUARD", True, parse_bool,
                                       "end the reply before a sentence that repeats it (loop guard)")
    code_blocks: str = env_field("LLM_CODE_BLOCKS", "stop", parse_choice("stop", "generate"),
                                 "stop: end the reply where a fenced code block opens (it is not spoken, and the "
                                 "listener would wait in silence while it is written); generate: write it")
    temperature: float = env_field("LLM_TEMPERATURE", 0.3, parse_float(min_value=0.0, max_value=2.0),
                                   "sampling temperature")
    seed: int = env_field("LLM_SEED", 7, parse_int(min_value=0), "sampling seed")
    threads: int = env_field("LLM_THREADS", 2, parse_int(min_value=1, max_value=64), "CPU threads")
    prefill_threads: int = env_field("LLM_PREFILL_THREADS", 1, parse_int(min_value=1, max_value=64),
                                     "CPU threads for prompts evaluated ahead, off the user's path (a partial "
                                     "transcript's while the user speaks, a trimmed history's while the answer "
                                     "plays), so they leave a core to the ASR, the end-of-turn model and the TTS")
    context_tokens: int = env_field("LLM_CONTEXT_TOKENS", 4096, parse_int(min_value=256, max_value=131072),
                                    "context window, tokens")
    first_chunk_max_tokens: int = env_field("LLM_FIRST_CHUNK_MAX_TOKENS", 5, parse_int(min_value=1, max_value=512),
                                            "first chunk is cut after this many tokens at the latest")
    first_chunk_min_chars: int = env_field("LLM_FIRST_CHUNK_MIN_CHARS", 4, parse_int(min_value=0, max_value=500),
                                           "shortest first chunk cut at punctuation, characters")
    chunk_min_chars: int = env_field("LLM_CHUNK_MIN_CHARS", 30, parse_int(min_value=0, max_value=2000),
                                     "shortest later chunk cut at a sentence end, characters")
    chunk_max_chars: int = env_field("LLM_CHUNK_MAX_CHARS", 200, parse_int(min_value=10, max_value=5000),
                                     "longest chunk before a forced cut, characters")
    pacing: str = env_field("LLM_PACING", "adaptive", parse_choice("off", "tts", "adaptive"),
                            "tts: generate the next chunk only after the TTS synthesized the previous one; "
                            "adaptive: the same, and size that chunk so it is spoken before the queued audio runs "
                            "out (measured generation and synthesis speed)")
    pacing_margin_ms: float = env_field("LLM_PACING_MARGIN_MS", 300.0, parse_float(min_value=0.0, max_value=10000.0),
                                        "adaptive pacing: audio that should still be queued when the next chunk's "
                                        "audio is ready, ms")
    pacing_timeout_s: float = env_field("LLM_PACING_TIMEOUT_S", 5.0, parse_float(min_value=0.1, max_value=120.0),
                                        "longest wait for TTS feedback before generating on, s")
    history_strategy: str = env_field("HISTORY_STRATEGY", "sliding", parse_choice(*(s.value for s in HistoryStrategy)),
                                      "fixed | sliding | token_budget (see history.py)")
    history_turns: int = env_field("LLM_HISTORY_TURNS", 8, parse_int(min_value=0, max_value=1000),
                                   "turns kept by fixed/sliding (0 = no memory)")
    history_tokens: int = env_field("LLM_HISTORY_TOKENS", 1024, parse_int(min_value=16, max_value=131072),
                                    "token budget of token_budget")

    def __post_init__(self) -> None:
        if self.chunk_min_chars > self.chunk_max_chars:
            raise ConfigError(f"LLM_CHUNK_MIN_CHARS={self.chunk_min_chars} exceeds LLM_CHUNK_MAX_CHARS="
                              f"{self.chunk_max_chars}")
        if self.first_chunk_min_chars > self.chunk_max_chars:
            raise ConfigError(f"LLM_FIRST_CHUNK_MIN_CHARS={self.first_chunk_min_chars} exceeds LLM_CHUNK_MAX_CHARS="
                              f"{self.chunk_max_chars}")

    @property
    def segmentation(self) -> SegmentationPolicy:
        """Where the streamed reply is cut into chunks: the first at a clause or sentence end at least
        ``LLM_FIRST_CHUNK_MIN_CHARS`` long, or after ``LLM_FIRST_CHUNK_MAX_TOKENS`` tokens; later ones at sentence
        ends, ``LLM_CHUNK_MIN_CHARS`` to ``LLM_CHUNK_MAX_CHARS`` long."""
        return SegmentationPolicy(
            first=SegmentRule(self.chunk_max_chars, self.first_chunk_min_chars, clause_cut=True,
                              max_tokens=self.first_chunk_max_tokens),
            later=SegmentRule(self.chunk_max_chars, self.chunk_min_chars))


@dataclass
class _Turn:
    """A reply being generated."""

    transcript: Transcript
    tokens: Iterator[str]
    start_ns: int
    first_token_ns: int | None = None
    tokens_total: int = 0
    tokens_in_chunk: int = 0
    last_chunk_ns: int = 0
    chunks: list[str] = field(default_factory=list)
    reply: str = ""
    stop_reason: str = ""  # why generation ended early: word_cap, max_tokens, repetition, barge_in
    cap_sentences: int | None = None  # finished sentences when LLM_MAX_WORDS was reached
    guard: RepetitionGuard = field(default_factory=RepetitionGuard)
    sentences: TextSegmenter | None = None  # batch mode: finished sentences, for the guard
    batch_text: list[str] = field(default_factory=list)  # batch mode: sentences the guard admitted
    waiting_for: int | None = None  # pacing: chunk index whose synthesis we wait for
    waiting_since_ns: int = 0
    chunk_tokens: list[int] = field(default_factory=list)  # tokens of each chunk sent (adaptive pacing)
    audio_end_ns: int | None = None  # adaptive pacing: when the audio synthesized so far will have been played
    speculative: bool = False  # begun from a speculative transcript: only its first chunk leaves (marked
    #   speculative: the TTS synthesizes it and holds the audio) until the confirmation
    held: list[Emit] = field(default_factory=list)  # what a speculative turn produced, sent on confirmation
    ahead_done: bool = False  # a speculative turn's generation ended (its _finish waits for the confirmation)
    prefilled_words: int = 0  # words of the user's message whose prompt was evaluated while they spoke

    @property
    def paused(self) -> bool:
        """A speculative turn goes no further than its first chunk (or its end) before it is confirmed."""
        return self.speculative and (bool(self.chunks) or self.ahead_done)


def _generated_prefix(generated: str, sent: str) -> str:
    """The beginning of ``generated`` (the raw token text) that holds the text of ``sent`` (the chunks sent,
    joined with single spaces: the segmenter strips the whitespace around each), with its own line breaks and
    spacing: the same non-whitespace characters, counted. All of ``generated`` when it holds fewer."""
    needed = sum(not c.isspace() for c in sent)
    if needed == 0:
        return ""
    seen = 0
    for index, char in enumerate(generated):
        if not char.isspace():
            seen += 1
            if seen == needed:
                return generated[: index + 1]
    return generated


class ChunkPacer:
    """Adaptive pacing: how many tokens the next chunk may have so that the listener does not run out of audio.

    The LLM waits for the TTS to finish the previous chunk (``segment_done``) before generating the next one, so
    the two do not compete for the CPU; the next chunk is then heard after it is generated and synthesized. Its
    token budget is ``floor((queued_audio_s - margin_s) / (gen_s_per_token + synth_s_per_token))``: the audio
    still queued for the listener, less a margin, over the measured cost of one token (both speeds kept as
    exponential moving averages over the session, weight :data:`ChunkPacer.ALPHA`; until measured,
    :data:`ChunkPacer.PRIOR_S_PER_TOKEN` each). The idea is the design notes' adaptive TTS
    (``../shared/seeds/chunked-llm-adaptive-tts-integration-test.md``): chunk size follows the audio buffered.

    The queued audio is estimated from the TTS's feedback: chunk ``k``'s audio (``audio_ms``) starts at the
    latest of the end of chunk ``k-1``'s and the start of its own synthesis (fragments stream out while it
    synthesizes), which ignores the speaker's sentence pauses: the estimate errs on the short side.

    Args:
        margin_s: audio that should still be queued when the next chunk's audio is ready, s.
    """

    ALPHA = 0.3
    PRIOR_S_PER_TOKEN = 0.04
    MIN_TOKENS = 3
    """A smaller budget is raised to this: a chunk of one or two words is spoken with broken prosody."""
    MAX_TOKENS = 400
    """A larger budget means no limit."""

    def __init__(self, margin_s: float) -> None:
        self.margin_s = margin_s
        self.gen_s_per_token = self.PRIOR_S_PER_TOKEN
        self.synth_s_per_token = self.PRIOR_S_PER_TOKEN
        self._gen_measured = False
        self._synth_measured = False

    def _mix(self, old: float, new: float, measured: bool) -> float:
        return new if not measured else (1 - self.ALPHA) * old + self.ALPHA * new

    def generated(self, seconds: float) -> None:
        """One token took ``seconds`` to generate (not the turn's first: that includes the prompt)."""
        self.gen_s_per_token = self._mix(self.gen_s_per_token, seconds, self._gen_measured)
        self._gen_measured = True

    def synthesized(self, tokens: int, synth_s: float) -> None:
        """A chunk of ``tokens`` tokens took ``synth_s`` seconds to synthesize."""
        if tokens > 0 and synth_s > 0:
            self.synth_s_per_token = self._mix(self.synth_s_per_token, synth_s / tokens, self._synth_measured)
            self._synth_measured = True

    def budget(self, queued_s: float) -> int | None:
        """Token budget of the next chunk with ``queued_s`` seconds of audio still to play (``None``: no limit)."""
        per_token = self.gen_s_per_token + self.synth_s_per_token
        tokens = int((queued_s - self.margin_s) / per_token) if per_token > 0 else self.MAX_TOKENS + 1
        if tokens > self.MAX_TOKENS:
            return None
        return max(self.MIN_TOKENS, tokens)


PACING_POLL_S = 0.002
"""How long :meth:`LlmCore.step` sleeps while it waits for the TTS's feedback (s): short next to a chunk's
synthesis time, so generation resumes within ~2 ms of the ``segment_done``."""


class LlmCore(NodeCore):
    """Turns transcripts into streamed reply chunks.

    Args:
        config: LLM settings.
        backend: the runtime (injected; tests pass a scripted fake).
        clock_ns: wall clock (``time.time_ns``); tests inject a fake.
        sleep: ``sleep(seconds)``, used while pacing waits for the TTS; tests inject one that advances the fake
            clock.
    """

    node_id = "llm"

    def __init__(self, config: LlmConfig, backend: LlmBackend, clock_ns: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(clock_ns)
        self.sleep = sleep
        self.config = config
        self.backend = backend
        self.history = ConversationHistory(config.system_prompt, HistoryStrategy(config.history_strategy),
                                           max_turns=config.history_turns, max_tokens=config.history_tokens,
                                           count_tokens=backend.count_tokens)
        self.segmenter = TextSegmenter(config.segmentation)
        self.pacer = ChunkPacer(config.pacing_margin_ms / 1000)
        self.queue: deque[Transcript] = deque()
        self.current: _Turn | None = None
        self.interrupted_turns: set[int] = set()
        self.heard: dict[int, dict[int, float]] = {}  # turn -> text_segment_index -> heard fraction
        self.texts: dict[int, list[str]] = {}  # turn -> chunk texts, for trimming history after a barge-in
        self.text_closed = False
        self.cancelled_turns = 0
        self.prefill_pending = False  # history was trimmed: re-evaluate its new prefix while the answer plays
        self._prefill_steps: Iterator[int] | None = None  # the re-evaluation in progress (interruptible backends)
        self._prefill_started = 0
        self._prefill_messages: list[Message] | None = None  # a partial transcript's prompt (else the history's)
        self._partial: tuple[int, int] | None = None  # (turn_id, words) of the latest partial transcript prefilled
        self._partial_pending: tuple[int, int] | None = None  # the same for the one being evaluated
        self.turn_ids = TurnSequence()
        self.last_text_turn = -1
        self.failed_turns = 0
        self.dead_peer: str | None = None  # the consumer input that closed early (tts or speaker died)
        self.dropped_turns = 0
        self.speculation_hits = 0  # replies begun during the pause and confirmed
        self.speculation_cancelled = 0  # replies begun during the pause and dropped (never heard)
        self._missed_turn = -1  # the turn whose reply begun ahead was dropped (llm_start says "miss")
        self.prompt_budget = config.context_tokens - config.max_tokens
        # A system prompt that leaves no room is a bad setting: fail at start-up, naming the variables.
        try:
            self.history.fit("", self.prompt_budget)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # -- dora hooks ------------------------------------------------------------------------------------------
    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        if input_id == "text":
            transcript = Transcript.decode(value, metadata)
            self.turn_ids.check(transcript.turn_id, "text")
            if transcript.partial:
                return self._on_partial(transcript)
            if transcript.speculative:
                return self._on_speculative(transcript)
            out: list[Emit] = []
            turn = self.current
            if turn is not None and turn.speculative:
                if turn.transcript.turn_id == transcript.turn_id and turn.transcript.text == transcript.text:
                    return self._confirm(turn)
                out += self._cancel_speculation(turn, "the confirmed transcript differs")
            if transcript.turn_id <= self.last_text_turn:
                raise SchemaError(f"text: turn_id {transcript.turn_id} is not newer than the last turn "
                                  f"{self.last_text_turn} (one transcript per turn, in order)")
            self.last_text_turn = transcript.turn_id
            self.session_id = transcript.session_id or self.session_id
            if self.dead_peer is not None:
                self.dropped_turns += 1
                logger.error("turn %d dropped: the %s is gone", transcript.turn_id, self.dead_peer)
                return out
            self.queue.append(transcript)
            return out + (self._start_next() if self.current is None else [])
        if input_id == "segment_done":
            done = SegmentDone.decode(value, metadata)
            self.turn_ids.check_known(done.turn_id, "segment_done")
            turn = self.current
            if turn is None or done.turn_id != turn.transcript.turn_id:
                return []
            self._audio_queued(turn, done)
            if turn.waiting_for is not None and done.text_segment_index >= turn.waiting_for:
                turn.waiting_for = None
                self._limit_next_chunk(turn)
            return []
        if input_id == "playback":
            event = PlaybackEvent.decode(value, metadata)
            self.turn_ids.check_known(event.turn_id, "playback")
            return self._on_playback(event)
        raise UnknownInputError(f"unknown input id {input_id!r} (expected text, segment_done or playback)")

    def on_input_closed(self, input_id: str) -> Iterable[Emit]:
        if input_id == "text":
            self.text_closed = True
            turn = self.current
            if turn is not None and turn.speculative:
                return self._cancel_speculation(turn, "the transcripts ended before the turn was confirmed")
            return ()
        if input_id in ("segment_done", "playback") and not self.text_closed:
            # The TTS and the speaker finish only after the LLM's text ends: closing earlier means they died.
            return self._peer_died("TTS" if input_id == "segment_done" else "speaker", input_id)
        return ()

    def _peer_died(self, peer: str, input_id: str) -> list[Emit]:
        """Stop generating for a consumer that is gone; what was queued is dropped and counted."""
        if self.dead_peer is not None:
            return []
        self.dead_peer = peer
        out: list[Emit] = []
        turn = self.current
        if turn is not None and turn.speculative:
            out += self._cancel_speculation(turn, f"the {peer} is gone")
        elif turn is not None:
            self._close_tokens(turn)
            out += self._finish(turn, cancelled=True, start_next=False)
        self.dropped_turns += len(self.queue)
        logger.error("the %s is gone (%s closed before the LLM finished): stopped generating, %d queued turn(s) "
                     "dropped; the LLM exits", peer, input_id, len(self.queue))
        self.queue.clear()
        self.prefill_pending = False
        self._prefill_steps = None
        self._prefill_messages = None
        return out

    def busy(self) -> bool:
        # A speculative turn paused at its first chunk has nothing to do until its confirmation (an input) comes.
        if self.current is not None:
            return not self.current.paused
        return self.prefill_pending

    def finished(self) -> bool:
        # Feedback inputs (segment_done, playback) stay open as long as tts/speaker run; they in turn wait for us.
        if self.dead_peer is not None:
            return True
        return self.text_closed and self.current is None and not self.queue

    def step(self) -> Iterable[Emit]:
        turn = self.current
        if turn is None:
            if self.prefill_pending:
                self._prefill()
            return []
        if turn.paused:
            return []
        if turn.speculative:
            produced = self._generate(turn)
            if self.current is not turn:  # dropped (a runtime error): its report goes out
                return produced
            # its chunk goes to the TTS now, marked speculative (the TTS holds the audio until the verdict); the rest
            # (timing) waits for the confirmation
            turn.held += [item for item in produced if item[0] != Output.TEXT]
            return [item for item in produced if item[0] == Output.TEXT]
        return self._generate(turn)

    def _generate(self, turn: _Turn) -> list[Emit]:
        """One token of ``turn`` (or one pacing wait), and what it produced."""
        if turn.waiting_for is not None:
            if self.clock_ns() - turn.waiting_since_ns < self.config.pacing_timeout_s * 1e9:
                self.sleep(PACING_POLL_S)
                return []
            logger.warning("turn %d: no TTS feedback for chunk %d within %.1f s; generating on",
                           turn.transcript.turn_id, turn.waiting_for, self.config.pacing_timeout_s)
            turn.waiting_for = None
        before_ns = self.clock_ns()
        try:
            delta = next(turn.tokens)
        except StopIteration:
            if turn.tokens_total >= self.config.max_tokens or getattr(self.backend, "finish_reason", "") == "length":
                turn.stop_reason = "max_tokens"
            if turn.speculative:
                turn.ahead_done = True
                return []
            return self._finish(turn)
        except Exception as exc:  # noqa: BLE001 - a runtime failing on one prompt must not end the session
            if turn.speculative:  # nothing was heard: drop it; the confirmed transcript will try again
                logger.warning("turn %d: the LLM runtime failed on the speculative transcript (%s: %s)",
                               turn.transcript.turn_id, type(exc).__name__, str(exc)[:300])
                return self._cancel_speculation(turn, "runtime error")
            return self._fail(turn, exc)
        now = self.clock_ns()
        out: list[Emit] = []
        if turn.first_token_ns is None:
            turn.first_token_ns = now
            out.append(self.timing(TimingKind.LLM_FIRST_TOKEN, turn.transcript.turn_id, now))
        else:
            self.pacer.generated((now - before_ns) / 1e9)
        turn.tokens_total += 1
        turn.tokens_in_chunk += 1
        turn.reply += delta
        if self.config.enable_streaming:
            for chunk in self.segmenter.push(delta):
                out += self._guarded_chunk(turn, chunk)
                if turn.stop_reason:
                    break
        elif self.config.repetition_guard:
            assert turn.sentences is not None
            for sentence in turn.sentences.push(delta):
                kept, looping = turn.guard.admit(sentence)
                if kept:
                    turn.batch_text.append(kept)
                if looping:
                    turn.stop_reason = "repetition"
                    break
        if not turn.stop_reason and self.config.code_blocks == "stop" and CODE_FENCE.search(turn.reply):
            turn.stop_reason = "code_block"
            logger.info("turn %d: a code block opens: the reply ends there (LLM_CODE_BLOCKS=stop)",
                        turn.transcript.turn_id)
        if not turn.stop_reason and self._reached_word_cap(turn):
            turn.stop_reason = "word_cap"
        if turn.stop_reason:
            self._close(turn)
            if turn.speculative:
                turn.ahead_done = True
                return out
            return out + self._finish(turn)
        return out

    def on_end(self) -> Iterable[Emit]:
        out: list[Emit] = []
        if self.current is not None and self.current.speculative:
            out += self._cancel_speculation(self.current, "the stream ended before the turn was confirmed")
        while self.current is not None or self.queue:
            if self.current is None:
                out += self._start_next()
            else:
                out += self.step()
        return out

    # -- internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _close(turn: _Turn) -> None:
        close = getattr(turn.tokens, "close", None)
        if close is not None:
            close()

    def _reached_word_cap(self, turn: _Turn) -> bool:
        """True once the reply has ``max_words`` words and the sentence in progress at that point has finished."""
        if not self.config.max_words:
            return False
        if turn.cap_sentences is None:
            if len(turn.reply.split()) < self.config.max_words:
                return False
            turn.cap_sentences = len(split_sentences(turn.reply, final=False)[0])
            return False
        return len(split_sentences(turn.reply, final=False)[0]) > turn.cap_sentences

    def _guarded_chunk(self, turn: _Turn, chunk: str) -> list[Emit]:
        """Send ``chunk`` after the repetition guard: on a loop, only the sentences before it (and mark the turn)."""
        kept = self._admit_all(turn, [chunk])
        return self._chunk(turn, kept[0], is_final=False) if kept else []

    def _admit_all(self, turn: _Turn, pieces: list[str]) -> list[str]:
        """The repetition guard over the reply's last pieces: those before the first repeat."""
        if not self.config.repetition_guard:
            return pieces
        kept: list[str] = []
        for piece in pieces:
            text, looping = turn.guard.admit(piece)
            if text:
                kept.append(text)
            if looping:
                turn.stop_reason = "repetition"
                logger.warning("turn %d: the reply started repeating itself (%r): ended before it",
                               turn.transcript.turn_id, turn.guard.repeated[:80])
                break
        return kept

    def _batch_reply(self, turn: _Turn) -> str:
        """Batch mode's one chunk: the reply with its line breaks, ended by the guard or a cap as in streaming."""
        if turn.stop_reason != "repetition" and turn.sentences is not None:
            self._admit_all(turn, turn.sentences.flush())
        if turn.stop_reason == "repetition":
            return " ".join(turn.batch_text)
        text = turn.reply.strip()
        if turn.stop_reason in ("word_cap", "max_tokens"):
            sentences, rest = split_sentences(text, final=turn.stop_reason == "max_tokens")
            if rest and sentences:
                text = text[: len(text) - len(rest)].rstrip()
        return text

    def _trim_unfinished(self, turn: _Turn, pieces: list[str], *, final: bool) -> list[str]:
        """Drop the unfinished sentence at the end of ``pieces`` (the reply's unsent rest) after a cap.

        Kept when no finished sentence would end the reply then (nothing before it, or the text sent before it
        ends inside a sentence): a reply cut mid-sentence is better than silence or than a dangling half.
        """
        if not pieces:
            return pieces
        sentences, rest = split_sentences(pieces[-1], final=final)
        if not rest:
            return pieces
        before = " ".join(turn.chunks + pieces[:-1])
        if not sentences and (not before or split_sentences(before, final=True)[1]):
            return pieces  # no finished sentence to end on
        last = " ".join(sentences)
        logger.info("turn %d: %s: unfinished sentence dropped (%r)", turn.transcript.turn_id, turn.stop_reason,
                    rest[:80])
        return pieces[:-1] + ([last] if last else [])

    def _start_next(self) -> list[Emit]:
        if not self.queue:
            return []
        return self._start(self.queue.popleft())

    def _start(self, transcript: Transcript, *, speculative: bool = False) -> list[Emit]:
        """Submit the prompt of ``transcript``'s turn. A ``speculative`` turn leaves the history as it was (its
        prompt's fit is undone) and sends only its first chunk, marked speculative, before :meth:`_confirm`."""
        if self._prefill_steps is not None and self._prefill_messages is None:
            logger.info("turn %d: a new turn interrupts the history re-evaluation; its prompt reuses what was "
                        "evaluated", transcript.turn_id)
        self.prefill_pending = False  # this prompt evaluates the new prefix anyway
        self._prefill_steps = None
        # fitted again (_fit) if a speculative turn is confirmed with the same text
        messages = self._fit_ahead(transcript.text) if speculative else self._fit(transcript)
        prefilled = self._partial[1] if self._partial is not None and self._partial[0] == transcript.turn_id else 0
        self._prefill_messages = None
        self.segmenter.reset()
        start = self.clock_ns()
        self.current = _Turn(transcript, iter(()), start, last_chunk_ns=start, speculative=speculative,
                             prefilled_words=prefilled)
        if prefilled:
            logger.info("turn %d: the prompt of %d of its words was evaluated while the user spoke", transcript.turn_id,
                        prefilled)
        if not self.config.enable_streaming:
            self.current.sentences = TextSegmenter(SegmentationPolicy.sentences(self.config.context_tokens * 8))
        out: list[Emit] = []
        if speculative:
            logger.info("turn %d: beginning a reply during the pause to the speculative transcript %r (held until "
                        "the turn is confirmed)", transcript.turn_id, transcript.text[:200])
        else:
            self.texts[transcript.turn_id] = self.current.chunks
            logger.info("turn %d: generating a reply to %r", transcript.turn_id, transcript.text[:200])
            fields: dict[str, Any] = {Key.TEXT: transcript.text[:2000], Key.PREFILLED_WORDS: prefilled}
            if transcript.turn_id == self._missed_turn:
                fields[Key.SPECULATION] = "miss"
            out.append(self.timing(TimingKind.LLM_START, transcript.turn_id, start, **fields))
        try:
            self.current.tokens = iter(self.backend.stream(messages, self.config.max_tokens))
        except Exception as exc:  # noqa: BLE001 - see step()
            if speculative:
                logger.warning("turn %d: the LLM runtime failed on the speculative transcript (%s: %s)",
                               transcript.turn_id, type(exc).__name__, str(exc)[:300])
                return self._cancel_speculation(self.current, "runtime error")
            return out + self._fail(self.current, exc)
        return out

    def _fit(self, transcript: Transcript) -> list[Message]:
        """The prompt for ``transcript``, fitted to the context window (oldest exchanges dropped for good); logs
        what was dropped or shortened."""
        messages, dropped, shortened = self.history.fit(transcript.text, self.prompt_budget)
        if dropped:
            logger.info("turn %d: %d oldest exchange(s) dropped to fit the %d-token context window",
                        transcript.turn_id, dropped, self.config.context_tokens)
        if shortened:
            logger.warning("turn %d: the user's %d-character message does not fit the %d-token context window "
                           "(LLM_CONTEXT_TOKENS) beside the reply (LLM_MAX_TOKENS): only its last %d characters are "
                           "used", transcript.turn_id, len(transcript.text), self.config.context_tokens,
                           len(messages[-1]["content"]) - 4)
        return messages

    def _fit_ahead(self, text: str) -> list[Message]:
        """The prompt a user message ``text`` would get now, with the history left as it was (nothing dropped)."""
        exchanges = list(self.history.exchanges)
        messages = self.history.fit(text, self.prompt_budget)[0]
        self.history.exchanges = exchanges
        return messages

    # -- partial transcripts (TURN_PARTIAL_MS) -----------------------------------------------------------------
    def _on_partial(self, transcript: Transcript) -> list[Emit]:
        """A partial transcript (the user is still speaking): evaluate the prompt it would make into the runtime's
        cache, so the reply's prompt, which starts with the same tokens up to the words said since, is mostly
        evaluated already when the turn ends (llama.cpp reuses the longest cached prefix). Its last word is left out
        (often cut mid-word, or given a full stop), and so is the chat template's end of the message (``open_end``):
        both would change with the next words. Only while idle, and only with a backend that prefills in
        interruptible pieces; nothing is generated, the history does not change."""
        words = transcript.text.split()[:-1]  # the last word may be cut short, or end in a full stop it does not have
        if (not words or self.current is not None or self.queue or self.dead_peer is not None or self.text_closed
                or transcript.turn_id <= self.last_text_turn or getattr(self.backend, "prefill", None) is None):
            return []
        self._prefill_messages = self._fit_ahead(" ".join(words))
        self._partial_pending = (transcript.turn_id, len(words))
        self.prefill_pending = True
        self._prefill_steps = None  # a newer partial starts over; what was evaluated stays in the cache
        return []

    # -- speculation (TURN_SPECULATION=answer) -----------------------------------------------------------------
    def _on_speculative(self, transcript: Transcript) -> list[Emit]:
        """A speculative transcript: begin its reply if the LLM is idle; a withdrawal drops the reply begun."""
        out: list[Emit] = []
        turn = self.current
        if turn is not None and turn.speculative:
            if transcript.withdrawn and turn.transcript.turn_id != transcript.turn_id:
                return []
            if not transcript.withdrawn and turn.transcript.turn_id == transcript.turn_id \
                    and turn.transcript.text == transcript.text:
                return []  # the same words again: the reply begun stays good
            out += self._cancel_speculation(
                turn, "withdrawn: the user went on speaking" if transcript.withdrawn else "replaced")
        if transcript.withdrawn:
            return out
        if transcript.turn_id <= self.last_text_turn:
            raise SchemaError(f"text: speculative turn_id {transcript.turn_id} is not newer than the last turn "
                              f"{self.last_text_turn}")
        if self.current is not None or self.queue or self.dead_peer is not None or self.text_closed:
            logger.debug("turn %d: busy with an earlier turn: no reply begun during the pause", transcript.turn_id)
            return out
        self.session_id = transcript.session_id or self.session_id
        return out + self._start(transcript, speculative=True)

    def _confirm(self, turn: _Turn) -> list[Emit]:
        """The turn is confirmed with the transcript its reply began from: send what was held, at once.

        Held events are stamped no earlier than now (what the listener waits for starts at the confirmation), so
        the monitor's parts of voice-to-voice still add up; ``llm_start`` says ``speculation=hit`` and how long the
        reply had been generating (``duration_ms``).
        """
        now = self.clock_ns()
        transcript = turn.transcript
        self.last_text_turn = transcript.turn_id
        self.speculation_hits += 1
        self._fit(transcript)  # what the speculative prompt assumed, now for good
        ahead_ms = (now - turn.start_ns) / 1e6
        logger.info("turn %d: confirmed with the speculative transcript: %d chunk(s), %d token(s) generated %.0f ms "
                    "ahead are sent now", transcript.turn_id, len(turn.chunks), turn.tokens_total, ahead_ms)
        turn.speculative = False
        self.texts[transcript.turn_id] = turn.chunks
        out = [self.timing(TimingKind.LLM_START, transcript.turn_id, now, **{
            Key.TEXT: transcript.text[:2000], Key.SPECULATION: "hit", Key.DURATION_MS: ahead_ms,
            Key.PREFILLED_WORDS: turn.prefilled_words})]
        if turn.chunks:  # the TTS has synthesized them: their audio plays now
            out.append(self._verdict(turn, Verdict.CONFIRMED, now))
        for output_id, value, meta in turn.held:
            for key in (Key.T_NS, Key.LLM_START_NS):
                if key in meta and meta[key] < now:
                    meta[key] = now
            out.append((output_id, value, meta))
        turn.held = []
        turn.start_ns = max(turn.start_ns, now)
        turn.last_chunk_ns = max(turn.last_chunk_ns, now)
        if turn.first_token_ns is not None:
            turn.first_token_ns = max(turn.first_token_ns, now)
        if turn.waiting_for is not None:
            turn.waiting_since_ns = now  # the TTS's feedback on the chunk comes only now
        if turn.ahead_done:
            out += self._finish(turn)
        return out

    def _cancel_speculation(self, turn: _Turn, why: str) -> list[Emit]:
        """Drop a speculative turn: nothing of it was heard (the TTS drops the audio of a chunk sent ahead, told by
        the ``cancelled`` verdict), the history never held it; counted, never lost."""
        self._close_tokens(turn)
        self.segmenter.reset()
        self.current = None
        self.speculation_cancelled += 1
        verdict = [self._verdict(turn, Verdict.CANCELLED, self.clock_ns())] if turn.chunks else []
        self._missed_turn = turn.transcript.turn_id
        spent_ms = (self.clock_ns() - turn.start_ns) / 1e6
        logger.info("turn %d: reply begun during the pause dropped (%s): %d token(s), %.0f ms; %d dropped so far",
                    turn.transcript.turn_id, why, turn.tokens_total, spent_ms, self.speculation_cancelled)
        return verdict + [self.timing(TimingKind.SPECULATION_CANCELLED, turn.transcript.turn_id, **{
            Key.DURATION_MS: spent_ms, Key.TOKENS: turn.tokens_total})]

    def _verdict(self, turn: _Turn, verdict: Verdict, now: int) -> Emit:
        """The message that tells the TTS what becomes of ``turn``'s speculative chunks (no text, not a segment)."""
        return emit(Output.TEXT, TextSegment(
            text="", session_id=turn.transcript.session_id, turn_id=turn.transcript.turn_id,
            segment_index=len(turn.chunks), is_streaming=self.config.enable_streaming, is_final=False, tokens=0,
            llm_start_ns=turn.start_ns, t_ns=now, verdict=verdict))

    def _chunk(self, turn: _Turn, text: str, *, is_final: bool) -> list[Emit]:
        now = self.clock_ns()
        index = len(turn.chunks)
        if text:
            turn.chunks.append(text)
        segment = TextSegment(
            text=text, session_id=turn.transcript.session_id, turn_id=turn.transcript.turn_id, segment_index=index,
            is_streaming=self.config.enable_streaming, is_final=is_final, tokens=turn.tokens_in_chunk,
            llm_start_ns=turn.start_ns, t_ns=now, segments_total=len(turn.chunks) if is_final else None,
            speculative=turn.speculative,
        )
        out = [emit(Output.TEXT, segment)]
        if text:
            out.append(self.timing(TimingKind.LLM_CHUNK, turn.transcript.turn_id, now, **{
                Key.SEGMENT_INDEX: index, Key.TOKENS: turn.tokens_in_chunk, Key.TEXT: text,
                Key.DURATION_MS: (now - turn.last_chunk_ns) / 1e6, Key.IS_FINAL: is_final}))
        if text:
            turn.chunk_tokens.append(turn.tokens_in_chunk)
        turn.tokens_in_chunk = 0
        turn.last_chunk_ns = now
        if text and not is_final and self.config.pacing in ("tts", "adaptive"):
            turn.waiting_for = index
            turn.waiting_since_ns = now
        return out

    def _audio_queued(self, turn: _Turn, done: SegmentDone) -> None:
        """Adaptive pacing: account chunk ``done.text_segment_index``'s audio and synthesis speed."""
        if self.config.pacing != "adaptive" or done.audio_ms <= 0:
            return
        now = self.clock_ns()
        if 0 <= done.text_segment_index < len(turn.chunk_tokens):
            self.pacer.synthesized(turn.chunk_tokens[done.text_segment_index], done.synth_ms / 1000)
        starts_ns = now - int(done.synth_ms * 1e6)
        if turn.audio_end_ns is not None:
            starts_ns = max(starts_ns, turn.audio_end_ns)
        turn.audio_end_ns = starts_ns + int(done.audio_ms * 1e6)

    def _limit_next_chunk(self, turn: _Turn) -> None:
        """Adaptive pacing: the token budget of the chunk about to be generated."""
        if self.config.pacing != "adaptive" or turn.audio_end_ns is None or not self.config.enable_streaming:
            return
        queued_s = (turn.audio_end_ns - self.clock_ns()) / 1e9
        budget = self.pacer.budget(queued_s)
        self.segmenter.limit_next(budget)
        logger.debug("turn %d: chunk %d: %.2f s of audio queued, budget %s tokens (%.0f ms/token generation, "
                     "%.0f ms/token synthesis)", turn.transcript.turn_id, len(turn.chunks), queued_s, budget,
                     self.pacer.gen_s_per_token * 1000, self.pacer.synth_s_per_token * 1000)

    def _fail(self, turn: _Turn, exc: Exception) -> list[Emit]:
        """The runtime failed during ``turn``: report it, speak nothing more of it, and go on with the next turn."""
        self.failed_turns += 1
        turn_id = turn.transcript.turn_id
        logger.error("turn %d: the LLM runtime failed (%s: %s); the turn ends here, the next one is served",
                     turn_id, type(exc).__name__, str(exc)[:300])
        self._close_tokens(turn)
        self.segmenter.reset()  # text not yet sent may be cut mid-word: drop it
        error = self.timing(TimingKind.INPUT_ERROR, turn_id, **{
            Key.DETAIL: f"llm: turn {turn_id}: runtime error {type(exc).__name__}: {exc}"[:500]})
        return [error] + self._finish(turn, cancelled=True, failed=True)

    @staticmethod
    def _close_tokens(turn: _Turn) -> None:
        close = getattr(turn.tokens, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a failed generator may raise again
                logger.debug("closing the token stream raised", exc_info=True)

    def _finish(self, turn: _Turn, *, cancelled: bool = False, failed: bool = False,
                start_next: bool = True) -> list[Emit]:
        out: list[Emit] = []
        if cancelled:
            if failed:
                turn.stop_reason = "runtime_error"
            elif self.dead_peer is not None:
                turn.stop_reason = f"{self.dead_peer.lower()}_gone"
            else:
                turn.stop_reason = "barge_in"
            out += self._chunk(turn, "", is_final=True)
        elif self.config.enable_streaming:
            rest = [] if turn.stop_reason == "repetition" else self.segmenter.flush()
            if turn.stop_reason in ("word_cap", "max_tokens"):
                rest = self._trim_unfinished(turn, rest, final=turn.stop_reason == "max_tokens")
            rest = self._admit_all(turn, rest)
            for i, chunk in enumerate(rest):
                out += self._chunk(turn, chunk, is_final=i == len(rest) - 1)
            if not rest:
                out += self._chunk(turn, "", is_final=True)
        else:  # batch: the whole reply, line breaks kept (the TTS reads list items and code blocks from them)
            out += self._chunk(turn, self._batch_reply(turn), is_final=True)
        now = self.clock_ns()
        truncated = turn.stop_reason in ("word_cap", "max_tokens", "repetition")
        reply = " ".join((" ".join(turn.chunks) if truncated else turn.reply).split())
        turn_id = turn.transcript.turn_id
        # The history keeps a whole reply exactly as generated (line breaks of lists and code included): the next
        # prompt then starts with the tokens already in llama.cpp's cache, and only the new message is evaluated.
        # With the whitespace collapsed, every reply with a line break (measured: code answers in the soak) made the
        # next turn re-evaluate that reply: TTFT 1.2-2.6 s instead of ~0.4 s.
        kept = (_generated_prefix(turn.reply, " ".join(turn.chunks)) if truncated else turn.reply).strip()
        heard = self._heard_text(turn_id) if turn_id in self.interrupted_turns else kept
        if not failed and self.dead_peer is None and self.history.add(turn_id, turn.transcript.text, heard):
            self.prefill_pending = True
        fields: dict[str, Any] = {
            Key.TOKENS: turn.tokens_total, Key.TEXT: reply, Key.SEGMENTS_TOTAL: len(turn.chunks),
            Key.DURATION_MS: (now - turn.start_ns) / 1e6,
            Key.INTERRUPTED: cancelled and not failed and self.dead_peer is None, Key.DETAIL: turn.stop_reason}
        out.append(self.timing(TimingKind.LLM_DONE, turn_id, now, **fields))
        reason = " (runtime error)" if failed else f" (the {self.dead_peer} is gone)" if self.dead_peer else \
            " (cancelled by barge-in)" if cancelled else ""
        logger.info("turn %d: %d tokens, %d chunks in %.0f ms%s", turn_id, turn.tokens_total, len(turn.chunks),
                    (now - turn.start_ns) / 1e6, reason)
        self.current = None
        return out + (self._start_next() if start_next else [])

    def _prefill(self) -> None:
        """Evaluate the system prompt and the trimmed history, so the next turn's prompt hits the cache.

        With a backend that can (``prefill``), one piece of a few dozen tokens per call: :meth:`step` comes back
        between pieces and a turn that arrives meanwhile starts at once (:meth:`_start_next` drops the rest).
        Otherwise in one call (``warmup``).
        """
        started = self.clock_ns()
        try:
            if self._prefill_steps is None:
                messages = self._prefill_messages or self.history.fit("", self.prompt_budget)[0]
                prefill = getattr(self.backend, "prefill", None)
                if prefill is None:
                    self.prefill_pending = False
                    self.backend.warmup(messages)
                    logger.info("history trimmed to %d turns: prefix re-evaluated in %.0f ms, off the user's path",
                                len(self.history.exchanges), (self.clock_ns() - started) / 1e6)
                    return
                self._prefill_steps = iter(prefill(messages, open_end=True) if self._prefill_messages is not None
                                           else prefill(messages))
                self._prefill_started = started
            next(self._prefill_steps)
            if self._prefill_messages is not None:
                self._partial = self._partial_pending  # (at least part of) its prompt is in the cache
        except StopIteration:
            self.prefill_pending = False
            self._prefill_steps = None
            reused, evaluated = getattr(self.backend, "last_prefill", (0, 0))
            if self._prefill_messages is not None:
                self._prefill_messages = None
                self._partial = self._partial_pending
                logger.debug("turn %d: prompt of a partial transcript evaluated in %.0f ms (%d tokens)",
                             self._partial[0] if self._partial else -1,
                             (self.clock_ns() - self._prefill_started) / 1e6, evaluated)
                return
            logger.info("history trimmed to %d turns: prefix re-evaluated in %.0f ms, off the user's path (%d tokens "
                        "moved in the cache, %d evaluated)", len(self.history.exchanges),
                        (self.clock_ns() - self._prefill_started) / 1e6, reused, evaluated)
        except Exception as exc:  # noqa: BLE001 - a cache warm-up failing must not end the session
            self.prefill_pending = False
            self._prefill_steps = None
            logger.error("evaluating a prompt ahead (%s) failed (%s: %s); the next turn will do it",
                         "a partial transcript's" if self._prefill_messages is not None else "the trimmed history",
                         type(exc).__name__, str(exc)[:300])
            self._prefill_messages = None

    def _on_playback(self, event: PlaybackEvent) -> list[Emit]:
        heard = self.heard.setdefault(event.turn_id, {})
        if event.kind is PlaybackKind.SEGMENT_PLAYED:
            heard[event.text_segment_index] = 1.0
        elif event.kind is PlaybackKind.SEGMENT_INTERRUPTED:
            heard[event.text_segment_index] = max(heard.get(event.text_segment_index, 0.0), event.heard_fraction)
        elif event.kind is PlaybackKind.TURN_INTERRUPTED:
            self.interrupted_turns.add(event.turn_id)
            self.cancelled_turns += 1
            turn = self.current
            if turn is not None and turn.transcript.turn_id == event.turn_id:
                self._close_tokens(turn)
                return self._finish(turn, cancelled=True)
            self.history.set_heard(event.turn_id, self._heard_text(event.turn_id))
        elif event.kind is PlaybackKind.TURN_DONE:
            # The speaker is done with the turn (after turn_interrupted, if any): forget its playback bookkeeping.
            self.heard.pop(event.turn_id, None)
            if self.current is None or self.current.transcript.turn_id != event.turn_id:
                self.texts.pop(event.turn_id, None)
            self.interrupted_turns.discard(event.turn_id)
        return []

    def _heard_text(self, turn_id: int) -> str:
        """What the listener heard of ``turn_id``: fully played chunks plus the played share of the cut one;
        ``""`` when nothing was heard (the history then keeps no reply for the turn).

        The share is applied to words, an approximation (speech rate is not uniform). No marker is added where the
        reply was cut: the model imitates its own earlier replies, and a reply kept as "One two. Three ..." made
        the next ones end in "..." (README, *Conversation behaviour*).
        """
        heard = self.heard.get(turn_id, {})
        parts: list[str] = []
        for index, text in enumerate(self.texts.get(turn_id, [])):
            fraction = heard.get(index, 0.0)
            if fraction >= 1.0:
                parts.append(text)
                continue
            words = text.split()
            cut = int(len(words) * fraction)
            if cut:
                parts.append(" ".join(words[:cut]))
            break
        return " ".join(parts)


CONTRACT = NodeContract(
    path="dora-voice-llm",
    inputs={
        "text": "asr/text or text-input/text: Transcript",
        "segment_done": "tts/segment_done: SegmentDone (pacing feedback, optional)",
        "playback": "speaker/playback: PlaybackEvent (heard text, barge-in; optional)",
    },
    outputs=(Output.TEXT, Output.TIMING),
    config=LlmConfig,
)


def load_backend(config: LlmConfig) -> LlmBackend:
    """Resolve the model (never downloads) and load the chosen runtime.

    Raises:
        dora_voice.models.ModelError: missing or corrupt model; the message names the fixing command.
    """
    from dora_voice.llm_backends import LlamaCppBackend, MlxBackend
    from dora_voice.models import ModelError, resolve_llm

    name = default_backend_name() if config.backend == "auto" else config.backend
    if name == "mlx":
        from pathlib import Path

        if config.model_path:
            path = Path(config.model_path).expanduser()
            if not path.is_dir():
                raise ModelError(f"LLM_MODEL_PATH={path}: no such folder; LLM_BACKEND=mlx loads an MLX model folder "
                                 "(config.json, *.safetensors, tokenizer)")
        else:
            from dora_voice.mlx_models import ensure_mlx_model

            path = ensure_mlx_model(config.model, build=False)
        if config.ignore_eos:
            raise ModelError("LLM_IGNORE_EOS=true needs LLM_BACKEND=llama_cpp")
        logger.info("loading %s with mlx-lm", path)
        return MlxBackend(path, temperature=config.temperature, repeat_penalty=config.repeat_penalty)
    path = resolve_llm(config.model_path or None, config.model)
    logger.info("loading %s with llama.cpp (%d threads, %d for prompts evaluated ahead, context %d)", path.name,
                config.threads, config.prefill_threads, config.context_tokens)
    return LlamaCppBackend(path, threads=config.threads, context_tokens=config.context_tokens,
                           temperature=config.temperature, seed=config.seed, repeat_penalty=config.repeat_penalty,
                           ignore_eos=config.ignore_eos, prefill_threads=config.prefill_threads)


def main(argv: list[str] | None = None) -> None:
    """Run the LLM node inside a dora dataflow."""
    from dora import Node

    from dora_voice.models import ModelError
    from dora_voice.nodes import fatal, node_cli
    from dora_voice.runtime import declared_inputs, run_node

    config, _ = node_cli(CONTRACT, __doc__, argv)
    try:
        backend = load_backend(config)
    except ModelError as exc:
        fatal(CONTRACT.path, str(exc))
    try:
        LlmCore(config, backend)  # settings that do not fit the context window fail here, before dora starts
    except ConfigError as exc:
        fatal(CONTRACT.path, str(exc))
    started = time.perf_counter()
    backend.warmup(ConversationHistory(config.system_prompt, HistoryStrategy.FIXED).messages("Hello."))
    logger.info("LLM warm-up (system prompt cached) took %.0f ms", (time.perf_counter() - started) * 1000)
    node = Node()
    wired = declared_inputs(node)
    if config.pacing != "off" and wired is not None and "segment_done" not in wired:
        logger.info("LLM_PACING=%s but no segment_done input is wired: generating without pacing", config.pacing)
        config = dataclasses.replace(config, pacing="off")
    run_node(node, LlmCore(config, backend))

if __name__ == "__main__":
    main()
