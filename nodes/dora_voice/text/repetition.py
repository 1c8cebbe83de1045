"""Replies that fit speech: loop detection and ending a reply on a finished sentence.

A small model sometimes falls into a loop ("If it's still not charging, try a power bank. If it's still not
charging, ..." until ``max_tokens``); spoken aloud that is half a minute of nonsense. Sampling penalties
(llama.cpp's ``repeat_penalty``) make loops rarer but cannot rule them out, so :class:`RepetitionGuard` is the
last line: it checks every sentence before it is spoken and ends the reply before the first one that repeats.

Loop measure (the answer-quality benchmark's too, :func:`repeated_ngram`): a word 4-gram that occurs three times.
Words are lower-cased runs of letters, digits and apostrophes, so punctuation and case do not hide a repeat.

Sentence boundaries come from the project's one segmentation policy
(:meth:`~dora_voice.text.segmenter.SegmentationPolicy.sentences`: ``. ! ? …`` followed by whitespace, line breaks,
abbreviations and decimals respected); this module adds no rule of its own about where a sentence ends.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from dora_voice.text.segmenter import SegmentationPolicy, TextSegmenter

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

LOOP_NGRAM = 4
"""Words per n-gram of the loop measure."""
LOOP_OCCURRENCES = 3
"""Occurrences of one n-gram that make a loop (the issue's "no 4-word sequence three times")."""


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters, digits, inner apostrophes); punctuation dropped."""
    return [w.replace("\u2019", "'") for w in _WORD.findall(text.lower())]


def ngrams(tokens: Sequence[str], n: int = LOOP_NGRAM) -> list[tuple[str, ...]]:
    """Every run of ``n`` consecutive items of ``tokens``, in order (empty when there are fewer)."""
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram(text: str, n: int = LOOP_NGRAM, times: int = LOOP_OCCURRENCES) -> tuple[str, ...] | None:
    """The first word ``n``-gram of ``text`` that occurs ``times`` times, or ``None`` (no loop)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for gram in ngrams(words(text), n):
        counts[gram] += 1
        if counts[gram] >= times:
            return gram
    return None


def split_sentences(text: str, *, final: bool) -> tuple[list[str], str]:
    """Split ``text`` into finished sentences and the unfinished rest, by the project's segmentation policy.

    Args:
        text: reply text, possibly ending inside a sentence.
        final: the text is complete (a sentence-end mark at the very end counts); otherwise a sentence counts as
            finished only once whitespace follows its mark ("3." may still become "3.14").

    Returns:
        ``(sentences, rest)``: the finished sentences, stripped, and the text after the last of them (stripped;
        ``""`` when the text ends on a finished sentence).
    """
    segmenter = TextSegmenter(SegmentationPolicy.sentences(max(len(text), 1) + 1))
    sentences = segmenter.push(text + (" " if final else ""))
    return sentences, segmenter.pending.strip()


class RepetitionGuard:
    """Lets a reply through sentence by sentence and stops it before the first sentence that repeats.

    A sentence repeats when, counted over the reply so far plus that sentence,

    * one word ``n``-gram reaches ``max_occurrences + 1`` occurrences (the loop measure, caught before the
      occurrence that would make it a loop is spoken), or
    * at least ``overlap`` of the sentence's own ``n``-grams (and at least two, or its only one) already occurred
      earlier in the reply: a sentence said again, nearly word for word.

    Use one guard per reply (:meth:`reset` between replies). Pure; no I/O.

    Args:
        n: words per n-gram (default 4).
        max_occurrences: occurrences of one n-gram still allowed (default 2).
        overlap: share (0-1] of a sentence's n-grams seen before that marks it as said again (default 0.5).

    Raises:
        ValueError: ``n < 1``, ``max_occurrences < 1`` or ``overlap`` outside (0, 1].
    """

    def __init__(self, n: int = LOOP_NGRAM, max_occurrences: int = LOOP_OCCURRENCES - 1,
                 overlap: float = 0.5) -> None:
        if n < 1 or max_occurrences < 1 or not 0.0 < overlap <= 1.0:
            raise ValueError(f"bad guard settings: n={n}, max_occurrences={max_occurrences}, overlap={overlap}")
        self.n = n
        self.max_occurrences = max_occurrences
        self.overlap = overlap
        self.reset()

    def reset(self) -> None:
        """Forget the reply (a new turn)."""
        self._words: list[str] = []
        self._counts: Counter[tuple[str, ...]] = Counter()
        self.tripped = False
        self.repeated: str = ""  # the first sentence refused, for logs

    def repeats(self, sentence: str) -> bool:
        """Whether ``sentence`` would repeat the reply admitted so far (see the class docstring)."""
        new = words(sentence)
        if not new:
            return False
        context = self._words[-(self.n - 1):] if self.n > 1 else []
        grams = ngrams(context + new, self.n)
        added: Counter[tuple[str, ...]] = Counter(grams)
        if any(self._counts[g] + c > self.max_occurrences for g, c in added.items()):
            return True
        own = ngrams(new, self.n)
        seen = sum(1 for g in own if self._counts[g] > 0)
        return bool(own) and seen >= min(2, len(own)) and seen >= self.overlap * len(own)

    def _accept(self, sentence: str) -> None:
        new = words(sentence)
        context = self._words[-(self.n - 1):] if self.n > 1 else []
        self._counts.update(ngrams(context + new, self.n))
        self._words += new

    def admit(self, chunk: str) -> tuple[str, bool]:
        """Check a chunk of the reply before it is spoken.

        The chunk is split into sentences (the last may be unfinished, e.g. a first chunk cut after a few
        tokens); sentences are admitted in order until one repeats.

        Returns:
            ``(text, looping)``: the part of ``chunk`` to speak (``chunk`` itself when nothing repeats; otherwise
            the sentences before the first repeating one, joined by spaces, possibly ``""``) and whether the reply
            is looping (then generation should stop; every later :meth:`admit` returns ``("", True)``).
        """
        if self.tripped:
            return "", True
        sentences, rest = split_sentences(chunk, final=False)
        pieces = sentences + ([rest] if rest else [])
        for i, piece in enumerate(pieces):
            if self.repeats(piece):
                self.tripped = True
                self.repeated = piece
                return " ".join(pieces[:i]), True
            self._accept(piece)
        return chunk, False
