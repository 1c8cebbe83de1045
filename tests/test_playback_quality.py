"""Playback quality with real speech: a multi-segment answer synthesized by Piper through the TTS core, played by
the speaker core into a WAV. No click at any join (no sample-to-sample jump beyond what the speech itself has),
no overlap, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from dora_voice.config import load_config
from dora_voice.nodes.tts import TtsConfig, TtsCore
from dora_voice.schema import AudioFragment, Key, Output, TextSegment, TimingKind
from dora_voice.tts_engines import load_engine
from fakes import SpeakerHarness as Harness
from fakes import max_jump

pytestmark = pytest.mark.real_model

REPLY = ["Sure,", "here is a short answer in three sentences.", "Each one becomes a segment of its own.",
         "And this is the last one."]


@pytest.fixture(scope="module")
def fragments() -> list[AudioFragment]:
    engine = load_engine("piper", {"TTS_THREADS": "1"})
    core = TtsCore(load_config(TtsConfig, {"FRAGMENT_INTERVAL": "0.25"}), engine)
    out = []
    for index, text in enumerate(REPLY):
        last = index == len(REPLY) - 1
        segment = TextSegment(text, "s", 0, index, True, last, 5, 1, 2, segments_total=len(REPLY) if last else None)
        out += core.handle("text", *segment.encode())
        while core.busy():
            out += core.step()
    return [AudioFragment.decode(v, m) for (oid, v, m) in out if oid == Output.AUDIO]


def test_joins_are_click_free_without_overlap_or_loss(tmp_path, fragments) -> None:
    assert {f.sample_rate for f in fragments} == {22050}  # Piper joe medium
    segments: dict[int, list[np.ndarray]] = {}
    for f in fragments:
        segments.setdefault(f.segment_index, []).append(f.samples)
    raw = {i: np.concatenate(parts) for i, parts in segments.items() if sum(len(p) for p in parts)}
    assert len(raw) >= 3, "expected a multi-segment answer"

    h = Harness(tmp_path, {"SENTENCE_PAUSE_MS": "120", "CROSSFADE_MS": "8"}, mic=False)
    h.audio(*(f.encode() for f in fragments))
    h.end()
    out = h.out()
    played = {e.fields[Key.SEGMENT_INDEX]: e for e in h.events(TimingKind.SEGMENT_PLAYED)}
    assert sorted(played) == sorted(raw)  # every segment played, none lost
    origin = h.sink.position_to_ns(0)
    fade = int(0.008 * h.sink.rate) + 1
    previous_end = 0
    for index in sorted(raw):
        audio = raw[index]
        end = round((played[index].t_ns - origin) * h.sink.rate / 1e9)
        start = end - len(audio)
        assert start >= previous_end, f"segment {index} overlaps the previous one"
        # Inside the segment the speech is placed sample-exact (fragment joins add nothing) ...
        np.testing.assert_allclose(out[start + fade: end - fade], audio[fade:-fade], atol=1e-6)
        # ... and at its edges the jump never exceeds what the speech itself contains (a click detector).
        for edge in (start, end):
            window = out[max(edge - 2 * fade, 0): edge + 2 * fade]
            assert max_jump(window) <= max_jump(audio) + 1e-6, f"click at the edge of segment {index}"
        previous_end = end
    assert not out[previous_end:].any()
