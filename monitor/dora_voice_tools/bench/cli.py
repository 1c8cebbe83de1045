"""``dora-voice-bench``: streaming against batch, 1:1, on the real dataflows.

Scenarios and plans live in ``scenarios.yaml`` in this package (its header documents the format; parsed by
:mod:`.plans`). For every scenario and mode the bench runs the real dataflow once with
:func:`~dora_voice_tools.launcher.run_dataflow` (:mod:`.running`) and reports with :mod:`.reporting`:

* text scenarios (``query``) go through the packaged ``test_streaming_pipeline.yml`` (the example's dataflow with
  the ``dora-voice-text-input`` node); the query is sent
  ``repeat`` times as successive turns of one run (``TEXT_INPUT_QUERIES``), each after the previous answer finished
  playing, with ``LLM_HISTORY_TURNS=0`` so that repetitions are independent and a fixed ``LLM_SEED``;
* voice scenarios (``audio`` / ``clips``) replay each clip through the packaged ``voice-chatbot.yml``
  (``AUDIO_INPUT``), one run per clip and repetition.

Modes: streaming is ``LLM_ENABLE_STREAMING=true ENABLE_INTERNAL_SEGMENTATION=true``, batch is both ``false``. The
speaker writes to a WAV in the output folder (``AUDIO_OUTPUT``), so no sound card is needed; it keeps real-time
pace, so a run lasts at least as long as the audio it plays.

Per scenario the bench prints the medians over repetitions side by side (streaming, batch, streaming/batch ratio)
and writes, under ``--out``: ``summary.json``, ``report.txt`` (the printed tables), and per scenario and mode a
folder with the raw monitor JSONL, dora's log and the answer WAV of each run, and ``timeline.png`` of the turn
whose first-audio latency is closest to the median. ``summary.json`` is
``{item: {mode: {metric: median, "turns": n, "failed": bool}, "first_audio_ratio": r}}`` (``r`` with two modes);
with voice clips it also holds ``"_overall": {metric: {"p50", "p90", "n"}}`` over all voice turns, or
``{mode: {metric: ...}}`` when the clips ran in several modes; with exactly two modes, the recordings' runs
alternate between them (A B, then B A, ...) and ``"_paired"`` holds the first-audio differences turn by turn
(second mode minus first: ``median_ms``, ``mean_ms``, ``min_ms``, ``max_ms``, ``pairs``). On Linux,
``"_cpu_steal_percent"`` is the share of the CPU time the hypervisor gave to other machines during the plan
(``/proc/stat``'s steal, ``vmstat``'s ``st``), also printed per run: on a virtual machine it slows every stage, so
compare timings of plans with similar values. The ``stress`` plan sends many queries through one run, checks that
every answer was complete and samples the resident memory of the node processes.

Reading the numbers: repetitions of a text scenario send the identical prompt, so from the second one on llama.cpp
reuses its KV cache and ``llm_ttft_ms`` no longer includes evaluating the query (the first repetition does).
Timings are wall clock on a shared machine: other processes on the same cores (another LLM above all) slow
generation down by large and irregular factors, so compare modes measured at the same time and look at the load
printed with each run.

Durations are in ms (``*_ms``) or s (``*_s``), as in :class:`~dora_voice_monitor.collector.TurnRecord`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from dora_voice import audio
from dora_voice.logs import setup_logging
from dora_voice.models import ModelError, get_spec

from dora_voice_monitor.collector import TurnRecord, percentile, summarize
from dora_voice_monitor.plot import plot_turn_timeline
from dora_voice_monitor.report import session_summary

from dora_voice_tools.bench.answers import (
    LATENCY_METRICS, Question, QuestionSetError, VariantResult, load_questions, render_answers_table, render_misses,
    score_reply,
)
from dora_voice_tools.bench.plans import (
    BenchConfigError, BenchItem, Plan, Variant, answers_env, answers_variants, load_catalog, parse_assignments,
    plan_items, resolve_plan, run_env, run_timeout_s,
)
from dora_voice_tools.bench.reporting import (
    FIRST_AUDIO, item_summary, median_turn, overall_stats, paired_differences, render_compare_table, render_list,
    render_paired, render_rss_table, render_v2v_parts_table, render_voice_table, rss_report, variant_summary,
)
from dora_voice_tools.bench.running import (
    RssSampler, RunOutcome, cpu_times, execute, log_tail, rss_growth_pct, soak_entry, soak_targets,
    soak_voice_input, steal_percent, stress_checks,
)
from dora_voice_tools.bench import echo as echo_plan
from dora_voice_tools.bench import roundtrip as roundtrip_plan
from dora_voice_tools.resources import ROOM_DATAFLOW, SCENARIOS_FILE, TEXT_DATAFLOW, VOICE_DATAFLOW, runs_dir

logger = logging.getLogger(__name__)

SOAK_VOICE_GAP_S = 3.0
"""Silence after each recording in the soak's voice run (s): the VAD ends the turn after 0.4 s."""

