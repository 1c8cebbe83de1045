"""Speech normalization: every rule, the known traps, combinations, and text that must be left alone.

The last tests phonemize the output with espeak-ng (``piper_phonemize``, what Piper itself runs) to check that
the synthesizer reads it as intended: no symbol names, no spurious sentence breaks.
"""

from __future__ import annotations

import re

import pytest

from dora_voice.text.normalize import CODE_BLOCK_PLACEHOLDER, SpeechNormalizer, normalize_for_speech, year_words


def n(text: str) -> str:
    return normalize_for_speech(text)


# -- markdown ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("**bold** and *italic* and _under_ and __strong__", "bold and italic and under and strong"),
    ("***both*** here", "both here"),
    ("~~gone~~ text", "gone text"),
    ("`foo_bar()` returns", "foo_bar returns"),  # empty parentheses are not read
    ("# Title\nSome text.", "Title. Some text."),
    ("## Step one ##\nDo it", "Step one. Do it"),
    ("- apples\n- pears\n* plums", "apples. pears. plums"),
    ("Options:\n1. First\n2) Second", "Options: First. Second"),
    ("> a quote", "a quote"),
    ("above\n\n---\n\nbelow", "above. below"),
    ("| name | age |\n|---|---:|\n| Ann | 5 |", "name, age. Ann, five"),
    ("see [the docs](https://docs.example.org/a_(b)) now", "see the docs now"),
    ("![a cat](cat.png) sleeps", "a cat sleeps"),
    ("visit https://www.example.com/path?q=1.", "visit example.com."),
    ("go to <https://dora-rs.ai/docs>", "go to dora-rs.ai"),
])
def test_markdown_becomes_plain_sentences(text: str, expected: str) -> None:
    assert n(text) == expected


def test_code_block_is_replaced_by_a_spoken_marker() -> None:
    text = "Use this:\n```python\nprint('hi')  # 42 * 3\n```\nThen run it."
    assert n(text) == f"Use this: {CODE_BLOCK_PLACEHOLDER} Then run it."


def test_unclosed_code_block_drops_the_rest_of_the_text() -> None:
    assert n("Here:\n```\nx = 1\ny = 2") == f"Here: {CODE_BLOCK_PLACEHOLDER}"


def test_code_block_spanning_chunks_is_dropped_across_them() -> None:
    normalizer = SpeechNormalizer()
    chunks = ["Here it is:\n```py\nx = [1, 2]", "y = x * 2\nprint(y)", "```\nThat doubles it.", "Done."]
    out = [normalizer.normalize(c) for c in chunks]
    assert out == [f"Here it is: {CODE_BLOCK_PLACEHOLDER}", "", "That doubles it.", "Done."]
    normalizer.normalize("```")
    normalizer.reset()
    assert normalizer.normalize("Fresh turn.") == "Fresh turn."


@pytest.mark.parametrize("text, expected", [
    ("Hello \U0001f600 world \U0001f44d\U0001f3fd!", "Hello world!"),
    ("Great job \u2728\u2764\ufe0f", "Great job"),
    ("flags \U0001f1fa\U0001f1f8 and keycap 1\ufe0f\u20e3", "flags and keycap one"),
    ("family \U0001f468\u200d\U0001f469\u200d\U0001f467 here", "family here"),
])
def test_emoji_are_removed(text: str, expected: str) -> None:
    assert n(text) == expected


@pytest.mark.parametrize("text", ["\U0001f600", "\U0001f389\U0001f389 !", "...", "---", "**", "  \n "])
def test_nothing_to_say_gives_empty_string(text: str) -> None:
    assert n(text) == ""


# -- numbers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("$29.95", "twenty-nine dollars and ninety-five cents"),
    ("It costs $1.", "It costs one dollar."),
    ("$0.50", "fifty cents"),
    ("$0.01", "one cent"),
    ("$1,234,567.89", "one million two hundred and thirty-four thousand five hundred and sixty-seven dollars and "
                      "eighty-nine cents"),
    ("$1.5 million", "one point five million dollars"),
    ("$3B deal", "three billion dollars deal"),
    ("$3.5", "three point five dollars"),
    ("-$5", "minus five dollars"),
    ("\u20ac10", "ten euros"),
    ("\u00a33.20", "three pounds and twenty pence"),
])
def test_currency(text: str, expected: str) -> None:
    assert n(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("45%", "forty-five percent"),
    ("12.5 %", "twelve point five percent"),
    ("-5% drop", "minus five percent drop"),
    ("10-20%", "ten to twenty percent"),
])
def test_percentages(text: str, expected: str) -> None:
    assert n(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3.14", "three point one four"),
    ("0.5", "zero point five"),
    ("pi is 3.14159.", "pi is three point one four one five nine."),
    ("1,000,000 people", "one million people"),
    ("I have 2 apples.", "I have two apples."),
    ("101", "one hundred and one"),
    ("-3 degrees", "minus three degrees"),
    ("007", "zero zero seven"),
    ("1234567890123456789", "one two three four five six seven eight nine zero one two three four five six "
                            "seven eight nine"),
    ("version 1.2.3", "version one point two point three"),
    ("1/2 cup", "one half cup"),
    ("3/4 done", "three quarters done"),
    ("#1 choice", "number one choice"),
    ("No. 5", "number five"),
    ("~5 minutes", "about five minutes"),
    ("2x faster", "two times faster"),
    ("3 * 4", "three times four"),
    ("2^10 bytes", "two to the power of ten bytes"),
    ("3-5 minutes", "three to five minutes"),
    ("call 555-123-4567", "call five five five, one two three, four five six seven"),
])
def test_numbers(text: str, expected: str) -> None:
    assert n(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1980", "nineteen eighty"),
    ("In 1980.", "In nineteen eighty."),
    ("1905", "nineteen oh five"),
    ("1900", "nineteen hundred"),
    ("2000", "two thousand"),
    ("2005", "two thousand five"),
    ("2025", "twenty twenty-five"),
    ("2020-2024", "twenty twenty to twenty twenty-four"),
    ("the 1980s", "the nineteen eighties"),
    ("the '90s", "the nineties"),
    ("the 2000s", "the two thousands"),
    ("the 21st century", "the twenty-first century"),
    ("on the 2nd and 3rd", "on the second and third"),
    ("2024-01-15", "January fifteenth, twenty twenty-four"),
    ("at 3:30 p.m. today", "at three thirty PM today"),
    ("at 10:00 tomorrow", "at ten o'clock tomorrow"),
    ("at 9:05 AM", "at nine oh five AM"),
    ("at 7:00 pm", "at seven PM"),
])
def test_years_ordinals_dates_times(text: str, expected: str) -> None:
    assert n(text) == expected


