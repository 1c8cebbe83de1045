"""The monitor's collector, report and node core, driven with the scripted turns of ``monitor_scenarios``.

Expected figures are worked out by hand from the timestamps in ``monitor_scenarios`` (ms after its base).
"""

from __future__ import annotations

import dataclasses
import io
import json
import random

import monitor_scenarios as sc
import numpy as np
import pytest
import soundfile
from dora_voice.config import ConfigError, load_config
from dora_voice.schema import AudioFragment, Key, TimingEvent, TimingKind
from dora_voice_monitor import report
from dora_voice_monitor.collector import TimingCollector, TurnRecord, percentile, summarize
from dora_voice_monitor.node import CONTRACT, MonitorConfig, MonitorCore
from dora_voice_monitor.sinks import WavCollector
from fakes import FakeClock

REQUIRED_JSON_FIELDS = {
    "turn_id", "transcript", "reply", "asr_latency_ms", "llm_ttft_ms", "llm_first_chunk_ms", "tts_ttfb_ms",
    "first_audio_ms", "llm_start_to_first_audio_ms", "inter_token_ms", "tokens_per_s", "llm_total_ms", "audio_s",
    "wall_s", "rtf", "underruns", "underrun_ms", "segments", "segments_played", "segments_lost",
    "segments_cancelled", "interrupted", "barge_in_ms", "input_errors", "chunks",
}
REQUIRED_CHUNK_FIELDS = {"segment_index", "tokens", "llm_ttft_ms", "llm_gen_ms", "tts_ttfb_ms", "tts_gen_ms",
                         "audio_ms", "combined_ms", "text"}


def collect(events: list[TimingEvent]) -> dict[int, TurnRecord]:
    """Feed ``events`` in the given order, let the grace period run out, flush; turns by id."""
    clock = FakeClock(0)
    collector = TimingCollector(grace_s=2.0, clock_ns=clock)
    turns = []
    for event in events:
        turns += collector.add(event)
    clock.advance(5)
    turns += collector.poll() + collector.flush()
    assert len({t.turn_id for t in turns}) == len(turns), "a turn was reported twice"
    return {t.turn_id: t for t in turns}


ORDERS = ["in-order", "reversed", 0, 1, 2, 3, 4, 5, 6, 7]


def ordered(order) -> list[TimingEvent]:
    events = sc.all_turns()
    if order == "reversed":
        return events[::-1]
    if isinstance(order, int):
        random.Random(order).shuffle(events)
    return events


@pytest.fixture(params=ORDERS, ids=str)
def turns(request) -> dict[int, TurnRecord]:
    return collect(ordered(request.param))


def test_voice_turn_latencies(turns):
    t = turns[0]
    assert t.complete and t.source == "voice"
    assert t.transcript == "tell me a joke"
    assert t.reply == "Why did the unicorn cross the road? To get to the other side. Ha ha."
    assert t.asr_latency_ms == pytest.approx(800)  # 2300 - 1500
    assert t.eot_delay_ms == pytest.approx(500)  # 2000 - 1500
    assert t.llm_ttft_ms == pytest.approx(110)  # 2420 - 2310
    assert t.llm_first_chunk_ms == pytest.approx(290)  # 2600 - 2310
    assert t.tts_ttfb_ms == pytest.approx(300)  # 2905 - 2605
    assert t.first_audio_ms == pytest.approx(1450)  # 2950 - 1500
    assert t.llm_start_to_first_audio_ms == pytest.approx(640)  # 2950 - 2310
    assert (t.eot_rule, t.eot_probability) == ("model", pytest.approx(0.93))
    # Voice-to-voice in parts that add up: 500 + 300 + 120 + 180 + 305 + 45 = 1450.
    assert t.v2v_parts == {"v2v_eot_ms": pytest.approx(500), "v2v_asr_ms": pytest.approx(300),
                           "v2v_llm_ttft_ms": pytest.approx(120), "v2v_first_chunk_ms": pytest.approx(180),
                           "v2v_tts_ms": pytest.approx(305), "v2v_playback_ms": pytest.approx(45)}
    assert sum(t.v2v_parts.values()) == pytest.approx(t.first_audio_ms)
    assert t.llm_total_ms == pytest.approx(650)
    assert t.inter_token_ms == pytest.approx(540 / 17)  # (2960 - 2420) / (18 - 1)
    assert t.tokens_per_s == pytest.approx(17 / 0.540)
    assert t.audio_s == pytest.approx(4.3)
    assert t.wall_s == pytest.approx(4.95)  # 7260 - 2310
    assert t.rtf == pytest.approx((490 + 400 + 195) / 4300)
    assert (t.segments, t.tts_segments, t.segments_played, t.segments_cancelled, t.segments_lost) == (3, 3, 3, 0, 0)
    assert not t.interrupted and t.barge_in_ms is None
    assert (t.underruns, t.underrun_ms, t.input_errors) == (0, 0.0, 0)


