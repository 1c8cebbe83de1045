"""Scripted timing events for the monitor tests: three turns with hand-picked timestamps.

Used by ``test_monitor_collector.py`` (fed to the collector directly, shuffled) and by ``monitor_timing_sender.py``
(sent through a real dora dataflow). The expected figures are written out by hand in the tests, from the
timestamps below; nothing here computes them.

Times are ms after :data:`BASE_NS`.

Turn 0, voice, three chunks, everything played:
    speech 0..1500 (detected 2000 by the end-of-turn model, P 0.93), asr_done 2300, llm_start 2310, first token 2420, chunks emitted at 2600 / 2800 /
    2950 (8 / 6 / 4 tokens, 290 / 200 / 150 ms gen), llm_done 2960 (18 tokens). TTS segment k = chunk k: starts
    2605 / 3100 / 3505, first fragments 2905 / 3250 / 3600, done 3095 / 3500 / 3700 (audio 2000 / 1500 / 800 ms,
    synthesis 490 / 400 / 195 ms), tts_done 3705. Playback starts 2950; segments played at 4950 / 6450 / 7250;
    turn_played 7260.
Turn 1, typed, interrupted: text_input 10000, llm_start 10005, first token 10100, chunks at 10300 / 10500,
    llm_done 10600 (16 tokens). TTS 10302 -> 10500 -> 10690 (1800 ms audio), 10700 -> 10800 -> 10900 (1600 ms),
    tts_done 10905. Playback starts 10550, segment 0 played by 12350; a barge-in at 12600 (120 ms after the
    user's speech was detected) cuts segment 1; turn_played at 12600 (1 segment, 2050 ms heard).
Turn 2, voice, chunk 0 split by the TTS into audio segments 0 and 1, chunk 1 = audio segment 2, which the speaker
    never plays (one segment lost); one underrun of 35 ms; an input error (turn -1) stamped at 21000.
Turn 3: speech with no transcript (VAD events only) at 30000-30300.
"""

from __future__ import annotations

from dora_voice.schema import Key, TimingEvent, TimingKind

BASE_NS = 1_800_000_000_000_000_000
SESSION = "s-test"

K = TimingKind


def _ev(kind: TimingKind, node: str, turn_id: int, at_ms: float, **fields) -> TimingEvent:
    return TimingEvent(kind=kind, node=node, session_id=SESSION, turn_id=turn_id,
                       t_ns=BASE_NS + round(at_ms * 1e6), fields=fields)


