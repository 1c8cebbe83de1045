"""The answer-quality benchmark's question set and scorer (``dora-voice-bench --plan answers``).

Each question of ``answers.yaml`` (beside this module, :data:`~dora_voice_tools.resources.QUESTIONS_FILE`; its header documents
the format) carries the facts an
acceptable reply must state and the wrong claims it must not make, as regular expressions searched in what the
listener hears (:func:`spoken_form`). A reply is *acceptable* when

* every ``accept`` pattern matches and no ``forbid`` pattern matches,
* it does not loop: no word 4-gram occurs three times (:func:`dora_voice.text.repetition.repeated_ngram`),
* it has at most :data:`MAX_WORDS` spoken words (about 35 s of speech at 150 words a minute), and is not empty.

Pure functions; the benchmark runs the dataflow and hands the replies to :func:`score_reply`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from dora_voice.text.normalize import normalize_for_speech
from dora_voice.text.repetition import repeated_ngram

from dora_voice_tools.resources import QUESTIONS_FILE

CATEGORIES = ("fact", "arithmetic", "safety", "how-to", "small-talk", "cannot")
"""Question categories, in report order."""
MAX_WORDS = 90
"""Longest acceptable reply, spoken words."""

_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class QuestionSetError(ValueError):
    """The question file is invalid; the message names the question and the field."""


@dataclass(frozen=True)
class Question:
    """One everyday spoken question and how to judge its reply.

    Attributes:
        id: unique kebab-case name.
        category: one of :data:`CATEGORIES`.
        question: what the user says.
        accept: patterns that must all match the spoken reply (the required facts).
        forbid: patterns none of which may match (wrong claims).
        source: where the accepted answer comes from.
    """

    id: str
    category: str
    question: str
    accept: tuple[re.Pattern[str], ...]
    forbid: tuple[re.Pattern[str], ...]
    source: str


def _patterns(value: Any, where: str, *, required: bool) -> tuple[re.Pattern[str], ...]:
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise QuestionSetError(f"{where}: must be a list of non-empty regular expressions")
    if required and not value:
        raise QuestionSetError(f"{where}: needs at least one pattern")
    out = []
    for pattern in value:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise QuestionSetError(f"{where}: bad regular expression {pattern!r}: {exc}") from exc
    return tuple(out)


def parse_questions(data: Any, source: str = "answers.yaml") -> list[Question]:
    """Validate a question document (``{"questions": [...]}``).

    Raises:
        QuestionSetError: missing or unknown fields, a bad id, category or pattern, a duplicate id or question,
            a question containing ``|`` (the text pipeline's query separator) or a question without forbidden
            claims (every question carries both).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("questions"), list) or not data["questions"]:
        raise QuestionSetError(f"{source}: expected a non-empty 'questions' list")
    known = {"id", "category", "question", "accept", "forbid", "source"}
    out: list[Question] = []
    ids: set[str] = set()
    texts: set[str] = set()
    for i, entry in enumerate(data["questions"]):
        where = f"{source}: question {i + 1}"
        if not isinstance(entry, Mapping):
            raise QuestionSetError(f"{where}: must be a mapping")
        unknown = set(entry) - known
        missing = known - set(entry)
        if unknown or missing:
            raise QuestionSetError(f"{where}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}"
                                   f" (known: {', '.join(sorted(known))})")
        qid = str(entry["id"])
        where = f"{source}: question {qid!r}"
        if not _ID.match(qid) or qid in ids:
            raise QuestionSetError(f"{where}: ids must be unique and kebab-case")
        if entry["category"] not in CATEGORIES:
            raise QuestionSetError(f"{where}: category must be one of {', '.join(CATEGORIES)}")
        text = str(entry["question"]).strip()
        if not text or "|" in text or "\n" in text or text.lower() in texts:
            raise QuestionSetError(f"{where}: the question must be one unique line without '|'")
        if not str(entry["source"]).strip():
            raise QuestionSetError(f"{where}: source must say where the accepted answer comes from")
        out.append(Question(qid, str(entry["category"]), text, _patterns(entry["accept"], f"{where} accept",
                                                                         required=True),
                            _patterns(entry["forbid"], f"{where} forbid", required=True), str(entry["source"])))
        ids.add(qid)
        texts.add(text.lower())
    return out


