"""The bench's scenarios and plans: parsing and validating ``scenarios.yaml``, expanding a plan into items (text
scenarios, voice clips) with their variants, and each run's environment and time-out.

Relative ``audio`` / ``clips`` paths in a scenarios file are resolved against the folder of that file (the packaged
``scenarios.yaml`` points at the recordings shipped in the package).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import soundfile as sf
import yaml

from dora_voice.config import env_vars, parse_bool
from dora_voice.nodes.llm import LlmConfig

from dora_voice_tools.resources import SCENARIOS_FILE

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

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
        audio: one WAV clip (voice pipeline), absolute or relative to :attr:`Catalog.root`, else ``None``.
        clips: a folder whose every ``*.wav`` is a voice item (absolute or relative to :attr:`Catalog.root`), else
            ``None``.
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
        kind: ``"compare"``, ``"stress"``, ``"soak"``, ``"echo"`` (user utterances barging into answers in a simulated
            room; ``repeat`` is the number of utterances) or ``"answers"`` (the question set of ``questions``, one run
            per variant, scored by :mod:`.answers`).
        questions: ``kind: answers`` only: the question file (relative paths: to the scenarios file's folder).
    """

    name: str
    description: str = ""
    scenarios: tuple[str, ...] = ()
    repeat: int = 1
    stream: str | None = None
    variants: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    kind: str = "compare"
    questions: Path | None = None


@dataclass(frozen=True)
class Catalog:
    """Every scenario and plan of a scenarios file, validated.

    Attributes:
        scenarios: name -> scenario.
        plans: name -> plan.
        root: the folder relative ``audio`` / ``clips`` paths are resolved against (the scenarios file's folder).
    """

    scenarios: Mapping[str, Scenario]
    plans: Mapping[str, Plan]
    root: Path = field(default_factory=Path.cwd)

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
_PLAN_KEYS = {"description", "scenarios", "repeat", "stream", "variants", "env", "kind", "turns", "questions"}
PLAN_KINDS = ("compare", "stress", "answers", "soak", "echo")


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
    if kind not in PLAN_KINDS:
        raise BenchConfigError(f"{where}: kind must be one of {', '.join(PLAN_KINDS)}, got {kind!r}")
    if kind == "answers":
        return _parse_answers_plan(name, data, where)
    if "questions" in data:
        raise BenchConfigError(f"{where}: questions is for kind: answers")
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
    if kind == "soak":
        if stream not in ("true", "false"):
            raise BenchConfigError(f"{where}: a soak plan needs stream: true or false")
        if all(scenarios[n].pipeline != "text" for n in names):
            raise BenchConfigError(f"{where}: a soak plan needs at least one text scenario")
    if kind == "echo":
        text = [n for n in names if scenarios[n].pipeline == "text"]
        if text:
            raise BenchConfigError(f"{where}: an echo plan takes voice scenarios (the user's utterances) only, "
                                   f"not {', '.join(text)}")
        if stream not in ("true", "false"):
            raise BenchConfigError(f"{where}: an echo plan needs stream: true or false")
    repeat_key = "turns" if kind in ("stress", "soak", "echo") else "repeat"
    if kind not in ("stress", "soak", "echo") and "turns" in data:
        raise BenchConfigError(f"{where}: turns is for kind: stress, soak or echo (use repeat)")
    return Plan(name=name, description=str(data.get("description") or ""), scenarios=names,
                repeat=_count(data.get(repeat_key, 1), f"{where}: {repeat_key}"), stream=stream,
                variants=variants, env=parse_env(data.get("env"), where), kind=kind)


def _parse_answers_plan(name: str, data: Mapping[str, Any], where: str) -> Plan:
    """A ``kind: answers`` plan: ``questions`` (a file), ``variants`` (model and prompt environments), ``stream``
    (default true), ``env``; no scenarios, repeat or turns."""
    for key in ("scenarios", "repeat", "turns"):
        if key in data:
            raise BenchConfigError(f"{where}: a kind: answers plan has no {key} (it runs its question file once per "
                                   "variant)")
    questions = data.get("questions")
    if not isinstance(questions, str) or not questions.strip():
        raise BenchConfigError(f"{where}: kind: answers needs questions: <question file>")
    stream = parse_stream(data.get("stream", True), where)
    if stream not in ("true", "false"):
        raise BenchConfigError(f"{where}: kind: answers needs stream: true or false")
    variants_raw = data.get("variants") or {}
    if not isinstance(variants_raw, Mapping):
        raise BenchConfigError(f"{where}: variants must map names to env mappings")
    variants = {str(v): parse_env(env, f"{where}: variant {v!r}") for v, env in variants_raw.items()}
    return Plan(name=name, description=str(data.get("description") or ""), stream=stream,
                variants=variants or {"default": {}}, env=parse_env(data.get("env"), where), kind="answers",
                questions=Path(questions))


