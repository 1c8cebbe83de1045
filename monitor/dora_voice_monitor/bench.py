"""``dora-voice-bench``: streaming against batch, 1:1, on the real dataflows.

Scenarios and plans live in ``scenarios.yaml`` beside this module (its header documents the format). For every
scenario and mode the bench runs the real dataflow once with :func:`~dora_voice.launcher.run_dataflow`:

* text scenarios (``query``) go through ``examples/voice-chatbot/test_streaming_pipeline.yml``; the query is sent
  ``repeat`` times as successive turns of one run (``TEXT_INPUT_QUERIES``), each after the previous answer finished
  playing, with ``LLM_HISTORY_TURNS=0`` so that repetitions are independent and a fixed ``LLM_SEED``;
* voice scenarios (``audio`` / ``clips``) replay each clip through ``dataflows/voice-chatbot.yml``
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
``{mode: {metric: ...}}`` when the clips ran in several modes. The ``stress`` plan sends many queries through one
run, checks that every answer was complete and samples the resident memory of the node processes.

Reading the numbers: repetitions of a text scenario send the identical prompt, so from the second one on llama.cpp
reuses its KV cache and ``llm_ttft_ms`` no longer includes evaluating the query (the first repetition does).
Timings are wall clock on a shared machine: other processes on the same cores (another LLM above all) slow
generation down by large and irregular factors, so compare modes measured at the same time and look at the load
printed with each run.

Durations are in ms (``*_ms``) or s (``*_s``), as in :class:`~dora_voice_monitor.collector.TurnRecord`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import soundfile as sf
import yaml

from dora_voice.config import env_vars, parse_bool
from dora_voice.launcher import DATAFLOWS, REPO_ROOT, LaunchError, run_dataflow
from dora_voice.logs import setup_logging
from dora_voice.models import ModelError, get_spec
from dora_voice.nodes.llm import LlmConfig

from dora_voice_monitor.collector import TurnRecord, percentile, summarize
from dora_voice_monitor.plot import plot_turn_timeline
from dora_voice_monitor.report import fmt_num, session_summary, truncate

logger = logging.getLogger(__name__)

SCENARIOS_FILE = Path(__file__).with_name("scenarios.yaml")
TEXT_DATAFLOW = REPO_ROOT / "examples" / "voice-chatbot" / "test_streaming_pipeline.yml"
VOICE_DATAFLOW = DATAFLOWS / "voice-chatbot.yml"

STREAMING, BATCH = "streaming", "batch"
MODES: dict[str, dict[str, str]] = {
    STREAMING: {"LLM_ENABLE_STREAMING": "true", "ENABLE_INTERNAL_SEGMENTATION": "true"},
    BATCH: {"LLM_ENABLE_STREAMING": "false", "ENABLE_INTERNAL_SEGMENTATION": "false"},
}
"""Environment of each mode."""

SEED = 7
"""``LLM_SEED`` of every run: with the same seed, streaming and batch get the same reply for the same turn."""

DEFAULT_MAX_TOKENS: int = env_vars(LlmConfig)["LLM_MAX_TOKENS"][0]
"""The LLM node's default ``LLM_MAX_TOKENS`` (used to size run time-outs)."""

PLAN_SELECTORS = ("text", "voice", "all")
"""Plan ``scenarios`` values that select by pipeline instead of by name."""

COMPARE_ROWS: tuple[tuple[str, str], ...] = (
    ("llm_ttft_ms", "llm_ttft_ms"), ("tokens_per_s", "tokens_per_s"), ("llm_total_ms", "llm_total_ms"),
    ("first_chunk_ms", "llm_first_chunk_ms"), ("tts_ttfb_ms", "tts_ttfb_ms"),
    ("llm_start_to_first_audio_ms", "llm_start_to_first_audio_ms"), ("wall_s", "wall_s"), ("audio_s", "audio_s"),
    ("rtf", "rtf"), ("underruns", "underruns"), ("llm_tokens", "llm_tokens"),
)
"""Rows of the side-by-side table: (label, :class:`TurnRecord` field). summary.json uses the field names."""

VOICE_ROWS: tuple[tuple[str, str], ...] = (("first_audio_ms", "first_audio_ms"), ("asr_latency_ms", "asr_latency_ms"))
"""Rows added on top of :data:`COMPARE_ROWS` for voice scenarios."""

VOICE_METRICS = ("first_audio_ms", "asr_latency_ms", "llm_ttft_ms", "tts_ttfb_ms", "llm_start_to_first_audio_ms")
"""Columns of the per-clip voice table (ms), with p50/p90 over all voice turns."""

FIRST_AUDIO = {"text": "llm_start_to_first_audio_ms", "voice": "first_audio_ms"}
"""The first-audio latency of each pipeline: typed turns have no speech end, so LLM start -> first sample played."""

EXIT_OK, EXIT_FAILED = 0, 1
"""Exit statuses (argparse exits with 2 on bad arguments)."""
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOG_NOISE = ("fault tolerance stats",)
_BACKTRACE_FRAME = re.compile(r"^\s+(\d+: |at /)")
_ERROR_LINE = re.compile(r"\bERROR\b|Traceback|Error:|failed:")


class BenchConfigError(ValueError):
    """scenarios.yaml, a plan or a command-line choice is invalid. The message says where and what is known."""


# --------------------------------------------------------------------------------------------------------------
# Scenarios and plans


@dataclass(frozen=True)
class Scenario:
    """One request to the assistant (see the header of scenarios.yaml).

    Attributes:
        name: key in scenarios.yaml.
        description: one line for ``--list``.
        query: typed query (text pipeline), else ``None``.
        audio: one WAV clip (voice pipeline), relative to the repository root, else ``None``.
        clips: a folder whose every ``*.wav`` is a voice item, else ``None``.
        stream: ``"true"``, ``"false"`` or ``"compare"``.
        max_tokens: ``LLM_MAX_TOKENS`` for this scenario, or ``None`` for the node's default.
        env: extra environment for every node.
        transcripts: what each clip says, by file name (voice only; optional).
    """

    name: str
    description: str = ""
    query: str | None = None
    audio: Path | None = None
    clips: Path | None = None
    stream: str = "compare"
    max_tokens: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    transcripts: Mapping[str, str] = field(default_factory=dict)

    @property
    def pipeline(self) -> str:
        """``"text"`` or ``"voice"``."""
        return "text" if self.query is not None else "voice"


