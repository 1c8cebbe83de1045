"""Fault classes of a long session (issue 10), one group per class, on the pure cores.

1. bounded LLM input (prompt and history against the context window) and runtime errors as turn errors;
2. turn ids checked against the session's sequence in every node that keeps per-turn state;
3. the TTS orders and deduplicates chunks by segment_index;
4. the monitor's per-event cost does not grow with the open turns, and its totals are capped;
7. dead peers: the LLM stops for a dead TTS or speaker, the speaker reports a dead TTS's turns at once, the report
   counts what was never delivered, and the WAV sink keeps what was heard without a clean close.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import monitor_scenarios as sc
from dora_voice import audio
from dora_voice.config import ConfigError, load_config
from dora_voice.nodes.llm import LlmConfig, LlmCore
from dora_voice.schema import (
    Key, Output, PlaybackEvent, PlaybackKind, SchemaError, TimingEvent, TimingKind, Transcript,
)
from dora_voice.sinks import FileSink
from dora_voice.turns import MAX_TURN_ID_STEP
from dora_voice_monitor import collector as collector_module
from dora_voice_monitor.collector import MAX_SEGMENTS_PER_TURN, TimingCollector, build_turn
from fakes import (
    FakeClock, ScriptedBackend, check_turn, chunk, dc, drain, fragment, make_tts, run_all, segments, send, timings,
)
from fakes import SpeakerHarness as Harness

BIG = 10 ** 12


# -- 1. bounded LLM input ---------------------------------------------------------------------------------------


class ContextBackend(ScriptedBackend):
    """Fails like llama.cpp when the prompt and the reply do not fit ``n_ctx`` (one token per word here)."""

    def __init__(self, tokens: list[str], n_ctx: int) -> None:
        super().__init__(tokens)
        self.n_ctx = n_ctx

    def stream(self, messages, max_tokens):
        needed = sum(self.count_tokens(m["content"]) + 8 for m in messages) + max_tokens
        if needed > self.n_ctx:
            raise ValueError(f"Requested tokens ({needed}) exceed context window of {self.n_ctx}")
        yield from super().stream(messages, max_tokens)


def llm(env: dict[str, str], backend: ScriptedBackend) -> LlmCore:
    return LlmCore(load_config(LlmConfig, {"LLM_PACING": "off", **env}), backend)


def ask(core: LlmCore, text: str, turn_id: int) -> list:
    return core.handle("text", *Transcript(text, "s", turn_id, 0, 1, "text").encode())


def test_an_utterance_longer_than_the_context_window_is_shortened_to_its_end() -> None:
    backend = ContextBackend(["Sure", "."], n_ctx=512)
    core = llm({"LLM_CONTEXT_TOKENS": "512", "LLM_MAX_TOKENS": "64"}, backend)
    words = [f"w{i}" for i in range(3000)]  # 19,000 characters, under the 20,000 cap
    out = ask(core, " ".join(words) + " so what is the answer", 0) + run_all(core)
    assert core.input_errors == 0 and [s.text for s in segments(out) if s.text] == ["Sure."]
    prompt = backend.prompts[0][-1]["content"]
    assert prompt.startswith("... ") and prompt.endswith("so what is the answer")
    assert sum(backend.count_tokens(m["content"]) + 8 for m in backend.prompts[0]) + 64 <= 512


def test_history_is_bounded_by_tokens_keeping_the_system_prompt_and_the_newest_turn() -> None:
    backend = ContextBackend(["Fine", "."], n_ctx=1024)
    core = llm({"LLM_CONTEXT_TOKENS": "1024", "LLM_MAX_TOKENS": "64", "HISTORY_STRATEGY": "sliding"}, backend)
    long_turn = " ".join(["word"] * 550)
    out = []
    for turn in range(3):
        out += ask(core, f"question {turn} {long_turn}", turn) + run_all(core)
    assert core.input_errors == 0 and len([s for s in segments(out) if s.is_final]) == 3
    last = backend.prompts[-1]
    assert last[0]["role"] == "system" and last[-1]["content"].startswith("question 2")
    assert not any(m["content"].startswith("question 0") for m in last)  # the oldest exchange made room


class FailingBackend(ScriptedBackend):
    """Raises after ``fail_after`` tokens on the prompts listed in ``fail_on``."""

    def __init__(self, tokens, fail_on: set[str], fail_after: int) -> None:
        super().__init__(tokens)
        self.fail_on, self.fail_after = fail_on, fail_after

    def stream(self, messages, max_tokens):
        self.prompts.append(messages)
        for i, token in enumerate(self.tokens[:max_tokens]):
            if messages[-1]["content"] in self.fail_on and i == self.fail_after:
                raise RuntimeError("llama_decode returned -1")
            yield token


def test_a_runtime_error_is_that_turns_error_and_the_next_turn_is_served() -> None:
    tokens = ["One", " two", " three", ".", " Four", " five", " six", " seven", " eight", "."]
    backend = FailingBackend(tokens, {"bad"}, fail_after=6)
    core = llm({"LLM_CHUNK_MIN_CHARS": "5"}, backend)
    out = ask(core, "bad", 0) + run_all(core)
    texts = [s.text for s in segments(out)]
    assert texts == ["One two three.", ""]  # "Four five" was cut mid-sentence: never sent
    final = segments(out)[-1]
    assert final.is_final and final.turn_id == 0
    (error,) = [t for t in timings(out) if t.kind is TimingKind.INPUT_ERROR]
    assert error.turn_id == 0 and "llama_decode" in error.fields[Key.DETAIL]
    (done,) = [t for t in timings(out) if t.kind is TimingKind.LLM_DONE]
    assert done.fields[Key.INTERRUPTED] is False  # an error, not a barge-in: nothing counts as cancelled
    out = ask(core, "good", 1) + run_all(core)
    assert "".join(s.text for s in segments(out)).replace(" ", "") == "".join(tokens).replace(" ", "")
    assert [m["content"] for m in backend.prompts[-1][1:]] == ["good"]  # the failed turn is not in the history
    assert core.failed_turns == 1 and not core.busy()


def test_a_system_prompt_that_leaves_no_room_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="LLM_SYSTEM_PROMPT"):
        llm({"LLM_CONTEXT_TOKENS": "256", "LLM_MAX_TOKENS": "200", "LLM_SYSTEM_PROMPT": " ".join(["x"] * 60)},
            ScriptedBackend(["x"]))


# -- 2. turn ids against the session's sequence ------------------------------------------------------------------


def test_llm_rejects_impossible_and_repeated_turn_ids() -> None:
    core = llm({}, ScriptedBackend(["Fine", "."]))
    assert timings(ask(core, "hi", BIG))[0].kind is TimingKind.INPUT_ERROR
    ask(core, "hi", 0)
    run_all(core)
    assert timings(ask(core, "again", 0))[0].kind is TimingKind.INPUT_ERROR  # not newer
    bogus = PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s", BIG, -1, -1, 0.0, 1).encode()
    assert timings(core.handle("playback", *bogus))[0].kind is TimingKind.INPUT_ERROR
    out = ask(core, "next", 1 + MAX_TURN_ID_STEP // 2) + run_all(core)
    assert [s.text for s in segments(out) if s.text] == ["Fine."] and core.input_errors == 3


def test_one_bad_turn_interrupted_does_not_mute_the_tts(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    bogus = PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s1", BIG, -1, -1, 0.0, 0).encode()
    out = send(core, ("events", bogus), ("events", (chunk("x", 0)[0], {**chunk("x", 0)[1], Key.EVENT:
                                                                         "speech_started", Key.TURN_ID: BIG,
                                                                         Key.DETECTED_NS: 0})))
    assert core.input_errors == 2 and len(out.events(TimingKind.INPUT_ERROR)) == 2
    out = drain(core, send(core, ("text", chunk("Still speaking.", 0, turn=1, final=True))))
    check_turn(out)
    assert engine.texts == ["Still speaking."]


def test_one_bad_fragment_does_not_make_the_speaker_discard_later_turns(tmp_path) -> None:
    h = Harness(tmp_path)
    h.audio(fragment(BIG, 0, 0, dc(0.5, 0.1), final=True, total=1))
    assert h.core.input_errors == 1
    h.audio(fragment(0, 0, 0, dc(0.5, 0.1), final=True, total=1))
    h.end()
    (played,) = h.events(TimingKind.TURN_PLAYED)
    assert played.turn_id == 0 and played.fields[Key.COUNT] == 1 and h.core.fragments_discarded == 0


# -- 3. the TTS orders and deduplicates chunks ----------------------------------------------------------------------


def test_tts_speaks_chunks_in_segment_index_order_once(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    out = send(core, ("text", chunk("Third part.", 2, final=True)), ("text", chunk("Second part.", 1)))
    assert not core.busy()  # chunk 0 has not come: nothing is spoken out of order
    out.add(core.handle("text", *chunk("First part.", 0)))
    dup = core.handle("text", *chunk("Second part.", 1))
    assert [TimingEvent.decode(v, m).kind for _o, v, m in dup] == [TimingKind.INPUT_ERROR]
    drain(core, out)
    check_turn(out)
    assert engine.texts == ["First part.", "Second part.", "Third part."]
    assert [d.text_segment_index for d in out.done] == [0, 1, 2]


def test_tts_speaks_what_it_has_in_order_when_a_chunk_never_comes(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    out = send(core, ("text", chunk("Zero.", 0)), ("text", chunk("Two.", 2, final=True)))
    drain(core, out)
    out.add(core.on_input_closed("text"))
    out.add(list(core.on_end()))
    check_turn(out)
    assert engine.texts == ["Zero.", "Two."]


# -- 4. the monitor keeps up -------------------------------------------------------------------------------------


def test_monitor_work_per_event_does_not_grow_with_open_turns(monkeypatch) -> None:
    checked: list[int] = []
    original = collector_module._OpenTurn.missing

    def counting(self):
        checked.append(1)
        return original(self)

    monkeypatch.setattr(collector_module._OpenTurn, "missing", counting)
    collector = TimingCollector(clock_ns=FakeClock(0))
    for turn_id in range(3000):  # turns that never complete (llm_start only)
        collector.add(TimingEvent(TimingKind.LLM_START, "llm", "s", turn_id, turn_id))
    checked.clear()
    collector.add(TimingEvent(TimingKind.LLM_START, "llm", "s", 2999, 5))
    assert len(checked) <= 1
    assert len(collector.open_turns) <= collector_module.MAX_OPEN_TURNS


def test_monitor_caps_totals_and_impossible_turn_ids_and_reports_the_next_turn_complete() -> None:
    clock = FakeClock(0)
    collector = TimingCollector(clock_ns=clock)
    huge = TimingEvent(TimingKind.LLM_DONE, "llm", "s", 0, 1, {Key.SEGMENTS_TOTAL: 3_000_000})
    with pytest.raises(SchemaError, match=str(MAX_SEGMENTS_PER_TURN)):
        collector.add(huge)
    with pytest.raises(SchemaError, match="impossible"):
        collector.add(TimingEvent(TimingKind.LLM_START, "llm", "s", BIG, 1))
    reported = [t for e in sc.turn0() for t in collector.add(e)]
    assert [(t.turn_id, t.complete) for t in reported] == [(0, True)]


# -- 7. dead peers -------------------------------------------------------------------------------------------------


class EndlessBackend(ScriptedBackend):
    def stream(self, messages, max_tokens):
        self.prompts.append(messages)
        try:
            while True:
                yield " word."
        finally:
            self.closed += 1


@pytest.mark.parametrize("input_id", ["segment_done", "playback"])
def test_llm_stops_generating_for_a_dead_tts_or_speaker(input_id: str) -> None:
    backend = EndlessBackend([])
    core = llm({"LLM_MAX_TOKENS": "2000", "LLM_MAX_WORDS": "0", "LLM_REPETITION_GUARD": "false"}, backend)
    ask(core, "tell me a story", 0)
    ask(core, "and another", 1)
    for _ in range(20):
        core.step()
    out = list(core.on_input_closed(input_id))
    assert backend.closed == 1 and core.finished() and not core.busy()
    (done,) = [t for t in timings(out) if t.kind is TimingKind.LLM_DONE]
    assert done.fields[Key.INTERRUPTED] is False and "gone" in done.fields[Key.DETAIL]
    assert core.dropped_turns == 1 and len(backend.prompts) == 1


def test_llm_input_closing_after_the_text_is_normal() -> None:
    core = llm({}, ScriptedBackend(["Fine", "."]))
    ask(core, "hi", 0)
    run_all(core)
    core.on_input_closed("text")
    assert not list(core.on_input_closed("segment_done")) and core.dead_peer is None and core.finished()


def test_speaker_reports_a_dead_tts_turn_at_once(tmp_path) -> None:
    h = Harness(tmp_path)
    h.audio(fragment(0, 0, 0, dc(0.5, 0.2), last=True), fragment(0, 1, 0, dc(0.5, 0.2)))
    h.collect(h.core.on_input_closed(Output.AUDIO))
    h.run()
    (played,) = h.events(TimingKind.TURN_PLAYED)
    assert played.turn_id == 0 and played.fields[Key.COUNT] == 2  # what was heard is reported as heard


def test_report_counts_chunks_a_dead_tts_never_delivered() -> None:
    events = [e for e in sc.turn0() if e.node not in ("tts", "speaker")]
    turn = build_turn(0, events, complete=False)
    assert turn.segments == 3 and turn.segments_lost == 3 and not turn.interrupted


@pytest.mark.real_time
def test_wav_sink_writes_what_was_heard_without_a_clean_close(tmp_path) -> None:
    path = tmp_path / "heard.wav"
    sink = FileSink(path, 16_000)
    now = time.time_ns()
    sink.set_origin(now)
    sink.place(0, np.full(32_000, 0.25, np.float32), now)  # 2 s placed at once, heard in real time
    time.sleep(FileSink.COMMIT_LAG_S + 3 * FileSink.COMMIT_INTERVAL_S)
    written, rate = audio.read_wav_mono(path)  # the sink is still open: as after a kill -9
    heard = (time.time_ns() - now) * 16_000 // 1_000_000_000
    assert rate == 16_000 and 0 < written.shape[0] <= heard
    assert written.shape[0] >= 16_000 * FileSink.COMMIT_INTERVAL_S
    np.testing.assert_allclose(written, 0.25, atol=1 / 32768)
    sink.close()
    assert audio.read_wav_mono(path)[0].shape[0] == 32_000


# -- 6. bad files -----------------------------------------------------------------------------------------------


def _mic_config(path):
    from dora_voice.nodes.mic import MicConfig

    return load_config(MicConfig, {"AUDIO_INPUT": str(path), "MIC_REALTIME": "false"})


def test_a_float_wav_beyond_full_scale_is_scaled_and_said(tmp_path, caplog) -> None:
    import soundfile as sf

    from recordings import load_clip
    from dora_voice.nodes.mic import load_file_replay

    speech = load_clip("goforward.wav")
    path = tmp_path / "loud.wav"
    sf.write(path, speech / np.max(np.abs(speech)) * 4.0, 16_000, subtype="FLOAT")
    replay = load_file_replay(_mic_config(path))
    assert float(np.max(np.abs(replay.samples))) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(replay.samples * 4.0, sf.read(path, dtype="float32")[0], atol=1e-5)
    assert "up to 4.00" in caplog.text and "scaled by 0.250" in caplog.text


def test_a_header_only_wav_is_an_error_that_names_it(tmp_path) -> None:
    from dora_voice.nodes.mic import load_file_replay

    path = tmp_path / "empty.wav"
    audio.write_wav(path, np.zeros(0, np.float32), 16_000)
    with pytest.raises(ValueError, match="no audio samples"):
        load_file_replay(_mic_config(path))


def test_a_truncated_wav_is_replayed_with_a_warning_naming_the_loss(tmp_path, caplog) -> None:
    from dora_voice.nodes.mic import load_file_replay

    whole = tmp_path / "whole.wav"
    audio.write_wav(whole, np.full(48_000, 0.1, np.float32), 16_000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 32_000])  # a third of the 96,000 data bytes
    assert audio.wav_truncation(whole) is None
    assert audio.wav_truncation(cut) == (96_000, 32_000)
    replay = load_file_replay(_mic_config(cut))
    assert replay.samples.shape[0] == 16_000
    assert "truncated" in caplog.text and "33 %" in caplog.text


def test_a_truncated_gguf_is_refused_before_llama_cpp_with_the_fix(tmp_path) -> None:
    from dora_voice.models import ModelError, check_gguf, resolve_llm

    model = resolve_llm(None, "smollm2-135m")
    assert check_gguf(model) == model
    cut = tmp_path / "cut.gguf"
    with open(model, "rb") as src:
        cut.write_bytes(src.read(model.stat().st_size // 3))
    with pytest.raises(ModelError, match=r"truncated: .* \(33 %\): .*prepare --force"):
        resolve_llm(str(cut), "smollm2-135m")


def test_an_unwritable_timing_report_is_one_line_at_start_up(tmp_path, monkeypatch, capsys) -> None:
    from dora_voice.nodes import EXIT_CANNOT_START
    from dora_voice_monitor import node as monitor_node

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TIMING_REPORT", str(blocker / "timing.jsonl"))
    with pytest.raises(SystemExit) as info:
        monitor_node.main([])
    assert info.value.code == EXIT_CANNOT_START
    message = capsys.readouterr().err
    assert message.startswith("dora-voice-monitor: cannot write") and "TIMING_REPORT" in message
    assert message.count("\n") == 1  # one line


# -- 5. ASR: bounded work, Whisper's own doubts ------------------------------------------------------------------


def test_asr_transcribes_only_the_last_part_of_an_overlong_utterance() -> None:
    from dora_voice.nodes.asr import AsrCore
    from dora_voice.schema import Utterance

    heard: list[int] = []
    core = AsrCore(lambda samples: heard.append(samples.shape[0]) or "go forward", max_utterance_s=30.0)
    ten_minutes = np.zeros(16_000 * 600, np.float32)
    ten_minutes[-16_000:] = 0.5  # the end is what survives
    out = core.handle("speech", *Utterance(ten_minutes, 16_000, "s", 0, 0, 1, 2).encode())
    assert heard == [16_000 * 30] and [o for o, _v, _m in out] == [Output.TEXT, Output.TIMING]


@pytest.mark.parametrize("segment, kept", [
    (dict(text="you", no_speech_prob=0.95, avg_logprob=-0.40, compression_ratio=0.27), False),  # silence
    (dict(text="go forward ten meters", no_speech_prob=0.03, avg_logprob=-0.24, compression_ratio=0.7), True),
    (dict(text="five five", no_speech_prob=0.53, avg_logprob=-0.70, compression_ratio=0.27), True),
    (dict(text="mumble", no_speech_prob=0.2, avg_logprob=-1.6, compression_ratio=0.9), False),
    (dict(text="you " * 40, no_speech_prob=0.1, avg_logprob=-0.3, compression_ratio=6.0), False),
])
def test_asr_drops_segments_whisper_marks_as_no_speech_or_doubtful(segment: dict, kept: bool) -> None:
    from dora_voice.nodes.asr import AsrConfig, WhisperSegment, keep_segment

    assert keep_segment(WhisperSegment(**segment), load_config(AsrConfig, {})) is kept


def test_real_whisper_hears_nothing_in_silence() -> None:
    from dora_voice.nodes.asr import AsrConfig, load_whisper

    transcribe = load_whisper(load_config(AsrConfig, {}))
    assert transcribe(np.zeros(16_000 * 30, np.float32)) == ""
    from recordings import load_clip

    assert "forward" in transcribe(load_clip("goforward.wav")).lower()


def test_the_first_cause_of_a_failed_start_is_found_among_the_later_tracebacks() -> None:
    from dora_voice_tools.launcher import first_failure

    log = "\n".join([
        "09:03:30 INFO   dora daemon: spawning nodes",
        "09:03:31 stdout monitor: waiting",
        "09:03:33 stderr llm: dora-voice-llm: /m/x.gguf is truncated: its tensors need 491,400,064 bytes, the file "
        "has 163,800,021 (33 %): copy or download it again",
        "09:03:34 stderr tts: Traceback (most recent call last):",
        "09:03:34 stderr tts:   File \"node.py\", line 3, in <module>",
        "09:03:34 stderr tts: RuntimeError: could not send output: the dataflow is stopping",
        "09:03:35 ERROR  speaker: exited with code 1",
    ])
    assert first_failure(log).startswith("llm: dora-voice-llm: /m/x.gguf is truncated")
    assert first_failure("09:00:00 stdout monitor: all fine") is None
    # dora 1.1 labels a node's stderr "stdout", and repeats it in its own ERROR block after the node exits.
    real = "\n".join([
        "09:59:00 INFO   vad: spawner spawning `/venv/bin/dora-voice-vad`",
        "09:59:01 stdout mic: dora-voice-mic: AUDIO_INPUT: cannot read audio file /q.wav: No 'data' chunk marker.",
        "\x1b[2m2026-11-28T09:59:02Z\x1b[0m \x1b[31mERROR\x1b[0m node_failure: node exited with error: ExitCode(2)",
        "09:59:02 stdout vad: 09:59:02.232 INFO dora_voice.models: end-of-turn model: /m/smart-turn.onnx",
        "09:59:02 WARN   asr: ValueError: not the cause",
    ])
    assert first_failure(real) == ("mic: dora-voice-mic: AUDIO_INPUT: cannot read audio file /q.wav: No 'data' chunk "
                                   "marker.")


def test_a_failed_run_shows_dora_s_last_lines_without_colours_or_backtrace() -> None:
    from dora_voice_tools.launcher import failure_excerpt

    log = "\n".join(["09:59:11 INFO   [dora]: daemon dataflow finished", "", "\x1b[31m[ERROR]\x1b[0m",
                     "Node `mic` failed: exited with code 2", "Location:", "    binaries/cli/src/common.rs:55:17",
                     "Stack backtrace:", "   0: eyre::capture", "      at /cargo/eyre/src/lib.rs:10:5",
                     "  30: _start", "dora-voice: the end"])
    excerpt = failure_excerpt(log, lines=5).splitlines()
    assert excerpt == ["[ERROR]", "Node `mic` failed: exited with code 2", "Location:",
                       "    binaries/cli/src/common.rs:55:17", "dora-voice: the end"]