def parse_catalog(data: Any, source: str = "scenarios.yaml", root: Path | None = None) -> Catalog:
    """Validate a whole scenarios document (``{"scenarios": {...}, "plans": {...}}``); relative clip paths will be
    resolved against ``root`` (default: the current directory).

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
    base = Path(root) if root is not None else Path.cwd()
    plans = {n: (dataclasses.replace(p, questions=base / p.questions) if p.questions is not None
                 and not p.questions.is_absolute() else p) for n, p in plans.items()}
    return Catalog(scenarios, plans, base)


def load_catalog(path: Path = SCENARIOS_FILE) -> Catalog:
    """Read and validate a scenarios YAML file; its relative clip paths are relative to its folder.

    Raises:
        BenchConfigError: unreadable YAML or an invalid entry.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BenchConfigError(f"{path}: {exc}") from None
    return parse_catalog(data, Path(path).name, Path(path).resolve().parent)


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
    (the format of the packaged recordings/README.md); empty when there is none."""
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


def scenario_clips(scenario: Scenario, root: Path) -> list[Clip]:
    """The clips of a voice scenario, sorted by name; transcripts from the scenario, else the folder's README.
    Relative paths are resolved against ``root``.

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


def plan_items(plan: Plan, catalog: Catalog) -> list[BenchItem]:
    """Expand ``plan`` into items (text scenarios, voice clips), each with its variants and environment (clip paths
    relative to :attr:`Catalog.root`).

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
            items += [BenchItem(c.name, scenario, variants, env, c) for c in scenario_clips(scenario, catalog.root)]
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


def answers_env(plan: Plan, variant: Variant, overrides: Mapping[str, str], run_dir: Path,
                questions: Sequence[str]) -> dict[str, str]:
    """The environment of a ``kind: answers`` run: every question as one turn of the text pipeline (no history,
    fixed seed), then the plan's env, the variant's and ``overrides`` (``--model``, ``--set``)."""
    env = {"LLM_HISTORY_TURNS": "0", "LLM_SEED": str(SEED), "AUDIO_OUTPUT": str(run_dir / "answer.wav"),
           "TIMING_REPORT": str(run_dir / "timing.jsonl"), "TEXT_INPUT_FILE": "",
           "TEXT_INPUT_QUERIES": "|".join(questions)}
    return {**env, **plan.env, **variant.env, **overrides}


def answers_variants(plan: Plan, names: Sequence[str] = ()) -> tuple[Variant, ...]:
    """The variants of a ``kind: answers`` plan (all, or those called ``names``, in plan order), each in the plan's
    stream mode.

    Raises:
        BenchConfigError: an unknown variant name; the message lists the known ones.
    """
    unknown = [n for n in names if n not in plan.variants]
    if unknown:
        raise BenchConfigError(f"plan {plan.name!r}: unknown variant(s) {', '.join(unknown)}; known: "
                               f"{', '.join(plan.variants)}")
    mode = MODES[STREAMING if plan.stream == "true" else BATCH]
    return tuple(Variant(n, {**mode, **env}) for n, env in plan.variants.items() if not names or n in names)


def run_timeout_s(env: Mapping[str, str], turns: int, input_s: float = 0.0) -> float:
    """A generous hard limit for one run (s): 120 s of start-up plus, per turn, 30 s and 0.5 s per allowed token
    (generation at >= 4 tokens/s and real-time playback of ~0.3 s of audio per token), plus the spoken input."""
    try:
        max_tokens = int(env.get("LLM_MAX_TOKENS", DEFAULT_MAX_TOKENS))
    except ValueError:
        max_tokens = DEFAULT_MAX_TOKENS
    return 120.0 + input_s + turns * (30.0 + 0.5 * max_tokens)


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
        catalog = Catalog({**catalog.scenarios, extra.name: extra}, catalog.plans, catalog.root)
    plan = catalog.plan(plan_name or ("voice" if clips_dir is not None and not scenario_names else "quick"))
    if plan.kind == "answers":
        if scenario_names or clips_dir is not None or repeat is not None:
            raise BenchConfigError(f"plan {plan.name!r} runs its question file: --scenario, --clips-dir and --repeat "
                                   "do not apply (use --variant and --questions)")
        return plan, catalog
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
    if plan.kind == "echo":
        plan = dataclasses.replace(plan, scenarios=tuple(n for n in plan.scenarios
                                                         if catalog.scenario(n).pipeline != "text"))
    if repeat is not None:
        plan = dataclasses.replace(plan, repeat=repeat)
    return plan, catalog