def test_voice_turn_chunk_rows(turns):
    rows = [(c.number, c.tokens, c.llm_ttft_ms, c.llm_gen_ms, c.tts_ttfb_ms, c.tts_gen_ms, c.audio_ms, c.combined_ms)
            for c in turns[0].chunks]
    assert rows == [
        (1, 8, pytest.approx(110), 290.0, pytest.approx(300), 490.0, 2000.0, pytest.approx(595)),
        (2, 6, None, 200.0, pytest.approx(150), 400.0, 1500.0, pytest.approx(940)),
        (3, 4, None, 150.0, pytest.approx(95), 195.0, 800.0, pytest.approx(1290)),
    ]
    first = turns[0].chunks[0]
    assert first.text == "Why did the unicorn cross the road?"
    assert (first.play_end_ns - sc.BASE_NS) / 1e6 == pytest.approx(4950)
    assert (first.play_start_ns - sc.BASE_NS) / 1e6 == pytest.approx(2950)  # 4950 - 2000 ms of audio


def test_typed_interrupted_turn(turns):
    t = turns[1]
    assert t.complete and t.source == "text" and t.transcript == "and another"
    assert t.first_audio_ms is None and t.asr_latency_ms is None  # no speech: no voice-to-voice figure
    assert t.llm_start_to_first_audio_ms == pytest.approx(545)  # 10550 - 10005
    assert t.tts_ttfb_ms == pytest.approx(198)  # 10500 - 10302
    assert t.interrupted and t.barge_in_ms == 120.0
    assert (t.segments, t.tts_segments, t.segments_played, t.segments_cancelled, t.segments_lost) == (2, 2, 1, 1, 0)


def test_lost_segment_split_chunk_and_input_error(turns):
    t = turns[2]
    assert t.complete
    assert (t.segments, t.tts_segments, t.segments_played, t.segments_cancelled) == (2, 3, 2, 0)
    assert t.segments_lost == 1  # audio segment 2 was synthesized but neither played nor cancelled
    assert (t.underruns, t.underrun_ms) == (1, 35.0)
    assert t.input_errors == 1  # the tts error stamped at 21000 with turn id -1, inside this turn
    chunk0, chunk1 = t.chunks
    assert chunk0.tts_segments == 2 and chunk0.segments_played == 2
    assert chunk0.tts_gen_ms == 398.0 and chunk0.audio_ms == 2000.0  # 199 + 199, 900 + 1100
    assert chunk0.tts_ttfb_ms == pytest.approx(100)  # first of its segments: 20801 - 20701
    assert chunk0.combined_ms == pytest.approx(341)  # 20801 - 20460
    assert chunk1.tts_ttfb_ms == pytest.approx(49) and chunk1.segments_played == 0


def test_speech_without_transcript_is_not_a_turn():
    collector = TimingCollector(clock_ns=FakeClock(0))
    reported = [t for e in sc.all_turns() for t in collector.add(e)] + collector.flush()
    assert sorted(t.turn_id for t in reported) == [0, 1, 2]
    assert collector.unanswered_turns == [3]
    text = report.session_summary(summarize(reported, [], collector.unanswered_turns))
    assert "utterances without a transcript: 1 (turns 3)" in text


