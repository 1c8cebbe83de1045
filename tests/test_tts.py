"""TTS node: the core driven with a scripted fake engine (LiveKit tests/fake_tts.py style), then the real Piper voice.

The fake engine turns each sentence of a segment into one audio chunk whose length and synthesis time the test
chooses, and advances the injected clock by that synthesis time when the chunk is pulled, so every timing the node
reports is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest

from dora_voice.config import ConfigError, env_field, load_config, parse_int
from dora_voice.nodes.tts import CONTRACT, TtsConfig, TtsCore
from dora_voice.schema import (
    MAX_TEXT_CHARS, Key, Output, PlaybackEvent, PlaybackKind, SegmentDone, TimingKind, VadEvent, VadEventKind,
    Verdict,
)
from dora_voice.tts_engines import TtsEngine
from fakes import (
    TTS_RATE, FakeClock, FakeEngine, Out, check_turn, chunk, drain, make_tts, send, speech_started, verdict,
)


# -- fragments --------------------------------------------------------------------------------------------------


def test_fragments_are_fragment_interval_long_and_cover_the_audio(clock: FakeClock) -> None:
    core, engine = make_tts(clock, FRAGMENT_INTERVAL="0.3")
    engine.script["Hello there."] = [1.0, 0.45]
    out = send(core, ("text", chunk("Hello there.", 0, final=True)))
    assert not out.audio and core.busy()  # on_input only enqueues
    drain(core, out)
    check_turn(out)
    sizes = [len(f.samples) for f in out.audio]
    assert sum(sizes) == 1450
    assert sizes == [300, 300, 300, 300, 250]  # 100 ms left after the first chunk joins the second
    assert out.audio[-1].segments_total == 1


def test_first_fragment_leaves_as_soon_as_the_engine_yields_its_first_chunk(clock: FakeClock) -> None:
    core, engine = make_tts(clock, FRAGMENT_INTERVAL="0.3")
    engine.script["Hi. How are you today?"] = [0.2, 1.0]
    send(core, ("text", chunk("Hi. How are you today?", 0, final=True)))
    first = Out().add(list(core.step()))
    assert engine.pulls == 1
    assert len(first.audio) == 1 and first.audio[0].fragment_index == 0
    assert len(first.audio[0].samples) == 190  # all but 10 ms, held back to carry is_last_fragment
    out = drain(core, first)
    check_turn(out)
    assert sum(len(f.samples) for f in out.audio) == 1200


def test_without_return_fragment_one_fragment_per_segment(clock: FakeClock) -> None:
    core, engine = make_tts(clock, RETURN_FRAGMENT="false")
    engine.script["One two three. Four five six."] = [0.7, 0.8]
    out = drain(core, send(core, ("text", chunk("One two three. Four five six.", 0, final=True))))
    assert len(out.audio) == 1
    only = out.audio[0]
    assert len(only.samples) == 1500 and only.is_last_fragment and only.is_final and only.segments_total == 1


def test_segmentation_numbering_and_text_segment_index(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_MAX_SEGMENT_LENGTH="40", TTS_MIN_SEGMENT_LENGTH="10")
    long_chunk = "The first sentence is here. The second one follows it. And a third."
    out = send(core, ("text", chunk("Sure, happy to help.", 0)), ("text", chunk(long_chunk, 1)),
               ("text", chunk("Bye now.", 2, final=True)))
    drain(core, out)
    check_turn(out)
    assert engine.texts == ["Sure, happy to help.", "The first sentence is here.", "The second one follows it.",
                            "And a third.", "Bye now."]
    segments = out.segments()
    assert {i: frags[0].text_segment_index for i, frags in segments.items()} == {0: 0, 1: 1, 2: 1, 3: 1, 4: 2}
    assert out.audio[-1].segments_total == 5
    assert [d.text_segment_index for d in out.done] == [0, 1, 2]


def test_segment_done_comes_after_all_segments_of_its_chunk(clock: FakeClock) -> None:
    core, _ = make_tts(clock, TTS_MAX_SEGMENT_LENGTH="30", TTS_MIN_SEGMENT_LENGTH="5")
    send(core, ("text", chunk("Alpha beta gamma. Delta epsilon zeta.", 0)))
    emitted: list[str] = []
    while core.busy():
        emitted += [o[0] for o in core.step()]
    audio_positions = [i for i, o in enumerate(emitted) if o == Output.AUDIO]
    assert emitted.count(Output.SEGMENT_DONE) == 1
    assert emitted.index(Output.SEGMENT_DONE) > audio_positions[-1]


def test_segment_done_carries_the_chunks_audio_and_synthesis_time(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_MAX_SEGMENT_LENGTH="30", TTS_MIN_SEGMENT_LENGTH="5")
    text = "Alpha beta gamma. Delta epsilon zeta."
    send(core, ("text", chunk(text, 0)))
    done = []
    while core.busy():
        done += [SegmentDone.decode(v, m) for o, v, m in core.step() if o == Output.SEGMENT_DONE]
    assert len(done) == 1 and len(engine.texts) == 2  # two TTS segments, one LLM chunk
    sentences = [s for s in text.split(". ")]
    expected_ms = sum(round(len(s.rstrip(".") + ".") * engine.ms_per_char / 1000 * engine.sample_rate)
                      for s in sentences) * 1000 / engine.sample_rate
    assert done[0].audio_ms == pytest.approx(expected_ms, abs=1.0)
    assert done[0].synth_ms == pytest.approx(2 * engine.synth_s * 1000, abs=1.0)  # one pull per sentence


def test_batch_mode_makes_one_segment_of_the_whole_reply(clock: FakeClock) -> None:
    core, engine = make_tts(clock, ENABLE_INTERNAL_SEGMENTATION="false", TTS_MAX_SEGMENT_LENGTH="20")
    reply = "This is a whole reply. It has three sentences. All of them go to the engine at once."
    out = drain(core, send(core, ("text", chunk(reply, 0, final=True))))
    assert engine.texts == [reply]
    check_turn(out)
    assert set(out.segments()) == {0} and out.audio[-1].segments_total == 1


def test_first_chunk_of_a_turn_may_be_cut_at_a_clause(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_MAX_SEGMENT_LENGTH="60", TTS_MIN_SEGMENT_LENGTH="10")
    text = "Well, the weather looks fine, sunny and warm all day."
    drain(core, send(core, ("text", chunk(text, 0)), ("text", chunk(text, 1, final=True))))
    # "Well," is shorter than TTS_MIN_SEGMENT_LENGTH; later chunks are cut only at sentence ends.
    assert engine.texts == ["Well, the weather looks fine,", "sunny and warm all day.", text]


def test_first_segment_of_a_turn_is_capped_shorter_when_the_text_runs_on(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_FIRST_SEGMENT_MAX_LENGTH="30", TTS_MAX_SEGMENT_LENGTH="80",
                        TTS_MIN_SEGMENT_LENGTH="10")
    text = "The tower was built for the fair in Paris and it was the tallest structure in the world then."
    out = drain(core, send(core, ("text", chunk(text, 0)), ("text", chunk(text, 1, final=True))))
    assert engine.texts[0] == "The tower was built for the"
    assert engine.texts[1] == "fair in Paris and it was the tallest structure in the world then."
    assert engine.texts[2:] == ["The tower was built for the fair in Paris and it was the tallest structure in",
                                "the world then."]  # later chunks: TTS_MAX_SEGMENT_LENGTH
    check_turn(out)


@pytest.mark.parametrize("text, first", [
    ("It costs twenty-nine dollars and ninety-five cents today. Enjoy it.",  # sentence end within the max
     "It costs twenty-nine dollars and ninety-five cents today."),
    ("Sure, that is a fine idea, and here is why it works so well for you.",  # a clause within the first max
     "Sure, that is a fine idea,"),
])
def test_first_segment_prefers_a_natural_pause_within_the_max(clock: FakeClock, text: str, first: str) -> None:
    core, engine = make_tts(clock, TTS_FIRST_SEGMENT_MAX_LENGTH="30", TTS_MAX_SEGMENT_LENGTH="80",
                        TTS_MIN_SEGMENT_LENGTH="10")
    drain(core, send(core, ("text", chunk(text, 0, final=True))))
    assert engine.texts[0] == first
    assert " ".join(engine.texts) == text


def test_long_sentence_is_cut_near_max_segment_length(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_MAX_SEGMENT_LENGTH="40", TTS_MIN_SEGMENT_LENGTH="10")
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    out = drain(core, send(core, ("text", chunk("Hello.", 0)), ("text", chunk(text, 1, final=True))))
    assert all(len(t) <= 40 for t in engine.texts) and len(engine.texts) == 4
    assert " ".join(engine.texts[1:]) == text
    check_turn(out)


# -- normalization ----------------------------------------------------------------------------------------------


def test_normalization_reaches_the_engine(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    drain(core, send(core, ("text", chunk("**Hi** $5", 0, final=True))))
    assert engine.texts == ["Hi five dollars"]


def test_normalization_can_be_turned_off(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_NORMALIZE_TEXT="false")
    drain(core, send(core, ("text", chunk("**Hi**   $5", 0, final=True))))
    assert engine.texts == ["**Hi** $5"]


def test_code_block_state_is_kept_across_chunks_of_a_turn(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("Try this:\n```\nx = 1", 0)), ("text", chunk("y = 2\n```", 1)),
                           ("text", chunk("It sets two names.", 2, final=True))))
    assert engine.texts == ["Try this: Code block omitted.", "It sets two names."]
    check_turn(out)
    assert [d.text_segment_index for d in out.done] == [0, 1, 2]


# -- closing a turn ---------------------------------------------------------------------------------------------


def test_empty_final_chunk_closes_the_turn(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("Hello there.", 0)), ("text", chunk("All good.", 1)),
                           ("text", chunk("", 2, final=True))))
    check_turn(out)
    closing = out.audio[-1]
    assert len(closing.samples) == 0 and closing.is_final and closing.is_last_fragment
    assert closing.segments_total == 2 and closing.segment_index == 2 and closing.text_segment_index == 2
    assert not any(f.is_final for f in out.audio[:-1])
    assert [d.text_segment_index for d in out.done] == [0, 1]  # the empty closer is not a chunk to pace on
    done = out.events(TimingKind.TTS_DONE)
    assert len(done) == 1 and done[0].fields[Key.SEGMENTS_TOTAL] == 2


def test_chunks_with_nothing_to_say_make_no_segment_but_the_turn_still_closes(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("\U0001f600", 0)), ("text", chunk("Hello.", 1)),
                           ("text", chunk("\U0001f44d\U0001f389", 2, final=True))))
    assert engine.texts == ["Hello."]
    check_turn(out)
    assert out.audio[-1].segments_total == 1 and len(out.audio[-1].samples) == 0
    assert [d.text_segment_index for d in out.done] == [0, 1, 2]  # pacing feedback for every chunk with text


def test_the_first_spoken_segment_gets_the_first_segment_rule(clock: FakeClock) -> None:
    # A first chunk with nothing to say (an emoji) does not use up the turn's short first segment.
    core, engine = make_tts(clock, TTS_MIN_SEGMENT_LENGTH="10")
    text = "Well, the weather looks fine, sunny and warm all day."
    drain(core, send(core, ("text", chunk("\U0001f600", 0)), ("text", chunk(text, 1)),
                     ("text", chunk(text, 2, final=True))))
    assert engine.texts == ["Well, the weather looks fine,", "sunny and warm all day.", text]


def test_a_reply_with_only_emoji_still_closes(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("\U0001f600", 0, final=True))))
    assert engine.texts == []
    assert len(out.audio) == 1 and out.audio[0].is_final and out.audio[0].segments_total == 0


def test_turns_follow_each_other(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("First turn.", 0, turn=1, final=True)),
                           ("text", chunk("Second turn.", 0, turn=2)), ("text", chunk("", 1, turn=2, final=True))))
    check_turn(out, 1)
    check_turn(out, 2)
    assert [e.turn_id for e in out.events(TimingKind.TTS_DONE)] == [1, 2]


def test_input_end_closes_a_turn_that_never_got_its_final_chunk(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    send(core, ("text", chunk("Hello there.", 0)))
    out = drain(core)
    out.add(list(core.on_end()))
    check_turn(out)
    assert out.audio[-1].segments_total == 1


def test_node_finishes_once_the_llm_is_done_and_everything_is_synthesized(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    send(core, ("text", chunk("Hello there.", 0)))
    assert not core.finished()
    core.on_input_closed("playback")
    core.on_input_closed("text")
    assert core.busy() and not core.finished()  # queued text is still synthesized first
    out = drain(core)
    out.add(list(core.on_end()))
    assert core.finished()
    check_turn(out)


# -- timing -----------------------------------------------------------------------------------------------------


def test_timing_events(clock: FakeClock) -> None:
    core, engine = make_tts(clock, FRAGMENT_INTERVAL="0.3")
    engine.synth_s = 0.1
    received = clock.t_ns
    out = send(core, ("text", chunk("One. Two.", 0)))
    clock.advance(0.5)  # queued half a second behind other work
    send(core, ("text", chunk("Three.", 1, final=True)))
    drain(core, out)
    starts = out.events(TimingKind.TTS_SEGMENT_START)
    assert [e.fields[Key.SEGMENT_INDEX] for e in starts] == [0, 1]
    assert starts[0].t_ns == received  # when the text arrived, not when synthesis began
    assert starts[1].t_ns == received + 500_000_000
    assert starts[0].fields[Key.TEXT] == "One. Two." and starts[1].fields[Key.TEXT_SEGMENT_INDEX] == 1
    first = out.events(TimingKind.TTS_FIRST_FRAGMENT)
    assert first[0].t_ns - received == 600_000_000  # 0.5 s wait + 0.1 s for the first chunk
    done = out.events(TimingKind.TTS_SEGMENT_DONE)
    assert done[0].fields[Key.AUDIO_MS] == pytest.approx(2 * 4 * 50)  # "One." and "Two.": 4 chars x 50 ms
    assert done[0].fields[Key.DURATION_MS] == pytest.approx(200)  # two chunks, 100 ms each
    tts_done = out.events(TimingKind.TTS_DONE)
    assert len(tts_done) == 1 and tts_done[0].fields[Key.SEGMENTS_TOTAL] == 2
    assert tts_done[0].fields[Key.CANCELLED] == 0 and tts_done[0].fields[Key.INTERRUPTED] is False


# -- barge-in ---------------------------------------------------------------------------------------------------


def test_barge_in_cancels_pending_segments_and_closes_the_turn(clock: FakeClock) -> None:
    core, engine = make_tts(clock, TTS_MAX_SEGMENT_LENGTH="30", TTS_MIN_SEGMENT_LENGTH="5")
    engine.script["First part is here."] = [0.5, 0.5]
    out = send(core, ("text", chunk("First part is here.", 0)), ("text", chunk("Second part. Third part.", 1)))
    out.add(list(core.step()))  # segment 0 started, first engine chunk out
    out.add(core.handle("events", *speech_started(2)))
    assert not core.busy()
    assert engine.pulls == 1
    closing = out.audio[-1]
    assert closing.is_final and len(closing.samples) == 0 and closing.segments_total == 1
    assert closing.segment_index == 0 and closing.is_last_fragment  # closes the segment that was cut short
    check_turn(out)
    done = out.events(TimingKind.TTS_DONE)[0]
    assert done.fields[Key.CANCELLED] == 2 and done.fields[Key.INTERRUPTED] is True
    assert core.cancelled_segments == 2
    # Every segment started has its end in the report, the one cut short marked interrupted (the monitor builds
    # the turn complete from these).
    (cut,) = out.events(TimingKind.TTS_SEGMENT_DONE)
    assert cut.fields[Key.SEGMENT_INDEX] == 0 and cut.fields[Key.INTERRUPTED] is True
    assert cut.fields[Key.AUDIO_MS] == pytest.approx(500)  # the first of its two scripted 0.5 s engine chunks
    assert len(out.events(TimingKind.TTS_SEGMENT_START)) == done.fields[Key.SEGMENTS_TOTAL] == 1
    # What the LLM still sends for the cancelled turn is dropped quietly; the new turn is served normally.
    late = send(core, ("text", chunk("Late text.", 2)), ("text", chunk("", 3, final=True)))
    assert not late.audio and not late.timing and core.input_errors == 0
    new = drain(core, send(core, ("text", chunk("New answer.", 0, turn=2, final=True))))
    check_turn(new, 2)
    assert engine.texts[-1] == "New answer."


def test_barge_in_between_segments_closes_with_a_non_segment_fragment(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("Done with this one.", 0))))
    out.add(core.handle("events", *speech_started(5)))
    closing = out.audio[-1]
    assert closing.is_final and closing.segment_index == 1 and closing.segments_total == 1
    check_turn(out)


def test_barge_in_ignores_newer_turns_and_speech_ended(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    send(core, ("text", chunk("Answer to three.", 0, turn=3)))
    assert not send(core, ("events", speech_started(3))).audio  # not older than the speech
    assert not send(core, ("events", VadEvent(VadEventKind.SPEECH_ENDED, "s1", 9, 0, 0).encode())).audio
    assert core.busy()


def test_turn_superseded_before_its_text_arrived_is_closed_empty(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    assert not send(core, ("events", speech_started(4))).audio  # nothing open yet
    out = send(core, ("text", chunk("Stale answer.", 0, turn=3)))
    assert len(out.audio) == 1 and out.audio[0].is_final and out.audio[0].segments_total == 0
    drain(core, out)
    assert engine.texts == []


def test_speaker_turn_interrupted_cancels_that_turn(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    send(core, ("text", chunk("One thing.", 0, turn=7)), ("text", chunk("Another thing.", 1, turn=7)))
    event = PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s1", 7, -1, -1, 0.0, 0).encode()
    out = send(core, ("playback", event))
    assert len(out.audio) == 1 and out.audio[0].is_final and out.audio[0].segments_total == 0
    assert out.events(TimingKind.TTS_DONE)[0].fields[Key.CANCELLED] == 2
    assert not core.busy()


def test_other_playback_events_are_ignored(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    send(core, ("text", chunk("One thing.", 0, turn=7)))
    for kind in (PlaybackKind.SEGMENT_PLAYED, PlaybackKind.SEGMENT_INTERRUPTED, PlaybackKind.TURN_DONE):
        out = send(core, ("playback", PlaybackEvent(kind, "s1", 7, 0, 0, 1.0, 0).encode()))
        assert not out.audio and not out.timing
    assert core.busy() and core.input_errors == 0


def test_playback_and_vad_events_come_on_their_own_inputs(clock: FakeClock) -> None:
    # playback carries the speaker's PlaybackEvents, events the VAD's VadEvents (as on the speaker): a message of
    # the other kind is bad input, rejected and counted.
    core, _ = make_tts(clock)
    send(core, ("text", chunk("One thing.", 0, turn=7)))
    interrupted = PlaybackEvent(PlaybackKind.TURN_INTERRUPTED, "s1", 7, -1, -1, 0.0, 0).encode()
    assert not send(core, ("events", interrupted)).audio and core.input_errors == 1
    assert not send(core, ("playback", speech_started(8))).audio and core.input_errors == 2
    assert core.busy()


# -- bad input --------------------------------------------------------------------------------------------------


def _errors(out: Out) -> int:
    return len(out.events(TimingKind.INPUT_ERROR))


def test_bad_inputs_are_rejected_counted_and_the_node_keeps_running(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    good_value, good_meta = chunk("Fine.", 0)
    missing = {k: v for k, v in good_meta.items() if k != Key.TURN_ID}
    out = send(
        core,
        ("text", chunk("   ", 0)),  # empty and not final
        ("text", chunk("x" * (MAX_TEXT_CHARS + 1), 0)),  # too long
        ("text", (good_value, missing)),  # metadata missing
        ("text", (pa.array([1.0], pa.float32()), good_meta)),  # not text
        ("text", (good_value, {**good_meta, Key.SEGMENT_INDEX: -1})),
        ("events", (pa.array(["x"]), {Key.EVENT: "speech_paused", Key.TURN_ID: 1, Key.T_NS: 0, Key.DETECTED_NS: 0})),
        ("nonsense", chunk("Fine.", 0)),
    )
    assert core.input_errors == 7 and _errors(out) == 7
    assert not out.audio and not core.busy()
    out = drain(core, send(core, ("text", chunk("Fine.", 0, final=True))))
    check_turn(out)
    assert engine.texts == ["Fine."]
    late = send(core, ("text", chunk("After the end.", 1)))  # the turn is closed
    assert core.input_errors == 8 and _errors(late) == 1 and not late.audio


# -- speculation (a reply begun during the pause) -------------------------------------------------------------------


def test_a_speculative_chunk_is_synthesized_ahead_and_its_audio_leaves_only_on_confirmation(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    engine.script["Sure, here it is."] = [0.6]
    ahead = drain(core, send(core, ("text", chunk("Sure, here it is.", 0, speculative=True))))
    assert engine.texts == ["Sure, here it is."]  # synthesized during the pause
    assert not ahead.audio and not ahead.done and not ahead.timing  # nothing leaves: not a fragment, not a report
    clock.advance(0.5)  # the end of turn is decided later
    confirmed_at = clock.t_ns
    out = send(core, ("text", verdict(Verdict.CONFIRMED, 1)))
    assert out.audio and [d.text_segment_index for d in out.done] == [0]  # all of it at once, nothing to wait for
    assert sum(len(f.samples) for f in out.audio) == round(0.6 * core.sample_rate)
    # Stamped no earlier than the confirmation: the listener's wait starts there, the parts still add up.
    assert all(e.t_ns >= confirmed_at for e in out.timing) and all(f.t_ns >= confirmed_at for f in out.audio)
    assert out.events(TimingKind.TTS_FIRST_FRAGMENT)
    out.add(core.handle("text", *chunk("Bye.", 1, final=True)))  # the reply goes on, with ordinary chunks
    drain(core, out)
    check_turn(out)
    assert [f.text_segment_index for f in out.audio][-1] == 1 and core.speculation_hits == 1


def test_a_cancelled_speculation_is_never_heard_and_the_turn_can_be_answered_again(clock: FakeClock) -> None:
    core, engine = make_tts(clock, FRAGMENT_INTERVAL="0.1")
    engine.script["Seven of what?"] = [0.4, 0.4]
    out = send(core, ("text", chunk("Seven of what?", 0, speculative=True)))
    out.add(core.step())  # cancelled while synthesizing
    assert core.busy()
    out = send(core, ("text", verdict(Verdict.CANCELLED, 1)))
    assert [e.kind for e in out.timing] == [TimingKind.SPECULATION_CANCELLED] and not out.audio
    assert not core.busy() and core.speculation_cancelled == 1
    again = drain(core, send(core, ("text", chunk("Seven of clubs.", 0, final=True))))  # the confirmed reply
    check_turn(again)
    assert not any(f.samples.size and f.text_segment_index != 0 for f in again.audio)
    assert again.audio[0].segment_index == 0 and engine.texts[-1] == "Seven of clubs."
    assert core.input_errors == 0


def test_speculation_protocol_errors_are_rejected_and_a_held_turn_is_dropped_at_the_end(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    out = send(core, ("text", verdict(Verdict.CONFIRMED, 0, turn=1)))  # no speculative chunk came
    assert core.input_errors == 1 and _errors(out) == 1
    send(core, ("text", chunk("Sure.", 0, turn=2, speculative=True)))
    out = send(core, ("text", chunk("More.", 1, turn=2)))  # an ordinary chunk before the verdict
    assert core.input_errors == 2 and _errors(out) == 1
    drain(core)
    core.on_input_closed("text")
    end = Out().add(core.on_end())
    assert not end.audio and [e.kind for e in end.timing] == [TimingKind.SPECULATION_CANCELLED]


def test_chunk_after_final_of_an_open_turn_is_rejected(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    out = send(core, ("text", chunk("Last.", 0, final=True)), ("text", chunk("More.", 1)))
    assert core.input_errors == 1 and _errors(out) == 1
    check_turn(drain(core, out))


def test_engine_failure_ends_the_segment_and_the_turn_goes_on(clock: FakeClock) -> None:
    core, engine = make_tts(clock)
    engine.fail_on = "Broken one. Really."
    out = drain(core, send(core, ("text", chunk("Broken one. Really.", 0)), ("text", chunk("Fine.", 1, final=True))))
    assert core.synthesis_errors == 1
    check_turn(out)
    assert out.audio[-1].segments_total == 2 and engine.texts[-1] == "Fine."


# -- config and contract ----------------------------------------------------------------------------------------


def test_config_defaults_and_strict_parsing() -> None:
    config = load_config(TtsConfig, {})
    assert (config.max_segment_chars, config.min_segment_chars, config.fragment_interval_s) == (100, 20, 0.3)
    assert config.return_fragment and config.enable_internal_segmentation and config.normalize_text
    assert config.backend == "piper"
    with pytest.raises(ConfigError, match="TTS_MIN_SEGMENT_LENGTH"):
        load_config(TtsConfig, {"TTS_MIN_SEGMENT_LENGTH": "50", "TTS_MAX_SEGMENT_LENGTH": "40"})
    with pytest.raises(ConfigError, match="FRAGMENT_INTERVAL"):
        load_config(TtsConfig, {"FRAGMENT_INTERVAL": "0"})
    with pytest.raises(ConfigError, match="TTS_BACKEND"):
        load_config(TtsConfig, {"TTS_BACKEND": "festival"})


def test_each_engine_has_its_own_settings_and_a_registry_line() -> None:
    from dora_voice.tts_engines import ENGINES, EngineSpec, load_engine
    from dora_voice.tts_engines.piper import PiperConfig

    assert ENGINES["piper"].config is PiperConfig
    assert load_config(PiperConfig, {}).threads == 2
    with pytest.raises(ConfigError, match="TTS_SPEED"):
        load_engine("piper", {"TTS_SPEED": "fast"})  # the engine's own settings, checked when it is selected
    with pytest.raises(ValueError, match="unknown TTS backend 'festival' \\(expected piper\\)"):
        load_engine("festival", {})

    @dataclass(frozen=True)
    class EchoConfig:
        rate_hz: int = env_field("ECHO_TTS_RATE_HZ", 8000, parse_int(min_value=1), "output rate, Hz")

    class Echo:
        def __init__(self, config: EchoConfig) -> None:
            self.sample_rate = config.rate_hz

        def synthesize(self, text: str) -> Iterator[np.ndarray]:
            yield np.zeros(len(text), dtype=np.float32)

        def warmup(self) -> None:
            pass

    registry = dict(ENGINES)
    try:  # a new engine: its module's spec plus one registry line
        ENGINES["echo"] = EngineSpec("echo", EchoConfig, Echo)
        engine = load_engine("echo", {"ECHO_TTS_RATE_HZ": "16000"})
        assert isinstance(engine, TtsEngine) and engine.sample_rate == 16000
    finally:
        ENGINES.clear()
        ENGINES.update(registry)


def test_contract_lists_inputs_outputs_and_env() -> None:
    assert CONTRACT.path == "dora-voice-tts"
    assert set(CONTRACT.inputs) == {"text", "playback", "events"}
    assert set(CONTRACT.outputs) == {Output.AUDIO, Output.SEGMENT_DONE, Output.TIMING}
    env = CONTRACT.env()
    for name in ("TTS_BACKEND", "ENABLE_INTERNAL_SEGMENTATION", "TTS_MAX_SEGMENT_LENGTH", "TTS_MIN_SEGMENT_LENGTH",
                 "RETURN_FRAGMENT", "FRAGMENT_INTERVAL", "TTS_NORMALIZE_TEXT", "TTS_THREADS", "TTS_VOICE_PATH",
                 "TTS_VOICE_CONFIG", "TTS_SPEED", "TTS_SPEAKER_ID"):  # the node's and the Piper engine's
        assert name in env


# -- the real Piper voice ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper():
    from dora_voice.tts_engines.piper import PiperEngine, resolve_voice_paths

    model, config = resolve_voice_paths()
    engine = PiperEngine(model, config, threads=1)
    engine.warmup()
    return engine


@pytest.mark.real_model
def test_piper_yields_one_float32_chunk_per_sentence(piper) -> None:
    chunks = list(piper.synthesize("Hello there. How are you today?"))
    assert piper.sample_rate == 22050
    assert len(chunks) == 2
    for samples in chunks:
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert 0.3 * 22050 < len(samples) < 3 * 22050
        assert 0.5 < float(np.max(np.abs(samples))) <= 1.0  # speech, in range
        assert np.sqrt(np.mean(samples ** 2)) > 0.02


@pytest.mark.real_model
def test_piper_speed_shortens_the_audio(piper) -> None:
    from dora_voice.tts_engines.piper import PiperEngine, resolve_voice_paths

    text = "The quick brown fox jumps over the lazy dog."
    normal = sum(len(c) for c in piper.synthesize(text))
    fast = PiperEngine(*resolve_voice_paths(), threads=2, speed=2.0)
    quick = sum(len(c) for c in fast.synthesize(text))
    assert 0.4 < quick / normal < 0.75  # VITS durations are sampled (noise_w): about 0.6-0.67 measured


@pytest.mark.real_model
def test_piper_behind_the_core(piper) -> None:
    core = TtsCore(load_config(TtsConfig, {}), piper)
    out = drain(core, send(core, ("text", chunk("Sure, it is $5 today.", 0)),
                           ("text", chunk("That is about 45% off. Enjoy!", 1)), ("text", chunk("", 2, final=True))))
    fragments = [f for f in out.audio if f.turn_id == 1]
    assert sum(f.is_final for f in fragments) == 1 and fragments[-1].is_final and fragments[-1].segments_total == 3
    per_fragment = round(0.3 * 22050)
    for frags in out.segments().values():
        if len(frags[-1].samples) == 0:
            continue  # the closing fragment
        assert all(len(f.samples) == per_fragment for f in frags[:-1])
        assert 0 < len(frags[-1].samples) <= per_fragment
    total_s = sum(len(f.samples) for f in fragments) / 22050
    assert 3.0 < total_s < 9.0
    assert [e.fields[Key.TEXT] for e in out.events(TimingKind.TTS_SEGMENT_START)] == [
        "Sure, it is five dollars today.",
        "That is about forty-five percent off.", "Enjoy!"]


@pytest.mark.parametrize("env, message", [
    ({"TTS_MAX_SEGMENT_LENGTH": "abc"}, "TTS_MAX_SEGMENT_LENGTH='abc': expected an integer"),
    ({"TTS_VOICE_PATH": "/nonexistent/voice.onnx"}, "TTS_VOICE_PATH=/nonexistent/voice.onnx: no such file"),
])
def test_main_exits_2_with_a_clear_message_on_bad_settings(env: dict[str, str], message: str) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dora_voice.nodes.tts"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_file_that_is_not_a_voice_is_a_model_error(tmp_path) -> None:
    from dora_voice.models import ModelError
    from dora_voice.tts_engines import load_engine

    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not an onnx model")
    (tmp_path / "voice.onnx.json").write_text("{}")
    with pytest.raises(ModelError, match="cannot load Piper voice"):
        load_engine("piper", {"TTS_VOICE_PATH": str(model)})


def test_fragments_say_whether_their_segment_ends_at_punctuation(clock: FakeClock) -> None:
    core, _ = make_tts(clock)
    out = drain(core, send(core, ("text", chunk("The capital of", 0)), ("text", chunk("France is Paris.", 1)),
                           ("text", chunk("", 2, final=True))))
    segments = out.segments()
    assert [segments[i][0].ends_at_punctuation for i in sorted(segments) if segments[i][0].samples.size] \
        == [False, True]


# -- phrases synthesized once (TTS_CACHED_PHRASES, TTS_CACHE_MAX_WORDS) ---------------------------------------


def test_a_cached_phrase_is_voiced_at_once_with_the_engines_own_audio(clock: FakeClock) -> None:
    from dora_voice.nodes.tts import cached_engine

    engine = FakeEngine(clock)
    config = load_config(TtsConfig, {"TTS_CACHED_PHRASES": "Sure,|Yes."})
    cache = cached_engine(engine, config)
    assert engine.texts == ["Sure,", "Yes."]  # synthesized at start-up, normalized as the node does
    prepared_at = clock.t_ns
    core = TtsCore(config, cache, clock_ns=clock)
    out = send(core, ("text", chunk("Sure,", 0)), ("text", chunk("here are ten of them.", 1, final=True)))
    out = drain(core, out)
    check_turn(out)
    first = [f for f in out.audio if f.segment_index == 0]
    # The cached opener took no synthesis time (the clock moves only when the fake engine computes) and is the
    # audio the engine made for it; the rest of the reply is synthesized as usual.
    first_fragment = [t for t in out.timing if t.kind is TimingKind.TTS_FIRST_FRAGMENT][0]
    assert first_fragment.t_ns == prepared_at
    assert sum(f.samples.shape[0] for f in first) == round(len("Sure,") * engine.ms_per_char / 1000 * TTS_RATE)
    assert engine.texts == ["Sure,", "Yes.", "here are ten of them."]
    assert cache.hits == 1 and cache.misses == 1
    # The LLM's pacing learns the engine's speed: a chunk voiced from the cache reports no synthesis time.
    assert [(d.text_segment_index, d.synth_ms) for d in out.done][0] == (0, 0.0)
    assert out.done[1].synth_ms > 0 and out.done[0].audio_ms > 0


def test_short_segments_of_the_session_are_kept_least_recently_used_first_out(clock: FakeClock) -> None:
    from dora_voice.tts_engines.cache import PhraseCache

    engine = FakeEngine(clock)
    cache = PhraseCache(engine, max_words=2, capacity=2)
    for text in ("Hello there.", "Hello there.", "One two three.", "One two three."):
        assert np.concatenate(list(cache.synthesize(text))).shape[0] > 0
    assert engine.texts == ["Hello there.", "One two three.", "One two three."]  # 3 words: never kept
    list(cache.synthesize("Good."))
    list(cache.synthesize("Hello there."))  # used again: now the most recent
    list(cache.synthesize("Fine."))  # a third entry pushes out the least recently used ("Good.")
    assert cache.cached("Hello there.") and cache.cached("Fine.") and not cache.cached("Good.")
    # A synthesis abandoned half way (a barge-in closes the generator) is not kept.
    audio = cache.synthesize("Stop. Now.")
    next(audio)
    audio.close()
    assert not cache.cached("Stop. Now.")
    # What a hit yields is a copy: the consumer may fade it in place.
    first = next(cache.synthesize("Fine."))
    first[:] = 0
    assert np.all(next(cache.synthesize("Fine.")) != 0)


def test_without_phrases_and_session_cache_the_engine_is_used_as_it_is(clock: FakeClock) -> None:
    from dora_voice.nodes.tts import cached_engine

    engine = FakeEngine(clock)
    config = load_config(TtsConfig, {"TTS_CACHED_PHRASES": "none", "TTS_CACHE_MAX_WORDS": "0"})
    assert cached_engine(engine, config) is engine and engine.texts == []