def test_year_words_edges() -> None:
    assert year_words(1066) == "ten sixty-six"
    assert year_words(2010) == "twenty ten"
    assert year_words(999) == "nine hundred and ninety-nine"


@pytest.mark.parametrize("text, expected", [
    ("5 km", "five kilometers"),
    ("1 km", "one kilometer"),
    ("10 kg", "ten kilograms"),
    ("1.5 kg", "one point five kilograms"),
    ("3 ms", "three milliseconds"),
    ("latency of 250ms.", "latency of two hundred and fifty milliseconds."),
    ("25\u00b0C outside", "twenty-five degrees Celsius outside"),
    ("60 mph", "sixty miles per hour"),
    ("16 GB of RAM", "sixteen gigabytes of RAM"),
    ("3-5 km", "three to five kilometers"),
    ("6 ft tall", "six feet tall"),
])
def test_units(text: str, expected: str) -> None:
    assert n(text) == expected


# -- abbreviations ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith and Mrs. Jones", "Mister Smith and Missus Jones"),
    ("Dr. Who", "Doctor Who"),
    ("Ask Prof. Lee", "Ask Professor Lee"),
    ("fruit, e.g. apples", "fruit, for example, apples"),
    ("(e.g., apples)", "(for example, apples)"),
    ("one thing, i.e. this", "one thing, that is, this"),
    ("apples, pears, etc. Then we go", "apples, pears, et cetera. Then we go"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("cats vs. dogs vs mice", "cats versus dogs versus mice"),
    ("the U.S.A. is big", "the USA is big"),
    ("I live in the U.S.A.", "I live in the USA."),
    ("U.S. Army", "US Army"),
    ("St. Louis", "Saint Louis"),
    ("on Main St. today", "on Main Street today"),
    ("Martin Luther King Jr. said", "Martin Luther King Junior said"),
    ("C# and F# are languages", "C sharp and F sharp are languages"),
])
def test_abbreviations(text: str, expected: str) -> None:
    assert n(text) == expected


# -- left alone -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Hello there! How are you today?",
    "It's a nice day, isn't it?",
    "snake_case_name stays",
    "The model is GPT-like; it works.",
    "She said \"yes\" (twice).",
    "Use C++ here.",
    "Plus and minus.",
    "Q and A",
])
def test_plain_text_is_left_alone(text: str) -> None:
    assert n(text) == text


def test_whitespace_is_collapsed() -> None:
    assert n("  Hello\t\tworld  ") == "Hello world"


# -- combinations -----------------------------------------------------------------------------------------------


def test_combination_of_rules() -> None:
    text = ("## Deal of the day \U0001f525\n- **Price:** $29.95 (45% off), e.g. for Mr. Smith.\n"
            "- Ships in 3-5 days, see [details](https://shop.example.com/d).")
    assert n(text) == (
        "Deal of the day. Price: twenty-nine dollars and ninety-five cents (forty-five percent off), for example, "
        "for Mister Smith. Ships in three to five days, see details.")


def test_an_llm_reply_has_no_digits_or_markup_left() -> None:
    reply = ("Sure! Here are **3 tips** \U0001f60a:\n1. Sleep 8 hours.\n2. Walk 5 km a day.\n"
             "3. Spend < $20/day on *coffee*.\n\nIn 2023, 45% of people did (see https://x.org).")
    out = n(reply)
    assert not re.search(r"[0-9*#`_|~$%\U0001f000-\U0001faff]", out), out
    assert "three tips" in out and "eight hours" in out and "five kilometers" in out
    assert "twenty twenty-three" in out and "forty-five percent" in out and "x.org" in out


# -- what Piper's phonemizer makes of it ------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    phonemize = pytest.importorskip("piper_phonemize").phonemize_espeak
    return ["".join(s) for s in phonemize(text, "en-us")]


@pytest.mark.parametrize("text", ["Mr. Smith is here.", "Dr. Jones arrived.", "Ask Prof. Lee now.",
                                  "Visit St. Louis now.", "The U.S. Army came."])
def test_espeak_reads_one_sentence_where_there_is_one(text: str) -> None:
    assert len(_sentences(text)) == 2  # espeak alone pauses after the abbreviation...
    assert len(_sentences(n(text))) == 1  # ...not after normalization


def test_espeak_reads_no_symbol_names() -> None:
    raw = _sentences("**Note** # \U0001f600 $5")
    out = _sentences(n("**Note** # \U0001f600 $5"))
    assert any("stɚɹ" in s for s in raw)  # espeak says "asterisk" for the raw text...
    assert not any("stɚɹ" in s or "hˈæʃ" in s or "ɡɹˈɪnɪŋ" in s for s in out)  # ...and nothing of the kind after
    assert any("dˈɑːlɚz" in s for s in out)  # "dollars" after the number, not "dollar five"
