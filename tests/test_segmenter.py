"""Chunk-invariance and trap tests for the streaming segmenter (stream2sentence's test method)."""

from __future__ import annotations

import pytest

from dora_voice.text.segmenter import SegmentationPolicy, SegmentRule, TextSegmenter, ends_at_pause


def policy(max_chars: int, min_chars: int = 0, *, first_min_chars: int = 0, first_max_tokens: int | None = None,
           first_clause_cut: bool = True) -> SegmentationPolicy:
    """The LLM's policy shape: a first segment with its own minimum, clause cuts and token cap."""
    return SegmentationPolicy(
        first=SegmentRule(max_chars, first_min_chars, clause_cut=first_clause_cut, max_tokens=first_max_tokens),
        later=SegmentRule(max_chars, min_chars))


def run(text: str, piece: int | None, **kwargs) -> list[str]:
    seg = TextSegmenter(policy(**kwargs))
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
    seg = TextSegmenter(policy(max_chars=200, min_chars=20, first_max_tokens=4))
    out = []
    for token in ["Once", " upon", " a", " time", " there", " was"]:
        out += seg.push(token)
    assert out == ["Once upon a"]
    out += seg.push(" a king.")
    out += seg.push(" He was old.")
    out += seg.flush()
    assert out == ["Once upon a", "time there was a king.", "He was old."]


def test_a_token_budget_cuts_the_next_segment_at_its_last_clause_else_a_word() -> None:
    seg = TextSegmenter(policy(max_chars=200, min_chars=0))
    out = seg.push("Hello.") + seg.push(" ")  # first segment
    seg.limit_next(6)
    tokens = [" The", " river", ",", " wide", " and", " slow", " runs", " on", "."]
    for token in tokens[:5]:
        out += seg.push(token)
    assert out == ["Hello."]  # 5 pushes: within the budget, no sentence end yet
    out += seg.push(tokens[5])
    assert out == ["Hello.", "The river,"]  # the 6th push: cut at the clause, the rest waits
    for token in tokens[6:]:
        out += seg.push(token)
    out += seg.push(" Next one comes")
    assert out[-1] == "wide and slow runs on."  # the budget held for one segment only: a sentence end again
    seg.limit_next(2)
    out += seg.push(" here")
    assert out[-1] == "wide and slow runs on."  # one push since that segment: within the budget
    out += seg.push(" now")
    assert out[-1] == "Next one comes here"  # no clause: cut at the last whitespace (a token may go on)
    assert seg.pending == "now"
    with pytest.raises(ValueError):
        seg.limit_next(0)


def test_a_cut_forced_by_tokens_keeps_a_phrase_that_just_ended_whole() -> None:
    """The sentence end the last token brought is where a forced cut falls (its whitespace is not needed); cut at the
    last word instead, "forward 10" was synthesized alone and heard back as "4-10"."""
    seg = TextSegmenter(policy(max_chars=200, min_chars=30, first_max_tokens=3))
    out = seg.push("I'm") + seg.push(" going") + seg.push(" forward")
    assert out == ["I'm going"] and seg.pending == "forward"  # the first segment: 3 tokens, at the last word
    seg.limit_next(3)
    for token in [" 10", " meters", "."]:
        out += seg.push(token)
    # shorter than min_chars (30), but whole: any other cut would be shorter, and mid-phrase
    assert out == ["I'm going", "forward 10 meters."] and seg.pending == ""
    seg.limit_next(2)
    out += seg.push(" It is 3") + seg.push(".")  # a number's period may be a decimal point: not a boundary
    assert out[-1] == "It is" and seg.pending == "3."
    seg.limit_next(1)
    out += seg.push(" Ask Mr.")  # nor is an abbreviation's
    assert out[-1] == "3. Ask" and seg.pending == "Mr."
    first = TextSegmenter(policy(max_chars=200, min_chars=20, first_max_tokens=3))
    assert first.push("Yes") + first.push(",") + first.push(" sure") == ["Yes,"]  # the clause, whitespace or not
    first = TextSegmenter(policy(max_chars=200, min_chars=20, first_max_tokens=3))
    assert first.push("Go") + first.push(" north") + first.push("!") == ["Go north!"]


def test_reset_starts_a_new_turn() -> None:
    seg = TextSegmenter(policy(max_chars=100, min_chars=50))
    assert seg.push("Hi. ") == ["Hi."]
    seg.reset()
    assert seg.pending == ""
    assert seg.push("Yo. ") == ["Yo."]  # first segment again: min_chars does not apply


def test_flush_of_empty_buffer() -> None:
    seg = TextSegmenter(policy(max_chars=10))
    assert seg.flush() == []
    assert seg.push("") == []


@pytest.mark.parametrize("kwargs", [dict(max_chars=0), dict(max_chars=10, min_chars=11),
                                    dict(max_chars=10, max_tokens=0), dict(max_chars=10, cut_chars=11),
                                    dict(max_chars=10, cut_chars=0)])
def test_bad_limits_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SegmentRule(**kwargs)


def test_flush_ends_the_text_but_not_the_turn() -> None:
    # The TTS pushes each LLM chunk and flushes it: only the turn's first segment follows the first rule.
    seg = TextSegmenter(policy(max_chars=100, min_chars=30))
    assert seg.push("Sure, here it is.") + seg.flush() == ["Sure,", "here it is."]
    assert seg.push("Sure, here it is.") + seg.flush() == ["Sure, here it is."]
    seg.reset()
    assert seg.push("Sure, here it is.") + seg.flush() == ["Sure,", "here it is."]


def test_forced_cut_of_the_first_segment_can_fall_before_max_chars() -> None:
    # The TTS's first segment: a pause anywhere within max_chars wins; text that runs on is cut within cut_chars.
    tts = SegmentationPolicy(first=SegmentRule(80, 10, clause_cut=True, cut_chars=30), later=SegmentRule(80, 10))
    runs_on = "The tower was built for the fair in Paris and it was the tallest structure in the world then."
    seg = TextSegmenter(tts)
    assert seg.push(runs_on)[0] == "The tower was built for the"
    seg = TextSegmenter(tts)
    paused = "It costs twenty-nine dollars and ninety-five cents today. Enjoy it."
    assert seg.push(paused) + seg.flush() == ["It costs twenty-nine dollars and ninety-five cents today.", "Enjoy it."]


def test_a_forced_cut_never_splits_an_abbreviation_from_its_word_by_accident() -> None:
    # "Dr." is not a boundary, so the first segment looks on to the sentence end rather than stop after "Dr.".
    tts = SegmentationPolicy(first=SegmentRule(100, 20, clause_cut=True, cut_chars=50), later=SegmentRule(100, 20))
    text = "Yesterday afternoon I went over to talk with Dr. Fitzgeraldson about it. Then home."
    seg = TextSegmenter(tts)
    assert (seg.push(text) + seg.flush())[0] == "Yesterday afternoon I went over to talk with Dr. Fitzgeraldson about it."


@pytest.mark.parametrize("text, pause", [
    ("Hello.", True), ("Really?", True), ("Wait,", True), ('He said "stop."', True), ("Well\u2026 ", True),
    ("(as noted);", True), ("The capital of", False), ("a dash -", False), ("", False),
])
def test_ends_at_pause(text: str, pause: bool) -> None:
    assert ends_at_pause(text) is pause