def test_interrupted_flag_without_barge_in_event():
    """A turn the TTS cancelled before it played (tts_done.interrupted): nothing unplayed counts as lost."""
    events = [e for e in sc.turn0() if e.node != "speaker"]
    events = [dataclasses.replace(e, fields={**e.fields, Key.INTERRUPTED: True}) if e.kind is TimingKind.TTS_DONE
              else e for e in events]
    events.append(TimingEvent(kind=TimingKind.TURN_PLAYED, node="speaker", session_id="", turn_id=0,
                              t_ns=sc.BASE_NS + 4_000_000_000, fields={Key.COUNT: 0, Key.INTERRUPTED: False}))
    (turn,) = collect(events).values()
    assert turn.complete and turn.interrupted and turn.barge_in_ms is None
    assert (turn.segments_played, turn.segments_cancelled, turn.segments_lost) == (0, 3, 0)


def test_fallbacks_when_vad_events_are_missing():
    """Attached mid-turn: speech end comes from asr_done, the transcript from llm_start."""
    events = [e for e in sc.turn0() if e.node != "vad"]
    events = [dataclasses.replace(e, fields={**e.fields, Key.SPEECH_END_NS: sc.BASE_NS + 1_500_000_000})
              if e.kind is TimingKind.ASR_DONE else e for e in events]
    (turn,) = collect(events).values()
    assert not turn.complete  # the VAD events never came
    assert turn.first_audio_ms == pytest.approx(1450) and turn.asr_latency_ms == pytest.approx(800)
    typed = [e for e in sc.turn1() if e.kind is not TimingKind.TEXT_INPUT]
    typed = [dataclasses.replace(e, fields={Key.TEXT: "and another"}) if e.kind is TimingKind.LLM_START else e
             for e in typed]
    assert collect(typed)[1].transcript == "and another"


def test_turn_reported_when_its_last_event_arrives_not_before():
    collector = TimingCollector(clock_ns=FakeClock(0))
    events = sc.turn0()
    for event in events[:-1]:
        assert collector.add(event) == []
    (turn,) = collector.add(events[-1])
    assert turn.turn_id == 0 and turn.complete


def test_turn_played_first_waits_for_the_other_nodes():
    """turn_played arriving before the LLM's and TTS's events does not close the turn."""
    events = sc.turn0()
    played = [e for e in events if e.node == "speaker"]
    others = [e for e in events if e.node != "speaker"]
    collector = TimingCollector(clock_ns=FakeClock(0))
    for event in played + others[:-1]:
        assert collector.add(event) == []
    assert [t.turn_id for t in collector.add(others[-1])] == [0]


def test_ambiguous_turn_waits_for_grace_then_reports():
    """Fewer segments played than synthesized and no barge-in: wait for the grace period."""
    clock = FakeClock(0)
    collector = TimingCollector(grace_s=2.0, clock_ns=clock)
    for event in sc.turn2():
        assert collector.add(event) == []
    clock.advance(1.9)
    assert collector.poll() == []
    clock.advance(0.2)
    (turn,) = collector.poll()
    assert turn.turn_id == 2 and turn.complete and turn.segments_lost == 1


def test_missing_event_reports_incomplete_turn_after_grace():
    clock = FakeClock(0)
    collector = TimingCollector(grace_s=2.0, clock_ns=clock)
    for event in sc.turn0():
        if event.kind is not TimingKind.TTS_DONE:
            assert collector.add(event) == []
    clock.advance(2.5)
    (turn,) = collector.poll()
    assert not turn.complete
    assert turn.first_audio_ms == pytest.approx(1450)  # what is known is still reported


def test_flush_reports_open_turns_as_incomplete():
    collector = TimingCollector(clock_ns=FakeClock(0))
    for event in sc.turn0()[:6]:
        collector.add(event)
    (turn,) = collector.flush()
    assert not turn.complete and turn.asr_latency_ms == pytest.approx(800) and turn.first_audio_ms is None
    assert collector.open_turns == []