@dataclass(frozen=True)
class Plan:
    """A set of scenarios and how to run them (see the header of scenarios.yaml).

    Attributes:
        name: key in scenarios.yaml (``"custom"`` for ``--scenario`` without ``--plan``).
        description: one line for ``--list``.
        scenarios: scenario names, in order.
        repeat: repetitions per scenario (stress: turns of the one run).
        stream: overrides each scenario's ``stream`` when set.
        variants: named environments compared instead of streaming/batch (each on top of ``stream``).
        env: extra environment for every run.
        kind: ``"compare"`` or ``"stress"``.
    """

    name: str
    description: str = ""
    scenarios: tuple[str, ...] = ()
    repeat: int = 1
    stream: str | None = None
    variants: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    kind: str = "compare"


@dataclass(frozen=True)
class Catalog:
    """Every scenario and plan of a scenarios file, validated."""

    scenarios: Mapping[str, Scenario]
    plans: Mapping[str, Plan]

    def scenario(self, name: str) -> Scenario:
        """The scenario called ``name``.

        Raises:
            BenchConfigError: unknown name; the message lists the known ones.
        """
        if name not in self.scenarios:
            raise BenchConfigError(f"unknown scenario {name!r}; known: {', '.join(self.scenarios)}")
        return self.scenarios[name]

    def plan(self, name: str) -> Plan:
        """The plan called ``name``.

        Raises:
            BenchConfigError: unknown name; the message lists the known ones.
        """
        if name not in self.plans:
            raise BenchConfigError(f"unknown plan {name!r}; known: {', '.join(self.plans)}")
        return self.plans[name]


_SCENARIO_KEYS = {"description", "query", "audio", "clips", "stream", "max_tokens", "env", "transcripts"}
_PLAN_KEYS = {"description", "scenarios", "repeat", "stream", "variants", "env", "kind", "turns"}