EXIT_OK, EXIT_FAILED = 0, 1
"""Exit statuses (argparse exits with 2 on bad arguments)."""


# # Command line


def build_parser() -> argparse.ArgumentParser:
    """The ``dora-voice-bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dora-voice-bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Benchmark the dora-voice pipeline on the real dataflows: streaming against batch, side by side.\n"
            "Each scenario runs once per mode (streaming: LLM_ENABLE_STREAMING=true and\n"
            "ENABLE_INTERNAL_SEGMENTATION=true; batch: both false); repetitions are successive turns of that run\n"
            "(text scenarios) or one run each (voice clips).\n"
            "Prints per scenario the medians (llm_ttft_ms, tokens_per_s, llm_total_ms, first_chunk_ms, tts_ttfb_ms,\n"
            "llm_start_to_first_audio_ms, wall_s, audio_s, rtf, underruns) with the streaming/batch ratio."),
        epilog=(
            "plans (scenarios.yaml; --list shows everything):\n"
            "  quick       each text scenario once, streaming vs batch (default)\n"
            "  exhaustive  every scenario, 3 repetitions\n"
            "  voice       every shipped recording (= tests/data) through voice-chatbot.yml, streaming (voice-to-voice);\n"
            "              with whisper-base installed, also the answers' round-trip WER (what was heard vs the reply),\n"
            "              and the same replies synthesized whole (the voice's own floor)\n"
            "  pacing      LLM_PACING=off vs tts vs adaptive on long answers, streaming\n"
            "  stress      50 queries in one run: completeness checks and node memory (RSS) over time\n"
            "  answers     answer quality: the everyday question set (answers.yaml) per model and prompt variant,\n"
            "              scored (facts present, no forbidden claim, no loop, <= 90 words), with first audio\n\n"
            "  soak        a 200-turn session (--repeat N): text prompts and recordings, node defaults; summary.json\n"
            "              \"soak\": turns, complete, segments, underrun_ms_total, TTFT p50/p90, RSS growth per node\n\n"
            "  distributed every shipped recording through one machine and through two dora daemons on this host\n\n"
            "  echo        14 utterances in a simulated room, 13 barging into answers: self-interruptions,\n"
            "              barge-ins detected and onset->stop, ERLE, WER during playback vs clean\n"
            "              (aec; aec_suppressed: the ASR on AEC3's output; half_duplex)\n\n"
            "examples:\n"
            "  dora-voice-bench --plan quick\n"
            "  dora-voice-bench --scenario one_sentence --repeat 1 --model smollm2-135m --out /tmp/bench\n"
            "  dora-voice-bench --plan voice --clips-dir ../shared/speech\n"
            "  dora-voice-bench --plan pacing --set LLM_FIRST_CHUNK_MAX_TOKENS=4\n"
            "  dora-voice-bench --plan answers --variant qwen0.5b-spoken qwen1.5b-spoken\n\n"
            "  dora-voice-bench --plan echo --clips-dir ../shared/speech --set ROOM_RT60_MS=400\n\n"
            "output (--out, default runs/bench-<timestamp> in the current directory): summary.json\n"
            "({scenario: {\"streaming\": {medians}, \"batch\": {...}, \"first_audio_ratio\": r}}; voice plans add\n"
            "\"_overall\": {metric: {\"p50\", \"p90\"}}, and with two modes \"_paired\" (first audio, turn by\n"
            "turn: second mode minus first); the echo plan: \"echo\" (the first variant, aec) and\n"
            "\"echo_variants\"), report.txt (the printed tables), and per scenario and mode\n"
            "timeline.png (the median turn) and run-<k>/ (timing.jsonl, dora.log, answer.wav).\n"
            "Exit status: 0 all runs complete, 1 a run failed or a stress check failed, 2 bad arguments.\n"
            "Timings depend on the machine's load: benchmark on an otherwise idle machine."),
    )
    parser.add_argument("--plan", help="plan to run (default: quick, or a custom plan with --scenario)")
    parser.add_argument("--scenario", nargs="+", metavar="NAME", default=[],
                        help="run these scenarios (with --plan: instead of the plan's, with its settings)")
    parser.add_argument("--repeat", type=_positive_int, metavar="N",
                        help="repetitions per scenario (stress: number of turns); default from the plan")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: runs/bench-<timestamp>)")
    parser.add_argument("--model", metavar="NAME", help="LLM model for every run (dora-voice-models list)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for every node of every run (repeatable; overrides everything else)")
    parser.add_argument("--clips-dir", type=Path, metavar="DIR",
                        help="voice clips folder replacing the plan's voice scenarios (implies --plan voice)")
    parser.add_argument("--scenarios-file", type=Path, default=SCENARIOS_FILE, metavar="YAML",
                        help="scenarios and plans (default: the packaged scenarios.yaml)")
    parser.add_argument("--variant", nargs="+", metavar="NAME", default=[],
                        help="--plan answers: run only these variants (default: all of the plan's)")
    parser.add_argument("--questions", type=Path, metavar="YAML",
                        help="--plan answers: question file instead of the plan's (format: the packaged answers.yaml)")
    parser.add_argument("--list", action="store_true", help="list plans and scenarios, then exit")
    return parser


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


class _Bench:
    """Runs a plan, prints progress and tables, and writes the output folder."""

    def __init__(self, plan: Plan, items: list[BenchItem], out: Path, overrides: Mapping[str, str],
                 answers: tuple[list[Question], tuple[Variant, ...]] | None = None) -> None:
        self.plan = plan
        self.items = items
        self.answers = answers
        self.out = out
        self.overrides = dict(overrides)
        self.summary: dict[str, Any] = {}
        self.report: list[str] = []
        self.failed = False
        self.done = 0
        self._rounds = 0  # repetitions of a recording run so far, all items (variant order, run_compare)
        self.total = sum(len(i.variants) * (self.plan.repeat if i.clip is not None else 1) for i in items)
        if answers is not None:
            self.total = len(answers[1])

    def say(self, text: str) -> None:
        """Print a report block and keep it for report.txt."""
        print(text, flush=True)
        self.report.append(text)

    def write(self) -> None:
        """Write summary.json and report.txt (after every item, so an interrupted bench keeps its results)."""
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2, allow_nan=False) + "\n",
                                               encoding="utf-8")
        (self.out / "report.txt").write_text("\n\n".join(self.report) + "\n", encoding="utf-8")

    def run_one(self, item: BenchItem, variant: Variant, run_dir: Path, turns: int, queries: int) -> RunOutcome:
        """One dataflow run with progress lines; prints the log tail when it failed."""
        self.done += 1
        label = f"{item.name} {variant.name}"
        env = run_env(item, variant, self.overrides, run_dir, queries)
        yaml_path = TEXT_DATAFLOW if item.clip is None else VOICE_DATAFLOW
        input_s = item.clip.duration_s if item.clip is not None else 0.0
        print(f"[bench] {self.done}/{self.total} {label} ({turns} turn{'' if turns == 1 else 's'}; machine load "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) ...", flush=True)
        cpu_before = cpu_times()
        outcome = execute(yaml_path, run_dir, env, run_timeout_s(env, turns, input_s), label,
                          turns if item.clip is None else None)
        steal = steal_percent(cpu_before, cpu_times())
        status = "ok" if outcome.ok else "FAILED: " + "; ".join(outcome.problems)
        print(f"[bench] {self.done}/{self.total} {label}: {status} ({len(outcome.turns)} turns, "
              f"{outcome.wall_s:.1f} s{'' if steal is None else f'; CPU time taken by the hypervisor {steal:.0f} %'})",
              flush=True)
        if not outcome.ok:
            self.failed = True
            print(f"[bench] last lines of {run_dir / 'dora.log'}:\n{log_tail(_read_log(run_dir))}", flush=True)
        return outcome

    def plot(self, item: BenchItem, variant: str, turns: Sequence[TurnRecord]) -> None:
        """timeline.png of the median turn of one item and variant."""
        turn = median_turn(turns, FIRST_AUDIO[item.pipeline])
        if turn is None:
            return
        try:
            plot_turn_timeline(turn, self.out / item.name / variant / "timeline.png")
        except ValueError as exc:
            logger.warning("%s %s: no timeline: %s", item.name, variant, exc)

    def run_compare(self) -> None:
        """Every item and variant; a table per item; the voice overview when there are voice items."""
        voice: dict[str, list[tuple[str, list[TurnRecord], str | None]]] = {}
        heard: dict[str, list[roundtrip_plan.HeardRun]] = {}
        paired: list[tuple[list[TurnRecord], list[TurnRecord]]] = []
        for item in self.items:
            by_variant: dict[str, list[TurnRecord]] = {}
            failed: dict[str, bool] = {}
            outcomes: dict[str, list[RunOutcome]] = {variant.name: [] for variant in item.variants}
            if item.clip is not None:
                for k in range(self.plan.repeat):
                    # the variants take turns, in the opposite order every other time (A B, B A, A B, ...), so a
                    # drift of the machine's speed during the bench does not favour the variant that runs first
                    order = item.variants if self._rounds % 2 == 0 else tuple(reversed(item.variants))
                    self._rounds += 1
                    for variant in order:
                        outcomes[variant.name].append(self.run_one(
                            item, variant, self.out / item.name / variant.name / f"run-{k + 1}", 1, 1))
            else:
                for variant in item.variants:
                    outcomes[variant.name].append(self.run_one(
                        item, variant, self.out / item.name / variant.name / "run-1", self.plan.repeat,
                        self.plan.repeat))
            if item.clip is not None and len(item.variants) == 2:
                first, second = (outcomes[v.name] for v in item.variants)
                paired += [(a.turns, b.turns) for a, b in zip(first, second)]
            for variant in item.variants:
                folder = self.out / item.name / variant.name
                runs = outcomes[variant.name]
                by_variant[variant.name] = [t for r in runs for t in r.turns]
                failed[variant.name] = not all(r.ok for r in runs)
                if item.clip is not None:
                    heard.setdefault(variant.name, []).extend(
                        roundtrip_plan.HeardRun(f"{item.name} run-{k + 1}", folder / f"run-{k + 1}" / "answer.wav",
                                                r.turns) for k, r in enumerate(runs))
                self.plot(item, variant.name, by_variant[variant.name])
            entry = item_summary(item.pipeline, by_variant, failed)
            self.summary[item.name] = entry
            if item.clip is None or len(item.variants) > 1:
                self.say(render_compare_table(item.name, entry, item.pipeline, repeat=self.plan.repeat))
            if item.clip is not None:
                split = [v for v, turns in by_variant.items() if len(turns) > self.plan.repeat]
                if split:
                    logger.warning("%s: the VAD found more utterances than repetitions (%s)", item.name,
                                   ", ".join(split))
                for v, turns in by_variant.items():
                    voice.setdefault(v, []).append((item.name, turns, item.clip.transcript))
            self.write()
        if voice:
            overall = {v: overall_stats([t for _n, turns, _r in rows for t in turns]) for v, rows in voice.items()}
            for v, rows in voice.items():
                self.say(render_voice_table(v, rows, overall[v]))
                self.say(render_v2v_parts_table(v, rows))
            self.summary["_overall"] = next(iter(overall.values())) if len(overall) == 1 else overall
            if paired:
                names = list(voice)
                entry = paired_differences(paired)
                self.summary["_paired"] = {"variants": names, **(entry or {})}
                self.say(render_paired(names, entry))
            self.write()
            self.run_roundtrip(heard)

    def run_roundtrip(self, heard: dict[str, list[roundtrip_plan.HeardRun]]) -> None:
        """The answer round-trip WER of every voice variant (skipped, with a note, without whisper-base)."""
        transcribe = roundtrip_plan.load_transcriber()
        if transcribe is None:
            self.say(f"answer round-trip WER: skipped ({roundtrip_plan.ROUNDTRIP_MODEL} is not installed: "
                     f"dora-voice-models install {roundtrip_plan.ROUNDTRIP_MODEL})")
            return
        synthesize = roundtrip_plan.load_whole_synthesizer(
            self.overrides.get("TTS_BACKEND", "piper"), {**os.environ, **self.overrides})
        entries = {v: roundtrip_plan.roundtrip(runs, transcribe, synthesize) for v, runs in heard.items()}
        for v, entry in entries.items():
            worst = "" if not entry["worst"] else f"; worst {entry['worst'][0]} {entry['worst'][1]:.3f}"
            wer = "n/a" if entry["wer"] is None else f"{entry['wer']:.3f}"
            floor = ("" if entry["wer_whole"] is None else
                     f"; the same replies synthesized whole, one call each: {entry['wer_whole']:.3f} (the voice's "
                     f"own floor)")
            self.say(f"answer round-trip WER ({v}; what was heard, transcribed by {entry['model']}, against the "
                     f"replies): {wer} over {entry['answers']} answers{worst}{floor}")
        self.summary["_roundtrip"] = next(iter(entries.values())) if len(entries) == 1 else entries
        self.write()

    def run_stress(self) -> None:
        """All the plan's queries back to back in one run; completeness checks, session summary, RSS table."""
        queries = [item.scenario.query or "" for item in self.items]
        turns = self.plan.repeat
        base = BenchItem("stress", self.items[0].scenario, self.items[0].variants, dict(self.plan.env))
        variant = base.variants[0]
        run_dir = self.out / "stress" / variant.name / "run-1"
        self.done += 1
        env = run_env(base, variant, self.overrides, run_dir, 1)
        env["TEXT_INPUT_QUERIES"] = "|".join(queries[k % len(queries)] for k in range(turns))
        print(f"[bench] 1/1 stress {variant.name} ({turns} turns, queries: "
              f"{', '.join(item.name for item in self.items)}) ...", flush=True)
        outcome, memory = self._session("stress", TEXT_DATAFLOW, run_dir, env, turns, turns)
        checks = stress_checks(outcome.turns, turns, outcome.returncode)
        if not outcome.ok or not all(c["ok"] for c in checks.values()):
            self.failed = True
            if outcome.ok:  # _session printed the log tail of a failed run already
                print(f"[bench] last lines of {run_dir / 'dora.log'}:\n{log_tail(_read_log(run_dir))}", flush=True)
        entry = {variant.name: variant_summary(outcome.turns, "text", failed=not outcome.ok),
                 "checks": checks, "rss_mb": memory}
        self.summary["stress"] = entry
        self.plot(base, variant.name, outcome.turns)
        lines = [f"stress: {turns} queries in one run ({variant.name}), {len(outcome.turns)} turns reported, "
                 f"run {outcome.wall_s:.0f} s"]
        lines += [f"  {'PASS' if c['ok'] else 'FAIL'}  {name}: {c['detail']}" for name, c in checks.items()]
        self.say("\n".join(lines))
        self.say(session_summary(summarize(outcome.turns)))
        self.say(render_rss_table(memory))
        if memory and not all(r["bounded"] for r in memory.values()):
            self.failed = True
        self.write()

    def run_answers(self) -> None:
        """The question set once per variant (one run each, a question per turn); scores, latency, every miss."""
        assert self.answers is not None
        questions, variants = self.answers
        results: list[VariantResult] = []
        for variant in variants:
            self.done += 1
            run_dir = self.out / "answers" / variant.name / "run-1"
            env = answers_env(self.plan, variant, self.overrides, run_dir, [q.question for q in questions])
            model = env.get("LLM_MODEL_PATH") or env.get("LLM_MODEL") or "(node default)"
            print(f"[bench] {self.done}/{self.total} answers {variant.name} ({model}, {len(questions)} questions; "
                  f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) ...", flush=True)
            outcome = execute(TEXT_DATAFLOW, run_dir, env, run_timeout_s(env, len(questions)),
                              f"answers {variant.name}", len(questions))
            print(f"[bench] {self.done}/{self.total} answers {variant.name}: "
                  f"{'ok' if outcome.ok else 'FAILED: ' + '; '.join(outcome.problems)} ({len(outcome.turns)} turns, "
                  f"{outcome.wall_s:.1f} s)", flush=True)
            if not outcome.ok:
                self.failed = True
                print(f"[bench] last lines of {run_dir / 'dora.log'}:\n{log_tail(_read_log(run_dir))}", flush=True)
            by_turn = {t.turn_id: t for t in outcome.turns}
            scores = [score_reply(q, by_turn[i].reply if i in by_turn else "") for i, q in enumerate(questions)]
            result = VariantResult(variant.name, model, scores, _latency(outcome.turns),
                                   _stop_reasons(_read_log(run_dir)), failed=not outcome.ok)
            results.append(result)
            self.summary.setdefault("answers", {})[variant.name] = result.as_json()
            turn = median_turn(outcome.turns, FIRST_AUDIO["text"])
            if turn is not None:
                try:
                    plot_turn_timeline(turn, run_dir.parent / "timeline.png")
                except ValueError as exc:
                    logger.warning("answers %s: no timeline: %s", variant.name, exc)
            self.write()
        self.say(render_answers_table(results))
        for r in results:
            self.say(f"misses of {r.name} ({r.model}):\n{render_misses(r.scores)}")

    def _session(self, label: str, yaml_path: Path, run_dir: Path, env: dict[str, str], turns: int,
                 expected: int | None) -> tuple[RunOutcome, dict[str, dict[str, Any]]]:
        """One long run with node memory sampled; ``(outcome, rss rows)`` (rows from the first turn started to the
        last answer played, mid = the middle turn)."""
        sampler = RssSampler()
        sampler.start()
        try:
            outcome = execute(yaml_path, run_dir, env, run_timeout_s(env, turns), label, expected)
        finally:
            sampler.stop()
        print(f"[bench] {label}: {len(outcome.turns)} turns in {outcome.wall_s:.1f} s", flush=True)
        if not outcome.ok:
            print(f"[bench] last lines of {run_dir / 'dora.log'}:\n{log_tail(_read_log(run_dir))}", flush=True)
        ordered = sorted(outcome.turns, key=lambda t: t.turn_id)
        starts = [t.llm_start_ns for t in ordered if t.llm_start_ns is not None]
        ends = [t.turn_played_ns for t in ordered if t.turn_played_ns is not None]
        memory: dict[str, dict[str, Any]] = {}
        if starts and ends:
            mid = ordered[len(ordered) // 2].llm_start_ns or starts[0]
            memory = rss_report(sampler.samples, starts[0], mid, max(ends))
        return outcome, memory

    def run_soak(self) -> None:
        """A long session: the text queries cycled in one run of the text pipeline, and one voice turn per ten (at
        least one per clip) from the voice scenarios' recordings in one run of the voice pipeline; the ``soak``
        entry of summary.json and its targets."""
        text_items = [item for item in self.items if item.pipeline == "text"]
        clips = [item.clip.path for item in self.items if item.clip is not None]
        total = self.plan.repeat
        voice_turns = min(total - 1, max(len(clips), total // 10)) if clips else 0
        text_turns = total - voice_turns
        variant = text_items[0].variants[0]
        base = BenchItem("soak", text_items[0].scenario, text_items[0].variants, dict(self.plan.env))
        run_dir = self.out / "soak" / "text"
        env = run_env(base, variant, self.overrides, run_dir, 1)
        env["TEXT_INPUT_QUERIES"] = "|".join(text_items[k % len(text_items)].scenario.query or ""
                                             for k in range(text_turns))
        self.done += 1
        print(f"[bench] soak: {text_turns} text turns ({', '.join(i.name for i in text_items)}) in one run ...",
              flush=True)
        text, text_memory = self._session("soak text", TEXT_DATAFLOW, run_dir, env, text_turns, text_turns)
        turns = list(text.turns)
        memory = dict(text_memory)
        voice: RunOutcome | None = None
        if voice_turns:
            run_dir = self.out / "soak" / "voice"
            run_dir.mkdir(parents=True, exist_ok=True)
            wav = soak_voice_input(clips, voice_turns, SOAK_VOICE_GAP_S, run_dir / "input.wav")
            voice_item = next(item for item in self.items if item.clip is not None)
            env = run_env(voice_item, variant, self.overrides, run_dir, 1)
            env.update({"AUDIO_INPUT": str(wav), "BARGE_IN": "false", **self.overrides})
            print(f"[bench] soak: {voice_turns} voice turns ({len(clips)} recordings cycled) in one run ...",
                  flush=True)
            voice, voice_memory = self._session("soak voice", VOICE_DATAFLOW, run_dir, env, voice_turns, None)
            turns += voice.turns
            for node, row in voice_memory.items():
                memory.setdefault(node, row)  # mic, vad, asr: only in the voice run
        entry = soak_entry(turns, rss_growth_pct(memory))
        targets = soak_targets(entry, total)
        self.summary["soak"] = entry
        lines = [f"soak: {total} turns asked ({text_turns} text, {voice_turns} voice), {entry['turns']} reported"]
        lines += [f"  {'PASS' if c['ok'] else 'FAIL'}  {name}: {c['detail']}" for name, c in targets.items()]
        self.say("\n".join(lines))
        self.say(session_summary(summarize(turns)))
        self.say(render_rss_table(memory))
        self.plot(base, variant.name, text.turns)
        runs_ok = text.ok and (voice is None or voice.ok)
        if not runs_ok or not targets["all_turns_complete"]["ok"] or not targets["segments_lost_0"]["ok"]:
            self.failed = True

    def run_echo(self) -> None:
        """One conversation per variant in the simulated room; the echo figures (:mod:`.echo`)."""
        import soundfile  # noqa: PLC0415

        clips = [(item.clip.name, item.clip.transcript, audio.read_wav_mono(item.clip.path)) for item in self.items
                 if item.clip is not None]
        clips = [(name, text, samples if rate == echo_plan.RATE_HZ else audio.resample(samples, rate,
                                                                                      echo_plan.RATE_HZ))
                 for name, text, (samples, rate) in clips]
        conversation = echo_plan.compose(clips, self.plan.repeat)
        input_wav = self.out / "echo" / "conversation.wav"
        audio.write_wav(input_wav, conversation.samples, echo_plan.RATE_HZ)
        self.say(f"conversation: {len(conversation.utterances)} utterances, "
                 f"{conversation.samples.shape[0] / echo_plan.RATE_HZ:.1f} s ({input_wav}); user speech onsets at "
                 + ", ".join(f"{u.onset_s:.2f}" for u in conversation.utterances) + " s")
        base = self.items[0]
        results: dict[str, Any] = {}
        runs: list[tuple[str, RunOutcome, Path]] = []
        for variant in base.variants:
            run_dir = self.out / "echo" / variant.name / "run-1"
            env = run_env(base, variant, self.overrides, run_dir, 1)
            env.update({"AUDIO_INPUT": str(input_wav), "ECHO_REPORT": str(run_dir / "echo.jsonl")})
            env = {**env, **self.overrides}
            self.done += 1
            print(f"[bench] {self.done}/{len(base.variants)} echo {variant.name} ({len(conversation.utterances)} "
                  f"utterances; machine load {os.getloadavg()[0]:.1f}) ...", flush=True)
            outcome = execute(ROOM_DATAFLOW, run_dir, env,
                              run_timeout_s(env, len(conversation.utterances),
                                            conversation.samples.shape[0] / echo_plan.RATE_HZ),
                              f"echo {variant.name}", None)
            problems = [p for p in outcome.problems if not p.startswith("segments played")]
            print(f"[bench] echo {variant.name}: {'ok' if not problems else 'FAILED: ' + '; '.join(problems)} "
                  f"({len(outcome.turns)} turns, {outcome.wall_s:.1f} s)", flush=True)
            if problems:
                self.failed = True
                print(f"[bench] last lines of {run_dir / 'dora.log'}:\n{log_tail(_read_log(run_dir))}", flush=True)
            runs.append((variant.name, outcome, run_dir))
        asr_env = {**base.env, **self.overrides}
        clean = echo_plan.transcribe_clean(conversation, _clean_transcriber(asr_env))
        for name, outcome, run_dir in runs:
            try:
                answer, rate = soundfile.read(run_dir / "answer.wav", dtype="float32")
                echo_file = run_dir / "echo.jsonl"
                windows = ([json.loads(line) for line in echo_file.read_text().splitlines() if line.strip()]
                           if echo_file.exists() else [])
                figures = echo_plan.analyze(conversation, outcome.turns, answer, rate, windows, clean)
            except (OSError, ValueError) as exc:
                self.failed = True
                self.say(f"echo ({name}): no figures: {exc}")
                continue
            results[name] = figures
            self.say(echo_plan.render(name, figures))
            self.say(session_summary(summarize(outcome.turns)))
        if results:
            first = results.get(base.variants[0].name) or next(iter(results.values()))
            self.summary["echo"] = {key: first[key] for key in echo_plan.ECHO_KEYS}
            self.summary["echo_variants"] = results
        self.write()

    def run(self) -> int:
        """Run the plan; the exit status."""
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        cpu_before = cpu_times()
        what = (f"{self.plan.kind}, {self.plan.repeat} turns" if self.plan.kind in ("stress", "soak", "echo")
                else f"repeat {self.plan.repeat}")
        count = f"{len(self.items)} item(s)"
        if self.answers is not None:
            what, count = "answers", f"{len(self.answers[0])} questions x {len(self.answers[1])} variant(s)"
        self.say(f"dora-voice-bench: plan {self.plan.name} ({what}), {count}, output {self.out}\n"
                 f"started {_dt.datetime.now().isoformat(timespec='seconds')}"
                 + (f", overrides: {' '.join(f'{k}={v}' for k, v in self.overrides.items())}"
                    if self.overrides else ""))
        if self.plan.kind == "stress":
            self.run_stress()
        elif self.plan.kind == "answers":
            self.run_answers()
        elif self.plan.kind == "soak":
            self.run_soak()
        elif self.plan.kind == "echo":
            self.run_echo()
        else:
            self.run_compare()
        steal = steal_percent(cpu_before, cpu_times())
        if steal is not None:  # a virtual machine's CPUs lent to others: every timing of the plan is slower
            self.summary["_cpu_steal_percent"] = round(steal, 1)
        self.say(f"plan {self.plan.name} took {time.monotonic() - started:.0f} s"
                 + ("" if steal is None else f"; the hypervisor took {steal:.1f} % of this machine's CPU time "
                    "(vmstat's st; compare timings of runs with similar values)")
                 + ("; SOME RUNS FAILED (see above)" if self.failed else ""))
        self.write()
        print(f"[bench] wrote {self.out / 'summary.json'}", flush=True)
        return EXIT_FAILED if self.failed else EXIT_OK


def _latency(turns: Sequence[TurnRecord]) -> dict[str, dict[str, float]]:
    """``{metric: {"p50", "p90", "n"}}`` over the turns that have it (see ``answers.LATENCY_METRICS``)."""
    out: dict[str, dict[str, float]] = {}
    for metric in LATENCY_METRICS:
        values = [v for t in turns if (v := getattr(t, metric)) is not None]
        if values:
            out[metric] = {"p50": round(percentile(values, 50), 1), "p90": round(percentile(values, 90), 1),
                           "n": len(values)}
    return out


_STOP_LOGS = {"repetition": "started repeating itself", "unfinished sentence dropped": "unfinished sentence dropped"}


def _stop_reasons(log: str) -> dict[str, int]:
    """How often the LLM node logged that it ended a reply early (repetition guard, cut at a cap)."""
    return {reason: log.count(needle) for reason, needle in _STOP_LOGS.items() if needle in log}


def _clean_transcriber(env: Mapping[str, str]):
    """The ASR the dataflow's asr node uses (same model and settings from ``env``), loaded in this process."""
    from dora_voice.config import load_config  # noqa: PLC0415
    from dora_voice.nodes.asr import AsrConfig, load_whisper  # noqa: PLC0415

    return load_whisper(load_config(AsrConfig, {k: v for k, v in env.items() if k.startswith("ASR_")}))


def _read_log(run_dir: Path) -> str:
    path = run_dir / "dora.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``dora-voice-bench``; returns the exit status (see ``--help``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        catalog = load_catalog(args.scenarios_file)
        if args.list:
            print(render_list(catalog))
            return EXIT_OK
        plan, catalog = resolve_plan(catalog, args.plan, args.scenario, args.repeat, args.clips_dir)
        answers = None
        if plan.kind == "answers":
            questions_file = args.questions or plan.questions
            assert questions_file is not None
            answers = (load_questions(questions_file), answers_variants(plan, args.variant))
            items: list[BenchItem] = []
        else:
            if args.variant or args.questions:
                raise BenchConfigError("--variant and --questions are for a kind: answers plan (--plan answers)")
            items = plan_items(plan, catalog)
        overrides = parse_assignments(args.assignments)
        if args.model:
            get_spec(args.model, "llm")
            overrides = {"LLM_MODEL": args.model, **overrides}
    except (BenchConfigError, ModelError, QuestionSetError) as exc:
        parser.error(str(exc))
    out = args.out or runs_dir() / f"bench-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        return _Bench(plan, items, out.resolve(), overrides, answers).run()
    except KeyboardInterrupt:
        print("[bench] interrupted; partial results are in " + str(out), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())