def test_late_event_is_dropped_not_double_reported(caplog):
    collector = TimingCollector(clock_ns=FakeClock(0))
    reported = [t for e in sc.turn0() for t in collector.add(e)]
    assert len(reported) == 1
    assert collector.add(sc.turn0()[0]) == [] and collector.flush() == []
    assert "late timing event" in caplog.text


def test_summary_percentiles_and_totals(turns):
    summary = summarize(list(turns.values()), ["tts: boom"])
    ttft = next(m for m in summary.metrics if m.name == "llm_ttft_ms")
    assert (ttft.n, ttft.p50, ttft.p90) == (3, pytest.approx(100), pytest.approx(108))  # of 95, 100, 110
    assert ttft.mean == pytest.approx(305 / 3)
    v2v = next(m for m in summary.metrics if m.name == "first_audio_ms")
    assert (v2v.n, v2v.p50) == (2, pytest.approx(1135))  # typed turn excluded
    assert (summary.turns, summary.interrupted_turns, summary.incomplete_turns) == (3, 1, 0)
    assert (summary.segments, summary.tts_segments, summary.segments_played, summary.segments_cancelled,
            summary.segments_lost) == (7, 8, 6, 1, 1)
    assert summary.input_errors == ("tts: boom",)


def test_percentile_interpolates():
    assert percentile([5.0], 90) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([10.0, 0.0, 20.0], 90) == pytest.approx(18.0)


# --------------------------------------------------------------------------------------------------------------
# Report


def test_report_renders_the_numbers(turns):
    t0 = turns[0]
    row = report.live_row(t0)
    for number in ("800", "110", "300", "1450", "640", " 3 ", "3/3", "tell me a joke"):
        assert number in row
    assert " 2      3/2 " in report.live_row(turns[2])  # 2 chunks; 3 segments synthesized, 2 played
    assert "[LOST=1]" in report.live_row(turns[2]) and "barge-in 120ms" in report.live_row(turns[1])
    text = report.verbose_turn(t0)
    assert "TIMELINE (turn 0)" in text and "SUMMARY (turn 0)" in text and "CHUNK BREAKDOWN:" in text
    assert "#   Tokens  LLM TTFT  LLM Gen   TTS TTFB  TTS Gen   Audio     Combined  Text" in text
    assert "1   8       110       290       300       490       2000      595       Why did the unicorn" in text
    assert "3   4       -         150       95        195       800       1290      Ha ha." in text
    assert "LLM #1: chunk emitted, 8 tokens, 290ms" in text
    assert "TTS #2: first audio (TTS TTFB: 150ms, Combined TTFB: 940ms)" in text
    assert "Combined TTFB:     595ms" in text
    timeline_lines = [line for line in text.splitlines() if line.startswith("[")]
    assert len(timeline_lines) == 25
    assert all(line[0] == "[" and line[13] == "]" and line[3] == ":" and line[9] == "." for line in timeline_lines)
    stamps = [line[1:13] for line in timeline_lines]
    assert stamps == sorted(stamps)  # time order (the scenario does not cross midnight)


def test_report_is_plain_ascii(turns):
    text = "\n".join([report.live_header()] + [report.live_row(t) for t in turns.values()]
                     + [report.verbose_turn(t) for t in turns.values()]
                     + [report.session_summary(summarize(list(turns.values()), ["x: y"]))])
    assert text.isascii() and "\x1b" not in text


def test_session_summary_lists_metrics_and_errors(turns):
    text = report.session_summary(summarize(list(turns.values()), ["tts: text payload is empty"]))
    assert "SESSION SUMMARY: 3 turns (0 incomplete, 1 interrupted)" in text
    assert "llm_ttft_ms                      3     100.0     108.0     101.7" in text
    assert "segments: produced 7 (LLM chunks), synthesized 8, played 6, cancelled 1, lost 1" in text
    assert "input errors: 1\n  tts: text payload is empty" in text


# --------------------------------------------------------------------------------------------------------------
# Node core: JSONL, live table, rejection


def feed(core: MonitorCore, events: list[TimingEvent]) -> None:
    """Send each event to the core on the input its node's timing would use (``llm_timing``, ...)."""
    for event in events:
        value, meta = event.encode()
        assert core.handle(f"{event.node}_timing", value, meta) == []