def turn0() -> list[TimingEvent]:
    t = 0
    return [
        _ev(K.SPEECH_STARTED, "vad", t, 0),
        _ev(K.SPEECH_ENDED, "vad", t, 1500, **{Key.DETECTED_NS: BASE_NS + 2000 * 10**6, Key.EOT_RULE: "model",
                                               Key.EOT_PROBABILITY: 0.93}),
        _ev(K.ASR_DONE, "asr", t, 2300, **{Key.TEXT: "tell me a joke"}),
        _ev(K.LLM_START, "llm", t, 2310),
        _ev(K.LLM_FIRST_TOKEN, "llm", t, 2420),
        _ev(K.LLM_CHUNK, "llm", t, 2600, **{Key.SEGMENT_INDEX: 0, Key.TOKENS: 8, Key.DURATION_MS: 290.0,
                                           Key.TEXT: "Why did the unicorn cross the road?"}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 2605, **{Key.SEGMENT_INDEX: 0, Key.TEXT_SEGMENT_INDEX: 0,
                                                   Key.TEXT: "Why did the unicorn cross the road?"}),
        _ev(K.LLM_CHUNK, "llm", t, 2800, **{Key.SEGMENT_INDEX: 1, Key.TOKENS: 6, Key.DURATION_MS: 200.0,
                                           Key.TEXT: "To get to the other side."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 2905, **{Key.SEGMENT_INDEX: 0}),
        _ev(K.LLM_CHUNK, "llm", t, 2950, **{Key.SEGMENT_INDEX: 2, Key.TOKENS: 4, Key.DURATION_MS: 150.0,
                                           Key.TEXT: "Ha ha."}),
        _ev(K.PLAYBACK_STARTED, "speaker", t, 2950),
        _ev(K.LLM_DONE, "llm", t, 2960, **{Key.TOKENS: 18, Key.SEGMENTS_TOTAL: 3,
                                          Key.TEXT: "Why did the unicorn cross the road? To get to the other side. Ha ha."}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 3095, **{Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 2000.0, Key.DURATION_MS: 490.0}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 3100, **{Key.SEGMENT_INDEX: 1, Key.TEXT_SEGMENT_INDEX: 1,
                                                   Key.TEXT: "To get to the other side."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 3250, **{Key.SEGMENT_INDEX: 1}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 3500, **{Key.SEGMENT_INDEX: 1, Key.AUDIO_MS: 1500.0, Key.DURATION_MS: 400.0}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 3505, **{Key.SEGMENT_INDEX: 2, Key.TEXT_SEGMENT_INDEX: 2, Key.TEXT: "Ha ha."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 3600, **{Key.SEGMENT_INDEX: 2}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 3700, **{Key.SEGMENT_INDEX: 2, Key.AUDIO_MS: 800.0, Key.DURATION_MS: 195.0}),
        _ev(K.TTS_DONE, "tts", t, 3705, **{Key.SEGMENTS_TOTAL: 3}),
        _ev(K.SEGMENT_PLAYED, "speaker", t, 4950, **{Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 2000.0}),
        _ev(K.SEGMENT_PLAYED, "speaker", t, 6450, **{Key.SEGMENT_INDEX: 1, Key.AUDIO_MS: 1500.0}),
        _ev(K.SEGMENT_PLAYED, "speaker", t, 7250, **{Key.SEGMENT_INDEX: 2, Key.AUDIO_MS: 800.0}),
        _ev(K.TURN_PLAYED, "speaker", t, 7260, **{Key.COUNT: 3, Key.UNDERRUNS: 0, Key.UNDERRUN_MS: 0.0,
                                                 Key.AUDIO_MS: 4300.0}),
    ]


def turn1() -> list[TimingEvent]:
    t = 1
    return [
        _ev(K.TEXT_INPUT, "text-input", t, 10000, **{Key.TEXT: "and another"}),
        _ev(K.LLM_START, "llm", t, 10005),
        _ev(K.LLM_FIRST_TOKEN, "llm", t, 10100),
        _ev(K.LLM_CHUNK, "llm", t, 10300, **{Key.SEGMENT_INDEX: 0, Key.TOKENS: 9, Key.DURATION_MS: 295.0,
                                            Key.TEXT: "A horse walks into a bar."}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 10302, **{Key.SEGMENT_INDEX: 0, Key.TEXT_SEGMENT_INDEX: 0,
                                                    Key.TEXT: "A horse walks into a bar."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 10500, **{Key.SEGMENT_INDEX: 0}),
        _ev(K.LLM_CHUNK, "llm", t, 10500, **{Key.SEGMENT_INDEX: 1, Key.TOKENS: 7, Key.DURATION_MS: 200.0,
                                            Key.TEXT: "The barman asks why the long face."}),
        _ev(K.PLAYBACK_STARTED, "speaker", t, 10550),
        _ev(K.LLM_DONE, "llm", t, 10600, **{Key.TOKENS: 16, Key.SEGMENTS_TOTAL: 2,
                                           Key.TEXT: "A horse walks into a bar. The barman asks why the long face."}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 10690, **{Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 1800.0, Key.DURATION_MS: 388.0}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 10700, **{Key.SEGMENT_INDEX: 1, Key.TEXT_SEGMENT_INDEX: 1,
                                                    Key.TEXT: "The barman asks why the long face."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 10800, **{Key.SEGMENT_INDEX: 1}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 10900, **{Key.SEGMENT_INDEX: 1, Key.AUDIO_MS: 1600.0, Key.DURATION_MS: 200.0}),
        _ev(K.TTS_DONE, "tts", t, 10905, **{Key.SEGMENTS_TOTAL: 2}),
        _ev(K.SEGMENT_PLAYED, "speaker", t, 12350, **{Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 1800.0}),
        # segment 1 is cut while playing: the speaker counts it neither played nor cancelled
        _ev(K.BARGE_IN, "speaker", t, 12600, **{Key.CANCELLED: 0, Key.DURATION_MS: 120.0}),
        _ev(K.TURN_PLAYED, "speaker", t, 12600, **{Key.COUNT: 1, Key.UNDERRUNS: 0, Key.UNDERRUN_MS: 0.0,
                                                  Key.AUDIO_MS: 2050.0, Key.CANCELLED: 0, Key.INTERRUPTED: True}),
    ]


def turn2() -> list[TimingEvent]:
    t = 2
    return [
        _ev(K.SPEECH_STARTED, "vad", t, 19000),
        _ev(K.SPEECH_ENDED, "vad", t, 20000, **{Key.DETECTED_NS: BASE_NS + 20400 * 10**6}),
        _ev(K.ASR_DONE, "asr", t, 20450, **{Key.TEXT: "thanks"}),
        _ev(K.LLM_START, "llm", t, 20460),
        _ev(K.LLM_FIRST_TOKEN, "llm", t, 20560),
        _ev(K.LLM_CHUNK, "llm", t, 20700, **{Key.SEGMENT_INDEX: 0, Key.TOKENS: 12, Key.DURATION_MS: 240.0,
                                            Key.TEXT: "You are welcome, it was a pleasure."}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 20701, **{Key.SEGMENT_INDEX: 0, Key.TEXT_SEGMENT_INDEX: 0,
                                                    Key.TEXT: "You are welcome,"}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 20801, **{Key.SEGMENT_INDEX: 0}),
        _ev(K.PLAYBACK_STARTED, "speaker", t, 20820),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 20900, **{Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 900.0, Key.DURATION_MS: 199.0}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 20901, **{Key.SEGMENT_INDEX: 1, Key.TEXT_SEGMENT_INDEX: 0,
                                                    Key.TEXT: "it was a pleasure."}),
        _ev(K.LLM_CHUNK, "llm", t, 20950, **{Key.SEGMENT_INDEX: 1, Key.TOKENS: 3, Key.DURATION_MS: 90.0,
                                            Key.TEXT: "Bye."}),
        _ev(K.LLM_DONE, "llm", t, 20955, **{Key.TOKENS: 15, Key.SEGMENTS_TOTAL: 2,
                                           Key.TEXT: "You are welcome, it was a pleasure. Bye."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 21001, **{Key.SEGMENT_INDEX: 1}),
        _ev(K.INPUT_ERROR, "tts", -1, 21000, **{Key.DETAIL: "text: text payload is empty"}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 21100, **{Key.SEGMENT_INDEX: 1, Key.AUDIO_MS: 1100.0, Key.DURATION_MS: 199.0}),
        _ev(K.TTS_SEGMENT_START, "tts", t, 21101, **{Key.SEGMENT_INDEX: 2, Key.TEXT_SEGMENT_INDEX: 1, Key.TEXT: "Bye."}),
        _ev(K.TTS_FIRST_FRAGMENT, "tts", t, 21150, **{Key.SEGMENT_INDEX: 2}),
        _ev(K.TTS_SEGMENT_DONE, "tts", t, 21200, **{Key.SEGMENT_INDEX: 2, Key.AUDIO_MS: 400.0, Key.DURATION_MS: 99.0}),
        _ev(K.TTS_DONE, "tts", t, 21201, **{Key.SEGMENTS_TOTAL: 3}),
        _ev(K.SEGMENT_PLAYED, "speaker", t, 21720, **{Key.SEGMENT_INDEX: 0, Key.AUDIO_MS: 900.0}),
        _ev(K.SEGMENT_PLAYED, "speaker", t, 22855, **{Key.SEGMENT_INDEX: 1, Key.AUDIO_MS: 1100.0}),
        # the speaker closed the turn without segment 2 and counts it "cancelled": for the monitor it is lost
        _ev(K.TURN_PLAYED, "speaker", t, 22860, **{Key.COUNT: 2, Key.UNDERRUNS: 1, Key.UNDERRUN_MS: 35.0,
                                                  Key.AUDIO_MS: 2000.0, Key.CANCELLED: 1, Key.INTERRUPTED: False}),
    ]


def turn3() -> list[TimingEvent]:
    """Speech the ASR found no words in: VAD events only."""
    return [_ev(K.SPEECH_STARTED, "vad", 3, 30000), _ev(K.SPEECH_ENDED, "vad", 3, 30300)]


def all_turns() -> list[TimingEvent]:
    """Every scripted event in timestamp order, as a pipeline would stamp them."""
    return sorted(turn0() + turn1() + turn2() + turn3(), key=lambda e: e.t_ns)
