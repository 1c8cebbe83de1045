"""The answer-quality scorer and the packaged question set."""

from __future__ import annotations

import pytest

from dora_voice_tools.bench.answers import (
    CATEGORIES, MAX_WORDS, QuestionSetError, load_questions, parse_questions, render_misses, score_reply,
    spoken_form, summarize_scores,
)

QUESTIONS = {q.id: q for q in load_questions()}


def test_the_packaged_set_covers_every_category_with_at_least_40_questions() -> None:
    assert len(QUESTIONS) >= 40
    counts = {c: sum(q.category == c for q in QUESTIONS.values()) for c in CATEGORIES}
    assert all(n >= 5 for n in counts.values()), counts
    assert all(q.source.strip() and q.forbid for q in QUESTIONS.values())


def test_spoken_form_is_what_the_listener_hears() -> None:
    assert spoken_form("It's 3.5 hours: 210 minutes!") == "it's three point five hours two hundred and ten minutes"
    assert spoken_form("**No**, it isn't safe.") == "no it isn't safe"


@pytest.mark.parametrize("qid, reply", [
    ("capital-australia", "The capital of Australia is Canberra."),
    ("minutes-in-three-and-a-half-hours", "Three and a half hours is 210 minutes."),
    ("minutes-in-three-and-a-half-hours", "That's two hundred ten minutes."),
    ("raw-cookie-dough", "No, it's not safe: raw flour and raw eggs can make you sick."),
    ("virus-bacteria", "No. Viruses are much smaller than bacteria and are not cells."),
    ("set-timer", "Sorry, I can't set timers. Try the clock app on your phone."),
    ("time-now", "I don't have a clock, so please check your phone."),
    ("fahrenheit-to-celsius", "One hundred degrees Fahrenheit is about 37.8 degrees Celsius."),
])
def test_correct_replies_are_acceptable(qid: str, reply: str) -> None:
    score = score_reply(QUESTIONS[qid], reply)
    assert score.acceptable, score.reasons()


@pytest.mark.parametrize("qid, reply, reason", [
    # the wrong answers the issue quotes
    ("capital-australia", "The capital of Australia is Sydney.", "missing"),
    ("minutes-in-three-and-a-half-hours", "Three and a half hours is equal to 180 minutes.", "missing"),
    ("virus-bacteria", "A virus is a type of bacteria that makes you sick.", "forbidden"),
    ("virus-bacteria", "No, a virus is a tiny piece of code.", "forbidden"),
    ("raw-cookie-dough", "Yes, it is safe to eat raw cookie dough.", "forbidden"),
    ("set-timer", "Sure! I've set a timer for ten minutes.", "missing"),
    ("set-timer", "I can't wait! Timer set for ten minutes.", "forbidden"),
    ("capital-australia", "", "no reply"),
])
def test_wrong_replies_are_misses_with_the_reason(qid: str, reply: str, reason: str) -> None:
    score = score_reply(QUESTIONS[qid], reply)
    assert not score.acceptable
    assert any(r.startswith(reason) for r in score.reasons()), score.reasons()


def test_a_loop_and_a_long_reply_are_misses_even_with_the_right_facts() -> None:
    looped = "Check the cable. " + "If it's still not charging, try to use a power bank. " * 3
    score = score_reply(QUESTIONS["phone-wont-charge"], looped)
    assert score.loop == ("if", "it's", "still", "not") and not score.acceptable
    twice = "Check the cable. " + "If it's still not charging, try to use a power bank. " * 2
    assert score_reply(QUESTIONS["phone-wont-charge"], twice).acceptable  # twice is not a loop
    long = "Canberra is the capital. " + " ".join(f"word{i}" for i in range(MAX_WORDS))
    score = score_reply(QUESTIONS["capital-australia"], long)
    assert score.too_long and not score.acceptable and "words >" in score.reasons()[0]


def test_summary_and_misses_report() -> None:
    scores = [score_reply(QUESTIONS["capital-australia"], "Canberra."),
              score_reply(QUESTIONS["capital-australia"], "Sydney."),
              score_reply(QUESTIONS["set-timer"], "I cannot do that.")]
    summary = summarize_scores(scores)
    assert (summary.n, summary.acceptable, summary.loops) == (3, 2, 0)
    assert summary.by_category == {"fact": (1, 2), "cannot": (1, 1)}
    assert summary.share == pytest.approx(2 / 3)
    misses = render_misses(scores)
    assert "capital-australia" in misses and "Sydney." in misses and "set-timer" not in misses


@pytest.mark.parametrize("doc, message", [
    ({"questions": []}, "non-empty"),
    ({"questions": [{"id": "a", "category": "fact", "question": "Q?", "accept": ["x"], "forbid": ["y"]}]},
     "missing fields ['source']"),
    ({"questions": [{"id": "a", "category": "gossip", "question": "Q?", "accept": ["x"], "forbid": ["y"],
                     "source": "s"}]}, "category"),
    ({"questions": [{"id": "a", "category": "fact", "question": "Q?", "accept": ["("], "forbid": ["y"],
                     "source": "s"}]}, "bad regular expression"),
    ({"questions": [{"id": "a", "category": "fact", "question": "A|B?", "accept": ["x"], "forbid": ["y"],
                     "source": "s"}]}, "without '|'"),
    ({"questions": [{"id": "a", "category": "fact", "question": "Q?", "accept": ["x"], "forbid": [],
                     "source": "s"}]}, "forbid: needs"),
])
def test_bad_question_files_are_rejected_with_a_clear_message(doc, message: str) -> None:
    with pytest.raises(QuestionSetError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace("|", r"\|")):
        parse_questions(doc)
