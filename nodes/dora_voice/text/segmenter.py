"""Streaming text segmentation for speech: where to cut a growing reply so each piece can be spoken.

One class serves both the LLM (cutting tokens into speakable chunks as they stream) and the TTS (splitting a long
chunk into segments of ``TTS_MAX_SEGMENT_LENGTH`` characters at most). Interface as in pipecat's
``SimpleTextAggregator`` and LiveKit's ``tokenize/token_stream.py``: :meth:`push` / :meth:`flush` / :meth:`reset`.

Cut rules, in order (checked on the buffered text after every :meth:`push`):

1. The earliest *boundary* ``b`` with ``min_chars <= len(segment) <= max_chars``. Sentence boundaries are
   ``. ! ? …`` (optionally followed by closing quotes/brackets) *followed by whitespace*, and line breaks. The
   first segment may also cut at clause boundaries (``, ; :`` followed by whitespace) — a short first chunk buys
   latency, later chunks buy prosody (RealtimeTTS keeps first-fragment thresholds apart for the same reason).
2. First segment only: after ``first_max_tokens`` pushes (LLM tokens), cut at the last whitespace (the seeds'
   "max_tokens first, sentence_boundary after" strategy).
3. The buffer is longer than ``max_chars``: cut at the last clause boundary, else the last whitespace, at or
   before ``max_chars``; a run with no whitespace at all is cut hard at ``max_chars``.

Because a boundary needs the whitespace *after* the punctuation, a cut never depends on how the text was split
into deltas: "3." followed later by "14" is never cut, and rules 1 and 3 give the same segments whether text
arrives whole, one character at a time or in 7-character pieces (chunk invariance, tested as in stream2sentence's
``tests/test_stream2sentence.py``). Rule 2 counts pushes, so it is the one deliberate exception. A period is not a
boundary after a known abbreviation ("Mr.", "e.g.", "etc."), an initial or initialism ("J.", "U.S.A."), or a
list number at the start of a line ("1.").
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
_CLAUSE_END = re.compile(r"[,;:]+(?=\s)|\s[-\u2013\u2014](?=\s)")
_WORD_BEFORE_DOT = re.compile(r"(\S+)\.+$")
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


class TextSegmenter:
    """Cuts streamed text into speakable segments.

    Args:
        max_chars: longest segment (characters) before a forced cut. ``>= 1``.
        min_chars: shortest segment cut at a boundary (shorter pieces wait for more text), for every segment but
            the first. ``0 <= min_chars <= max_chars``.
        first_min_chars: ``min_chars`` for the first segment (default 0: cut as early as possible).
        first_max_tokens: first segment only: cut after this many :meth:`push` calls (LLM tokens) even without
            punctuation. ``None`` disables the rule.
        first_clause_cut: whether the first segment may end at a clause boundary (comma, semicolon, colon, dash).

    Raises:
        ValueError: inconsistent limits.
    """

    def __init__(self, max_chars: int, min_chars: int = 0, *, first_min_chars: int = 0,
                 first_max_tokens: int | None = None, first_clause_cut: bool = True) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        if not 0 <= min_chars <= max_chars:
            raise ValueError(f"min_chars must be within 0..max_chars ({max_chars}), got {min_chars}")
        if not 0 <= first_min_chars <= max_chars:
            raise ValueError(f"first_min_chars must be within 0..max_chars ({max_chars}), got {first_min_chars}")
        if first_max_tokens is not None and first_max_tokens < 1:
            raise ValueError(f"first_max_tokens must be >= 1 or None, got {first_max_tokens}")
        self.max_chars = max_chars
        self.min_chars = min_chars
        self.first_min_chars = first_min_chars
        self.first_max_tokens = first_max_tokens
        self.first_clause_cut = first_clause_cut
        self.reset()

    def reset(self) -> None:
        """Forget buffered text; the next segment is a first segment again (a new turn)."""
        self._buffer = ""
        self._segments = 0
        self._pushes = 0

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
        """End of the text: return every remaining segment (the last may be shorter than ``min_chars``)."""
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

    def _boundaries(self, text: str, final: bool, clauses: bool) -> list[int]:
        scan = text + " " if final else text
        ends = [m.end() for m in _SENTENCE_END.finditer(scan) if not _is_false_sentence_end(scan, m)]
        if clauses:
            ends += [m.end() for m in _CLAUSE_END.finditer(scan)]
        return sorted(min(e, len(text)) for e in ends)

    def _find_cut(self, final: bool) -> int | None:
        text = self._buffer
        if not text.strip():
            return None
        first = self._segments == 0
        min_len = self.first_min_chars if first else self.min_chars
        for end in self._boundaries(text, final, clauses=first and self.first_clause_cut):
            length = len(text[:end].strip())
            if length > self.max_chars:
                break
            if length >= max(min_len, 1):
                return end
        if first and self.first_max_tokens is not None and self._pushes >= self.first_max_tokens and not final:
            space = text.rstrip().rfind(" ")
            if space > 0 and text[:space].strip():
                return space
        if len(text) > self.max_chars:
            window = text[: self.max_chars + 1]
            clause_ends = [e for e in self._boundaries(window, False, clauses=True) if e <= self.max_chars]
            clause_ends = [e for e in clause_ends if len(window[:e].strip()) >= max(min_len, 1)]
            if clause_ends:
                return clause_ends[-1]
            space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            if space > 0 and window[:space].strip():
                return space
            return self.max_chars
        return None
