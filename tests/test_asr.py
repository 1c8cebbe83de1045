"""ASR: the short-window decode bound, the loop guard, and the real tiny.en model on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from recordings import TRANSCRIPTS, load_clip
from dora_voice.config import ConfigError, load_config
from dora_voice.nodes.asr import (
    FULL_WINDOW_S, AsrConfig, AsrCore, WhisperSegment, WindowedWhisper, average_logprob, decode_bound, keep_segment,
    load_whisper, looks_like_loop, window_frames,
)
from dora_voice.schema import Key, Output, SchemaError, TimingEvent, TimingKind, Transcript, Utterance

RATE = 16_000


def test_window_is_the_minimum_or_clip_plus_pad_and_never_above_30_s() -> None:
    assert window_frames(1.0, 8.0, 1.0) == 800
    assert window_frames(9.5, 8.0, 1.0) == 1050
    assert window_frames(9.555, 8.0, 1.0) % 2 == 0  # the encoder halves the frame count
    assert window_frames(29.5, 8.0, 1.0) == int(FULL_WINDOW_S * 100)


def test_decode_bound_grows_with_the_audio() -> None:
    assert decode_bound(0.0) == 10
    assert decode_bound(2.0) == 20
    assert decode_bound(2.1) == 21  # rounded up
    with pytest.raises(ValueError):
        decode_bound(-1.0)


@pytest.mark.parametrize("text, audio_s, loop", [
    ("five five", 1.6, False),  # a repeated word is speech, not a loop
    ("eight of spades four of clubs seven of hearts", 3.5, False),
    ("10 of clubs. 10 of club clubs 10 of", 1.4, True),  # seen on a 1.1 s clip with an 8 s window
    ("thank you thank you thank you", 3.0, True),
    ("one two three four five six seven eight nine ten eleven", 1.0, True),  # 11 words in 1 s: not speech
])
def test_loop_guard_signs(text: str, audio_s: float, loop: bool) -> None:
    assert looks_like_loop(text, audio_s) is loop


class FakeDecode:
    """Scripted bounded decode: records its arguments, returns ``(text, tokens)``."""

    def __init__(self, text: str, tokens: int | None = None) -> None:
        self.text, self.tokens, self.calls = text, tokens, []

    def __call__(self, samples: np.ndarray, frames: int, max_new_tokens: int) -> tuple[str, int]:
        self.calls.append((len(samples), frames, max_new_tokens))
        return self.text, max_new_tokens if self.tokens is None else self.tokens


def test_short_window_decode_is_used_when_it_ends_within_its_bound() -> None:
    decode, full_calls = FakeDecode("go forward ten meters", tokens=6), []
    whisper = WindowedWhisper(decode, lambda s: full_calls.append(len(s)) or "FULL", min_window_s=8.0, pad_s=1.0)
    assert whisper(np.zeros(3 * RATE, dtype=np.float32)) == "go forward ten meters"
    assert decode.calls == [(3 * RATE, 800, 25)] and full_calls == [] and whisper.fallbacks == 0
    assert whisper.last_window_s == 8.0


def test_a_decode_that_reaches_its_bound_is_redone_on_the_full_window() -> None:
    decode = FakeDecode("la la la")  # generates up to the bound: a loop
    whisper = WindowedWhisper(decode, lambda s: "the real text", min_window_s=8.0, pad_s=1.0)
    assert whisper(np.zeros(RATE, dtype=np.float32)) == "the real text"
    assert whisper.fallbacks == 1 and whisper.last_window_s == FULL_WINDOW_S


def test_a_repeating_transcript_is_redone_on_the_full_window() -> None:
    whisper = WindowedWhisper(FakeDecode("10 of clubs. 10 of club clubs 10 of", tokens=12), lambda s: "ten of clubs")
    assert whisper(np.zeros(int(1.4 * RATE), dtype=np.float32)) == "ten of clubs"
    assert whisper.fallbacks == 1


def test_an_utterance_that_fills_the_window_goes_to_the_full_transcriber() -> None:
    decode = FakeDecode("unused", tokens=1)
    whisper = WindowedWhisper(decode, lambda s: "long", min_window_s=8.0, pad_s=1.0)
    assert whisper(np.zeros(29 * RATE, dtype=np.float32)) == "long" and decode.calls == []


def test_window_setting_is_strict() -> None:
    assert load_config(AsrConfig, {}).window == "short"
    with pytest.raises(ConfigError, match="ASR_WINDOW"):
        load_config(AsrConfig, {"ASR_WINDOW": "tiny"})


@pytest.fixture(scope="module")
def short_whisper():
    return load_whisper(load_config(AsrConfig, {"ASR_THREADS": "1", "ASR_WINDOW": "short"}))


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_real_short_window_transcripts(short_whisper, name: str) -> None:
    """The bounded short-window decode of tiny.en on real speech: the key words, no loop, no full-window redo."""
    clip = load_clip(name)
    text = short_whisper(np.concatenate([np.zeros(2560, np.float32), clip, np.zeros(2560, np.float32)]))
    words = text.lower()
    expected = {"cards-001.wav": ["clubs"], "cards-005.wav": ["spades", "hearts"], "goforward.wav": ["forward"],
                "librivox-0880.wav": ["young man"], "librivox-0870.wav": ["dashwood", "prudently", "for them"]}[name]
    assert all(w in words for w in expected), text
    assert not looks_like_loop(text, len(clip) / RATE), text


def test_real_core_emits_one_transcript(short_whisper, clock) -> None:
    core = AsrCore(short_whisper, clock_ns=clock)
    utterance = Utterance(load_clip("goforward.wav"), RATE, "s", 3, 1, 2, 3)
    out = core.handle("speech", *utterance.encode())
    texts = [Transcript.decode(v, m) for (oid, v, m) in out if oid == Output.TEXT]
    assert len(texts) == 1 and texts[0].turn_id == 3 and "forward" in texts[0].text.lower()


class CountingTranscriber:
    """A fake Whisper: the transcript names the audio's length; records every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, samples: np.ndarray) -> str:
        self.calls.append(len(samples))
        return f"words {len(samples)}"


