"""Where to cut a growing reply so each piece can be spoken: the project's one segmentation policy.

:class:`SegmentationPolicy` holds the rules (one :class:`SegmentRule` for a turn's first segment, one for every
later segment); each node builds its policy from its own settings (``LlmConfig.segmentation`` for the LLM's
chunks, ``TtsConfig.segmentation`` for the TTS's segments) and drives a :class:`TextSegmenter` with it, one per
turn. Interface as in pipecat's ``SimpleTextAggregator`` and LiveKit's ``tokenize/token_stream.py``:
:meth:`~TextSegmenter.push` / :meth:`~TextSegmenter.flush` / :meth:`~TextSegmenter.reset`.

Cut rules, in order (checked on the buffered text after every push; ``rule`` is the first-segment rule until the
first segment is out, the later-segment rule after that):

1. The earliest *boundary* ``b`` with ``rule.min_chars <= len(segment) <= rule.max_chars``. Sentence boundaries
   are ``. ! ? …`` (optionally followed by closing quotes/brackets) *followed by whitespace*, and line breaks. With
   ``rule.clause_cut`` the segment may also end at a clause boundary (``, ; :`` followed by whitespace, or a
   spaced dash): a short first chunk buys latency, later chunks buy prosody (RealtimeTTS keeps first-fragment
   thresholds apart for the same reason).
2. With ``rule.max_tokens``: after that many pushes (LLM tokens), cut at the last clause or sentence boundary, the
   end of the text included when it ends at punctuation after a word (a boundary the next token would confirm),
   else at the last whitespace (the "max_tokens first, sentence_boundary after" pause strategy).
3. The buffer is longer than ``rule.max_chars`` (no boundary can come in time): cut at the last clause boundary,
   else the last whitespace, at or before ``rule.cut_chars``; a run with no whitespace at all is cut hard there.

A *token budget* (:meth:`TextSegmenter.limit_next`, set by the LLM's adaptive pacing from the audio already queued)
adds a rule for the next segment only: after that many pushes, cut at the last clause or sentence boundary (the end
of the text included, as in rule 2), else at the last whitespace, so a segment the listener would otherwise wait for
is shorter, ending at a phrase where it can.

Because a boundary needs the whitespace *after* the punctuation, a cut never depends on how the text was split
into pushes: "3." followed later by "14" is never cut, and rules 1 and 3 give the same segments whether text
arrives whole, one character at a time or in 7-character pieces (chunk invariance, tested as in stream2sentence's
``tests/test_stream2sentence.py``). Rule 2 and the budget count pushes, so they are the deliberate exception. A period is not a
boundary after a known abbreviation ("Mr.", "e.g.", "etc."), an initial or initialism ("J.", "U.S.A."), or a
list number at the start of a line ("1.").

:func:`ends_at_pause` tells whether a piece of text ends where a speaker pauses (sentence or clause punctuation):
the speaker's sentence pause and the normalizer's list items use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE_PUNCT = ".!?\u2026"
_CLAUSE_PUNCT = ",;:"
_CLOSERS = "\"'\u201d\u2019)\\]"
_SENTENCE_END = re.compile(rf"[{_SENTENCE_PUNCT}]+[{_CLOSERS}]*(?=\s)|\n")
_CLAUSE_END = re.compile(rf"[{_CLAUSE_PUNCT}]+(?=\s)|\s[-\u2013\u2014](?=\s)")
_ENDS_AT_PAUSE = re.compile(rf"[{_SENTENCE_PUNCT}{_CLAUSE_PUNCT}][{_CLOSERS}]*\s*$")
_WORD_BEFORE_DOT = re.compile(r"(\S+)\.+$")
_PUNCT_AFTER_WORD = re.compile(rf"[^\W\d_][{_SENTENCE_PUNCT}{_CLAUSE_PUNCT}]+[{_CLOSERS}]*$")
_INITIALISM = re.compile(r"^(?:[A-Za-z]\.)*[A-Za-z]$")

ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "eg", "ie", "fig", "approx",
    "inc", "ltd", "co", "corp", "mt", "ft", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "dept", "est", "min", "max", "avg", "gen", "col", "lt", "sgt", "capt", "rev", "hon", "al", "cf",
})
"""Words whose trailing period does not end a sentence (lower case, without the final period)."""


def _is_false_sentence_end(text: str, match: re.Match[str]) -> bool:
    """True when the periods matched at ``match`` belong to an abbreviation, an initial or a list number."""
    punct = match.group(0)
    if not punct.startswith("."):
        return False
    head = text[: match.start() + 1]
    word_match = _WORD_BEFORE_DOT.search(head)
    if word_match is None:
        return False
    word = word_match.group(1).lstrip("\"'(\u201c\u2018[")
    if word.lower() in ABBREVIATIONS or _INITIALISM.match(word):
        return True
    if word.isdigit() and len(word) <= 3:
        line_start = text.rfind("\n", 0, word_match.start()) + 1
        return text[line_start: word_match.start()].strip() == ""
    return False


def ends_at_pause(text: str) -> bool:
    """True when ``text`` ends at sentence or clause punctuation (``. ! ? … , ; :``, closing quotes and trailing
    whitespace allowed): a natural pause follows it, unlike a piece cut mid-phrase by a length limit."""
    return _ENDS_AT_PAUSE.search(text) is not None


@dataclass(frozen=True)
class SegmentRule:
    """Where one kind of segment may end (see the module docstring for the order the rules apply in).

    Args:
        max_chars: longest segment (characters) that ends at a boundary; a longer buffer is cut by force. ``>= 1``.
        min_chars: shortest segment cut at a boundary (shorter pieces wait for more text; the last piece of a
            flush may be shorter). ``0 <= min_chars <= max_chars``.
        clause_cut: whether the segment may end at a clause boundary (comma, semicolon, colon, spaced dash).
        max_tokens: cut after this many pushes (LLM tokens) even without a confirmed boundary: at the last clause or
            sentence boundary (the end of the text included when it ends at punctuation after a word), else at the
            last whitespace; ``None`` disables the rule.
        cut_chars: where a forced cut falls when the buffer outgrew ``max_chars`` with no boundary in
            ``min_chars..max_chars``: at the last clause boundary or whitespace at or before it. ``None`` (the
            default) means ``max_chars``; ``1 <= cut_chars <= max_chars``.

    Raises:
        ValueError: inconsistent limits.
    """

    max_chars: int
    min_chars: int = 0
    clause_cut: bool = False
    max_tokens: int | None = None
    cut_chars: int | None = None

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"min_chars must be within 0..max_chars ({self.max_chars}), got {self.min_chars}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.cut_chars is not None and not 1 <= self.cut_chars <= self.max_chars:
            raise ValueError(f"cut_chars must be within 1..max_chars ({self.max_chars}), got {self.cut_chars}")

    @property
    def forced_cut_chars(self) -> int:
        """Where a forced cut falls at the latest (``cut_chars``, else ``max_chars``)."""
        return self.max_chars if self.cut_chars is None else self.cut_chars


@dataclass(frozen=True)
class SegmentationPolicy:
    """The rules for a turn's first segment and for every later one.

    Args:
        first: the rule for the first segment after :meth:`TextSegmenter.reset` (a new turn).
        later: the rule for every other segment.
    """

    first: SegmentRule
    later: SegmentRule

    @classmethod
    def sentences(cls, max_chars: int) -> SegmentationPolicy:
        """Every sentence end is a cut (no minimum, no clause cuts): finished sentences, one by one. Text that
        runs on without one is cut by force after ``max_chars`` characters."""
        rule = SegmentRule(max_chars)
        return cls(first=rule, later=rule)

    def rule(self, segments_emitted: int) -> SegmentRule:
        """The rule for the next segment, after ``segments_emitted`` segments of the turn."""
        return self.first if segments_emitted == 0 else self.later


class TextSegmenter:
    """Cuts the streamed text of one turn into speakable segments by a :class:`SegmentationPolicy`.

    :meth:`push` text as it arrives; :meth:`flush` where the text ends (the end of the reply, or of a chunk that
    must end a segment); :meth:`reset` at a new turn, which makes the next segment a first segment again.

    Args:
        policy: where to cut.
    """

    def __init__(self, policy: SegmentationPolicy) -> None:
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        """Forget buffered text; the next segment is a first segment again (a new turn)."""
        self._buffer = ""
        self._segments = 0
        self._pushes = 0
        self._budget: int | None = None

    def limit_next(self, max_tokens: int | None) -> None:
        """Cut the next segment after at most ``max_tokens`` pushes (counted since the last segment), at its last
        clause or sentence boundary (the end of the text included when it ends at punctuation after a word) or else
        its last whitespace; ``None`` lifts the limit. Applies to one segment only.

        Raises:
            ValueError: ``max_tokens < 1``.
        """
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        self._budget = max_tokens

    @property
    def pending(self) -> str:
        """Text received but not yet emitted."""
        return self._buffer

    @property
    def segments_emitted(self) -> int:
        """Segments returned since the last :meth:`reset`."""
        return self._segments

    def push(self, delta: str) -> list[str]:
        """Add streamed text (one LLM token, or any piece); return the segments it completes."""
        if not delta:
            return []
        self._buffer += delta
        self._pushes += 1
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The text ends here: return every remaining segment (the last may be shorter than ``min_chars``).

        The turn goes on: the next segment is not a first segment again until :meth:`reset`.
        """
        out = self._drain(final=True)
        rest = self._buffer.strip()
        self._buffer = ""
        if rest:
            out.append(self._emit(rest))
        return out

    # -- internals ---------------------------------------------------------------------------------------------
    def _emit(self, segment: str) -> str:
        self._segments += 1
        self._pushes = 0
        self._budget = None
        return segment

    def _drain(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            cut = self._find_cut(final)
            if cut is None:
                return out
            segment, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if segment:
                out.append(self._emit(segment))
            elif not self._buffer:
                return out

    @staticmethod
    def _boundaries(text: str, final: bool, clauses: bool) -> list[int]:
        scan = text + " " if final else text
        ends = [m.end() for m in _SENTENCE_END.finditer(scan) if not _is_false_sentence_end(scan, m)]
        if clauses:
            ends += [m.end() for m in _CLAUSE_END.finditer(scan)]
        return sorted(min(e, len(text)) for e in ends)

    def _token_limit_cut(self, text: str, min_len: int) -> int | None:
        """Where a cut forced by a token limit falls: the last clause or sentence boundary, the end of the buffer
        included when the text there ends at punctuation after a word (cut anyway, the next token need not confirm
        it; after a number the period may be a decimal point), else the last whitespace; None when there is none.

        Cutting "forward 10 meters." at its last whitespace left "meters." to be synthesized on its own, and
        "forward 10" alone was heard back as "4-10"."""
        ends = [e for e in self._boundaries(text, False, clauses=True) if len(text[:e].strip()) >= min_len]
        stripped = text.rstrip()
        # the whole text, even under min_len: any other cut would be shorter, and mid-phrase
        if _PUNCT_AFTER_WORD.search(stripped) and len(stripped) in self._boundaries(stripped, True, clauses=True):
            ends.append(len(stripped))
        if ends:
            return max(ends)
        space = stripped.rfind(" ")
        if space > 0 and text[:space].strip():
            return space
        return None

    def _find_cut(self, final: bool) -> int | None:
        text = self._buffer
        if not text.strip():
            return None
        rule = self.policy.rule(self._segments)
        min_len = max(rule.min_chars, 1)
        for end in self._boundaries(text, final, clauses=rule.clause_cut):
            length = len(text[:end].strip())
            if length > rule.max_chars:
                break
            if length >= min_len:
                return end
        if rule.max_tokens is not None and self._pushes >= rule.max_tokens and not final:
            cut = self._token_limit_cut(text, min_len)
            if cut is not None:
                return cut
        if self._budget is not None and self._pushes >= self._budget and not final:
            cut = self._token_limit_cut(text, min_len)
            if cut is not None:
                return cut
        if len(text) > rule.max_chars:
            limit = rule.forced_cut_chars
            window = text[: limit + 1]
            clause_ends = [e for e in self._boundaries(window, False, clauses=True)
                           if e <= limit and len(window[:e].strip()) >= min_len]
            if clause_ends:
                return clause_ends[-1]
            space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            if space > 0 and window[:space].strip():
                return space
            return limit
        return None
