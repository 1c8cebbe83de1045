"""dora-voice-bench: scenario and plan loading, aggregation, summary.json shape, tables, stress checks, RSS sampling;
one e2e run of the real text pipeline in both modes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from recordings import DATA, TRANSCRIPTS
from dora_voice.models import TEST_LLM
from dora_voice_monitor.collector import TurnRecord
from dora_voice_tools.bench import cli as bench_cli
from dora_voice_tools.bench import plans, reporting, running
from dora_voice_tools.bench.plans import (
    BATCH, MODES, STREAMING, BenchConfigError, Catalog, Plan, Scenario, load_catalog, parse_assignments,
    parse_catalog, parse_scenario, plan_items, resolve_plan, run_env, variants_for,
)
from dora_voice_tools.bench.reporting import (
    corpus_wer, item_summary, median, median_turn, overall_stats, paired_differences, ratio, render_compare_table,
    render_paired, render_v2v_parts_table, render_voice_table, rss_report,
)
from fakes import make_turn
from dora_voice_tools.bench.running import (
    RssSample, RssSampler, cpu_times, steal_percent, stress_checks, turn_problems,
)
from dora_voice_tools.launcher import RunResult
from dora_voice_tools.resources import TEXT_DATAFLOW


def tiny_catalog(**plans) -> Catalog:
    return parse_catalog({
        "scenarios": {"a": {"query": "Say a."}, "b": {"query": "Say b.", "stream": True, "max_tokens": 32},
                      "v": {"audio": "goforward.wav", "stream": "true"}},
        "plans": plans,
    }, root=DATA)


# --------------------------------------------------------------------------------------------------------------
# The packaged scenarios and plans


def test_packaged_catalog_has_the_required_scenarios_and_plans() -> None:
    catalog = load_catalog()
    text = {n for n, s in catalog.scenarios.items() if s.pipeline == "text" and not n.startswith("quick_")}
    assert {"one_sentence", "unicorn_jokes", "long_story", "code_generation", "numbered_list"} <= text
    assert catalog.scenario("one_sentence").query == "What is the capital of France? Answer in one sentence."
    assert catalog.scenario("unicorn_jokes").query == "Tell me three jokes about unicorns."
    story = catalog.scenario("long_story")
    assert story.max_tokens == 512 and "LLM_SYSTEM_PROMPT" in story.env and "400 words" in story.query
    assert all(catalog.scenario(n).stream == "compare" for n in text)

    quick = catalog.plan("quick")
    assert set(quick.scenarios) == text and quick.stream == "compare" and quick.repeat == 1
    exhaustive = catalog.plan("exhaustive")
    assert set(exhaustive.scenarios) == {n for n in catalog.scenarios if not n.startswith("quick_")}
    assert exhaustive.repeat == 3
    pacing = catalog.plan("pacing")
    assert pacing.scenarios == ("unicorn_jokes", "long_story") and pacing.stream == "true"
    assert {name: env["LLM_PACING"] for name, env in pacing.variants.items()} == {
        "pacing_off": "off", "pacing_tts": "tts", "pacing_adaptive": "adaptive"}
    stress = catalog.plan("stress")
    assert stress.kind == "stress" and stress.repeat == 50


def test_voice_plan_runs_every_shipped_clip_streaming_only_with_transcripts() -> None:
    catalog = load_catalog()
    items = plan_items(catalog.plan("voice"), catalog)
    assert sorted(item.clip.path.name for item in items) == sorted(p.name for p in DATA.glob("*.wav"))
    for item in items:
        assert [v.name for v in item.variants] == [STREAMING]
        assert item.clip.transcript == TRANSCRIPTS[item.clip.path.name]
        assert item.clip.duration_s > 0.5


def test_quick_plan_expands_to_text_items_in_both_modes() -> None:
    catalog = load_catalog()
    items = plan_items(catalog.plan("quick"), catalog)
    assert all(item.pipeline == "text" and [v.name for v in item.variants] == [STREAMING, BATCH] for item in items)
    story = next(item for item in items if item.name == "long_story")
    assert story.env["LLM_MAX_TOKENS"] == "512"


# --------------------------------------------------------------------------------------------------------------
# Validation: clear errors


@pytest.mark.parametrize("entry, message", [
    ({"query": "hi", "audio": "x.wav"}, "exactly one of query, audio or clips"),
    ({"description": "nothing to say"}, "exactly one of query, audio or clips"),
    ({"query": "a|b"}, "must not contain '|'"),
    ({"query": "hi", "stream": "sometimes"}, "stream must be true, false or compare"),
    ({"query": "hi", "max_tokens": 0}, "max_tokens: must be a positive integer"),
    ({"query": "hi", "qurey": "typo"}, "unknown key 'qurey'"),
    ({"query": "hi", "env": {"BAD KEY": "1"}}, "not an environment variable name"),
])
def test_invalid_scenarios_are_rejected_with_the_reason(entry: dict, message: str) -> None:
    with pytest.raises(BenchConfigError, match="scenario 'x'") as info:
        parse_scenario("x", entry)
    assert message in str(info.value)


def test_scenario_values_are_normalised() -> None:
    scenario = parse_scenario("x", {"query": " hi ", "stream": False, "env": {"N": 3, "FLAG": True}})
    assert (scenario.query, scenario.stream, dict(scenario.env)) == ("hi", "false", {"N": "3", "FLAG": "true"})
    assert parse_scenario("y", {"audio": "a.wav"}).stream == "compare"


def test_plan_naming_an_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(BenchConfigError, match=r"plan 'p': unknown scenario 'zzz'; known: a, b, v"):
        tiny_catalog(p={"scenarios": ["a", "zzz"]})


@pytest.mark.parametrize("plan, message", [
    ({"scenarios": ["a"], "variants": {"x": {"LLM_PACING": "tts"}}}, "variants need stream: true or false"),
    ({"scenarios": ["a", "v"], "kind": "stress", "stream": True}, "text scenarios only, not v"),
    ({"scenarios": "everything"}, "scenarios must be a list of names or one of text, voice, all"),
    ({"scenarios": ["a"], "repeat": -1}, "repeat: must be a positive integer"),
    ({"scenarios": ["a"], "kind": "marathon"}, "kind must be one of compare, stress, answers, soak, echo"),
    ({"kind": "answers"}, "kind: answers needs questions"),
    ({"kind": "answers", "questions": "q.yaml", "scenarios": ["a"]}, "a kind: answers plan has no scenarios"),
    ({"kind": "answers", "questions": "q.yaml", "stream": "compare"}, "needs stream: true or false"),
    ({"scenarios": ["a"], "questions": "q.yaml"}, "questions is for kind: answers"),
])
def test_invalid_plans_are_rejected_with_the_reason(plan: dict, message: str) -> None:
    with pytest.raises(BenchConfigError) as info:
        tiny_catalog(p=plan)
    assert message in str(info.value)


def test_answers_plan_runs_its_questions_once_per_variant(tmp_path: Path) -> None:
    catalog = tiny_catalog(p={"kind": "answers", "questions": "q.yaml", "env": {"LLM_MAX_TOKENS": "50"},
                              "variants": {"m1": {"LLM_MODEL": "x"}, "m2": {"LLM_MODEL": "y"}}})
    plan = catalog.plan("p")
    assert plan.questions == DATA / "q.yaml" and plan.stream == "true"  # relative to the scenarios file
    assert [v.name for v in plans.answers_variants(plan)] == ["m1", "m2"]
    (m2,) = plans.answers_variants(plan, ["m2"])
    assert m2.env == {**MODES[STREAMING], "LLM_MODEL": "y"}
    with pytest.raises(BenchConfigError, match="unknown variant.*zz; known: m1, m2"):
        plans.answers_variants(plan, ["zz"])
    env = plans.answers_env(plan, m2, {"LLM_MODEL": "z"}, tmp_path, ["One?", "Two?"])
    assert env["TEXT_INPUT_QUERIES"] == "One?|Two?" and env["LLM_HISTORY_TURNS"] == "0"
    assert env["LLM_MAX_TOKENS"] == "50" and env["LLM_MODEL"] == "z"  # --model / --set win
    with pytest.raises(BenchConfigError, match="--scenario, --clips-dir and --repeat do not apply"):
        resolve_plan(catalog, "p", ["a"], None, None)
    packaged = load_catalog().plan("answers")
    assert packaged.kind == "answers" and packaged.questions is not None and packaged.questions.is_file()


def test_unknown_plan_and_scenario_names_list_the_known_ones() -> None:
    catalog = tiny_catalog(p={"scenarios": "text"})
    assert catalog.plan("p").scenarios == ("a", "b")
    with pytest.raises(BenchConfigError, match="unknown plan 'nope'; known: p"):
        catalog.plan("nope")
    with pytest.raises(BenchConfigError, match="unknown scenario 'nope'; known: a, b, v"):
        resolve_plan(tiny_catalog(quick={"scenarios": "text"}), None, ["nope"], None, None)


def test_cli_rejects_unknown_names_with_usage_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        bench_cli.main(["--scenario", "no_such_scenario"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'no_such_scenario'" in err and "one_sentence" in err
    with pytest.raises(SystemExit):
        bench_cli.main(["--set", "NOEQUALS"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_list_shows_plans_and_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("quick", "exhaustive", "voice", "pacing", "stress", "long_story", "test_clips"):
        assert name in out


# --------------------------------------------------------------------------------------------------------------
# Plans, variants, environments


def test_scenario_without_plan_keeps_its_own_stream_setting_and_takes_repeat() -> None:
    catalog = tiny_catalog(quick={"scenarios": "text", "stream": "compare", "env": {"FROM_PLAN": "1"}})
    plan, _ = resolve_plan(catalog, None, ["b"], 4, None)
    assert (plan.name, plan.scenarios, plan.repeat, plan.stream, dict(plan.env)) == ("custom", ("b",), 4, None, {})
    (item,) = plan_items(plan, catalog)
    assert [v.name for v in item.variants] == [STREAMING]  # b says stream: true
    assert item.env == {"LLM_MAX_TOKENS": "32"}


def test_variants_compare_true_false_and_plan_variants() -> None:
    compare = variants_for(Scenario("s", query="q"), Plan("p"))
    assert [(v.name, dict(v.env)) for v in compare] == [(STREAMING, MODES[STREAMING]), (BATCH, MODES[BATCH])]
    assert MODES[STREAMING] == {"LLM_ENABLE_STREAMING": "true", "ENABLE_INTERNAL_SEGMENTATION": "true"}
    assert MODES[BATCH] == {"LLM_ENABLE_STREAMING": "false", "ENABLE_INTERNAL_SEGMENTATION": "false"}
    assert [v.name for v in variants_for(Scenario("s", query="q", stream="false"), Plan("p"))] == [BATCH]
    assert [v.name for v in variants_for(Scenario("s", query="q", stream="false"), Plan("p", stream="true"))] == [
        STREAMING]
    paced = variants_for(Scenario("s", query="q"), Plan("p", stream="true", variants={
        "off": {"LLM_PACING": "off"}, "tts": {"LLM_PACING": "tts"}}))
    assert [(v.name, v.env["LLM_PACING"], v.env["LLM_ENABLE_STREAMING"]) for v in paced] == [
        ("off", "off", "true"), ("tts", "tts", "true")]


def test_run_env_repeats_the_query_and_lets_overrides_win(tmp_path: Path) -> None:
    catalog = tiny_catalog(quick={"scenarios": "text", "env": {"LLM_HISTORY_TURNS": "3", "X": "plan"}})
    plan, _ = resolve_plan(catalog, "quick", [], 3, None)
    item = plan_items(plan, catalog)[0]
    batch = item.variants[1]
    env = run_env(item, batch, {"X": "cli", "LLM_MODEL": TEST_LLM}, tmp_path, plan.repeat)
    assert env["TEXT_INPUT_QUERIES"] == "Say a.|Say a.|Say a."
    assert env["LLM_HISTORY_TURNS"] == "3"  # the plan's env beats the bench default (0)
    assert env["X"] == "cli" and env["LLM_MODEL"] == TEST_LLM
    assert env["LLM_ENABLE_STREAMING"] == "false" and env["LLM_SEED"] == str(plans.SEED)
    assert Path(env["AUDIO_OUTPUT"]).parent == tmp_path and Path(env["TIMING_REPORT"]).parent == tmp_path
    default = run_env(item, batch, {}, tmp_path, 1)
    assert default["TEXT_INPUT_QUERIES"] == "Say a."
    voice = plan_items(resolve_plan(tiny_catalog(vp={"scenarios": ["v"]}), "vp", [], None, None)[0],
                       tiny_catalog(vp={"scenarios": ["v"]}))[0]
    venv = run_env(voice, voice.variants[0], {}, tmp_path, 1)
    assert venv["AUDIO_INPUT"] == str(DATA / "goforward.wav") and "TEXT_INPUT_QUERIES" not in venv
    assert venv["LLM_HISTORY_TURNS"] == "0"


def test_parse_assignments() -> None:
    assert parse_assignments(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    with pytest.raises(BenchConfigError, match="expected KEY=VALUE"):
        parse_assignments(["1A=3"])


def _write_clip(path: Path, seconds: float = 0.5) -> None:
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, subtype="PCM_16")


def test_clips_dir_takes_every_wav_and_readme_transcripts(tmp_path: Path) -> None:
    _write_clip(tmp_path / "b.wav")
    _write_clip(tmp_path / "a.wav", 1.0)
    (tmp_path / "notes.txt").write_text("not a clip")
    (tmp_path / "README.md").write_text(
        "Clips\n\n| file | seconds | transcript |\n|---|---|---|\n| a.wav | 1.0 | hello there |\n\nmore text\n")
    catalog = load_catalog()
    plan, catalog = resolve_plan(catalog, None, [], None, tmp_path)
    assert plan.name == "voice" and plan.scenarios == ("clips_dir",)
    items = plan_items(plan, catalog)
    assert [(i.name, i.clip.transcript, round(i.clip.duration_s, 2)) for i in items] == [
        ("a", "hello there", 1.0), ("b", None, 0.5)]
    assert all([v.name for v in i.variants] == [STREAMING] for i in items)


def test_missing_clip_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BenchConfigError, match="no such folder"):
        resolve_plan(load_catalog(), None, [], None, tmp_path / "missing")
    catalog = parse_catalog({"scenarios": {"c": {"clips": str(tmp_path)}}, "plans": {"p": {"scenarios": ["c"]}}})
    with pytest.raises(BenchConfigError, match=r"no \*\.wav in"):
        plan_items(catalog.plan("p"), catalog)


# --------------------------------------------------------------------------------------------------------------
# Aggregation and summary.json


def test_median_ignores_unknown_values() -> None:
    assert median([3.0, None, 1.0, 2.0, 100.0]) == 2.5
    assert median([None, None]) is None
    assert median([]) is None


def test_ratio() -> None:
    assert ratio(300.0, 1200.0) == 0.25
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def _compare_turns() -> dict[str, list[TurnRecord]]:
    streaming = [make_turn(i, llm_ttft_ms=t, llm_start_to_first_audio_ms=a, tokens_per_s=40.0, wall_s=5.0,
                           underruns=0, llm_tokens=100)
                 for i, (t, a) in enumerate([(100.0, 500.0), (120.0, 700.0), (900.0, 600.0)])]
    batch = [make_turn(i, llm_ttft_ms=t, llm_start_to_first_audio_ms=a, tokens_per_s=44.0, wall_s=7.0,
                       underruns=1, llm_tokens=100)
             for i, (t, a) in enumerate([(110.0, 2400.0), (100.0, 2000.0), (105.0, 2500.0)])]
    return {STREAMING: streaming, BATCH: batch}


def test_item_summary_shape_medians_and_first_audio_ratio() -> None:
    entry = item_summary("text", _compare_turns(), {BATCH: False})
    assert set(entry) == {STREAMING, BATCH, "first_audio_ratio"}
    for mode in (STREAMING, BATCH):
        assert {f for _label, f in reporting.COMPARE_ROWS} | {"turns", "failed"} == set(entry[mode])
        assert entry[mode]["turns"] == 3 and entry[mode]["failed"] is False
    assert entry[STREAMING]["llm_ttft_ms"] == 120.0
    assert entry[STREAMING]["llm_start_to_first_audio_ms"] == 600.0
    assert entry[BATCH]["llm_start_to_first_audio_ms"] == 2400.0
    assert entry[STREAMING]["tts_ttfb_ms"] is None
    assert entry["first_audio_ratio"] == pytest.approx(0.25)
    json.dumps(entry, allow_nan=False)  # summary.json must be plain JSON


def test_item_summary_of_a_failed_mode_has_no_ratio() -> None:
    entry = item_summary("text", {STREAMING: _compare_turns()[STREAMING], BATCH: []}, {BATCH: True})
    assert entry[BATCH]["failed"] is True and entry[BATCH]["turns"] == 0
    assert entry["first_audio_ratio"] is None
    single = item_summary("voice", {STREAMING: [make_turn(first_audio_ms=900.0, asr_latency_ms=300.0)]}, {})
    assert "first_audio_ratio" not in single and single[STREAMING]["first_audio_ms"] == 900.0


def test_voice_ratio_uses_voice_to_voice_latency() -> None:
    entry = item_summary("voice", {STREAMING: [make_turn(first_audio_ms=1000.0, llm_start_to_first_audio_ms=1.0)],
                                   BATCH: [make_turn(first_audio_ms=4000.0, llm_start_to_first_audio_ms=1.0)]}, {})
    assert entry["first_audio_ratio"] == 0.25


def test_overall_stats_p50_p90() -> None:
    turns = [make_turn(i, first_audio_ms=float(v)) for i, v in enumerate([100, 200, 300, 400, 500])]
    stats = overall_stats(turns)
    assert stats["first_audio_ms"] == {"p50": 300.0, "p90": 460.0, "n": 5}
    assert stats["asr_latency_ms"] == {"p50": None, "p90": None, "n": 0}


def test_paired_differences_match_turns_in_order_and_skip_runs_split_differently() -> None:
    def run(*values: float | None) -> list[TurnRecord]:
        return [make_turn(i, first_audio_ms=v) for i, v in reversed(list(enumerate(values)))]  # any order

    entry = paired_differences([(run(700.0, 1000.0), run(720.0, 1010.0)),  # +20, +10
                                (run(650.0, None), run(600.0, 900.0)),  # -50; the unknown one is no pair
                                (run(800.0), run(800.0, 820.0))])  # the VAD split it differently: left out
    assert entry == {"metric": "first_audio_ms", "pairs": 3, "median_ms": 10.0, "mean_ms": pytest.approx(-20 / 3),
                     "min_ms": -50.0, "max_ms": 20.0, "runs_left_out": 1}
    line = render_paired(["one_machine", "two_daemons"], entry)
    assert "two_daemons - one_machine" in line and "median +10 ms" in line and "3 turns" in line
    assert "1 run pair(s) left out" in line
    assert paired_differences([(run(800.0), run())]) is None
    assert "no turns to pair" in render_paired(["a", "b"], None)


def test_two_variants_of_a_recording_alternate_run_by_run_and_are_paired(tmp_path: Path, monkeypatch) -> None:
    catalog = tiny_catalog(p={"scenarios": ["v"], "stream": True, "repeat": 2,
                              "variants": {"here": {}, "there": {"X": "1"}}})
    plan, catalog = resolve_plan(catalog, "p", [], None, None)
    bench = bench_cli._Bench(plan, plans.plan_items(plan, catalog), tmp_path, {})
    order: list[str] = []

    def fake_run(item, variant, run_dir, turns, queries):
        order.append(f"{variant.name} {run_dir.name}")
        latency = 500.0 + 100 * len(order) + (30.0 if variant.name == "there" else 0.0)
        return running.RunOutcome(variant.name, run_dir, 0, 1.0, [make_turn(0, first_audio_ms=latency)])

    monkeypatch.setattr(bench, "run_one", fake_run)
    monkeypatch.setattr(bench, "run_roundtrip", lambda heard: None)
    monkeypatch.setattr(bench, "plot", lambda *args: None)
    bench.run_compare()
    # in turns, the order reversed every other time: a drift of the machine (here +100 ms per run) cancels out
    assert order == ["here run-1", "there run-1", "there run-2", "here run-2"]
    paired = bench.summary["_paired"]
    assert paired["variants"] == ["here", "there"] and paired["pairs"] == 2
    assert (paired["min_ms"], paired["max_ms"]) == (-70.0, 130.0)  # 30 ms of the variant -+ 100 ms of drift
    assert paired["mean_ms"] == pytest.approx(30.0)


def test_median_turn_is_the_one_closest_to_the_median() -> None:
    turns = [make_turn(i, llm_start_to_first_audio_ms=v) for i, v in enumerate([900.0, 100.0, 520.0, 480.0, 505.0])]
    assert median_turn(turns, "llm_start_to_first_audio_ms").turn_id == 4
    tie = [make_turn(i, llm_start_to_first_audio_ms=v) for i, v in [(5, 520.0), (3, 480.0)]]
    assert median_turn(tie, "llm_start_to_first_audio_ms").turn_id == 3  # median 500: equally close, lowest id
    assert median_turn([make_turn(7)], "llm_start_to_first_audio_ms").turn_id == 7
    assert median_turn([], "first_audio_ms") is None


def test_turn_problems() -> None:
    good = [make_turn(0), make_turn(1)]
    assert turn_problems(good, 2) == []
    assert turn_problems([], None) == ["no turn reported"]
    problems = turn_problems([make_turn(0, complete=False), make_turn(2, segments_lost=1, segments_played=0)], 4)
    assert problems == ["2 of 4 turns missing (ids 1, 3)", "incomplete: turns 0", "lost segments: turns 2",
                        "segments played != synthesized: turns 2"]
    interrupted = make_turn(0, interrupted=True, tts_segments=3, segments_played=1, segments_cancelled=2)
    assert turn_problems([interrupted], 1) == []


# --------------------------------------------------------------------------------------------------------------
# Tables


def test_compare_table_rows_columns_and_ratio() -> None:
    entry = item_summary("text", _compare_turns(), {})
    table = render_compare_table("unicorn_jokes", entry, "text", repeat=3)
    lines = table.splitlines()
    assert lines[0] == "unicorn_jokes (text, 3 repetitions, medians)"
    assert lines[1].split() == ["metric", STREAMING, BATCH, "ratio"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:3 + len(reporting.COMPARE_ROWS)]}
    assert list(rows) == [label for label, _f in reporting.COMPARE_ROWS]
    assert rows["llm_start_to_first_audio_ms"] == ["600", "2400", "0.25"]
    assert rows["tokens_per_s"] == ["40.0", "44.0", "0.91"]
    assert rows["wall_s"] == ["5.00", "7.00", "0.71"]
    assert rows["first_chunk_ms"] == ["-", "-", "-"]
    assert rows["underruns"] == ["0.0", "1.0", "0.00"]
    assert table.endswith("first audio (llm_start_to_first_audio_ms) streaming/batch = 0.25")
    assert table.isascii()


def test_compare_table_flags_failed_modes_and_voice_rows() -> None:
    entry = item_summary("voice", {STREAMING: [make_turn(first_audio_ms=1500.0)], BATCH: []}, {BATCH: True})
    table = render_compare_table("goforward", entry, "voice", repeat=1)
    assert "batch: 0 turns FAILED" in table
    assert [line.split()[0] for line in table.splitlines()[3:5]] == ["first_audio_ms", "asr_latency_ms"]
    assert "streaming/batch = -" in table


def test_voice_table_rows_per_clip_and_percentiles() -> None:
    rows = [("cards-001", [make_turn(0, source="voice", transcript="Ten of clubs.", first_audio_ms=1000.0,
                                     asr_latency_ms=400.0)], "ten of clubs"),
            ("goforward", [make_turn(0, source="voice", transcript="Go forward.", first_audio_ms=2000.0)], None)]
    overall = overall_stats([t for _n, turns, _r in rows for t in turns])
    table = render_voice_table(STREAMING, rows, overall)
    lines = table.splitlines()
    assert lines[1].split()[:6] == ["clip", "first_audio_ms", "asr_latency_ms", "llm_ttft_ms", "tts_ttfb_ms",
                                    "llm_start_to_1st"]
    assert lines[3].split()[:3] == ["cards-001", "1000", "400"] and "ten of clubs" in lines[3]
    assert lines[4].split()[:3] == ["goforward", "2000", "-"]
    assert lines[6].split()[:4] == ["p50", "(all", "turns)", "1500"]
    assert lines[7].split()[:4] == ["p90", "(all", "turns)", "1900"]


def test_execute_records_a_failed_run(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run_dataflow(yaml_path, out_dir, env, *, timeout_s):
        calls.append((env, timeout_s))
        record = make_turn(0, complete=False).to_json()
        return RunResult(1, 12.5, out_dir, out_dir / "timing.jsonl", None, [record])

    monkeypatch.setattr(running, "run_dataflow", fake_run_dataflow)
    outcome = running.execute(TEXT_DATAFLOW, tmp_path, {"A": "1"}, 300.0, "x batch", 2)
    assert not outcome.ok and outcome.returncode == 1 and outcome.wall_s == 12.5
    assert outcome.problems == ["dora run exited with status 1", "1 of 2 turns missing (ids 1)",
                                "incomplete: turns 0"]
    assert [t.turn_id for t in outcome.turns] == [0]
    env, timeout_s = calls[0]
    assert env == {"A": "1"} and timeout_s == 300.0


def test_log_tail_strips_colour_codes_and_daemon_statistics() -> None:
    log = "\n".join(["first", "\x1b[2m2026\x1b[0m \x1b[33m WARN\x1b[0m something",
                     "INFO dora_daemon: fault tolerance stats restarts=0", "last"])
    assert running.log_tail(log, lines=3) == "first\n2026  WARN something\nlast"


def test_log_tail_keeps_earlier_errors_and_drops_backtrace_frames() -> None:
    log = "\n".join(["start", "04:23:03 ERROR  llm: node was killed by dora", "a", "b", "c",
                     "  11: _PyObject_VectorcallTstate", "             at /tmp/Python-3.11.7/call.h:92:11",
                     "Node `llm` failed: killed", "end"])
    assert running.log_tail(log, lines=3).splitlines() == [
        "04:23:03 ERROR  llm: node was killed by dora", "...", "c", "Node `llm` failed: killed", "end"]


# --------------------------------------------------------------------------------------------------------------
# Stress: checks and memory


def test_stress_checks_pass_and_fail() -> None:
    turns = [make_turn(i) for i in range(5)]
    checks = stress_checks(turns, 5, 0)
    assert all(c["ok"] for c in checks.values()), checks
    bad = [make_turn(0), make_turn(1, complete=False), make_turn(3, segments_lost=1, segments_played=0),
           make_turn(4, reply=" ")]
    checks = stress_checks(bad, 5, 1)
    assert {name for name, c in checks.items() if not c["ok"]} == {
        "exit_status_0", "all_turn_ids_present", "turns_complete", "segments_lost_0",
        "segments_played_eq_tts_segments", "replies_non_empty"}
    assert checks["all_turn_ids_present"]["detail"] == "missing 2"


def _fake_process(proc: Path, pid: int, ppid: int, cmdline: list[str], rss_kb: int | None) -> None:
    folder = proc / str(pid)
    folder.mkdir()
    (folder / "stat").write_text(f"{pid} (py thon) S {ppid} 1 1 0 -1\n")
    (folder / "cmdline").write_bytes("\0".join(cmdline).encode() + b"\0")
    status = "Name:\tpython\n" + (f"VmRSS:\t  {rss_kb} kB\n" if rss_kb is not None else "")
    (folder / "status").write_text(status)


def test_the_cpu_time_taken_by_the_hypervisor_comes_from_proc_stat(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n")
    before = cpu_times(tmp_path)
    assert before == (40, 1000)  # steal is the 8th value; guest time is already in user
    (tmp_path / "stat").write_text("cpu  400 0 100 1200 10 0 0 140 0 0\n")
    assert steal_percent(before, cpu_times(tmp_path)) == pytest.approx(100 * 100 / 850)
    assert steal_percent(before, before) is None and steal_percent(None, before) is None
    assert cpu_times(tmp_path / "missing") is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    assert cpu_times(tmp_path) is None


def test_rss_sampler_reads_node_descendants_only(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a pid: ignored
    _fake_process(proc, 100, 1, ["bench"], 5000)                                     # the root (us)
    _fake_process(proc, 200, 100, ["dora", "run", "x.yml"], 9000)                    # dora run: no node
    _fake_process(proc, 300, 200, ["/venv/bin/python", "/venv/bin/dora-voice-llm"], 700 * 1024)
    _fake_process(proc, 301, 200, ["/venv/bin/python", "/venv/bin/dora-voice-tts"], 300 * 1024)
    _fake_process(proc, 302, 300, ["/venv/bin/dora-voice-llm", "--worker"], 1024)    # summed into the node
    _fake_process(proc, 400, 1, ["/venv/bin/python", "/venv/bin/dora-voice-llm"], 999 * 1024)  # someone else's
    _fake_process(proc, 303, 200, ["/venv/bin/dora-voice-speaker"], None)             # exited meanwhile
    sampler = RssSampler(root_pid=100, proc=proc, clock_ns=lambda: 42)
    taken = sampler.sample_once()
    assert taken == [RssSample(42, "dora-voice-llm", 701 * 1024), RssSample(42, "dora-voice-tts", 300 * 1024)]
    assert sampler.samples == taken


@pytest.mark.real_time
def test_rss_sampler_thread_samples_until_stopped(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    _fake_process(proc, 10, 1, ["root"], 1)
    _fake_process(proc, 11, 10, ["dora-voice-monitor"], 2048)
    sampler = RssSampler(interval_s=0.01, root_pid=10, proc=proc)
    sampler.start()
    deadline = 200
    while len(sampler.samples) < 3 and deadline:
        time.sleep(0.01)
        deadline -= 1
    sampler.stop()
    count = len(sampler.samples)
    assert count >= 3 and {s.node for s in sampler.samples} == {"dora-voice-monitor"}
    assert len(sampler.samples) == count  # nothing after stop()


def test_rss_report_start_mid_end_and_boundedness() -> None:
    mb = 1024
    samples = [RssSample(t, "dora-voice-llm", kb) for t, kb in [
        (5, 100 * mb), (10, 600 * mb), (20, 640 * mb), (30, 650 * mb), (40, 655 * mb), (50, 900 * mb)]]
    samples += [RssSample(t, "dora-voice-tts", kb) for t, kb in [(10, 200 * mb), (30, 300 * mb), (40, 400 * mb)]]
    report = rss_report(samples, start_ns=10, mid_ns=30, end_ns=40)
    llm = report["dora-voice-llm"]
    assert (llm["start_mb"], llm["mid_mb"], llm["end_mb"], llm["peak_mb"]) == (600, 650, 655, 655)
    assert (llm["growth_mb"], llm["late_growth_mb"], llm["samples"], llm["bounded"]) == (55, 5, 4, True)
    tts = report["dora-voice-tts"]
    assert (tts["late_growth_mb"], tts["bounded"]) == (100, False)  # kept growing through the second half
    table = reporting.render_rss_table(report)
    assert "dora-voice-llm" in table and table.splitlines()[-1].endswith("NO")


# --------------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.e2e
def test_bench_runs_one_scenario_in_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    exe = Path(sys.executable).parent / "dora-voice-bench"
    proc = subprocess.run([str(exe), "--scenario", "one_sentence", "--repeat", "1", "--model", TEST_LLM,
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["one_sentence"]
    for mode in (STREAMING, BATCH):
        medians = entry[mode]
        assert medians["turns"] == 1 and medians["failed"] is False
        for metric in ("llm_ttft_ms", "llm_total_ms", "llm_first_chunk_ms", "tts_ttfb_ms",
                       "llm_start_to_first_audio_ms", "wall_s", "audio_s", "rtf"):
            assert isinstance(medians[metric], float) and medians[metric] > 0, (mode, metric, medians)
        assert (out / "one_sentence" / mode / "timeline.png").stat().st_size > 1000
        assert (out / "one_sentence" / mode / "run-1" / "timing.jsonl").read_text().strip()
    assert entry["first_audio_ratio"] == pytest.approx(
        entry[STREAMING]["llm_start_to_first_audio_ms"] / entry[BATCH]["llm_start_to_first_audio_ms"])
    assert "first audio (llm_start_to_first_audio_ms) streaming/batch" in proc.stdout
    assert "[bench] 2/2 one_sentence batch" in proc.stdout


@pytest.mark.e2e
def test_bench_answers_plan_scores_every_question_and_reports_misses(tmp_path: Path) -> None:
    questions = tmp_path / "q.yaml"
    questions.write_text(yaml.safe_dump({"questions": [
        {"id": "capital", "category": "fact", "question": "What is the capital of France?", "accept": ["paris"],
         "forbid": ["capital is (lyon|marseille)"], "source": "Britannica"},
        {"id": "impossible", "category": "cannot", "question": "Say hello.", "accept": ["zzzz-never-said"],
         "forbid": ["xyz"], "source": "a question no reply can pass"}]}), encoding="utf-8")
    out = tmp_path / "bench"
    exe = Path(sys.executable).parent / "dora-voice-bench"
    proc = subprocess.run([str(exe), "--plan", "answers", "--variant", "smollm2-honest", "--questions", str(questions),
                           "--set", "LLM_MAX_TOKENS=40", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    entry = json.loads((out / "summary.json").read_text())["answers"]["smollm2-honest"]
    assert entry["model"] == TEST_LLM and entry["questions"] == 2 and entry["failed"] is False
    assert [m["id"] for m in entry["misses"]][-1] == "impossible"  # the unpassable question is always a miss
    assert entry["misses"][-1]["reply"].strip() and "missing /zzzz-never-said/" in entry["misses"][-1]["reasons"]
    assert entry["latency"]["llm_start_to_first_audio_ms"]["n"] == 2
    assert entry["latency"]["llm_start_to_first_audio_ms"]["p50"] > 0
    assert "answer quality" in proc.stdout and "misses of smollm2-honest" in proc.stdout
    assert "impossible (cannot)" in proc.stdout


def test_v2v_parts_table_adds_up_and_scores_the_transcripts() -> None:
    parts = dict(v2v_eot_ms=250.0, v2v_asr_ms=100.0, v2v_llm_ttft_ms=150.0, v2v_first_chunk_ms=100.0,
                 v2v_tts_ms=60.0, v2v_playback_ms=40.0)
    a = make_turn(0, source="voice", transcript="Ten of clubs.", first_audio_ms=700.0, eot_rule="model",
                  eot_probability=0.97, underruns=0, **parts)
    b0 = make_turn(0, source="voice", transcript="Go forward", first_audio_ms=1500.0, eot_rule="max_wait",
                   eot_probability=0.2, underruns=1, **{**parts, "v2v_eot_ms": 1050.0})
    b1 = make_turn(1, source="voice", transcript="10 meters.", first_audio_ms=700.0, eot_rule="silence", underruns=0,
                   **parts)
    table = render_v2v_parts_table(STREAMING, [("cards-001", [a], "ten of clubs"),
                                               ("goforward", [b1, b0], "go forward ten meters")]).splitlines()
    assert table[4].split()[:10] == ["cards-001", "1", "700", "250", "100", "150", "100", "60", "40", "0"]
    assert table[4].split()[10] == "0.000" and "model:0.97" in table[4]
    # The turns' transcripts are joined in turn order: "go forward" + "10 meters" = the whole reference.
    assert table[5].split()[10] == "0.000" and table[5].index("max_wait:0.20") < table[5].index("silence")
    assert table[7].split()[:5] == ["p50", "(all", "turns)", "3", "700"] and table[7].split()[-3] == "0.000"
    assert table[8].split() == ["p90", "(all", "turns)", "1340"]
    assert table[9] == "share of the parts' p50 sum: eot 36%, asr 14%, ttft 21%, chunk1 14%, tts 9%, play 6%"
    assert table[10] == "end of turn: max_wait 1, model 1, silence 1"

    # Two runs of one clip (two sessions): each run's transcript is scored against the reference on its own.
    runs = [make_turn(0, session_id=s, source="voice", transcript="Ten of clubs.", first_audio_ms=700.0, **parts)
            for s in ("run-1", "run-2")]
    table = render_v2v_parts_table(STREAMING, [("cards-001", runs, "ten of clubs")]).splitlines()
    assert table[4].split()[1] == "2" and table[4].split()[10] == "0.000"


def test_corpus_wer_counts_words_over_all_clips() -> None:
    assert corpus_wer([("go forward ten meters", "Go forward 10 meters."), ("five five", "5")]) == pytest.approx(1 / 6)
    assert corpus_wer([]) is None


def test_roundtrip_scores_what_was_heard_against_the_uninterrupted_replies(tmp_path) -> None:
    import numpy as np
    import soundfile as sf

    from dora_voice_tools.bench.roundtrip import HeardRun, roundtrip

    wavs = []
    for k in range(3):
        wav = tmp_path / f"run-{k}.wav"
        sf.write(str(wav), np.full(1600 * (k + 1), 0.1, dtype=np.float32), 16_000)
        wavs.append(wav)
    heard_texts = {1600: "Go forward 10 meters.", 3200: "He might have been, ate amiable himself."}
    runs = [
        HeardRun("goforward run-1", wavs[0], [make_turn(0, reply="Go forward ten meters.")]),
        HeardRun("librivox run-1", wavs[1], [make_turn(0, reply="He might have been made amiable himself."),
                                             make_turn(1, reply="Cut off.", interrupted=True)]),
        HeardRun("no answer run-1", wavs[2], [make_turn(0, reply="")]),  # nothing to score
        HeardRun("missing run-1", tmp_path / "absent.wav", [make_turn(0, reply="Hello.")]),
    ]
    seen: list[int] = []

    def transcribe(samples):
        seen.append(len(samples))
        return heard_texts[len(samples)]

    entry = roundtrip(runs, transcribe)
    assert seen == [1600, 3200]  # only the runs with a reply and a WAV were transcribed
    assert entry["answers"] == 2
    # 1 word wrong ("made" heard as "ate") of 4 + 7 reference words; the interrupted turn's reply is not expected.
    assert entry["wer"] == pytest.approx(1 / 11)
    assert entry["worst"][0] == "librivox run-1" and entry["worst"][1] == pytest.approx(1 / 7)
    assert entry["wer_whole"] is None  # no synthesizer given


def test_roundtrip_also_scores_the_replies_synthesized_whole(tmp_path) -> None:
    """The voice's own floor: each scored run's replies, joined in turn order, synthesized in one call and heard by
    the same transcriber; runs without an answer are left out of it too."""
    import numpy as np
    import soundfile as sf

    from dora_voice_tools.bench.roundtrip import HeardRun, roundtrip

    wav = tmp_path / "run.wav"
    sf.write(str(wav), np.full(1600, 0.1, dtype=np.float32), 16_000)
    runs = [HeardRun("cards run-1", wav, [make_turn(1, reply="Seven of clubs."), make_turn(0, reply="Hello there.")]),
            HeardRun("missing run-1", tmp_path / "absent.wav", [make_turn(0, reply="Hello.")])]
    synthesized: list[str] = []

    def synthesize(text: str) -> np.ndarray:
        synthesized.append(text)
        return np.full(3200, 0.2, dtype=np.float32)

    def transcribe(samples) -> str:
        # what the pipeline's cut answer was heard as, and what the whole synthesis was heard as
        return "Hello there. Seven of clubs." if len(samples) == 1600 else "Hello there. Seven of gloves."

    entry = roundtrip(runs, transcribe, synthesize)
    assert synthesized == ["Hello there. Seven of clubs."]
    assert entry["wer"] == 0.0 and entry["answers"] == 1
    assert entry["wer_whole"] == pytest.approx(1 / 5)
