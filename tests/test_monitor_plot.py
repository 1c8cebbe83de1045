"""Timeline PNGs of the monitor (``dora_voice_monitor.plot``) and where they are written (``sinks.PlotTarget``)."""

from __future__ import annotations

import dataclasses

import matplotlib.image
import monitor_scenarios as sc
import pytest
from dora_voice_monitor.collector import TimingCollector, TurnRecord
from dora_voice_monitor.plot import plot_turn_timeline
from dora_voice_monitor.sinks import PlotTarget


@pytest.fixture(scope="module")
def turns() -> dict[int, TurnRecord]:
    collector = TimingCollector(grace_s=0.0)
    reported = [t for e in sc.all_turns() for t in collector.add(e)] + collector.flush()
    return {t.turn_id: t for t in reported}


def test_png_written_and_sized_by_chunks(turns, tmp_path):
    three = plot_turn_timeline(turns[0], tmp_path / "deep" / "turn0.png")  # 3 chunks
    two = plot_turn_timeline(turns[1], tmp_path / "turn1.png")  # 2 chunks, typed, interrupted
    assert three.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and three.stat().st_size > 10_000
    height3, width3 = matplotlib.image.imread(three).shape[:2]
    height2, _ = matplotlib.image.imread(two).shape[:2]
    assert width3 > 800 and height3 > height2  # one row per chunk


def test_turn_without_time_origin_is_refused(turns, tmp_path):
    empty = dataclasses.replace(turns[0], speech_end_ns=None, llm_start_ns=None)
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_turn_timeline(empty, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_target_directory_and_file(turns, tmp_path):
    folder = PlotTarget(tmp_path / "plots")
    assert folder.draw(turns[2]) == tmp_path / "plots" / "turn_002.png"
    single = PlotTarget(tmp_path / "timeline.png")
    assert single.draw(turns[0]) == tmp_path / "timeline.png"
    assert single.draw(turns[1]) == tmp_path / "timeline_turn001.png"
    assert all(p.stat().st_size > 0 for p in tmp_path.rglob("*.png"))
    unplottable = dataclasses.replace(turns[0], speech_end_ns=None, llm_start_ns=None)
    assert folder.draw(unplottable) is None  # logged and skipped: a plot never stops the monitor
