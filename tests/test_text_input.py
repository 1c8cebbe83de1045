"""Text-input core: queries go out one at a time, each after the previous answer has finished playing."""

from __future__ import annotations

import pytest

from dora_voice.config import ConfigError, load_config
from dora_voice.nodes.text_input import POLL_S, TextInputConfig, TextInputCore
from dora_voice.schema import Output, PlaybackEvent, PlaybackKind, Transcript


def sent(out) -> list[Transcript]:
    return [Transcript.decode(v, m) for (oid, v, m) in out if oid == Output.TEXT]


def done(turn: int, t_ns: int):
    return PlaybackEvent(PlaybackKind.TURN_DONE, "s", turn, -1, -1, 1.0, t_ns).encode()


def test_waits_for_each_answer_to_finish_playing(clock) -> None:
    slept: list[float] = []
    core = TextInputCore(["one", "two"], "s", clock_ns=clock, sleep=slept.append)
    first = sent(core.step())
    assert [t.text for t in first] == ["one"] and first[0].turn_id == 0 and first[0].source == "text"
    assert not core.busy()  # waiting for turn 0 to be played
    core.handle("playback", *done(0, clock.t_ns + 3_000_000_000))  # its audio ends 3 s from now
    assert core.busy()
    assert sent(core.step()) == []  # still playing: not yet
    assert slept == [POLL_S]  # waited one poll on the injected sleep
    clock.advance(3.0)
    assert [t.text for t in sent(core.step())] == ["two"]
    assert not core.finished()
    core.handle("playback", *done(1, clock.t_ns))
    assert core.finished()


def test_unpaced_sends_without_feedback(clock) -> None:
    core = TextInputCore(["a", "b"], "s", paced_by_playback=False, clock_ns=clock)
    assert len(sent(core.step())) == 1 and len(sent(core.step())) == 1 and core.finished()


def test_queries_from_env_and_file(tmp_path) -> None:
    assert load_config(TextInputConfig, {"TEXT_INPUT_QUERIES": " a | b ||"}).load_queries() == ["a", "b"]
    path = tmp_path / "q.txt"
    path.write_text("# comment\nfirst\n\nsecond\n")
    assert load_config(TextInputConfig, {"TEXT_INPUT_FILE": str(path)}).load_queries() == ["first", "second"]
    with pytest.raises(ConfigError, match="TEXT_INPUT_QUERIES"):
        load_config(TextInputConfig, {}).load_queries()
    with pytest.raises(ConfigError, match="TEXT_INPUT_FILE"):
        load_config(TextInputConfig, {"TEXT_INPUT_FILE": str(tmp_path / "nope")}).load_queries()
