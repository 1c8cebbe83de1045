"""Loop measure, sentence split and the repetition guard (pure text functions)."""

from __future__ import annotations

import pytest

from dora_voice.text.repetition import RepetitionGuard, repeated_ngram, split_sentences, words

LOOP = ("If it's still not charging, try to use a power bank. " * 7).strip()


def test_words_ignore_case_and_punctuation_and_keep_apostrophes() -> None:
    assert words("It's 3.5 HOURS, isn't it?") == ["it's", "3", "5", "hours", "isn't", "it"]


def test_repeated_ngram_finds_a_loop_and_not_a_normal_answer() -> None:
    assert repeated_ngram(LOOP) == ("if", "it's", "still", "not")
    assert repeated_ngram("Canberra is the capital of Australia. It was chosen as a compromise between Sydney "
                          "and Melbourne, and the capital moved there in 1927.") is None
    # twice is not a loop; the third time is
    assert repeated_ngram("one two three four. one two three four.") is None
    assert repeated_ngram("one two three four. one two three four. One, two: three four!") is not None


def test_split_sentences_keeps_the_unfinished_rest_apart() -> None:
    assert split_sentences("It is Canberra. It is", final=False) == (["It is Canberra."], "It is")
    assert split_sentences("Pi is 3.", final=False) == ([], "Pi is 3.")  # "3." may still become "3.14"
    assert split_sentences("Pi is 3.", final=True) == (["Pi is 3."], "")
    assert split_sentences("Ask Mr. Smith. He knows", final=False) == (["Ask Mr. Smith."], "He knows")


def test_guard_stops_before_the_repeating_sentence() -> None:
    guard = RepetitionGuard()
    assert guard.admit("Try another cable and another charger.") == ("Try another cable and another charger.", False)
    first = "If it's still not charging, try to use a power bank."
    assert guard.admit(first) == (first, False)
    kept, looping = guard.admit("Restart the phone. " + first + " Then call support.")
    assert (kept, looping) == ("Restart the phone.", True)
    assert guard.admit("Something new entirely.") == ("", True)  # once tripped, the reply is over


def test_guard_catches_a_near_repeat_and_a_third_occurrence() -> None:
    guard = RepetitionGuard()
    guard.admit("You can boil the eggs for ten minutes in salted water.")
    # a parallel sentence shares one 4-gram of five: fine
    assert guard.admit("You can add salt to the water as well.")[1] is False
    # the first sentence again with one word changed: half of its 4-grams were said before
    assert guard.admit("You can boil the eggs for twelve minutes in salted water.")[1] is True
    # a phrase that comes back a third time inside otherwise new sentences
    guard = RepetitionGuard()
    guard.admit("Check the cable and the port first.")
    guard.admit("Then check the cable and the charger.")
    assert guard.admit("Finally check the cable and call support.")[1] is True


@pytest.mark.parametrize("reply", [
    "Three and a half hours is two hundred and ten minutes. That is three hours of one hundred and eighty minutes, "
    "plus thirty more.",
    "Put the eggs in a pot of cold water. Bring it to a boil. Turn off the heat and leave them for ten minutes. "
    "Then cool them in cold water.",
    "No, I can't set a timer. I can only talk with you. Try the clock app on your phone.",
    "One, two, three, four, five. Five, four, three, two, one.",
])
def test_guard_lets_ordinary_answers_through(reply: str) -> None:
    guard = RepetitionGuard()
    sentences, rest = split_sentences(reply, final=True)
    assert [guard.admit(s) for s in sentences] == [(s, False) for s in sentences]


def test_guard_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RepetitionGuard(n=0)
    with pytest.raises(ValueError):
        RepetitionGuard(overlap=0.0)
