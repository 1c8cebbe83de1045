"""Chunk-invariance and trap tests for the streaming segmenter (stream2sentence's test method)."""

from __future__ import annotations

import pytest

from dora_voice.text.segmenter import TextSegmenter


def run(text: str, piece: int | None, **kwargs) -> list[str]:
    seg = TextSegmenter(**kwargs)
    out: list[str] = []
    if piece is None:
        out += seg.push(text)
    else:
        for i in range(0, len(text), piece):
            out += seg.push(text[i:i + piece])
    return out + seg.flush()


TRAPS = {
    "decimal": "Pi is about 3.14 and that is fine. Next sentence here.",
    "currency": "It costs $29.95 today. Tomorrow it costs more.",
    "title": "Mr. Smith went to Washington. He stayed there.",
    "eg": "Use a fruit, e.g. an apple, for this. Then wait.",
    "initialism": "She lives in the U.S.A. and likes it. Really.",
    "year": "It happened in 1980. Then everything changed.",
    "paren": "This has an unclosed parenthesis (which goes on and on without end",
    "no_punct": " ".join(["word"] * 80),
    "unpunctuated_end": "Here is the answer. It ends without punctuation",
    "list": "Steps:\n1. Open the box.\n2. Take the toy.\n3. Play.",
    "quote": 'He said "stop." Then he left! Did he? Yes.',
}


@pytest.mark.parametrize("name", sorted(TRAPS))
@pytest.mark.parametrize("kwargs", [
    dict(max_chars=100, min_chars=20),
    dict(max_chars=50, min_chars=10, first_min_chars=0),
    dict(max_chars=30, min_chars=0, first_clause_cut=False),
])
def test_chunk_invariance(name: str, kwargs: dict) -> None:
    text = TRAPS[name]
    whole = run(text, None, **kwargs)
    assert run(text, 1, **kwargs) == whole
    assert run(text, 7, **kwargs) == whole
    # Nothing lost or invented: the segments joined are the text, modulo whitespace.
    assert " ".join(whole).split() == text.split()
    assert all(len(s) <= kwargs["max_chars"] for s in whole)


def test_never_cuts_inside_numbers_or_abbreviations() -> None:
    for name in ("decimal", "currency", "title", "eg", "initialism"):
        segs = run(TRAPS[name], 1, max_chars=200, min_chars=0, first_clause_cut=False)
        joined = "|".join(segs)
        for token in ("3.14", "$29.95", "Mr. Smith", "e.g. an", "U.S.A. and"):
            if token in TRAPS[name]:
                assert token in joined, (name, segs)


def test_sentences_are_cut_at_boundaries() -> None:
    segs = run("Hello there. How are you? I am fine!", 3, max_chars=100, min_chars=0, first_clause_cut=False)
    assert segs == ["Hello there.", "How are you?", "I am fine!"]


def test_year_ends_a_sentence() -> None:
    assert run(TRAPS["year"], 1, max_chars=100, min_chars=0) == ["It happened in 1980.", "Then everything changed."]


def test_list_numbers_do_not_end_segments() -> None:
    segs = run(TRAPS["list"], 1, max_chars=100, min_chars=0, first_clause_cut=False)
    assert segs == ["Steps:", "1. Open the box.", "2. Take the toy.", "3. Play."]


def test_min_chars_merges_short_sentences_but_not_the_first() -> None:
    segs = run("Hi. Ok. Sure thing, here we go now. Yes.", None, max_chars=100, min_chars=15)
    assert segs[0] == "Hi."
    assert segs[1] == "Ok. Sure thing, here we go now."
    assert segs[-1] == "Yes."  # the tail is flushed even when short


def test_first_segment_cuts_at_clause() -> None:
    segs = run("Sure, I can help with that. It is easy.", 1, max_chars=100, min_chars=10)
    assert segs[0] == "Sure,"
    assert segs[1:] == ["I can help with that.", "It is easy."]


def test_long_run_without_punctuation_is_cut_at_whitespace() -> None:
    text = TRAPS["no_punct"]  # 399 characters
    segs = run(text, 1, max_chars=60, min_chars=0)
    assert all(len(s) <= 60 for s in segs)
    assert all(not s.startswith(" ") and not s.endswith(" ") for s in segs)
    assert " ".join(segs) == text


def test_run_without_whitespace_is_cut_hard() -> None:
    segs = run("x" * 250, 7, max_chars=100)
    assert segs == ["x" * 100, "x" * 100, "x" * 50]


def test_first_max_tokens_cuts_early_at_a_word_boundary() -> None:
    seg = TextSegmenter(max_chars=200, min_chars=20, first_max_tokens=4)
    out = []
    for token in ["Once", " upon", " a", " time", " there", " was"]:
        out += seg.push(token)
    assert out == ["Once upon a"]
    out += seg.push(" a king.")
    out += seg.push(" He was old.")
    out += seg.flush()
    assert out == ["Once upon a", "time there was a king.", "He was old."]


def test_reset_starts_a_new_turn() -> None:
    seg = TextSegmenter(max_chars=100, min_chars=50)
    assert seg.push("Hi. ") == ["Hi."]
    seg.reset()
    assert seg.pending == ""
    assert seg.push("Yo. ") == ["Yo."]  # first segment again: min_chars does not apply


def test_flush_of_empty_buffer() -> None:
    seg = TextSegmenter(max_chars=10)
    assert seg.flush() == []
    assert seg.push("") == []


@pytest.mark.parametrize("kwargs", [dict(max_chars=0), dict(max_chars=10, min_chars=11),
                                    dict(max_chars=10, first_max_tokens=0)])
def test_bad_limits_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TextSegmenter(**kwargs)