def load_questions(path: Path = QUESTIONS_FILE) -> list[Question]:
    """Read and validate a question file (default: the packaged ``answers.yaml``).

    Raises:
        QuestionSetError: unreadable file or invalid content (see :func:`parse_questions`).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise QuestionSetError(f"cannot read {path}: {exc}") from exc
    return parse_questions(data, str(path))


def spoken_form(text: str) -> str:
    """What the listener hears, for matching: the project's speech normalization (numbers, units and symbols in
    words, markdown and code removed), lower case, hyphens and punctuation as spaces, apostrophes kept."""
    spoken = normalize_for_speech(text).lower().replace("\u2019", "'")
    spoken = re.sub(r"[^\w']+|_", " ", spoken)
    spoken = re.sub(r"(?<!\w)'|'(?!\w)", " ", spoken)
    return " ".join(spoken.split())


@dataclass(frozen=True)
class AnswerScore:
    """The verdict on one reply.

    Attributes:
        question: what was asked.
        reply: the reply as generated (``""`` when none arrived).
        spoken: :func:`spoken_form` of the reply.
        missing: ``accept`` patterns that did not match.
        forbidden: ``(pattern, matched text)`` of each ``forbid`` pattern that matched.
        loop: the first word 4-gram said three times, or ``None``.
        words: spoken words.
        max_words: the length limit applied.
    """

    question: Question
    reply: str
    spoken: str
    missing: tuple[str, ...]
    forbidden: tuple[tuple[str, str], ...]
    loop: tuple[str, ...] | None
    words: int
    max_words: int = MAX_WORDS

    @property
    def too_long(self) -> bool:
        return self.words > self.max_words

    @property
    def acceptable(self) -> bool:
        return bool(self.spoken) and not self.missing and not self.forbidden and self.loop is None \
            and not self.too_long

    def reasons(self) -> list[str]:
        """Why the reply is not acceptable (empty when it is)."""
        out = []
        if not self.spoken:
            out.append("no reply")
        out += [f"missing /{p}/" for p in self.missing]
        out += [f"forbidden /{p}/ ({m!r})" for p, m in self.forbidden]
        if self.loop is not None:
            out.append(f"loop: {' '.join(self.loop)!r} three times")
        if self.too_long:
            out.append(f"{self.words} words > {self.max_words}")
        return out


def score_reply(question: Question, reply: str, max_words: int = MAX_WORDS) -> AnswerScore:
    """Score ``reply`` to ``question`` (see the module docstring)."""
    spoken = spoken_form(reply) if reply.strip() else ""
    missing = tuple(p.pattern for p in question.accept if not p.search(spoken))
    forbidden = tuple((p.pattern, m.group(0)) for p in question.forbid if (m := p.search(spoken)))
    return AnswerScore(question, reply, spoken, missing, forbidden, repeated_ngram(spoken),
                       len(spoken.split()), max_words)


@dataclass
class AnswerSummary:
    """Totals over one variant's scores.

    Attributes:
        n: questions scored.
        acceptable: acceptable replies.
        loops: replies that looped.
        too_long: replies over the word limit.
        by_category: ``{category: (acceptable, n)}``.
        median_words: median spoken words per reply.
    """

    n: int
    acceptable: int
    loops: int
    too_long: int
    by_category: dict[str, tuple[int, int]] = field(default_factory=dict)
    median_words: float = 0.0

    @property
    def share(self) -> float:
        """Acceptable share, 0-1."""
        return self.acceptable / self.n if self.n else 0.0


def summarize_scores(scores: Sequence[AnswerScore]) -> AnswerSummary:
    """Totals of :func:`score_reply` verdicts."""
    cats: Counter[str] = Counter()
    good: Counter[str] = Counter()
    for s in scores:
        cats[s.question.category] += 1
        good[s.question.category] += s.acceptable
    words = sorted(s.words for s in scores)
    median = 0.0
    if words:
        mid = len(words) // 2
        median = float(words[mid]) if len(words) % 2 else (words[mid - 1] + words[mid]) / 2
    return AnswerSummary(len(scores), sum(s.acceptable for s in scores), sum(s.loop is not None for s in scores),
                         sum(s.too_long for s in scores),
                         {c: (good[c], cats[c]) for c in CATEGORIES if cats[c]}, median)


def render_misses(scores: Iterable[AnswerScore], width: int = 160) -> str:
    """Every unacceptable reply: question id, why, and the reply (shortened to ``width`` characters)."""
    lines = []
    for s in scores:
        if s.acceptable:
            continue
        reply = " ".join(s.reply.split())
        reply = reply if len(reply) <= width else reply[: width - 3] + "..."
        lines.append(f"  - {s.question.id} ({s.question.category}): {'; '.join(s.reasons())}\n"
                     f"      Q: {s.question.question}\n      A: {reply or '(none)'}")
    return "\n".join(lines) if lines else "  (none)"


LATENCY_METRICS = ("llm_start_to_first_audio_ms", "llm_ttft_ms", "tokens_per_s")
"""Per-turn figures reported for each variant (p50 and p90), from the monitor's turn records."""


