"""The soak plan of dora-voice-bench (issue 10): plan, voice input, summary entry and targets, without dora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from recordings import DATA
from dora_voice_tools.bench import cli as bench_cli
from dora_voice_tools.bench.plans import BenchConfigError, load_catalog, parse_catalog, plan_items, resolve_plan
from dora_voice_tools.bench.running import (
    SOAK_KEYS, RunOutcome, rss_growth_pct, soak_entry, soak_targets, soak_voice_input,
)
from dora_voice_tools.resources import RECORDINGS_DIR, TEXT_DATAFLOW, VOICE_DATAFLOW
from fakes import make_turn


def test_packaged_soak_plan_mixes_short_and_long_prompts_and_recordings() -> None:
    catalog = load_catalog()
    plan, catalog = resolve_plan(catalog, "soak", [], None, None)
    assert plan.kind == "soak" and plan.repeat == 200 and plan.stream == "true"
    assert plan.env["LLM_HISTORY_TURNS"] != "0"  # a session with memory
    items = plan_items(plan, catalog)
    names = {item.name for item in items}
    assert {"long_story", "code_generation", "numbered_list", "one_sentence"} <= names
    assert [item for item in items if item.clip is not None]  # voice turns from real recordings
    assert resolve_plan(load_catalog(), "soak", [], 12, None)[0].repeat == 12  # --repeat N


def test_a_soak_plan_needs_a_text_scenario_and_one_mode() -> None:
    scenarios = {"a": {"query": "Say a."}, "v": {"audio": "goforward.wav"}}
    with pytest.raises(BenchConfigError, match="text scenario"):
        parse_catalog({"scenarios": scenarios, "plans": {"s": {"kind": "soak", "scenarios": ["v"], "stream": True}}},
                      root=DATA)
    with pytest.raises(BenchConfigError, match="stream"):
        parse_catalog({"scenarios": scenarios, "plans": {"s": {"kind": "soak", "scenarios": ["a"]}}}, root=DATA)


def test_soak_voice_input_cycles_the_recordings_with_pauses(tmp_path: Path) -> None:
    clips = [DATA / "cards-001.wav", DATA / "goforward.wav"]
    out = soak_voice_input(clips, 3, 2.0, tmp_path / "in.wav")
    samples, rate = sf.read(out, dtype="float32")
    lengths = [sf.info(str(c)).frames for c in clips]
    assert rate == 16_000 and samples.shape[0] == 2 * lengths[0] + lengths[1] + 3 * 32_000
    assert not samples[lengths[0]: lengths[0] + 32_000].any()  # the pause after the first recording


def test_soak_entry_has_exactly_the_issue_keys_and_sums_every_turn() -> None:
    turns = [make_turn(0, llm_ttft_ms=100.0, tts_segments=3, segments_played=3, underrun_ms=0.0),
             make_turn(1, llm_ttft_ms=300.0, tts_segments=2, segments_played=1, segments_lost=1, underrun_ms=12.5),
             make_turn(2, llm_ttft_ms=200.0, complete=False)]
    entry = soak_entry(turns, {"dora-voice-tts": 1.5})
    assert tuple(entry) == SOAK_KEYS
    assert entry["turns"] == 3 and entry["complete"] == 2
    assert (entry["segments_produced"], entry["segments_played"], entry["segments_lost"]) == (6, 5, 1)
    assert entry["underrun_ms_total"] == 12.5 and entry["ttft_p50_ms"] == 200.0 and entry["ttft_p90_ms"] == 280.0
    json.dumps(entry)
    targets = soak_targets(entry, 3)
    assert {k for k, v in targets.items() if not v["ok"]} == {"all_turns_complete", "segments_lost_0",
                                                               "underrun_ms_0"}


def test_soak_targets_on_ttft_spread_and_memory_growth() -> None:
    good = soak_entry([make_turn(i, llm_ttft_ms=100.0 + i) for i in range(10)], {"a": 0.5, "b": 2.9})
    assert all(v["ok"] for v in soak_targets(good, 10).values())
    spiky = soak_entry([make_turn(i, llm_ttft_ms=100.0 if i < 8 else 900.0) for i in range(10)], {"a": 3.5})
    failed = {k for k, v in soak_targets(spiky, 10).items() if not v["ok"]}
    assert failed == {"ttft_p90_le_2x_p50", "rss_growth_le_3pct"}
    assert rss_growth_pct({"n": {"mid_mb": 200.0, "end_mb": 206.0}}) == {"n": 3.0}


def test_soak_runs_one_text_session_and_one_voice_session(tmp_path: Path, monkeypatch) -> None:
    runs = []

    def fake_execute(yaml_path, run_dir, env, timeout_s, label, expected):
        runs.append((yaml_path, dict(env), expected))
        if yaml_path == TEXT_DATAFLOW:
            turns = [make_turn(i, llm_ttft_ms=100.0) for i in range(expected)]
        else:
            turns = [make_turn(100 + i, llm_ttft_ms=120.0, source="voice") for i in range(2)]
        return RunOutcome(label, run_dir, 0, 1.0, turns)

    monkeypatch.setattr(bench_cli, "execute", fake_execute)
    monkeypatch.setattr(bench_cli._Bench, "plot", lambda *args: None)
    status = bench_cli.main(["--plan", "soak", "--repeat", "20", "--out", str(tmp_path)])
    (text_yaml, text_env, text_expected), (voice_yaml, voice_env, _) = runs
    assert text_yaml == TEXT_DATAFLOW and voice_yaml == VOICE_DATAFLOW
    clips = len(list(RECORDINGS_DIR.glob("*.wav")))  # the shipped recordings, one voice turn each (>= 20 // 10)
    assert text_expected == 20 - clips and len(text_env["TEXT_INPUT_QUERIES"].split("|")) == 20 - clips
    assert text_env["LLM_HISTORY_TURNS"] == "8" and voice_env["BARGE_IN"] == "false"
    assert sf.info(voice_env["AUDIO_INPUT"]).duration > clips * 3.0
    entry = json.loads((tmp_path / "summary.json").read_text())["soak"]
    assert tuple(entry) == SOAK_KEYS and entry["turns"] == 20 - clips + 2
    assert status == 1  # 18 of 20 turns reported: the soak fails