def test_core_writes_jsonl_and_table(tmp_path):
    out = io.StringIO()
    config = MonitorConfig(timing_report=tmp_path / "r" / "turns.jsonl")
    core = MonitorCore(config, out=out)
    feed(core, sc.turn0() + sc.turn1())
    lines = (tmp_path / "r" / "turns.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written as the turns complete, before on_end
    core.on_end()
    records = [json.loads(line) for line in lines]
    for record in records:
        assert REQUIRED_JSON_FIELDS <= record.keys()
        for chunk in record["chunks"]:
            assert REQUIRED_CHUNK_FIELDS <= chunk.keys()
    assert [r["turn_id"] for r in records] == [0, 1]
    assert records[0]["first_audio_ms"] == 1450.0 and records[0]["tts_ttfb_ms"] == 300.0
    assert records[0]["chunks"][1]["combined_ms"] == 940.0
    assert records[1]["first_audio_ms"] is None and records[1]["interrupted"] is True
    table = out.getvalue()
    assert table.count(report.live_header()) == 1  # the header once, then one row per turn
    assert "SESSION SUMMARY: 2 turns" in table


def test_core_rejects_bad_timing_and_unknown_inputs():
    out = io.StringIO()
    core = MonitorCore(MonitorConfig(), out=out)
    value, meta = TimingEvent(kind=TimingKind.TTS_FIRST_FRAGMENT, node="tts", session_id="", turn_id=0, t_ns=1,
                              fields={Key.SEGMENT_INDEX: 0}).encode()
    del meta[Key.SEGMENT_INDEX]  # as a sender that does not validate would send it
    assert core.handle("tts_timing", value, meta) == []
    value, meta = sc.turn0()[0].encode()
    assert core.handle("what", value, meta) == []
    assert core.input_errors == 2
    core.on_end()
    assert "input errors: 2" in out.getvalue()
    assert "monitor: tts_timing: timing event 'tts_first_fragment' from 'tts' lacks 'segment_index'" in out.getvalue()


def test_core_stops_after_max_turns_and_verbose_blocks():
    out = io.StringIO()
    core = MonitorCore(MonitorConfig(verbose=True), out=out, max_turns=1)
    feed(core, sc.turn0())
    assert core.finished()
    feed(core, sc.turn1())
    core.on_end()
    core.on_end()  # second call does nothing
    text = out.getvalue()
    assert [t.turn_id for t in core.turns] == [0]
    assert "TIMELINE (turn 0)" in text and "CHUNK BREAKDOWN:" in text and "TIMELINE (turn 1)" not in text
    assert text.count("SESSION SUMMARY") == 1


def test_core_saves_tts_audio(tmp_path):
    core = MonitorCore(MonitorConfig(save_audio=tmp_path / "tts.wav"), out=io.StringIO())
    for n in (1600, 800):
        fragment = AudioFragment(samples=np.full(n, 0.25, np.float32), sample_rate=16000, session_id="s",
                                 turn_id=0, segment_index=0, fragment_index=0, text_segment_index=0,
                                 is_last_fragment=True, is_final=False, is_streaming=True, t_ns=1)
        assert core.handle("tts_audio", *fragment.encode()) == []
    core.on_end()
    data, rate = soundfile.read(tmp_path / "tts.wav", dtype="float32")
    assert rate == 16000 and data.shape == (2400,)
    assert np.allclose(data, 0.25, atol=1e-4)


def test_wav_collector_skips_other_rates(tmp_path, caplog):
    wav = WavCollector(tmp_path / "a.wav")
    frag = lambda rate, n: AudioFragment(samples=np.zeros(n, np.float32), sample_rate=rate, session_id="", turn_id=0,
                                         segment_index=0, fragment_index=0, text_segment_index=0,
                                         is_last_fragment=True, is_final=False, is_streaming=True, t_ns=0)
    wav.write(frag(22050, 100))
    wav.write(frag(16000, 50))
    wav.close()
    assert soundfile.info(str(tmp_path / "a.wav")).frames == 100 and "skipped" in caplog.text


# --------------------------------------------------------------------------------------------------------------
# Config, contract, logging hygiene


def test_config_from_env(tmp_path):
    config = load_config(MonitorConfig, {"TIMING_REPORT": str(tmp_path / "t.jsonl"), "MONITOR_VERBOSE": "yes"})
    assert config.timing_report == tmp_path / "t.jsonl" and config.verbose and config.plot_dir is None
    with pytest.raises(ConfigError, match="MONITOR_VERBOSE"):
        load_config(MonitorConfig, {"MONITOR_VERBOSE": "sometimes"})
    assert {"TIMING_REPORT", "MONITOR_VERBOSE", "MONITOR_PLOT_DIR", "MONITOR_SAVE_AUDIO"} <= CONTRACT.env().keys()
    assert CONTRACT.path == "dora-voice-monitor" and CONTRACT.outputs == ()
    assert all(i.endswith("timing") for i in CONTRACT.inputs if i != "tts_audio")


def test_timeline_ends_with_voice_to_voice_as_the_sum_of_its_parts(turns):
    from dora_voice_monitor.report import live_row, timeline

    text = timeline(turns[0])
    assert text.splitlines()[-1] == ("first audio 1450ms = end of turn 500 + ASR 300 + LLM TTFT 120 + first chunk 180"
                                     " + TTS 305 + playback 45")
    assert "model P(complete)=0.93" in text and "[eot=model p=0.93]" in live_row(turns[0])
    assert "first audio" not in timeline(turns[1]).splitlines()[-1]  # typed turn: no voice-to-voice


def test_speculation_counts_are_split_between_transcripts_and_replies():
    """Turn 0 with a pause the user spoke through (the ASR's and the LLM's speculation dropped), then a reply begun
    during the final pause and sent at the confirmation (llm_start says hit)."""
    events = [e for e in sc.turn0() if e.kind is not TimingKind.LLM_START]
    events += [
        sc._ev(TimingKind.SPECULATION_CANCELLED, "asr", 0, 900, **{Key.DURATION_MS: 180.0}),
        sc._ev(TimingKind.SPECULATION_CANCELLED, "llm", 0, 905, **{Key.DURATION_MS: 120.0, Key.TOKENS: 4}),
        sc._ev(TimingKind.SPECULATION_CANCELLED, "tts", 0, 907, **{Key.DURATION_MS: 60.0}),
        sc._ev(TimingKind.LLM_START, "llm", 0, 2310, **{Key.SPECULATION: "hit", Key.DURATION_MS: 90.0}),
    ]
    turn = collect(events)[0]
    assert (turn.speculation_cancelled, turn.llm_speculation, turn.llm_speculation_cancelled) == (1, "hit", 1)
    assert turn.tts_speculation_cancelled == 1
    assert turn.complete and turn.segments_lost == 0
    assert {"llm_speculation=hit", "llm_speculation_cancelled=1", "speculation_cancelled=1",
            "tts_speculation_cancelled=1"} <= set(report._notes(turn))
    plain = collect(sc.turn0())[0]
    assert (plain.speculation_cancelled, plain.llm_speculation, plain.llm_speculation_cancelled) == (0, None, 0)


def test_the_session_record_beside_the_report_keeps_speech_without_transcript_for_the_launcher(tmp_path, capsys):
    from dora_voice_monitor.sinks import read_session, session_path
    from dora_voice_tools.cli import print_report

    report_path = tmp_path / "timing.jsonl"
    session_path(report_path).write_text('{"unanswered_turns": [7], "input_errors": []}\n')  # an earlier run's
    core = MonitorCore(MonitorConfig(timing_report=report_path), out=io.StringIO())
    assert read_session(report_path) == ([], [])  # removed at start: it described another session
    feed(core, sc.all_turns())
    core.on_end()
    assert read_session(report_path) == ([3], ["tts: text: text payload is empty"])  # the scenario's bad input
    assert print_report(report_path) == (3, 1)
    printed = capsys.readouterr().out
    assert "utterances without a transcript: 1 (turns 3)" in printed
    assert "tts: text: text payload is empty" in printed