@dataclass
class VariantResult:
    """One model and prompt on the whole question set.

    Attributes:
        name: variant name (plan key).
        model: ``LLM_MODEL`` (or ``LLM_MODEL_PATH``) it ran with.
        scores: one per question, in question order.
        latency: ``{metric: {"p50": x, "p90": y, "n": k}}`` over the turns (see :data:`LATENCY_METRICS`).
        stop_reasons: ``{reason: count}`` from the LLM's ``llm_done`` detail (``repetition``, ``word_cap``, ...).
        failed: the run did not complete every turn.
    """

    name: str
    model: str
    scores: list[AnswerScore]
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    stop_reasons: dict[str, int] = field(default_factory=dict)
    failed: bool = False

    def as_json(self) -> dict[str, Any]:
        """The ``summary.json`` entry: totals, latency, and every miss with its reasons."""
        summary = summarize_scores(self.scores)
        return {"model": self.model, "questions": summary.n, "acceptable": summary.acceptable,
                "acceptable_share": round(summary.share, 4), "loops": summary.loops, "too_long": summary.too_long,
                "median_words": summary.median_words,
                "by_category": {c: {"acceptable": a, "n": n} for c, (a, n) in summary.by_category.items()},
                "latency": self.latency, "stop_reasons": self.stop_reasons, "failed": self.failed,
                "misses": [{"id": s.question.id, "reasons": s.reasons(), "reply": s.reply}
                           for s in self.scores if not s.acceptable]}


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_answers_table(results: Sequence[VariantResult]) -> str:
    """One row per variant: acceptable share, loops, too long, median words, first audio p50/p90, TTFT p50,
    tokens/s p50, then acceptable per category."""
    cats = [c for c in CATEGORIES if any(c == s.question.category for r in results for s in r.scores)]
    head = ["variant", "model", "acceptable", "loops", ">90 words", "words p50", "first_audio p50/p90 ms",
            "ttft p50 ms", "tokens/s p50"] + cats
    rows = []
    for r in results:
        s = summarize_scores(r.scores)
        lat = r.latency
        rows.append([r.name + (" (FAILED)" if r.failed else ""), r.model,
                     f"{s.acceptable}/{s.n} ({100 * s.share:.0f}%)", str(s.loops), str(s.too_long),
                     _fmt(s.median_words),
                     f"{_fmt(lat.get('llm_start_to_first_audio_ms', {}).get('p50'))}/"
                     f"{_fmt(lat.get('llm_start_to_first_audio_ms', {}).get('p90'))}",
                     _fmt(lat.get("llm_ttft_ms", {}).get("p50")), _fmt(lat.get("tokens_per_s", {}).get("p50"), 1)]
                    + [f"{s.by_category.get(c, (0, 0))[0]}/{s.by_category.get(c, (0, 0))[1]}" for c in cats])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join(["answer quality (acceptable = facts present, no forbidden claim, no loop, <= "
                      f"{MAX_WORDS} words)", fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