def parse_stream(value: Any, where: str) -> str:
    """Normalise a ``stream`` value: YAML booleans or ``true``/``false``/``compare`` (any case).

    Raises:
        BenchConfigError: anything else.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value.strip().lower() == "compare":
            return "compare"
        try:
            return "true" if parse_bool(value) else "false"
        except ValueError:
            pass
    raise BenchConfigError(f"{where}: stream must be true, false or compare, got {value!r}")


def parse_env(value: Any, where: str) -> dict[str, str]:
    """An ``env`` mapping with every value as a string.

    Raises:
        BenchConfigError: not a mapping, a key that is not an environment variable name, or a nested value.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BenchConfigError(f"{where}: env must be a mapping VAR: value, got {type(value).__name__}")
    out = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise BenchConfigError(f"{where}: {key!r} is not an environment variable name")
        if isinstance(raw, (Mapping, list)) or raw is None:
            raise BenchConfigError(f"{where}: env {key} must be a string, number or boolean, got {raw!r}")
        out[key] = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    return out


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchConfigError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _check_keys(data: Any, known: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BenchConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise BenchConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return data


def parse_scenario(name: str, data: Any, source: str = "scenarios.yaml") -> Scenario:
    """Validate one scenario entry.

    Raises:
        BenchConfigError: unknown key, not exactly one of query/audio/clips, a query containing ``|`` (the
            separator of ``TEXT_INPUT_QUERIES``), a bad ``stream``, ``max_tokens``, ``env`` or ``transcripts``.
    """
    where = f"{source}: scenario {name!r}"
    data = _check_keys(data, _SCENARIO_KEYS, where)
    sources = [key for key in ("query", "audio", "clips") if data.get(key) is not None]
    if len(sources) != 1:
        raise BenchConfigError(f"{where}: needs exactly one of query, audio or clips, got "
                               f"{', '.join(sources) or 'none'}")
    query = data.get("query")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise BenchConfigError(f"{where}: query must be non-empty text")
        if "|" in query:
            raise BenchConfigError(f"{where}: query must not contain '|' (TEXT_INPUT_QUERIES separator)")
    transcripts = data.get("transcripts") or {}
    if not isinstance(transcripts, Mapping) or not all(isinstance(v, str) for v in transcripts.values()):
        raise BenchConfigError(f"{where}: transcripts must map clip file names to text")
    if transcripts and query is not None:
        raise BenchConfigError(f"{where}: transcripts are for audio/clips scenarios")
    max_tokens = data.get("max_tokens")
    return Scenario(
        name=name, description=str(data.get("description") or ""),
        query=query.strip() if query is not None else None,
        audio=Path(data["audio"]) if data.get("audio") is not None else None,
        clips=Path(data["clips"]) if data.get("clips") is not None else None,
        stream=parse_stream(data.get("stream", "compare"), where),
        max_tokens=None if max_tokens is None else _count(max_tokens, f"{where}: max_tokens"),
        env=parse_env(data.get("env"), where),
        transcripts={str(k): v for k, v in transcripts.items()},
    )


def parse_plan(name: str, data: Any, scenarios: Mapping[str, Scenario], source: str = "scenarios.yaml") -> Plan:
    """Validate one plan entry against the known scenarios.

    Raises:
        BenchConfigError: unknown key or scenario, an empty selection, a bad ``repeat``/``turns``/``stream``,
            ``variants`` with ``stream: compare``, or a stress plan with voice scenarios.
    """
    where = f"{source}: plan {name!r}"
    data = _check_keys(data, _PLAN_KEYS, where)
    kind = data.get("kind", "compare")
    if kind not in ("compare", "stress"):
        raise BenchConfigError(f"{where}: kind must be compare or stress, got {kind!r}")
    selection = data.get("scenarios", "all")
    if isinstance(selection, str):
        if selection not in PLAN_SELECTORS:
            raise BenchConfigError(f"{where}: scenarios must be a list of names or one of "
                                   f"{', '.join(PLAN_SELECTORS)}, got {selection!r}")
        names = tuple(n for n, s in scenarios.items() if selection in ("all", s.pipeline))
    elif isinstance(selection, list) and all(isinstance(n, str) for n in selection):
        for n in selection:
            if n not in scenarios:
                raise BenchConfigError(f"{where}: unknown scenario {n!r}; known: {', '.join(scenarios)}")
        names = tuple(selection)
    else:
        raise BenchConfigError(f"{where}: scenarios must be a list of names or one of {', '.join(PLAN_SELECTORS)}")
    if not names:
        raise BenchConfigError(f"{where}: selects no scenario")
    stream = parse_stream(data["stream"], where) if data.get("stream") is not None else None
    variants_raw = data.get("variants") or {}
    if not isinstance(variants_raw, Mapping):
        raise BenchConfigError(f"{where}: variants must map names to env mappings")
    variants = {str(v): parse_env(env, f"{where}: variant {v!r}") for v, env in variants_raw.items()}
    if variants and stream not in ("true", "false"):
        raise BenchConfigError(f"{where}: variants need stream: true or false (each variant runs in that mode)")
    if kind == "stress":
        voice = [n for n in names if scenarios[n].pipeline != "text"]
        if voice:
            raise BenchConfigError(f"{where}: a stress plan takes text scenarios only, not {', '.join(voice)}")
        if stream not in ("true", "false"):
            raise BenchConfigError(f"{where}: a stress plan needs stream: true or false")
    repeat_key = "turns" if kind == "stress" else "repeat"
    if kind != "stress" and "turns" in data:
        raise BenchConfigError(f"{where}: turns is for kind: stress (use repeat)")
    return Plan(name=name, description=str(data.get("description") or ""), scenarios=names,
                repeat=_count(data.get(repeat_key, 1), f"{where}: {repeat_key}"), stream=stream,
                variants=variants, env=parse_env(data.get("env"), where), kind=kind)


def parse_catalog(data: Any, source: str = "scenarios.yaml") -> Catalog:
    """Validate a whole scenarios document (``{"scenarios": {...}, "plans": {...}}``).

    Raises:
        BenchConfigError: see :func:`parse_scenario` and :func:`parse_plan`.
    """
    data = _check_keys(data, {"scenarios", "plans"}, source)
    raw_scenarios = data.get("scenarios") or {}
    if not isinstance(raw_scenarios, Mapping) or not raw_scenarios:
        raise BenchConfigError(f"{source}: no scenarios")
    scenarios = {str(n): parse_scenario(str(n), d, source) for n, d in raw_scenarios.items()}
    raw_plans = data.get("plans") or {}
    if not isinstance(raw_plans, Mapping):
        raise BenchConfigError(f"{source}: plans must be a mapping")
    plans = {str(n): parse_plan(str(n), d, scenarios, source) for n, d in raw_plans.items()}
    return Catalog(scenarios, plans)


def load_catalog(path: Path = SCENARIOS_FILE) -> Catalog:
    """Read and validate a scenarios YAML file.

    Raises:
        BenchConfigError: unreadable YAML or an invalid entry.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BenchConfigError(f"{path}: {exc}") from None
    return parse_catalog(data, Path(path).name)


# --------------------------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a name and the environment that makes it.

    Attributes:
        name: ``streaming``, ``batch`` or a plan variant name.
        env: the mode's environment plus the plan variant's.
    """

    name: str
    env: Mapping[str, str]


@dataclass(frozen=True)
class Clip:
    """One voice input.

    Attributes:
        name: item name (file stem for ``clips`` folders, the scenario name for ``audio`` scenarios).
        path: absolute path of the WAV.
        transcript: what it says, if known.
        duration_s: length in seconds.
    """

    name: str
    path: Path
    transcript: str | None
    duration_s: float


@dataclass(frozen=True)
class BenchItem:
    """One row of summary.json: a text scenario, or one clip of a voice scenario.

    Attributes:
        name: key in summary.json and folder name under ``--out``.
        scenario: the scenario it comes from.
        variants: the columns to run.
        env: plan env, scenario env and ``LLM_MAX_TOKENS`` merged (variant and command line come on top).
        clip: the voice input (voice items only).
    """

    name: str
    scenario: Scenario
    variants: tuple[Variant, ...]
    env: Mapping[str, str]
    clip: Clip | None = None

    @property
    def pipeline(self) -> str:
        """``"text"`` or ``"voice"``."""
        return self.scenario.pipeline


def variants_for(scenario: Scenario, plan: Plan) -> tuple[Variant, ...]:
    """The columns to run for ``scenario`` under ``plan``: the plan's variants (in its stream mode), else
    streaming and/or batch from the plan's or the scenario's ``stream``."""
    stream = plan.stream or scenario.stream
    if plan.variants:
        mode = MODES[STREAMING if stream == "true" else BATCH]
        return tuple(Variant(name, {**mode, **env}) for name, env in plan.variants.items())
    modes = {"compare": (STREAMING, BATCH), "true": (STREAMING,), "false": (BATCH,)}[stream]
    return tuple(Variant(m, dict(MODES[m])) for m in modes)


def readme_transcripts(folder: Path) -> dict[str, str]:
    """Transcripts from the Markdown table of ``folder/README.md`` with ``file`` and ``transcript`` columns
    (the format of tests/data/README.md); empty when there is none."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    header: list[str] | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        text = line.strip()
        if not text.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in text.strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
        elif all(set(c) <= set("-: ") for c in cells):
            continue
        elif "file" in header and "transcript" in header and len(cells) == len(header):
            out[cells[header.index("file")]] = cells[header.index("transcript")]
    return out


def scenario_clips(scenario: Scenario, root: Path = REPO_ROOT) -> list[Clip]:
    """The clips of a voice scenario, sorted by name; transcripts from the scenario, else the folder's README.

    Raises:
        BenchConfigError: the file or folder is missing, or the folder holds no WAV.
    """
    where = f"scenario {scenario.name!r}"
    if scenario.audio is not None:
        path = (root / scenario.audio).resolve()
        if not path.is_file():
            raise BenchConfigError(f"{where}: no audio file {path}")
        paths, names = [path], [scenario.name]
    elif scenario.clips is not None:
        folder = (root / scenario.clips).resolve()
        if not folder.is_dir():
            raise BenchConfigError(f"{where}: no clip folder {folder}")
        paths = sorted(folder.glob("*.wav"))
        if not paths:
            raise BenchConfigError(f"{where}: no *.wav in {folder}")
        names = [p.stem for p in paths]
    else:
        raise BenchConfigError(f"{where}: not a voice scenario")
    known = {**readme_transcripts(paths[0].parent), **scenario.transcripts}
    return [Clip(name, path, known.get(path.name), float(sf.info(str(path)).duration))
            for name, path in zip(names, paths)]


def plan_items(plan: Plan, catalog: Catalog, root: Path = REPO_ROOT) -> list[BenchItem]:
    """Expand ``plan`` into items (text scenarios, voice clips), each with its variants and environment.

    Raises:
        BenchConfigError: a missing clip, or two items with the same name.
    """
    items: list[BenchItem] = []
    for name in plan.scenarios:
        scenario = catalog.scenario(name)
        env = {**plan.env, **scenario.env}
        if scenario.max_tokens is not None:
            env["LLM_MAX_TOKENS"] = str(scenario.max_tokens)
        variants = variants_for(scenario, plan)
        if scenario.pipeline == "text":
            items.append(BenchItem(scenario.name, scenario, variants, env))
        else:
            items += [BenchItem(c.name, scenario, variants, env, c) for c in scenario_clips(scenario, root)]
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise BenchConfigError(f"plan {plan.name!r}: two items are called {item.name!r}")
        seen.add(item.name)
    return items


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (``--set``) as a dict.

    Raises:
        BenchConfigError: an entry without ``=`` or with a key that is not an environment variable name.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise BenchConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY an environment variable name")
        out[key] = value
    return out


def run_env(item: BenchItem, variant: Variant, overrides: Mapping[str, str], run_dir: Path,
            repeat: int) -> dict[str, str]:
    """The environment of one run, lowest precedence first: bench defaults (no history, fixed seed, answer WAV
    and JSONL in ``run_dir``), the item's env, the variant's, then ``overrides`` (``--model``, ``--set``)."""
    env = {"LLM_HISTORY_TURNS": "0", "LLM_SEED": str(SEED),
           "AUDIO_OUTPUT": str(run_dir / "answer.wav"), "TIMING_REPORT": str(run_dir / "timing.jsonl")}
    if item.clip is not None:
        env["AUDIO_INPUT"] = str(item.clip.path)
    else:
        env["TEXT_INPUT_FILE"] = ""
        env["TEXT_INPUT_QUERIES"] = "|".join([item.scenario.query or ""] * repeat)
    return {**env, **item.env, **variant.env, **overrides}


def run_timeout_s(env: Mapping[str, str], turns: int, input_s: float = 0.0) -> float:
    """A generous hard limit for one run (s): 120 s of start-up plus, per turn, 30 s and 0.5 s per allowed token
    (generation at >= 4 tokens/s and real-time playback of ~0.3 s of audio per token), plus the spoken input."""
    try:
        max_tokens = int(env.get("LLM_MAX_TOKENS", DEFAULT_MAX_TOKENS))
    except ValueError:
        max_tokens = DEFAULT_MAX_TOKENS
    return 120.0 + input_s + turns * (30.0 + 0.5 * max_tokens)


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class RunOutcome:
    """What one dataflow run gave the bench.

    Attributes:
        label: ``item variant`` (for messages).
        run_dir: its folder (``dora.log``, ``timing.jsonl``, ``answer.wav``).
        returncode: exit status of ``dora run`` (-1 when it could not start).
        wall_s: seconds the run took.
        turns: the monitor's turn records.
        problems: why the run counts as failed (empty when it did not).
    """

    label: str
    run_dir: Path
    returncode: int
    wall_s: float
    turns: list[TurnRecord]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the run exited cleanly and every expected turn was reported complete."""
        return not self.problems


def turn_problems(turns: Sequence[TurnRecord], expected: int | None) -> list[str]:
    """What is wrong with a run's turns: turn ids ``0..expected-1`` missing (``expected=None``: at least one turn
    needed), incomplete turns, lost segments, synthesized segments not all played (uninterrupted turns)."""
    problems = []
    ids = {t.turn_id for t in turns}
    if expected is None:
        if not turns:
            problems.append("no turn reported")
    else:
        missing = sorted(set(range(expected)) - ids)
        if missing:
            problems.append(f"{len(missing)} of {expected} turns missing (ids {_ids(missing)})")
    for what, bad in (("incomplete", [t.turn_id for t in turns if not t.complete]),
                      ("lost segments", [t.turn_id for t in turns if t.segments_lost]),
                      ("segments played != synthesized",
                       [t.turn_id for t in turns if not t.interrupted and t.segments_played != t.tts_segments])):
        if bad:
            problems.append(f"{what}: turns {_ids(bad)}")
    return problems


def _ids(ids: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def log_tail(log: str, lines: int = 40) -> str:
    """What to show of a failed run's dora log: its error lines (up to 10), then its last ``lines`` lines, without
    ANSI colour codes, periodic daemon statistics or the frames of Rust back-traces."""
    kept = [_ANSI.sub("", line) for line in log.splitlines()
            if not any(n in line for n in _LOG_NOISE) and not _BACKTRACE_FRAME.match(line)]
    tail = kept[-lines:]
    errors = [line for line in kept[:-lines] if _ERROR_LINE.search(line)][-10:]
    return "\n".join(errors + (["..."] if errors else []) + tail)


def execute(yaml_path: Path, run_dir: Path, env: Mapping[str, str], timeout_s: float, label: str,
            expected_turns: int | None) -> RunOutcome:
    """Run one dataflow and judge its turns (:func:`turn_problems`); never raises for a failed run.

    (``run_dataflow`` sets dora's finish-drain grace to ``timeout_s``: see :func:`dora_voice.launcher.node_env`.)
    """
    try:
        result = run_dataflow(yaml_path, run_dir, env, timeout_s=timeout_s)
    except LaunchError as exc:
        return RunOutcome(label, run_dir, -1, 0.0, [], [str(exc)])
    turns = [TurnRecord.from_json(record) for record in result.turns]
    problems = [] if result.returncode == 0 else [f"dora run exited with status {result.returncode}"]
    problems += turn_problems(turns, expected_turns)
    return RunOutcome(label, run_dir, result.returncode, result.wall_s, turns, problems)


# --------------------------------------------------------------------------------------------------------------
# Aggregation


def median(values: Iterable[float | None]) -> float | None:
    """Median of the known values (``None`` ignored), or ``None`` when none is known."""
    known = [v for v in values if v is not None]
    return percentile(known, 50) if known else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is unknown or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def row_fields(pipeline: str) -> tuple[tuple[str, str], ...]:
    """The (label, field) rows of the side-by-side table for a pipeline."""
    return (VOICE_ROWS + COMPARE_ROWS) if pipeline == "voice" else COMPARE_ROWS


def variant_summary(turns: Sequence[TurnRecord], pipeline: str, *, failed: bool) -> dict[str, Any]:
    """One variant's entry of summary.json: the median of every table metric over the turns (keys are
    :class:`TurnRecord` field names, units in the names), ``turns`` counted, and ``failed``."""
    out: dict[str, Any] = {f: median(getattr(t, f) for t in turns) for _label, f in row_fields(pipeline)}
    out["turns"] = len(turns)
    out["failed"] = failed
    return out


def item_summary(pipeline: str, by_variant: Mapping[str, Sequence[TurnRecord]],
                 failed: Mapping[str, bool]) -> dict[str, Any]:
    """An item's entry of summary.json: ``{variant: medians, ..., "first_audio_ratio": r}``; ``r`` is the first
    variant's median first-audio latency (:data:`FIRST_AUDIO`) over the second's (streaming/batch), present when
    there are exactly two variants (``None`` when either is unknown)."""
    out: dict[str, Any] = {v: variant_summary(turns, pipeline, failed=failed.get(v, False))
                           for v, turns in by_variant.items()}
    names = list(by_variant)
    if len(names) == 2:
        metric = FIRST_AUDIO[pipeline]
        out["first_audio_ratio"] = ratio(out[names[0]][metric], out[names[1]][metric])
    return out


def overall_stats(turns: Sequence[TurnRecord], metrics: Sequence[str] = VOICE_METRICS) -> dict[str, dict]:
    """``{metric: {"p50": x, "p90": y, "n": k}}`` over every turn where the metric is known (``None`` when none)."""
    out = {}
    for metric in metrics:
        values = [getattr(t, metric) for t in turns if getattr(t, metric) is not None]
        out[metric] = {"p50": percentile(values, 50) if values else None,
                       "p90": percentile(values, 90) if values else None, "n": len(values)}
    return out


def median_turn(turns: Sequence[TurnRecord], metric: str) -> TurnRecord | None:
    """The turn whose ``metric`` is closest to the median (lowest turn id on ties); ``None`` when none has it."""
    known = [t for t in turns if getattr(t, metric) is not None]
    if not known:
        return turns[0] if turns else None
    mid = median(getattr(t, metric) for t in known)
    return min(known, key=lambda t: (abs(getattr(t, metric) - mid), t.turn_id))


# --------------------------------------------------------------------------------------------------------------
# Rendering (plain ASCII, as report.py)


def fmt_metric(name: str, value: float | None) -> str:
    """A metric value with the precision its unit deserves: whole ms, s to 0.01, rtf to 0.001, else (rates,
    counts) 0.1."""
    if name.endswith("_ms"):
        digits = 0
    elif name.endswith("_s") and not name.endswith("_per_s"):
        digits = 2
    else:
        digits = 3 if name == "rtf" else 1
    return fmt_num(value, digits)


def render_compare_table(name: str, entry: Mapping[str, Any], pipeline: str, *, repeat: int, note: str = "") -> str:
    """The side-by-side table of one item: rows are metrics (:func:`row_fields`), columns the variants' medians
    and, with two variants, their ratio; then the first-audio ratio line."""
    variants = [k for k, v in entry.items() if isinstance(v, Mapping)]
    two = len(variants) == 2
    header = f"{'metric':<30}" + "".join(f"{v:>14}" for v in variants) + (f"{'ratio':>10}" if two else "")
    lines = [f"{name} ({pipeline}, {repeat} repetition{'' if repeat == 1 else 's'}, medians)"
             + (f"  {note}" if note else ""), header, "-" * len(header)]
    for label, metric in row_fields(pipeline):
        values = [entry[v].get(metric) for v in variants]
        row = f"{label:<30}" + "".join(f"{fmt_metric(metric, x):>14}" for x in values)
        if two:
            row += f"{fmt_num(ratio(values[0], values[1]), 2):>10}"
        lines.append(row)
    turns = "  ".join(f"{v}: {entry[v]['turns']} turns" + (" FAILED" if entry[v]["failed"] else "")
                      for v in variants)
    lines.append(turns)
    if two:
        lines.append(f"first audio ({FIRST_AUDIO[pipeline]}) {variants[0]}/{variants[1]} = "
                     f"{fmt_num(entry.get('first_audio_ratio'), 2)}")
    return "\n".join(lines)


def render_voice_table(variant: str, rows: Sequence[tuple[str, Sequence[TurnRecord], str | None]],
                       overall: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-clip voice table of one variant: one row per clip (medians over its turns, ms), what the ASR heard
    against the reference, then p50 and p90 over all turns.

    Args:
        variant: the column's name.
        rows: ``(clip name, its turns, reference transcript or None)``.
        overall: :func:`overall_stats` of all turns.
    """
    head = f"{'clip':<20}" + "".join(f"{m:>16}" for m in VOICE_METRICS[:-1]) + f"{'llm_start_to_1st':>18}"
    lines = [f"voice-to-voice ({variant}; ms; medians per clip; llm_start_to_1st = llm_start_to_first_audio_ms)",
             head + "  heard / reference", "-" * (len(head) + 20)]
    for name, turns, reference in rows:
        values = [median(getattr(t, m) for t in turns) for m in VOICE_METRICS]
        heard = " / ".join(t.transcript for t in turns) or "-"
        cells = "".join(f"{fmt_metric(m, v):>16}" for m, v in zip(VOICE_METRICS[:-1], values[:-1]))
        lines.append(f"{truncate(name, 19):<20}{cells}{fmt_metric(VOICE_METRICS[-1], values[-1]):>18}  "
                     f"{truncate(heard, 40)!r} / {reference or '-'}")
    lines.append("-" * (len(head) + 20))
    last = VOICE_METRICS[-1]
    for q in ("p50", "p90"):
        cells = "".join(f"{fmt_metric(m, overall[m][q]):>16}" for m in VOICE_METRICS[:-1])
        lines.append(f"{q + ' (all turns)':<20}{cells}{fmt_metric(last, overall[last][q]):>18}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Stress: completeness and memory


@dataclass(frozen=True)
class RssSample:
    """Resident memory of one node at one instant.

    Attributes:
        t_ns: wall clock (``time.time_ns()``) of the sample.
        node: the node's console script (``dora-voice-llm``, ...).
        rss_kb: ``VmRSS`` in KiB, summed over the node's processes.
    """

    t_ns: int
    node: str
    rss_kb: int


class RssSampler:
    """Samples, every ``interval_s`` in a thread, ``VmRSS`` of the descendants of ``root_pid`` whose command line
    contains ``match`` (the node console scripts), from ``/proc``.

    Only descendants count, so the dataflows of other users of the machine are not mixed in.

    Args:
        interval_s: seconds between samples.
        root_pid: whose descendants to sample (default: this process).
        match: substring of the command line that marks a node.
        proc: the proc file system root (a fake tree in tests).
        clock_ns: wall clock.
    """

    def __init__(self, interval_s: float = 2.0, *, root_pid: int | None = None, match: str = "dora-voice-",
                 proc: Path = Path("/proc"), clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.interval_s = interval_s
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.match = match
        self.proc = Path(proc)
        self.clock_ns = clock_ns
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, pid: int, name: str) -> str | None:
        try:
            return (self.proc / str(pid) / name).read_bytes().decode("utf-8", "replace")
        except OSError:
            return None

    def _parents(self) -> dict[int, int]:
        parents = {}
        for entry in self.proc.iterdir():
            if entry.name.isdigit():
                stat = self._read(int(entry.name), "stat")
                if stat and ")" in stat:
                    fields = stat.rsplit(")", 1)[1].split()
                    if len(fields) >= 2 and fields[1].lstrip("-").isdigit():
                        parents[int(entry.name)] = int(fields[1])
        return parents

    def sample_once(self) -> list[RssSample]:
        """Take one sample of every matching descendant (a process that exits meanwhile is skipped)."""
        parents = self._parents()
        now = self.clock_ns()
        totals: dict[str, int] = {}
        for pid in parents:
            ancestor, hops = parents.get(pid), 0
            while ancestor not in (None, 0, self.root_pid) and hops < 64:
                ancestor, hops = parents.get(ancestor), hops + 1
            if ancestor != self.root_pid:
                continue
            cmdline = self._read(pid, "cmdline") or ""
            node = next((Path(arg).name for arg in cmdline.split("\0") if self.match in Path(arg).name), None)
            status = self._read(pid, "status") or ""
            rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), None)
            if node and rss and rss.isdigit():
                totals[node] = totals.get(node, 0) + int(rss)
        taken = [RssSample(now, node, kb) for node, kb in sorted(totals.items())]
        self.samples += taken
        return taken

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except OSError as exc:  # /proc raced with an exiting process tree; try again next time
                logger.debug("RSS sample failed: %s", exc)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


BOUND_ABS_MB = 16.0
BOUND_REL = 0.05
"""A node's memory counts as bounded when it grew by at most max(:data:`BOUND_ABS_MB`, :data:`BOUND_REL` x its
RSS at mid-run) over the second half of the run: start-up growth (model pages, caches) settles in the first turns,
while a leak keeps growing with the turns."""


def rss_report(samples: Sequence[RssSample], start_ns: int, mid_ns: int, end_ns: int) -> dict[str, dict[str, Any]]:
    """Per node, RSS (MiB) at the first sample at or after ``start_ns`` (first turn started: models loaded), at the
    first at or after ``mid_ns``, at the last at or before ``end_ns`` (last answer played), the peak in between,
    ``growth_mb`` = end - start, ``late_growth_mb`` = end - mid, and ``bounded`` (see :data:`BOUND_REL`)."""
    out: dict[str, dict[str, Any]] = {}
    for node in sorted({s.node for s in samples}):
        mine = [s for s in samples if s.node == node and start_ns <= s.t_ns <= end_ns]
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        mid = next((s for s in mine if s.t_ns >= mid_ns), last)
        start_mb, mid_mb, end_mb = first.rss_kb / 1024, mid.rss_kb / 1024, last.rss_kb / 1024
        late = end_mb - mid_mb
        out[node] = {"start_mb": start_mb, "mid_mb": mid_mb, "end_mb": end_mb,
                     "peak_mb": max(s.rss_kb for s in mine) / 1024, "growth_mb": end_mb - start_mb,
                     "late_growth_mb": late, "samples": len(mine),
                     "bounded": late <= max(BOUND_ABS_MB, BOUND_REL * mid_mb)}
    return out


def render_rss_table(report: Mapping[str, Mapping[str, Any]]) -> str:
    """The stress plan's memory table: one row per node, MiB."""
    head = (f"{'node':<24}{'start_mb':>10}{'mid_mb':>10}{'end_mb':>10}{'peak_mb':>10}{'growth_mb':>11}"
            f"{'late_growth':>13}{'samples':>9}  bounded")
    lines = ["node memory (VmRSS, MiB; start = first turn started, end = last answer played)", head, "-" * len(head)]
    for node, r in report.items():
        lines.append(f"{node:<24}{r['start_mb']:>10.1f}{r['mid_mb']:>10.1f}{r['end_mb']:>10.1f}{r['peak_mb']:>10.1f}"
                     f"{r['growth_mb']:>+11.1f}{r['late_growth_mb']:>+13.1f}{r['samples']:>9}  "
                     f"{'yes' if r['bounded'] else 'NO'}")
    if not report:
        lines.append("(no node process sampled)")
    return "\n".join(lines)


def stress_checks(turns: Sequence[TurnRecord], expected: int, returncode: int) -> dict[str, dict[str, Any]]:
    """The stress plan's verdicts: ``{check: {"ok": bool, "detail": str}}`` for a clean exit, turn ids
    ``0..expected-1`` all present, every turn complete, no segment lost, every synthesized segment played, and a
    non-empty reply."""
    ids = {t.turn_id for t in turns}
    missing = sorted(set(range(expected)) - ids)

    def verdict(bad: Sequence[int], what: str) -> dict[str, Any]:
        return {"ok": not bad, "detail": f"{what}: turns {_ids(list(bad))}" if bad else "ok"}

    return {
        "exit_status_0": {"ok": returncode == 0, "detail": f"dora run exited with {returncode}"},
        "all_turn_ids_present": {"ok": not missing, "detail": (f"missing {_ids(missing)}" if missing else
                                                               f"0..{expected - 1} present")},
        "turns_complete": verdict([t.turn_id for t in turns if not t.complete], "incomplete"),
        "segments_lost_0": verdict([t.turn_id for t in turns if t.segments_lost != 0], "lost segments"),
        "segments_played_eq_tts_segments": verdict(
            [t.turn_id for t in turns if t.segments_played != t.tts_segments], "played != synthesized"),
        "replies_non_empty": verdict([t.turn_id for t in turns if not t.reply.strip()], "empty reply"),
    }


# --------------------------------------------------------------------------------------------------------------
# Command line


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
            "  voice       every clip in tests/data through voice-chatbot.yml, streaming (voice-to-voice)\n"
            "  pacing      LLM_PACING=off vs tts on long answers, streaming\n"
            "  stress      50 queries in one run: completeness checks and node memory (RSS) over time\n\n"
            "examples:\n"
            "  dora-voice-bench --plan quick\n"
            "  dora-voice-bench --scenario one_sentence --repeat 1 --model smollm2-135m --out /tmp/bench\n"
            "  dora-voice-bench --plan voice --clips-dir ../shared/speech\n"
            "  dora-voice-bench --plan pacing --set LLM_FIRST_CHUNK_MAX_TOKENS=4\n\n"
            "output (--out, default runs/bench-<timestamp> in the repository): summary.json\n"
            "({scenario: {\"streaming\": {medians}, \"batch\": {...}, \"first_audio_ratio\": r}}; voice plans add\n"
            "\"_overall\": {metric: {\"p50\", \"p90\"}}), report.txt (the printed tables), and per scenario and mode\n"
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
    parser.add_argument("--list", action="store_true", help="list plans and scenarios, then exit")
    return parser


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def resolve_plan(catalog: Catalog, plan_name: str | None, scenario_names: Sequence[str], repeat: int | None,
                 clips_dir: Path | None) -> tuple[Plan, Catalog]:
    """The plan to run from the command-line choices, and the catalog it refers to (with an ad-hoc ``clips_dir``
    scenario when ``--clips-dir`` is given).

    Raises:
        BenchConfigError: unknown plan or scenario names, or a missing clips folder.
    """
    if clips_dir is not None:
        folder = clips_dir.expanduser().resolve()
        if not folder.is_dir():
            raise BenchConfigError(f"--clips-dir {clips_dir}: no such folder")
        extra = Scenario(name="clips_dir", description=f"every WAV in {folder}", clips=folder, stream="true")
        catalog = Catalog({**catalog.scenarios, extra.name: extra}, catalog.plans)
    plan = catalog.plan(plan_name or ("voice" if clips_dir is not None and not scenario_names else "quick"))
    if scenario_names:
        for name in scenario_names:
            catalog.scenario(name)
        plan = dataclasses.replace(plan, name=plan.name if plan_name else "custom", scenarios=tuple(scenario_names),
                                   stream=plan.stream if plan_name else None,
                                   variants=plan.variants if plan_name else {},
                                   env=plan.env if plan_name else {})
    elif clips_dir is not None:
        names = [n for n in plan.scenarios if catalog.scenarios[n].pipeline == "text"] + ["clips_dir"]
        plan = dataclasses.replace(plan, scenarios=tuple(names))
    if plan.kind == "stress" and any(catalog.scenario(n).pipeline != "text" for n in plan.scenarios):
        raise BenchConfigError(f"plan {plan.name!r}: a stress plan takes text scenarios only")
    if repeat is not None:
        plan = dataclasses.replace(plan, repeat=repeat)
    return plan, catalog


def render_list(catalog: Catalog) -> str:
    """``--list``: every plan and scenario with its description."""
    lines = ["plans:"]
    for p in catalog.plans.values():
        what = f"stress, {p.repeat} turns" if p.kind == "stress" else f"repeat {p.repeat}"
        what += f", stream={p.stream}" if p.stream else ""
        what += f", variants: {', '.join(p.variants)}" if p.variants else ""
        lines.append(f"  {p.name:<14}{p.description} [{what}; scenarios: {', '.join(p.scenarios)}]")
    lines.append("scenarios:")
    for s in catalog.scenarios.values():
        source = s.query if s.query is not None else str(s.audio or s.clips)
        lines.append(f"  {s.name:<18}{s.pipeline:<6}stream={s.stream:<8}{s.description}")
        lines.append(f"  {'':<18}{truncate(source, 76)}")
    return "\n".join(lines)


class _Bench:
    """Runs a plan, prints progress and tables, and writes the output folder."""

    def __init__(self, plan: Plan, items: list[BenchItem], out: Path, overrides: Mapping[str, str]) -> None:
        self.plan = plan
        self.items = items
        self.out = out
        self.overrides = dict(overrides)
        self.summary: dict[str, Any] = {}
        self.report: list[str] = []
        self.failed = False
        self.done = 0
        self.total = sum(len(i.variants) * (self.plan.repeat if i.clip is not None else 1) for i in items)

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
        outcome = execute(yaml_path, run_dir, env, run_timeout_s(env, turns, input_s), label,
                          turns if item.clip is None else None)
        status = "ok" if outcome.ok else "FAILED: " + "; ".join(outcome.problems)
        print(f"[bench] {self.done}/{self.total} {label}: {status} ({len(outcome.turns)} turns, "
              f"{outcome.wall_s:.1f} s)", flush=True)
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
        for item in self.items:
            by_variant: dict[str, list[TurnRecord]] = {}
            failed: dict[str, bool] = {}
            for variant in item.variants:
                folder = self.out / item.name / variant.name
                runs = ([self.run_one(item, variant, folder / f"run-{k + 1}", 1, 1) for k in range(self.plan.repeat)]
                        if item.clip is not None else
                        [self.run_one(item, variant, folder / "run-1", self.plan.repeat, self.plan.repeat)])
                by_variant[variant.name] = [t for r in runs for t in r.turns]
                failed[variant.name] = not all(r.ok for r in runs)
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
            self.summary["_overall"] = next(iter(overall.values())) if len(overall) == 1 else overall
            self.write()

    def run_stress(self) -> None:
        """All the plan's queries back to back in one run; completeness checks, session summary, RSS table."""
        queries = [item.scenario.query or "" for item in self.items]
        turns = self.plan.repeat
        base = BenchItem("stress", self.items[0].scenario, self.items[0].variants, dict(self.plan.env))
        variant = base.variants[0]
        run_dir = self.out / "stress" / variant.name / "run-1"
        sampler = RssSampler()
        sampler.start()
        try:
            self.done += 1
            env = run_env(base, variant, self.overrides, run_dir, 1)
            env["TEXT_INPUT_QUERIES"] = "|".join(queries[k % len(queries)] for k in range(turns))
            print(f"[bench] 1/1 stress {variant.name} ({turns} turns, queries: "
                  f"{', '.join(item.name for item in self.items)}) ...", flush=True)
            outcome = execute(TEXT_DATAFLOW, run_dir, env, run_timeout_s(env, turns), "stress", turns)
        finally:
            sampler.stop()
        print(f"[bench] stress: {len(outcome.turns)} turns in {outcome.wall_s:.1f} s", flush=True)
        checks = stress_checks(outcome.turns, turns, outcome.returncode)
        if not outcome.ok or not all(c["ok"] for c in checks.values()):
            self.failed = True
            print(f"[bench] last lines of {run_dir / 'dora.log'}:\n{log_tail(_read_log(run_dir))}", flush=True)
        ordered = sorted(outcome.turns, key=lambda t: t.turn_id)
        starts = [t.llm_start_ns for t in ordered if t.llm_start_ns is not None]
        ends = [t.turn_played_ns for t in ordered if t.turn_played_ns is not None]
        memory: dict[str, dict[str, Any]] = {}
        if starts and ends:
            mid_turn = ordered[len(ordered) // 2]
            memory = rss_report(sampler.samples, starts[0], mid_turn.llm_start_ns or starts[0], ends[-1])
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

    def run(self) -> int:
        """Run the plan; the exit status."""
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        what = f"stress, {self.plan.repeat} turns" if self.plan.kind == "stress" else f"repeat {self.plan.repeat}"
        self.say(f"dora-voice-bench: plan {self.plan.name} ({what}), {len(self.items)} item(s), output {self.out}\n"
                 f"started {_dt.datetime.now().isoformat(timespec='seconds')}"
                 + (f", overrides: {' '.join(f'{k}={v}' for k, v in self.overrides.items())}"
                    if self.overrides else ""))
        if self.plan.kind == "stress":
            self.run_stress()
        else:
            self.run_compare()
        self.say(f"plan {self.plan.name} took {time.monotonic() - started:.0f} s"
                 + ("; SOME RUNS FAILED (see above)" if self.failed else ""))
        self.write()
        print(f"[bench] wrote {self.out / 'summary.json'}", flush=True)
        return EXIT_FAILED if self.failed else EXIT_OK


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
        items = plan_items(plan, catalog)
        overrides = parse_assignments(args.assignments)
        if args.model:
            get_spec(args.model, "llm")
            overrides = {"LLM_MODEL": args.model, **overrides}
    except (BenchConfigError, ModelError) as exc:
        parser.error(str(exc))
    out = args.out or REPO_ROOT / "runs" / f"bench-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        return _Bench(plan, items, out.resolve(), overrides).run()
    except KeyboardInterrupt:
        print("[bench] interrupted; partial results are in " + str(out), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
