"""LLM core with a scripted backend: chunking, batch mode, history, pacing, barge-in, bad input."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dora_voice.config import ConfigError, load_config
from dora_voice.history import ConversationHistory, HistoryStrategy
from dora_voice.nodes.llm import PACING_POLL_S, ChunkPacer, LlmConfig, LlmCore
from dora_voice.schema import (
    PlaybackEvent, PlaybackKind, SegmentDone, TimingKind, Transcript, Verdict,
)

from fakes import ScriptedBackend, run_all, segments, timings, verdicts

REPLY = ["Sure", ",", " the", " answer", " is", " 3", ".", "14", ".", " That", " is", " pi", " to", " two",
         " places", ".", " Mr", ".", " Smith", " agrees", " with", " it"]


def make(env: dict | None = None, tokens=REPLY, clock=None, sleep=None) -> tuple[LlmCore, ScriptedBackend]:
    backend = ScriptedBackend(tokens)
    kwargs = {"clock_ns": clock} if clock else {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    env = {"LLM_PACING": "off", **(env or {})}  # pacing is tested on its own below
    return LlmCore(load_config(LlmConfig, env), backend, **kwargs), backend


def ask(core: LlmCore, text: str, turn_id: int) -> list:
    return core.handle("text", *Transcript(text, "s", turn_id, 0, 1, "text").encode())


def test_streaming_chunks_cover_the_reply_in_order() -> None:
    core, _ = make({"LLM_CHUNK_MIN_CHARS": "10"})
    out = ask(core, "What is pi?", 0) + run_all(core)
    segs = segments(out)
    assert [s.segment_index for s in segs] == list(range(len(segs)))
    assert segs[0].text == "Sure,"  # the first chunk is short: cut at the first clause boundary
    assert "3.14." in segs[1].text  # never split inside the decimal
    assert [s.is_final for s in segs] == [False] * (len(segs) - 1) + [True]
    assert segs[-1].segments_total == len([s for s in segs if s.text])
    assert " ".join(s.text for s in segs).split() == "".join(REPLY).split()
    assert all(s.is_streaming for s in segs)
    kinds = [t.kind for t in timings(out)]
    assert kinds[:2] == [TimingKind.LLM_START, TimingKind.LLM_FIRST_TOKEN]
    assert kinds[-1] is TimingKind.LLM_DONE
    assert kinds.count(TimingKind.LLM_CHUNK) == segs[-1].segments_total


def test_first_chunk_cut_by_token_count() -> None:
    core, _ = make({"LLM_FIRST_CHUNK_MAX_TOKENS": "3"}, tokens=["Once", " upon", " a", " time", " there", "."])
    segs = segments(ask(core, "story", 0) + run_all(core))
    assert segs[0].text == "Once upon"  # cut at the last whole word after 3 tokens
    assert segs[0].tokens == 3


def test_first_chunk_arrives_before_the_last_token() -> None:
    core, _ = make()
    ask(core, "q", 0)
    seen_tokens = 0
    first_chunk_at = None
    while core.busy():
        step = core.step()
        seen_tokens += 1
        if first_chunk_at is None and segments(step):
            first_chunk_at = seen_tokens
    assert first_chunk_at is not None and first_chunk_at < len(REPLY)


def test_batch_mode_sends_one_chunk_with_the_whole_reply() -> None:
    core, _ = make({"LLM_ENABLE_STREAMING": "false"})
    segs = segments(ask(core, "q", 0) + run_all(core))
    assert len(segs) == 1
    assert segs[0].is_final and not segs[0].is_streaming and segs[0].segments_total == 1
    assert segs[0].text.split() == "".join(REPLY).split()


def test_reply_ending_on_a_cut_sends_an_empty_final_marker() -> None:
    core, _ = make({"LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0"}, tokens=["Hi", ".", " Bye", ".", " "])
    segs = segments(ask(core, "q", 0) + run_all(core))
    assert [s.text for s in segs] == ["Hi.", "Bye.", ""] or [s.text for s in segs] == ["Hi.", "Bye."]
    assert segs[-1].is_final and segs[-1].segments_total == 2


def test_history_is_kept_across_turns_and_queued_turns_wait() -> None:
    core, backend = make(tokens=["Fine", "."])
    out = ask(core, "first", 0) + ask(core, "second", 1)
    out += run_all(core)
    assert [m["content"] for m in backend.prompts[1][1:]] == ["first", "Fine.", "second"]
    assert [s.turn_id for s in segments(out) if s.is_final] == [0, 1]


def test_pacing_waits_for_tts_feedback(clock) -> None:
    core, _ = make({"LLM_PACING": "tts", "LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0"}, tokens=["Yes", ".", " No", ".", " Maybe", "."],
                   clock=clock)
    out = ask(core, "q", 0)
    for _ in range(3):
        out += core.step()
    assert [s.text for s in segments(out)] == ["Yes."]
    before = len(out)
    core.step()  # waiting: no token is generated
    assert core.current.waiting_for == 0
    core.handle("segment_done", *SegmentDone("s", 0, 0, 1).encode())
    assert core.current.waiting_for is None
    out += core.step() + core.step() + core.step()
    assert [s.text for s in segments(out)] == ["Yes.", "No."]
    assert len(out) > before


def test_pacing_gives_up_after_the_timeout(clock) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    core, _ = make({"LLM_PACING": "tts", "LLM_PACING_TIMEOUT_S": "0.5", "LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0"},
                   tokens=["Yes", ".", " No", "."], clock=clock, sleep=sleep)
    ask(core, "q", 0)
    for _ in range(3):
        core.step()
    assert core.current.waiting_for == 0 and slept == []
    steps = 0
    while core.current.waiting_for is not None:  # each waiting step sleeps one poll on the injected clock
        core.step()
        steps += 1
    # the last step found the time-out passed and generated on
    assert slept == [PACING_POLL_S] * (steps - 1) and 0.5 - 1e-9 <= sum(slept) < 0.5 + 2 * PACING_POLL_S


def test_barge_in_stops_generation_and_history_keeps_what_was_heard() -> None:
    core, backend = make({"LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0"}, tokens=["One", " two", ".", " Three", " four", ".", " Five"])
    out = ask(core, "count", 0)
    for _ in range(4):
        out += core.step()
    assert [s.text for s in segments(out)] == ["One two."]
    core.handle("playback", *PlaybackEvent(PlaybackKind.SEGMENT_PLAYED, "s", 0, 0, 0, 1.0, 1).encode())
    out = core.handle("playback", *PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s", 0, 1, 1, 0.0, 2).encode())
    segs = segments(out)
    assert segs[-1].is_final and segs[-1].text == "" and segs[-1].segments_total == 1
    assert backend.closed == 1 and not core.busy()
    done = [t for t in timings(out) if t.kind is TimingKind.LLM_DONE][0]
    assert done.fields["interrupted"] is True
    ask(core, "next", 1)
    core.step()
    assert backend.prompts[1][2]["content"] == "One two."


def test_barge_in_after_generation_trims_history_to_the_heard_part() -> None:
    core, backend = make({"LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0"}, tokens=["One", " two", ".", " Three", " four", " five", "."])
    ask(core, "count", 0)
    run_all(core)
    core.handle("playback", *PlaybackEvent(PlaybackKind.SEGMENT_PLAYED, "s", 0, 0, 0, 1.0, 1).encode())
    core.handle("playback", *PlaybackEvent(PlaybackKind.SEGMENT_INTERRUPTED, "s", 0, 1, 1, 0.5, 2).encode())
    core.handle("playback", *PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s", 0, 1, 1, 0.5, 2).encode())
    ask(core, "next", 1)
    core.step()
    assert backend.prompts[1][2]["content"] == "One two. Three"  # no marker: the model would imitate it


def test_a_reply_heard_not_at_all_leaves_no_assistant_message_and_its_question_opens_the_next() -> None:
    core, backend = make({"LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0"},
                         tokens=["Paris", " is", " the", " capital", "."])
    ask(core, "What is the capital of France?", 0)
    run_all(core)
    core.handle("playback", *PlaybackEvent(PlaybackKind.SEGMENT_INTERRUPTED, "s", 0, 0, 0, 0.0, 1).encode())
    core.handle("playback", *PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s", 0, 0, 0, 0.0, 1).encode())
    ask(core, "And of Germany?", 1)
    core.step()
    prompt = backend.prompts[1]
    assert [m["role"] for m in prompt] == ["system", "user"]  # no "..." reply for the model to imitate
    assert prompt[1]["content"] == "What is the capital of France?\nAnd of Germany?"
    run_all(core)
    core.handle("playback", *PlaybackEvent(PlaybackKind.SEGMENT_PLAYED, "s", 1, 0, 0, 1.0, 1).encode())
    ask(core, "Thanks.", 2)
    core.step()
    prompt = backend.prompts[2]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]  # roles alternate
    assert prompt[1]["content"] == "What is the capital of France?\nAnd of Germany?"
    assert prompt[2]["content"] == "Paris is the capital." and prompt[3]["content"] == "Thanks."


@pytest.mark.parametrize("input_id,value,meta", [
    ("text", pa.array([""]), {"turn_id": 0}),
    ("text", pa.array(["x" * 30000]), {"turn_id": 0}),
    ("text", pa.array(["hello"]), {}),
    ("text", pa.array([1.0], type=pa.float32()), {"turn_id": 0}),
    ("bogus", pa.array(["hello"]), {"turn_id": 0}),
])
def test_bad_input_is_rejected_and_the_core_keeps_working(input_id, value, meta) -> None:
    core, _ = make(tokens=["Ok", "."])
    out = core.handle(input_id, value, meta)
    assert core.input_errors == 1
    assert [t.kind for t in timings(out)] == [TimingKind.INPUT_ERROR]
    assert segments(ask(core, "fine", 0) + run_all(core))[-1].is_final


def test_config_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="LLM_ENABLE_STREAMING"):
        load_config(LlmConfig, {"LLM_ENABLE_STREAMING": "maybe"})
    with pytest.raises(ConfigError, match="LLM_CHUNK_MIN_CHARS"):
        load_config(LlmConfig, {"LLM_CHUNK_MIN_CHARS": "300", "LLM_CHUNK_MAX_CHARS": "100"})
    with pytest.raises(ConfigError, match="HISTORY_STRATEGY"):
        load_config(LlmConfig, {"HISTORY_STRATEGY": "forever"})


@pytest.mark.parametrize("strategy,expected_lengths", [
    (HistoryStrategy.FIXED, [1, 2, 3, 4, 4, 4, 4, 4]),
    (HistoryStrategy.SLIDING, [1, 2, 3, 4, 2, 3, 4, 2]),
])
def test_history_strategies(strategy, expected_lengths) -> None:
    history = ConversationHistory("sys", strategy, max_turns=4)
    lengths = []
    for turn in range(8):
        history.add(turn, f"u{turn}", f"a{turn}")
        lengths.append(len(history.exchanges))
    assert lengths == expected_lengths
    assert history.exchanges[-1].turn_id == 7


def test_token_budget_history_stays_under_budget() -> None:
    history = ConversationHistory("sys", HistoryStrategy.TOKEN_BUDGET, max_tokens=100, count_tokens=lambda t: 10)
    for turn in range(20):
        history.add(turn, "u", "a")
        assert history._tokens() <= 100
    assert history.exchanges[-1].turn_id == 19


def test_zero_history_turns_means_no_memory() -> None:
    history = ConversationHistory("sys", HistoryStrategy.SLIDING, max_turns=0)
    history.add(0, "u", "a")
    assert history.messages("next") == [{"role": "system", "content": "sys"}, {"role": "user", "content": "next"}]


def test_a_trimmed_history_is_prefilled_after_the_turn_not_before_the_next() -> None:
    core, backend = make({"HISTORY_STRATEGY": "sliding", "LLM_HISTORY_TURNS": "2"}, tokens=["Ok", "."])
    for turn in range(3):
        ask(core, f"q{turn}", turn)
        run_all(core)
    # Turn 2 overflowed the window of 2: the kept history (turn 2 only) was evaluated right after it.
    assert len(backend.warmups) == 1
    assert [m["content"] for m in backend.warmups[0][1:3]] == ["q2", "Ok."]
    assert not core.busy()
    ask(core, "q3", 3)
    run_all(core)
    assert backend.prompts[-1][1:3] == backend.warmups[0][1:3]  # the next prompt starts with the prefilled prefix


def test_playback_bookkeeping_is_dropped_when_the_turn_is_done() -> None:
    core, _ = make(tokens=["Ok", "."])
    for turn in range(3):
        ask(core, f"q{turn}", turn)
        run_all(core)
        core.handle("playback", *PlaybackEvent(PlaybackKind.SEGMENT_PLAYED, "s", turn, 0, 0, 1.0, 1).encode())
        core.handle("playback", *PlaybackEvent(PlaybackKind.TURN_DONE, "s", turn, -1, -1, 1.0, 2).encode())
    assert core.texts == {} and core.heard == {} and core.interrupted_turns == set()


# -- replies that fit speech: the repetition guard and the caps ----------------------------------------------------

class LoopingBackend(ScriptedBackend):
    """A backend stuck in a loop: an opening, then the same sentence again and again until ``max_tokens``."""

    def __init__(self, opening: list[str], loop: list[str]) -> None:
        super().__init__(opening)
        self.loop = loop
        self.yielded = 0

    def stream(self, messages, max_tokens):
        self.prompts.append(messages)
        try:
            for i in range(max_tokens):
                token = self.tokens[i] if i < len(self.tokens) else self.loop[(i - len(self.tokens)) % len(self.loop)]
                self.yielded += 1
                yield token
        finally:
            self.closed += 1


OPENING = ["Check", " the", " cable", " first", "."]
LOOP_TOKENS = [" If", " it", "'s", " still", " not", " charging", ",", " try", " to", " use", " a", " power", " bank",
               "."]


def reply_text(out: list) -> str:
    return " ".join(s.text for s in segments(out) if s.text)


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_a_looping_reply_ends_before_the_repeat_and_stops_generation(streaming: str) -> None:
    backend = LoopingBackend(OPENING, LOOP_TOKENS)
    core = LlmCore(load_config(LlmConfig, {"LLM_PACING": "off", "LLM_ENABLE_STREAMING": streaming,
                                           "LLM_MAX_WORDS": "0", "LLM_MAX_TOKENS": "400"}), backend)
    out = ask(core, "My phone does not charge.", 0) + run_all(core)
    assert reply_text(out) == "Check the cable first. If it's still not charging, try to use a power bank."
    segs = segments(out)
    assert segs[-1].is_final and sum(s.is_final for s in segs) == 1
    assert backend.closed == 1 and backend.yielded < 2 * len(OPENING + LOOP_TOKENS) + 2  # stopped, not at 400
    done = [t for t in timings(out) if t.kind is TimingKind.LLM_DONE][0]
    assert done.fields["detail"] == "repetition"
    assert done.fields["text"] == reply_text(out)
    assert core.history.exchanges[-1].assistant == reply_text(out)  # the history keeps what was said, not the loop


def test_without_the_guard_the_same_loop_runs_to_max_tokens() -> None:
    backend = LoopingBackend(OPENING, LOOP_TOKENS)
    core = LlmCore(load_config(LlmConfig, {"LLM_PACING": "off", "LLM_REPETITION_GUARD": "false",
                                           "LLM_MAX_WORDS": "0", "LLM_MAX_TOKENS": "100"}), backend)
    out = ask(core, "My phone does not charge.", 0) + run_all(core)
    assert backend.yielded == 100
    assert reply_text(out).count("power bank") >= 6


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_word_cap_finishes_the_sentence_in_progress(streaming: str) -> None:
    tokens = ["Zero", "."] + [f" w{i}{j}" + ("." if j == 5 else "") for i in range(10) for j in range(6)]
    core, backend = make({"LLM_MAX_WORDS": "10", "LLM_ENABLE_STREAMING": streaming}, tokens=tokens)
    out = ask(core, "Count.", 0) + run_all(core)
    text = reply_text(out)
    # 10 words are reached inside the second six-word sentence; that sentence is finished, the next is not begun
    assert text == "Zero. w00 w01 w02 w03 w04 w05. w10 w11 w12 w13 w14 w15."
    assert backend.closed == 1
    done = [t for t in timings(out) if t.kind is TimingKind.LLM_DONE][0]
    assert done.fields["detail"] == "word_cap"


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_max_tokens_drops_the_unfinished_sentence(streaming: str) -> None:
    tokens = ["The", " capital", " is", " Canberra", ".", " It", " was", " chosen", " in", " 1908", " as", " a"]
    core, _ = make({"LLM_MAX_TOKENS": "11", "LLM_ENABLE_STREAMING": streaming, "LLM_MAX_WORDS": "0"},
                   tokens=tokens)
    out = ask(core, "Capital of Australia?", 0) + run_all(core)
    assert reply_text(out) == "The capital is Canberra."
    assert segments(out)[-1].is_final
    assert [t for t in timings(out) if t.kind is TimingKind.LLM_DONE][0].fields["detail"] == "max_tokens"


def test_max_tokens_keeps_a_reply_that_never_finished_a_sentence() -> None:
    tokens = ["The", " capital", " of", " Australia", " is", " Canberra", " which"]
    core, _ = make({"LLM_MAX_TOKENS": "7", "LLM_MAX_WORDS": "0"}, tokens=tokens)
    out = ask(core, "Capital of Australia?", 0) + run_all(core)
    assert reply_text(out) == "The capital of Australia is Canberra which"  # better than silence


def test_a_reply_that_ends_by_itself_is_untouched() -> None:
    core, _ = make({"LLM_CHUNK_MIN_CHARS": "10"})
    out = ask(core, "What is pi?", 0) + run_all(core)
    assert reply_text(out).split() == "".join(REPLY).split()
    assert [t for t in timings(out) if t.kind is TimingKind.LLM_DONE][0].fields["detail"] == ""


def test_chunk_pacer_budget_follows_queued_audio_and_measured_speed() -> None:
    pacer = ChunkPacer(margin_s=0.3)
    pacer.generated(0.04)
    pacer.synthesized(tokens=10, synth_s=0.6)  # 60 ms per token: 100 ms per token in all
    assert pacer.budget(1.3) == 10  # (1.3 - 0.3) s / 0.1 s
    assert pacer.budget(0.1) == ChunkPacer.MIN_TOKENS  # already late: a short chunk, not a one-word one
    assert pacer.budget(100.0) is None  # plenty queued: no limit
    pacer.synthesized(tokens=10, synth_s=1.6)  # synthesis got slower: the budget shrinks
    assert pacer.budget(1.3) < 10


ADAPTIVE = {"LLM_PACING": "adaptive", "LLM_CHUNK_MIN_CHARS": "0", "LLM_FIRST_CHUNK_MIN_CHARS": "0",
            "LLM_PACING_MARGIN_MS": "300"}
LONG = ["Yes", ".", " The", " river", ",", " wide", " and", " slow", ",", " runs", " past", " the", " old", " mill",
        " and", " on", " to", " the", " sea", "."]


def adaptive_second_chunk(clock, audio_ms: float) -> list[str]:
    """The chunks after the first one was synthesized into ``audio_ms`` of audio, tokens at 40 ms each."""

    def stepping_backend_tokens():
        for token in LONG:
            clock.advance(0.04)
            yield token

    core, backend = make(ADAPTIVE, clock=clock)
    backend.stream = lambda messages, max_tokens: stepping_backend_tokens()
    out = ask(core, "q", 0)
    while core.current.waiting_for is None:
        out += core.step()
    assert [s.text for s in segments(out)] == ["Yes."]
    core.handle("segment_done", *SegmentDone("s", 0, 0, clock(), audio_ms=audio_ms, synth_ms=16.0).encode())
    while core.current is not None and core.current.waiting_for in (None, 0):
        out += core.step()
    return [s.text for s in segments(out)]


def test_adaptive_pacing_cuts_the_next_chunk_to_what_the_queued_audio_covers(clock) -> None:
    # 0.784 s queued (0.8 s of audio whose synthesis began 16 ms ago), 0.3 s margin, 40 ms generation + 8 ms
    # synthesis per token (16 ms for the 2 tokens of "Yes."): 10 tokens at most, cut at the last clause within them.
    short = adaptive_second_chunk(clock, audio_ms=800.0)
    assert short[:2] == ["Yes.", "The river, wide and slow,"]
    # With a long answer already queued the sentence goes whole.
    long = adaptive_second_chunk(clock, audio_ms=30_000.0)
    assert long[:2] == ["Yes.", "The river, wide and slow, runs past the old mill and on to the sea."]


def test_tts_pacing_never_limits_the_chunk(clock) -> None:
    core, _ = make({**ADAPTIVE, "LLM_PACING": "tts"}, tokens=LONG, clock=clock)
    out = ask(core, "q", 0)
    while core.current.waiting_for is None:
        out += core.step()
    core.handle("segment_done", *SegmentDone("s", 0, 0, clock(), audio_ms=100.0, synth_ms=80.0).encode())
    while core.current is not None and core.current.waiting_for in (None, 0):
        out += core.step()
    assert [s.text for s in segments(out)][1] == "The river, wide and slow, runs past the old mill and on to the sea."


def test_history_keeps_a_reply_with_line_breaks_as_generated_so_the_next_prompt_reuses_the_cache() -> None:
    tokens = ["Here", ":", "\n", "1", ".", " Asia", "\n", "2", ".", " Africa", "\n"]
    core, backend = make(tokens=tokens)
    ask(core, "List two continents.", 0)
    run_all(core)
    ask(core, "And a third?", 1)
    run_all(core)
    assistant = [m["content"] for m in backend.prompts[1] if m["role"] == "assistant"]
    # The generated text itself (ends trimmed), not its words re-joined by spaces: the prompt's prefix then matches
    # the tokens llama.cpp already holds.
    assert assistant == ["".join(tokens).strip()]


def test_a_reply_cut_by_the_word_cap_is_kept_as_generated_up_to_the_cut() -> None:
    tokens = ["Step", " one", ":", "\n", "mix", " it", ".", "\n", "Step", " two", ":", "\n", "bake", " it", "."]
    core, backend = make({"LLM_MAX_WORDS": "4", "LLM_CHUNK_MIN_CHARS": "0"}, tokens=tokens)
    ask(core, "How?", 0)
    out = run_all(core)
    sent = " ".join(s.text for s in segments(out) if s.text)
    assert "two" not in sent  # the cap ended the reply after the sentence in progress
    ask(core, "Then?", 1)
    run_all(core)
    (assistant,) = [m["content"] for m in backend.prompts[1] if m["role"] == "assistant"]
    # What was sent, with the generated line breaks (the cache holds those tokens), not re-joined by spaces.
    assert assistant == "Step one:\nmix it." and " ".join(assistant.split()) == sent


CODE_ANSWER = ["Here", " is", " a", " function", " that", " checks", " it", ":", "\n\n", "```", "python", "\n", "def",
               " is_prime", "(n", "):", "\n", "    return", " n", " >", " 1", "\n", "```", "\n\n", "It", " checks",
               " n", "."]


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_a_reply_ends_where_a_code_block_opens(streaming: str) -> None:
    """The code would not be spoken; generating it would leave the listener in silence."""
    core, backend = make({"LLM_ENABLE_STREAMING": streaming}, tokens=CODE_ANSWER)
    out = ask(core, "Write a function that tells if a number is prime.", 0) + run_all(core)
    text = reply_text(out)
    assert text.startswith("Here is a function that checks it:") and "```" in text  # the TTS says it was omitted
    assert "def" not in text and "It checks" not in text
    assert backend.closed == 1  # generation stopped at the fence
    done = [t for t in timings(out) if t.kind is TimingKind.LLM_DONE][0]
    assert done.fields["detail"] == "code_block" and done.fields["tokens"] == CODE_ANSWER.index("```") + 1
    assert core.history.exchanges[-1].assistant == "".join(CODE_ANSWER[:CODE_ANSWER.index("```") + 1]).strip()


def test_code_blocks_are_written_when_asked() -> None:
    core, backend = make({"LLM_CODE_BLOCKS": "generate"}, tokens=CODE_ANSWER)
    out = ask(core, "Write a function that tells if a number is prime.", 0) + run_all(core)
    assert "It checks n." in reply_text(out) and "def is_prime" in reply_text(out)


# -- speculation (TURN_SPECULATION=answer) ---------------------------------------------------------------------


def speculate(core: LlmCore, text: str, turn_id: int, *, withdrawn: bool = False) -> list:
    return core.handle("text", *Transcript(text, "s", turn_id, 0, 1, "voice", speculative=True,
                                           withdrawn=withdrawn).encode())


def confirm(core: LlmCore, text: str, turn_id: int) -> list:
    return core.handle("text", *Transcript(text, "s", turn_id, 0, 1, "voice").encode())


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        self.t += 1_000_000  # 1 ms per reading
        return self.t


def test_a_reply_begun_during_the_pause_sends_only_its_first_chunk_marked_speculative_until_confirmed() -> None:
    clock = Clock()
    core, backend = make({"LLM_CHUNK_MIN_CHARS": "10"}, clock=clock)
    ahead = speculate(core, "What is pi?", 0) + run_all(core)
    # The first chunk, for the TTS to synthesize and hold; no timing event, no later chunk before the confirmation.
    assert [(s.text, s.speculative, s.segment_index) for s in segments(ahead)] == [("Sure,", True, 0)]
    assert timings(ahead) == [] and verdicts(ahead) == [] and len(ahead) == 1
    assert len(backend.prompts) == 1 and backend.prompts[0][-1]["content"] == "What is pi?"
    assert not core.busy() and core.current is not None and core.current.chunks == ["Sure,"]  # paused at chunk 1
    assert core.history.exchanges == []
    confirmed_at = clock.t
    out = confirm(core, "What is pi?", 0)
    assert len(backend.prompts) == 1  # not generated again
    assert [(v.verdict, v.turn_id, v.text) for v in verdicts(out)] == [(Verdict.CONFIRMED, 0, "")]
    assert segments(out) == []  # the chunk is not sent again
    kinds = [t.kind for t in timings(out)]
    assert kinds[:3] == [TimingKind.LLM_START, TimingKind.LLM_FIRST_TOKEN, TimingKind.LLM_CHUNK]
    start = timings(out)[0]
    assert start.fields["speculation"] == "hit" and start.fields["duration_ms"] > 0
    # Stamped no earlier than the confirmation: the parts of voice-to-voice still add up.
    assert all(t.t_ns >= confirmed_at for t in timings(out))
    out += run_all(core)
    segs = segments(ahead + out)
    assert " ".join(s.text for s in segs).split() == "".join(REPLY).split() and segs[-1].is_final
    assert [s.segment_index for s in segs] == list(range(len(segs))) and not any(s.speculative for s in segs[1:])
    assert [e.turn_id for e in core.history.exchanges] == [0] and core.speculation_hits == 1


def test_a_withdrawn_speculation_is_dropped_counted_and_leaves_the_history_alone() -> None:
    core, backend = make()
    ask(core, "hello", 0)
    run_all(core)
    history = [(e.user, e.assistant) for e in core.history.exchanges]
    ahead = speculate(core, "What is", 1) + run_all(core)
    assert [s.speculative for s in segments(ahead)] == [True] and timings(ahead) == []
    out = speculate(core, "What is", 1, withdrawn=True)  # the user went on speaking
    assert [t.kind for t in timings(out)] == [TimingKind.SPECULATION_CANCELLED] and segments(out) == []
    assert [(v.verdict, v.turn_id) for v in verdicts(out)] == [(Verdict.CANCELLED, 1)]  # the TTS drops its audio
    assert core.current is None and not core.busy() and backend.closed == 2
    assert [(e.user, e.assistant) for e in core.history.exchanges] == history
    out = confirm(core, "What is pi?", 1) + run_all(core)  # the whole sentence, answered from scratch
    assert backend.prompts[-1][-1]["content"] == "What is pi?"
    start = timings(out)[0]
    assert start.kind is TimingKind.LLM_START and start.fields["speculation"] == "miss"
    assert [e.user for e in core.history.exchanges] == ["hello", "What is pi?"]
    assert core.speculation_cancelled == 1 and core.speculation_hits == 0


def test_a_confirmed_transcript_with_other_words_replaces_the_speculation() -> None:
    core, backend = make()
    speculate(core, "seven of", 0)
    run_all(core)
    out = confirm(core, "seven of clubs", 0) + run_all(core)
    kinds = [t.kind for t in timings(out)]
    assert kinds[0] is TimingKind.SPECULATION_CANCELLED and kinds[1] is TimingKind.LLM_START
    assert [v.verdict for v in verdicts(out)] == [Verdict.CANCELLED]
    assert not any(s.speculative for s in segments(out))
    assert [p[-1]["content"] for p in backend.prompts] == ["seven of", "seven of clubs"]
    assert [e.user for e in core.history.exchanges] == ["seven of clubs"]
    assert segments(out)[0].segment_index == 0 and segments(out)[-1].is_final


def test_a_speculative_reply_that_ends_before_the_confirmation_is_finished_on_it() -> None:
    core, _ = make(tokens=["Hi", "."])
    assert speculate(core, "hello", 0) + run_all(core) == []  # no chunk was cut before the end: nothing sent
    assert core.current is not None and core.current.ahead_done and core.history.exchanges == []
    out = confirm(core, "hello", 0)
    assert verdicts(out) == [] and not any(s.speculative for s in segments(out))
    assert [s.text for s in segments(out)] == ["Hi."] and segments(out)[-1].is_final
    assert timings(out)[-1].kind is TimingKind.LLM_DONE and core.current is None
    assert [e.assistant for e in core.history.exchanges] == ["Hi."]


def test_no_speculation_while_an_earlier_turn_is_generating_and_none_left_at_the_end() -> None:
    core, backend = make()
    ask(core, "first", 0)
    assert speculate(core, "second", 1) == [] and core.current.transcript.text == "first"  # busy: nothing begun
    run_all(core)
    speculate(core, "third", 2)
    run_all(core)
    out = list(core.on_end())  # the stream ended before the turn was confirmed
    assert [t.kind for t in timings(out)] == [TimingKind.SPECULATION_CANCELLED] and segments(out) == []
    assert core.current is None and not core.busy()
    assert [e.user for e in core.history.exchanges] == ["first"]


# -- partial transcripts (TURN_PARTIAL_MS) ---------------------------------------------------------------------


class PrefillingBackend(ScriptedBackend):
    """A scripted backend that evaluates prompts ahead in pieces (like llama.cpp's), recording what it evaluated."""

    def __init__(self, tokens: list[str], pieces: int = 3) -> None:
        super().__init__(tokens)
        self.pieces = pieces
        self.prefilled: list[list[dict]] = []
        self.pieces_done = 0

    def prefill(self, messages, open_end: bool = False):
        assert open_end  # a partial transcript's prompt stops at the end of its text
        self.prefilled.append(messages)
        for piece in range(self.pieces):
            self.pieces_done += 1
            yield piece + 1


def partial(core: LlmCore, text: str, turn_id: int) -> list:
    return core.handle("text", *Transcript(text, "s", turn_id, 0, 1, "voice", partial=True).encode())


def make_prefilling(**kwargs) -> tuple[LlmCore, PrefillingBackend]:
    backend = PrefillingBackend(["Ok", "."], **kwargs)
    return LlmCore(load_config(LlmConfig, {"LLM_PACING": "off"}), backend), backend


def test_a_partial_transcript_evaluates_the_prompt_ahead_and_the_turn_reports_it() -> None:
    core, backend = make_prefilling()
    ask(core, "hello", 0)
    run_all(core)
    history = [(e.user, e.assistant) for e in core.history.exchanges]
    assert partial(core, "what is the capital", 1) == []  # nothing leaves the node
    assert core.busy()
    assert run_all(core) == [] and backend.pieces_done == 3
    (messages,) = backend.prefilled
    # The prompt the turn would get now: the history, then the words so far as the user's message.
    assert messages[:-1] == backend.prompts[0] + [{"role": "assistant", "content": "Ok."}]
    assert messages[-1] == {"role": "user", "content": "what is the"}  # its last word may still change
    assert [(e.user, e.assistant) for e in core.history.exchanges] == history  # unchanged
    out = confirm(core, "what is the capital of France?", 1) + run_all(core)
    start = timings(out)[0]
    assert start.kind is TimingKind.LLM_START and start.fields["prefilled_words"] == 3
    assert backend.prompts[-1][-1]["content"] == "what is the capital of France?"
    assert [e.user for e in core.history.exchanges] == ["hello", "what is the capital of France?"]


def test_the_turn_that_ends_first_stops_the_prefill_between_pieces() -> None:
    core, backend = make_prefilling(pieces=5)
    partial(core, "tell me a", 0)
    core.step()  # one piece evaluated
    out = confirm(core, "tell me a joke", 0)  # the turn ended: its prompt starts at once
    assert timings(out)[0].fields["prefilled_words"] == 2
    out += run_all(core)
    assert backend.pieces_done == 1  # the rest of the prefill was dropped
    assert [m[-1]["content"] for m in backend.prompts] == ["tell me a joke"] and segments(out)[-1].is_final


def test_a_newer_partial_restarts_the_prefill_with_more_words() -> None:
    core, backend = make_prefilling()
    assert partial(core, "tell", 0) == [] and not core.busy()  # one word, left out: nothing to evaluate
    partial(core, "tell me a", 0)
    core.step()
    partial(core, "tell me a story about dra", 0)
    run_all(core)
    assert [m[-1]["content"] for m in backend.prefilled] == ["tell me", "tell me a story about"]
    out = confirm(core, "tell me a story about dragons", 0)
    assert timings(out)[0].fields["prefilled_words"] == 5


def test_a_partial_is_ignored_while_a_reply_is_generated_or_without_a_prefilling_backend() -> None:
    core, backend = make_prefilling()
    ask(core, "hello", 0)
    core.step()  # replying to turn 0
    assert partial(core, "wait a mo", 1) == []
    run_all(core)
    assert backend.prefilled == []
    out = confirm(core, "wait a moment", 1) + run_all(core)
    assert timings(out)[0].fields["prefilled_words"] == 0
    plain, scripted = make()  # ScriptedBackend has no prefill: nothing is evaluated ahead, nothing breaks
    assert partial(plain, "what is pi", 0) == [] and not plain.busy()
    assert scripted.warmups == [] and scripted.prompts == []
    out = confirm(plain, "what is pi?", 0) + run_all(plain)
    assert segments(out)[-1].is_final and timings(out)[0].fields["prefilled_words"] == 0