def speech(samples: np.ndarray, turn_id: int, *, speculative: bool, end_ns: int | None = None) -> tuple:
    """An utterance whose last voiced sample is at ``end_ns`` (default: later for longer audio, as when the user
    goes on speaking)."""
    end_ns = 2 + len(samples) if end_ns is None else end_ns
    return Utterance(samples, RATE, "s", turn_id, 1, end_ns, end_ns + 1, speculative=speculative).encode()


def decoded(out: list) -> tuple[list[Transcript], list[TimingEvent]]:
    return ([Transcript.decode(v, m) for (oid, v, m) in out if oid == Output.TEXT],
            [TimingEvent.decode(v, m) for (oid, v, m) in out if oid == Output.TIMING])


def test_a_speculative_transcript_is_kept_unsent_and_reused_when_the_turn_is_confirmed_with_the_same_audio(
        clock) -> None:
    model = CountingTranscriber()
    core = AsrCore(model, clock_ns=clock)
    audio = np.full(RATE, 0.1, dtype=np.float32)
    assert core.handle("speech", *speech(audio, 0, speculative=True)) == []  # transcribed, nothing sent
    assert model.calls == [RATE]
    texts, timing = decoded(core.handle("speech", *speech(audio.copy(), 0, speculative=False)))
    assert model.calls == [RATE]  # not transcribed again
    assert [t.text for t in texts] == [f"words {RATE}"] and texts[0].turn_id == 0
    assert [e.kind for e in timing] == [TimingKind.ASR_DONE] and timing[0].fields[Key.SPECULATION] == "hit"
    assert core.speculation_hits == 1 and core.speculation_cancelled == 0
    # Sent early in the pause, the speculative utterance lacks the end of the trailing pad the confirmed one has:
    # the same speech (same last voiced sample, its samples at the start), so the same transcript.
    padded = np.concatenate([audio, np.zeros(RATE // 10, dtype=np.float32)])
    core.handle("speech", *speech(audio, 1, speculative=True, end_ns=50))
    texts, timing = decoded(core.handle("speech", *speech(padded, 1, speculative=False, end_ns=50)))
    assert model.calls == [RATE, RATE] and [t.text for t in texts] == [f"words {RATE}"]
    assert timing[0].fields[Key.SPECULATION] == "hit" and core.speculation_hits == 2
    # Speech after it (a later last voiced sample), or other samples at the start: transcribed again.
    for confirmed, end_ns in ((padded, 60), (padded[::-1].copy(), 50)):
        turn = core.speculation_hits + core.speculation_cancelled
        core.handle("speech", *speech(audio, turn, speculative=True, end_ns=50))
        texts, timing = decoded(core.handle("speech", *speech(confirmed, turn, speculative=False, end_ns=end_ns)))
        assert [t.text for t in texts] == [f"words {len(padded)}"]
        assert timing[-1].fields[Key.SPECULATION] == "miss"
    assert core.speculation_cancelled == 2


def test_speculation_dropped_when_the_user_resumes_is_counted_and_the_confirmed_audio_is_transcribed(clock) -> None:
    model = CountingTranscriber()
    core = AsrCore(model, clock_ns=clock)
    first, longer, confirmed = (np.full(n, 0.1, dtype=np.float32) for n in (RATE, 2 * RATE, 3 * RATE))
    out = core.handle("speech", *speech(first, 0, speculative=True))
    out += core.handle("speech", *speech(longer, 0, speculative=True))  # a second pause: the first was for nothing
    out += core.handle("speech", *speech(confirmed, 0, speculative=False))  # confirmed after more speech
    texts, timing = decoded(out)
    assert model.calls == [RATE, 2 * RATE, 3 * RATE]
    assert [t.text for t in texts] == [f"words {3 * RATE}"]  # only the confirmed audio's transcript is sent
    kinds = [e.kind for e in timing]
    assert kinds == [TimingKind.SPECULATION_CANCELLED, TimingKind.SPECULATION_CANCELLED, TimingKind.ASR_DONE]
    assert timing[-1].fields[Key.SPECULATION] == "miss" and core.speculation_cancelled == 2
    # A turn without speculation says so.
    _texts, timing = decoded(core.handle("speech", *speech(first, 1, speculative=False)))
    assert timing[0].fields[Key.SPECULATION] == "none"


def test_with_speculative_text_the_transcript_goes_out_at_once_and_is_withdrawn_when_the_user_resumes(clock) -> None:
    model = CountingTranscriber()
    core = AsrCore(model, clock_ns=clock, speculative_text=True)
    first, confirmed = np.full(RATE, 0.1, dtype=np.float32), np.full(2 * RATE, 0.1, dtype=np.float32)
    texts, timing = decoded(core.handle("speech", *speech(first, 0, speculative=True)))
    assert [(t.text, t.turn_id, t.speculative, t.withdrawn) for t in texts] == [(f"words {RATE}", 0, True, False)]
    assert timing == []
    # The user went on speaking: the speculative transcript is withdrawn before the confirmed one is sent.
    out = core.handle("speech", *speech(confirmed, 0, speculative=False))
    texts, timing = decoded(out)
    assert [(t.text, t.speculative, t.withdrawn) for t in texts] == [
        (f"words {RATE}", True, True), (f"words {2 * RATE}", False, False)]
    assert [oid for oid, _v, _m in out].index(Output.TEXT) == 0  # the withdrawal comes first
    assert [e.kind for e in timing] == [TimingKind.SPECULATION_CANCELLED, TimingKind.ASR_DONE]
    # Confirmed with the same audio: the speculative transcript, then the confirmed one with the same text.
    texts, _ = decoded(core.handle("speech", *speech(first, 1, speculative=True)))
    texts2, timing = decoded(core.handle("speech", *speech(first.copy(), 1, speculative=False)))
    assert [t.speculative for t in texts + texts2] == [True, False] and texts[0].text == texts2[0].text
    assert timing[0].fields[Key.SPECULATION] == "hit"
    # A speculative pass that heard no words sends nothing to withdraw.
    silent = AsrCore(lambda samples: " ", clock_ns=clock, speculative_text=True)
    assert silent.handle("speech", *speech(first, 0, speculative=True)) == []
    texts, timing = decoded(silent.handle("speech", *speech(confirmed, 0, speculative=False)))
    assert texts == [] and [e.kind for e in timing] == [TimingKind.SPECULATION_CANCELLED]


def test_a_withdrawn_transcript_must_be_speculative() -> None:
    with pytest.raises(SchemaError, match="withdrawn"):
        Transcript("x", "s", 0, 0, 0, withdrawn=True)
    text = Transcript("seven of clubs", "s", 4, 10, 20, speculative=True, withdrawn=True)
    assert Transcript.decode(*text.encode()) == text
    plain = Transcript("seven of clubs", "s", 4, 10, 20)
    assert Key.SPECULATIVE not in plain.encode()[1] and Transcript.decode(*plain.encode()) == plain


def test_real_short_window_keeps_the_last_words_of_a_long_sentence(short_whisper) -> None:
    """A VAD cut that begins and ends close to the speech (0.1 s): the 7 s sentence's last words must survive.
    CTranslate2 caps a Whisper decode at half its ``max_length``; before the decode passed twice its bound, it ended
    this sentence at "... to do for" on such cuts, below the bound, so the loop guard never saw it."""
    clip = load_clip("librivox-0870.wav")
    envelope = np.convolve(np.abs(clip), np.ones(160) / 160, "same")
    voiced = np.flatnonzero(envelope > 0.02 * envelope.max())
    cut = np.concatenate([np.zeros(RATE // 10, np.float32), clip[voiced[0]:voiced[-1]],
                          np.zeros(RATE // 10, np.float32)])
    assert short_whisper(cut).lower().rstrip(".").endswith("to do for them")


def test_real_bounded_decode_generates_up_to_its_bound_and_no_further() -> None:
    """The bound is exact, so a decode that needs more tokens reaches it and the loop guard redoes it."""
    from faster_whisper import WhisperModel

    from dora_voice.models import resolve_asr
    from dora_voice.nodes.asr import _bounded_decode

    config = load_config(AsrConfig, {"ASR_THREADS": "1"})
    model = WhisperModel(str(resolve_asr(None, config.model)), device="cpu", compute_type="int8", cpu_threads=1,
                         local_files_only=True)
    decode = _bounded_decode(model, config)
    clip = load_clip("librivox-0870.wav")  # about 25 tokens of text
    frames = window_frames(len(clip) / RATE, 8.0, 1.0)
    for bound in (6, 13):
        text, generated = decode(clip, frames, bound)
        assert generated == bound and text, (bound, text)
    text, generated = decode(clip, frames, decode_bound(len(clip) / RATE))
    assert generated < decode_bound(len(clip) / RATE) and text.lower().rstrip(".").endswith("for them")


def test_the_short_window_judges_confidence_on_faster_whispers_scale() -> None:
    # CTranslate2's score is the mean over the tokens; faster-whisper divides the sum by tokens + 1.
    assert average_logprob(-1.01, 6) == pytest.approx(-1.01 * 6 / 7)
    config = load_config(AsrConfig, {})
    kept = WhisperSegment("old sposed young men", 0.19, average_logprob(-1.01, 6))
    assert keep_segment(kept, config)  # -0.87: kept, as the full window would
    assert not keep_segment(WhisperSegment("x", 0.19, average_logprob(-1.5, 6)), config)


# -- partial transcripts (TURN_PARTIAL_MS) ---------------------------------------------------------------------


def test_a_partial_decode_never_falls_back_to_the_full_window() -> None:
    full_calls: list[int] = []
    whisper = WindowedWhisper(FakeDecode("la la la"), lambda s: full_calls.append(len(s)) or "FULL",
                              min_window_s=8.0, pad_s=1.0)
    assert whisper.partial(np.zeros(RATE, dtype=np.float32)) == ""  # reached its bound: no text, no 30 s pass
    assert whisper.partial(np.zeros(29 * RATE, dtype=np.float32)) == ""  # too long for a short window
    main, side = FakeDecode("unused", tokens=1), FakeDecode("what is the", tokens=4)
    ok = WindowedWhisper(main, lambda s: "FULL", partial_decode=side)  # ASR_PARTIAL_THREADS: its own instance
    assert ok.partial(np.zeros(RATE, dtype=np.float32)) == "what is the"
    assert main.calls == [] and side.calls == [(RATE, 800, 15)]
    assert full_calls == [] and whisper.fallbacks == 0


def drain(core: AsrCore, out: list) -> list:
    """As the runtime does while the core is busy (a partial decoding on its thread): step until it is done."""
    while core.busy():
        out += core.step()
    return out


class PartialTranscriber(CountingTranscriber):
    """A fake Whisper with a separate partial decode."""

    def __init__(self) -> None:
        super().__init__()
        self.partial_calls: list[int] = []

    def partial(self, samples: np.ndarray) -> str:
        self.partial_calls.append(len(samples))
        return f"so far {len(samples)}"


def test_a_partial_utterance_gets_a_partial_transcript_and_no_turn_timing(clock) -> None:
    model = PartialTranscriber()
    core = AsrCore(model, clock_ns=clock, speculative_text=True)
    so_far = np.full(RATE, 0.1, dtype=np.float32)
    texts, timing = decoded(drain(core, core.handle("speech", *Utterance(so_far, RATE, "s", 0, 1, 2, 3,
                                                                         partial=True).encode())))
    assert [(t.text, t.turn_id, t.partial, t.speculative) for t in texts] == [(f"so far {RATE}", 0, True, False)]
    assert timing == [] and model.partial_calls == [RATE] and model.calls == [] and core.partials == 1
    # A partial with no words sends nothing.
    quiet = PartialTranscriber()
    quiet.partial = lambda samples: " "
    quiet_core = AsrCore(quiet, clock_ns=clock)
    assert drain(quiet_core, quiet_core.handle("speech", *Utterance(so_far, RATE, "s", 0, 1, 2, 3,
                                                                   partial=True).encode())) == []
    # A transcriber without a partial decode (ASR_WINDOW=full: a 30 s pass each) ignores partials.
    full = CountingTranscriber()
    assert AsrCore(full, clock_ns=clock).handle("speech", *Utterance(so_far, RATE, "s", 0, 1, 2, 3,
                                                                     partial=True).encode()) == []
    assert full.calls == []


def test_a_partial_after_a_pause_withdraws_the_speculative_transcript_of_its_turn(clock) -> None:
    model = PartialTranscriber()
    core = AsrCore(model, clock_ns=clock, speculative_text=True)
    first, more = np.full(RATE, 0.1, dtype=np.float32), np.full(2 * RATE, 0.1, dtype=np.float32)
    core.handle("speech", *speech(first, 0, speculative=True))
    out = drain(core, core.handle("speech", *Utterance(more, RATE, "s", 0, 1, 2, 3, partial=True).encode()))
    texts, timing = decoded(out)
    # The user went on speaking after the pause: the speculative transcript is void, withdrawn first.
    assert [(t.speculative, t.withdrawn, t.partial) for t in texts] == [(True, True, False), (False, False, True)]
    assert [e.kind for e in timing] == [TimingKind.SPECULATION_CANCELLED] and core.speculation is None


def test_partial_is_part_of_the_schema_and_excludes_speculative() -> None:
    text = Transcript("what is", "s", 4, 10, 20, partial=True)
    assert Transcript.decode(*text.encode()) == text and text.encode()[1][Key.PARTIAL] is True
    assert Key.PARTIAL not in Transcript("x", "s", 0, 0, 0).encode()[1]
    with pytest.raises(SchemaError, match="partial"):
        Transcript("x", "s", 0, 0, 0, speculative=True, partial=True)
    utterance = Utterance(np.zeros(RATE, dtype=np.float32), RATE, "s", 2, 1, 2, 3, partial=True)
    assert Utterance.decode(*utterance.encode()).partial is True
    with pytest.raises(SchemaError, match="partial"):
        Utterance(np.zeros(RATE, dtype=np.float32), RATE, "s", 2, 1, 2, 3, speculative=True, partial=True)


def test_an_utterance_that_ends_the_turn_does_not_wait_for_a_partial_decode(clock) -> None:
    import threading

    release = threading.Event()

    class SlowPartial(PartialTranscriber):
        def partial(self, samples):
            release.wait(5)  # still decoding when the turn ends
            return super().partial(samples)

    model = SlowPartial()
    core = AsrCore(model, clock_ns=clock)
    so_far, whole = np.full(RATE, 0.1, dtype=np.float32), np.full(2 * RATE, 0.1, dtype=np.float32)
    assert core.handle("speech", *Utterance(so_far, RATE, "s", 0, 1, 2, 3, partial=True).encode()) == []
    assert core.busy() and core.step() == []  # not done: the step returns after a short wait
    queued = core.handle("speech", *Utterance(so_far, RATE, "s", 0, 1, 2, 3, partial=True).encode())
    texts, timing = decoded(queued + core.handle("speech", *speech(whole, 0, speculative=False)))
    # The confirmed utterance was transcribed at once, while the partial was still decoding.
    assert [t.text for t in texts] == [f"words {2 * RATE}"] and [e.kind for e in timing] == [TimingKind.ASR_DONE]
    release.set()
    texts, _ = decoded(drain(core, []))
    # The partial finished after its turn was confirmed: dropped; the one waiting behind it never ran.
    assert texts == [] and model.partial_calls == [RATE] and core.partials_dropped == 1
