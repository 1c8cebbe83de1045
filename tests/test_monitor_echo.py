"""The monitor's echo figures: aec_stats windows summarised and written to ECHO_REPORT; barge-in delay from the
speech onset."""

from __future__ import annotations

import io
import json

import pytest

from dora_voice.config import load_config
from dora_voice.schema import Key, TimingEvent, TimingKind
from dora_voice_monitor.collector import build_turn, summarize_echo
from dora_voice_monitor.node import MonitorConfig, MonitorCore

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def aec_stats(i: int, erle: float | None, delay: float = -1.0) -> TimingEvent:
    fields = {Key.DURATION_MS: 500.0, Key.AUDIO_MS: 400.0, Key.DELAY_MS: delay, Key.CPU_PERCENT: 1.5}
    if erle is not None:
        fields[Key.ERLE_DB] = erle
    return TimingEvent(TimingKind.AEC_STATS, "aec", "s", -1, T0 + i * 500 * MS, fields)


def test_echo_summary_and_report(tmp_path) -> None:
    events = [aec_stats(0, None), aec_stats(1, 10.0), aec_stats(2, 30.0, 61.0), aec_stats(3, 32.0, 62.5)]
    echo = summarize_echo(events)
    assert echo.windows == 4 and echo.measured == 3
    assert echo.erle_db_p50 == 30.0 and echo.delay_ms == 62.5 and echo.cpu_percent == 1.5
    assert echo.reference_active_s == pytest.approx(1.6)
    assert summarize_echo([]) is None

    out = io.StringIO()
    config = load_config(MonitorConfig, {"ECHO_REPORT": str(tmp_path / "echo.jsonl")})
    core = MonitorCore(config, out=out)
    for event in events:
        value, meta = event.encode()
        meta["timestamp"] = object()  # dora adds fields of its own: not written
        core.handle("aec_timing", value, meta)
    core.on_end()
    text = out.getvalue()
    assert "echo cancellation: ERLE p50 30.0 dB" in text and "echo delay 62.5 ms" in text
    lines = [json.loads(line) for line in (tmp_path / "echo.jsonl").read_text().splitlines()]
    assert [line["t_ns"] for line in lines] == [e.t_ns for e in events]
    assert lines[2][Key.ERLE_DB] == 30.0 and Key.ERLE_DB not in lines[0]


def test_barge_in_delay_from_the_speech_onset() -> None:
    barge_in = TimingEvent(TimingKind.BARGE_IN, "speaker", "s", 0, T0 + 1300 * MS, {
        Key.CANCELLED: 2, Key.DURATION_MS: 40.0, Key.SPEECH_START_NS: T0 + 1000 * MS, Key.DETECTED_NS: T0 + 1260 * MS})
    turn = build_turn(0, [barge_in], complete=True)
    assert turn.barge_in_onset_ns == T0 + 1000 * MS
    assert turn.barge_in_from_onset_ms == pytest.approx(300.0)
    assert turn.barge_in_ms == 40.0
