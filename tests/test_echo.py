"""Echo cancellation: the simulated room (room node), the AEC node with the real WebRTC AEC3 library, the delay
estimate, and the ECHO_GUARD resolution. Signals are real speech (tests/data)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recordings import load_clip
from dora_voice.config import load_config
from dora_voice.echo import (
    EchoGuard, LinearEchoCanceller, ReferenceBuffer, estimate_delay, load_canceller, resolve_echo_guard,
)
from dora_voice.nodes import aec as aec_node
from dora_voice.nodes.aec import AecConfig, AecCore, build_core
from dora_voice.nodes.room import AcousticPath, RoomConfig, RoomCore, synthetic_rir
from dora_voice.schema import AudioChunk, Key, Output, ReferenceFrame, TimingEvent, TimingKind

RATE = 16_000
T0 = 1_700_000_000_000_000_000
NS = 1_000_000_000


def ref_frames(signal: np.ndarray, *, t0_ns: int = T0, frame: int = 320) -> list[tuple]:
    n = signal.shape[0] // frame * frame
    return [ReferenceFrame(samples=signal[k: k + frame], sample_rate=RATE, sample_offset=k,
                           t_ns=t0_ns + k * NS // RATE, session_id="s", source="file").encode()
            for k in range(0, n, frame)]


def mic_chunks(signal: np.ndarray, *, t0_ns: int = T0, block: int = 512) -> list[tuple]:
    return [AudioChunk(samples=signal[k: k + block], sample_rate=RATE, sample_offset=k,
                       t_ns=t0_ns + k * NS // RATE, session_id="s").encode()
            for k in range(0, signal.shape[0], block)]


def interleave(refs: list[tuple], mics: list[tuple], lead_ms: float = 30.0) -> list[tuple[str, tuple]]:
    """Messages in arrival order: each mic block after the reference up to its end + ``lead_ms`` arrived."""
    out, r = [], 0
    for chunk in mics:
        meta = chunk[1]
        end = meta[Key.SAMPLE_OFFSET] + len(chunk[0])
        while r < len(refs) and refs[r][1][Key.SAMPLE_OFFSET] < end + lead_ms * RATE / 1000:
            out.append((Output.REFERENCE, refs[r]))
            r += 1
        out.append((Output.AUDIO, chunk))
    out += [(Output.REFERENCE, f) for f in refs[r:]]
    return out


def run_core(core, messages) -> tuple[np.ndarray, list[AudioChunk], list[TimingEvent]]:
    outputs = []
    for input_id, encoded in messages:
        outputs += core.handle(input_id, *encoded)
    outputs += core.on_input_closed(Output.AUDIO)
    outputs += core.on_end()
    chunks = [AudioChunk.decode(v, m) for o, v, m in outputs if o == Output.AUDIO]
    timing = [TimingEvent.decode(v, m) for o, v, m in outputs if o == Output.TIMING]
    return (np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)), chunks, timing


def far_end(seconds: float) -> np.ndarray:
    """The assistant's speech: real recorded speech, repeated, at -6 dBFS peak."""
    speech = np.concatenate([load_clip("librivox-0880.wav"), load_clip("cards-005.wav")])
    reps = int(np.ceil(seconds * RATE / speech.shape[0]))
    x = np.tile(speech, reps)[: int(seconds * RATE)]
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def power_db(x: np.ndarray) -> float:
    return 10 * float(np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20))


# ---------------------------------------------------------------------------------------------------------------
# the room


def test_synthetic_rir_is_a_decaying_unit_energy_response() -> None:
    h = synthetic_rir(300.0, seed=3)
    assert h.shape == (int(0.3 * RATE),) and h.dtype == np.float32
    assert float(np.sum(h.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-5)
    assert int(np.argmax(np.abs(h))) == 0  # the direct path first
    quarter = h.shape[0] // 4
    assert power_db(h[quarter: 2 * quarter]) - power_db(h[3 * quarter:]) > 20  # about 30 dB per 150 ms
    np.testing.assert_array_equal(synthetic_rir(0.0), np.ones(1, np.float32))
    assert not np.array_equal(synthetic_rir(300.0, seed=1), h)


def test_room_adds_the_delayed_scaled_reference_to_the_users_recording() -> None:
    config = load_config(RoomConfig, {"ROOM_ECHO_DELAY_MS": "60", "ROOM_ECHO_GAIN_DB": "-6", "ROOM_RT60_MS": "0",
                                      "ROOM_NOISE_DBFS": "-120"})
    core = RoomCore(config, synthetic_rir(0.0))
    far = far_end(2.0)
    user = np.zeros_like(far)
    user[16_000:20_000] = 0.1
    out, chunks, _ = run_core(core, interleave(ref_frames(far), mic_chunks(user)))
    assert [c.sample_offset for c in chunks] == list(range(0, far.shape[0], 512))  # every chunk, in order
    expected = user.copy()
    expected[960:] += 10 ** (-6 / 20) * far[:-960]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert core.missing_reference_ms == 0.0


def test_room_echo_follows_the_impulse_response() -> None:
    rir = synthetic_rir(200.0, seed=5)
    path = AcousticPath(rir, delay_samples=100, gain=1.0)
    ref = ReferenceBuffer(RATE)
    click = np.zeros(8000, np.float32)
    click[1000] = 1.0
    ref.add(click, 0, T0)
    echo = np.concatenate([path.echo(ref, k, 512) for k in range(0, 8000, 512)])[:8000]
    np.testing.assert_allclose(echo[1100: 1100 + rir.shape[0]], rir, atol=1e-6)
    assert float(np.max(np.abs(echo[:1100]))) < 1e-6  # nothing before the delay (FFT rounding only)


def test_room_holds_mic_audio_until_its_reference_arrives() -> None:
    config = load_config(RoomConfig, {"ROOM_ECHO_DELAY_MS": "10", "ROOM_RT60_MS": "0", "ROOM_MAX_WAIT_MS": "1000"})
    core = RoomCore(config, synthetic_rir(0.0))
    far = far_end(1.0)
    refs, mics = ref_frames(far), mic_chunks(np.zeros_like(far))
    assert core.handle(Output.REFERENCE, *refs[0]) == []
    assert core.handle(Output.AUDIO, *mics[0]) == []  # needs reference up to 512 - 160 samples: not there yet
    assert not core.finished()
    out = []
    for f in refs[1:2]:
        out += core.handle(Output.REFERENCE, *f)
    assert [o for o, _v, _m in out] == [Output.AUDIO]  # released once it arrived
    assert core.handle(Output.AUDIO, *mics[1]) == []
    out = core.on_input_closed(Output.AUDIO)  # the mic's stream ended: send what is held
    assert [o for o, _v, _m in out] == [Output.AUDIO]
    assert core.finished() and core.missing_reference_ms > 0


# ---------------------------------------------------------------------------------------------------------------
# the echo canceller


def simulated_room(far: np.ndarray, user: np.ndarray, delay_ms: float, *, ref_t0_ns: int = T0):
    """Messages an AEC core would receive: the room's mic chunks (echo + user) and the speaker's reference."""
    config = load_config(RoomConfig, {"ROOM_ECHO_DELAY_MS": str(delay_ms), "ROOM_ECHO_GAIN_DB": "-3",
                                      "ROOM_RT60_MS": "200"})
    room = RoomCore(config, synthetic_rir(200.0, seed=7))
    refs = ref_frames(far, t0_ns=ref_t0_ns)
    offset = int(round((ref_t0_ns - T0) * RATE / NS))
    mixed, _chunks, _ = run_core(room, interleave(refs, mic_chunks(user), lead_ms=30 - offset * 1000 / RATE))
    return refs, mixed


def double_talk() -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray, int]:
    """8 s of the assistant in the room, the user speaking over it from 5 s: ``(refs, mic, user, speech, u0)``."""
    far = far_end(8.0)
    user = np.zeros_like(far)
    speech = load_clip("goforward.wav") * 0.5
    u0 = 5 * RATE
    user[u0: u0 + speech.shape[0]] = speech
    refs, mic = simulated_room(far, user, delay_ms=80)
    return refs, mic, user, speech, u0


def test_aec_removes_the_echo_and_keeps_the_users_speech() -> None:
    refs, mic, user, speech, u0 = double_talk()
    core = AecCore(load_config(AecConfig, {"ECHO_GUARD": "aec"}), load_canceller(RATE))
    out, chunks, timing = run_core(core, interleave(refs, mic_chunks(mic)))

    assert out.shape == mic.shape  # every sample, in order
    assert [c.sample_offset for c in chunks] == list(np.cumsum([0] + [c.samples.shape[0] for c in chunks[:-1]]))
    assert all(c.samples.shape[0] % 160 == 0 for c in chunks[:-1])
    assert all(c.t_ns == T0 + c.sample_offset * NS // RATE for c in chunks)
    far_only = slice(2 * RATE, u0)
    erle = power_db(mic[far_only]) - power_db(out[far_only])
    assert erle > 20, f"ERLE {erle:.1f} dB"
    # the user's speech survives: correlated with what they said (AEC3 delays its output by ~8 ms)
    seg = slice(u0, u0 + speech.shape[0])
    best = max(float(np.corrcoef(out[u0 + lag: u0 + lag + speech.shape[0]], user[seg])[0, 1]) for lag in range(0, 200, 4))
    assert best > 0.5
    assert power_db(out[seg]) > power_db(user[seg]) - 6
    stats = [t for t in timing if t.kind is TimingKind.AEC_STATS]
    assert len(stats) >= 14  # one per 500 ms
    far_windows = [t.fields[Key.ERLE_DB] for t in stats if 2 * NS <= t.t_ns - T0 and t.t_ns - T0 + 500_000_000 <= 5 * NS]
    assert far_windows and min(far_windows) > 15
    delays = [t.fields[Key.DELAY_MS] for t in stats if t.fields[Key.DELAY_MS] >= 0]
    assert delays and abs(delays[-1] - 80) <= 2  # the room's delay, measured
    assert core.delay_ms == pytest.approx(80, abs=2)
    # The cancellers' CPU (their thread's clock) is a part of the node's (the process clock), per window.
    assert all(0 < t.fields[Key.CANCELLER_CPU_PERCENT] <= t.fields[Key.CPU_PERCENT] + 1e-9 for t in stats)


def test_aec_aligns_the_reference_by_timestamps() -> None:
    # The speaker's output clock starts 0.75 s after the mic's: reference sample 0 plays at mic sample 12000.
    far = np.concatenate([np.zeros(12_000, np.float32), far_end(6.0)])
    shifted = far[12_000:]
    refs, mic = simulated_room(shifted, np.zeros_like(far), delay_ms=40, ref_t0_ns=T0 + 750_000_000)
    core = AecCore(load_config(AecConfig, {"ECHO_GUARD": "aec"}), load_canceller(RATE))
    out, _chunks, _timing = run_core(core, interleave(refs, mic_chunks(mic), lead_ms=30 - 750))
    window = slice(3 * RATE, 6 * RATE)
    assert power_db(mic[window]) - power_db(out[window]) > 20
    assert core.delay_ms == pytest.approx(40, abs=2)


def test_aec_waits_for_the_reference_at_most_the_configured_time() -> None:
    core = AecCore(load_config(AecConfig, {"ECHO_GUARD": "aec", "AEC_REFERENCE_WAIT_MS": "100"}),
                   load_canceller(RATE))
    far = far_end(1.0)
    refs, mics = ref_frames(far), mic_chunks(far)
    assert core.handle(Output.REFERENCE, *refs[0]) == []
    assert core.handle(Output.AUDIO, *mics[0]) == []  # its reference (512 samples) has not all arrived
    out = core.handle(Output.REFERENCE, *refs[1])
    assert [o for o, _v, _m in out] == [Output.AUDIO]  # 640 reference samples now: released, 480 processed
    assert AudioChunk.decode(out[0][1], out[0][2]).samples.shape[0] == 480
    out = core.handle(Output.AUDIO, *mics[1]) + core.handle(Output.AUDIO, *mics[2]) + core.handle(Output.AUDIO, *mics[3])
    assert out == []  # 96 ms held, waiting
    out = core.handle(Output.AUDIO, *mics[4])
    assert [o for o, _v, _m in out] == [Output.AUDIO]  # more than 100 ms held: processed without its reference
    assert core.missing_reference_ms > 0


def test_aec_passes_audio_through_when_the_guard_is_not_aec() -> None:
    core = build_core(load_config(AecConfig, {"ECHO_GUARD": "half_duplex"}), reference_wired=True)
    assert core.canceller is None
    chunk = mic_chunks(far_end(0.1))[0]
    (out,) = core.handle(Output.AUDIO, *chunk)
    assert out[0] == Output.AUDIO
    np.testing.assert_array_equal(AudioChunk.decode(out[1], out[2]).samples, AudioChunk.decode(*chunk).samples)
    assert core.handle(Output.REFERENCE, *ref_frames(far_end(0.1))[0]) == []


def test_echo_guard_resolution_and_start_up_errors(monkeypatch) -> None:
    assert resolve_echo_guard("auto", files=False, aec_ready=True) is EchoGuard.AEC
    assert resolve_echo_guard("auto", files=False, aec_ready=False) is EchoGuard.HALF_DUPLEX
    assert resolve_echo_guard("auto", files=True, aec_ready=True) is EchoGuard.OFF
    assert resolve_echo_guard("off", files=False, aec_ready=True) is EchoGuard.OFF
    assert build_core(load_config(AecConfig, {}), reference_wired=True).canceller is not None  # devices + library
    assert build_core(load_config(AecConfig, {"AUDIO_INPUT": "q.wav"}), reference_wired=True).canceller is None
    with pytest.raises(SystemExit, match="speaker/reference"):
        build_core(load_config(AecConfig, {"ECHO_GUARD": "aec"}), reference_wired=False)
    monkeypatch.setattr(aec_node, "aec_library_available", lambda: False)
    assert build_core(load_config(AecConfig, {}), reference_wired=True).canceller is None  # fallback: half duplex

    def missing(*_a, **_k):
        raise ImportError("the echo canceller needs pywebrtc-audio (No module named 'pywebrtc_audio'); install it")

    monkeypatch.setattr(aec_node, "load_canceller", missing)
    with pytest.raises(SystemExit, match="pywebrtc-audio"):
        build_core(load_config(AecConfig, {"ECHO_GUARD": "aec"}), reference_wired=True)


def test_delay_estimate_finds_a_known_delay() -> None:
    rng = np.random.default_rng(0)
    ref = far_end(2.0) + rng.standard_normal(2 * RATE).astype(np.float32) * 1e-3
    mic = np.zeros_like(ref)
    mic[1234:] = 0.3 * ref[:-1234]
    mic += rng.standard_normal(mic.shape[0]).astype(np.float32) * 1e-3
    delay_ms, confidence = estimate_delay(mic, ref, RATE)
    assert delay_ms == pytest.approx(1234 / 16, abs=0.1)
    assert confidence > 10
    _, noise_confidence = estimate_delay(rng.standard_normal(2 * RATE), ref, RATE)
    assert noise_confidence < 8
    with pytest.raises(ValueError):
        estimate_delay(mic[:100], ref[:100], RATE)


def test_reference_buffer_reads_gaps_as_silence_and_rejects_overlaps() -> None:
    buf = ReferenceBuffer(RATE)
    buf.add(np.ones(320, np.float32), 0, T0)
    buf.add(np.ones(320, np.float32), 640, T0 + 640 * NS // RATE)
    assert buf.gaps == 1 and buf.end == 960
    np.testing.assert_array_equal(buf.read(300, 400), np.r_[np.ones(20), np.zeros(320), np.ones(60)])
    assert buf.index_at(T0 + NS) == RATE
    with pytest.raises(ValueError, match="overlaps"):
        buf.add(np.ones(320, np.float32), 640, T0)


def test_reference_buffer_keeps_the_latest_samples_exactly() -> None:
    buf = ReferenceBuffer(RATE, keep_ms=100)  # 1600 samples kept
    signal = np.arange(20_000, dtype=np.float32)
    for k in range(0, 20_000, 320):
        buf.add(signal[k: k + 320], k, T0 + k * NS // RATE)
    assert buf.end == 20_000 and buf.start >= 20_000 - 3200
    np.testing.assert_array_equal(buf.read(20_000 - 1600, 1600), signal[-1600:])
    assert not buf.read(0, 320).any()  # long gone: silence


def test_linear_canceller_reduces_the_echo_and_keeps_double_talk_whole() -> None:
    """The ASR's path: the linear filter takes out some echo (less than AEC3) and does not suppress the user when
    both talk. "Whole" is measured against what the same canceller makes of the user's speech alone (it high-passes
    its input by a fixed filter), and compared with AEC3 measured the same way."""
    refs, mic, user, speech, u0 = double_talk()
    ref = np.concatenate([ReferenceFrame.decode(v, m).samples for v, m in refs])
    n = mic.shape[0] // 160 * 160
    mic, ref, user = mic[:n], np.pad(ref, (0, max(0, n - ref.shape[0])))[:n], user[:n]
    silent = np.zeros_like(ref)
    linear, linear_alone = (LinearEchoCanceller(RATE).process(x, r) for x, r in ((mic, ref), (user, silent)))
    aec3, aec3_alone = (load_canceller(RATE).process(x, r) for x, r in ((mic, ref), (user, silent)))
    far_only = slice(3 * RATE, u0)
    assert power_db(mic[far_only]) - power_db(linear[far_only]) > 6  # echo reduced
    seg = slice(u0, u0 + speech.shape[0])

    def kept(out: np.ndarray, alone: np.ndarray) -> float:
        return float(np.corrcoef(out[seg], alone[seg])[0, 1])

    assert kept(linear, linear_alone) > 0.9 and kept(linear, linear_alone) > kept(aec3, aec3_alone) + 0.1
    assert power_db(linear[seg] - linear_alone[seg]) < power_db(mic[seg] - user[seg]) - 6  # less echo than before
    with pytest.raises(ValueError, match="whole"):
        LinearEchoCanceller(RATE).process(mic[:100], ref[:100])


def test_aec_sends_the_linear_path_just_before_each_block_on_the_same_clock() -> None:
    far = far_end(3.0)
    refs, mic = simulated_room(far, np.zeros_like(far), delay_ms=40)
    core = AecCore(load_config(AecConfig, {"ECHO_GUARD": "aec"}), load_canceller(RATE),
                   linear=LinearEchoCanceller(RATE))
    outputs = []
    for input_id, encoded in interleave(refs, mic_chunks(mic)):
        outputs += core.handle(input_id, *encoded)
    outputs += core.on_input_closed(Output.AUDIO) + list(core.on_end())
    audio = [(o, AudioChunk.decode(v, m)) for o, v, m in outputs if o in (Output.AUDIO, Output.ASR_AUDIO)]
    assert audio and [o for o, _c in audio] == [Output.ASR_AUDIO, Output.AUDIO] * (len(audio) // 2)
    for (_a, linear), (_b, block) in zip(audio[::2], audio[1::2]):
        assert (linear.sample_offset, linear.t_ns, linear.samples.shape) == (block.sample_offset, block.t_ns,
                                                                             block.samples.shape)
    assert sum(c.samples.shape[0] for o, c in audio if o == Output.AUDIO) == mic.shape[0]


def test_aec_marks_blocks_echo_active_while_the_assistant_or_its_tail_is_audible() -> None:
    far = np.concatenate([np.zeros(RATE, np.float32), far_end(2.0), np.zeros(2 * RATE, np.float32)])
    refs, mic = simulated_room(far, np.zeros_like(far), delay_ms=40)
    core = AecCore(load_config(AecConfig, {"ECHO_GUARD": "aec", "AEC_ECHO_TAIL_MS": "300"}), load_canceller(RATE))
    _out, chunks, _timing = run_core(core, interleave(refs, mic_chunks(mic)))
    marked = [(c.sample_offset, c.sample_offset + c.samples.shape[0]) for c in chunks if c.echo_active]
    assert marked
    first, last = marked[0][0], marked[-1][1]
    # From the assistant's first audible frame to its last plus the tail and the measured delay, and nowhere else.
    assert RATE - 640 <= first <= RATE + 640
    hold = int((0.3 + (core.delay_ms or 0) / 1000) * RATE)
    assert 3 * RATE + hold - 1600 <= last <= 3 * RATE + hold + 1600
    assert sum(b - a for a, b in marked) == last - first  # contiguous


def test_aec3_hears_the_reference_with_a_dither_far_below_pcm_floor_continuous_across_calls() -> None:
    # AEC3 slowed down 10-20 times once the reference fell silent after speech (denormal filter states); a white
    # noise at REFERENCE_DITHER_DBFS keeps it normal. Check what the library is given.
    from dora_voice.echo import REFERENCE_DITHER_DBFS, Aec3Canceller

    seen = []

    class Recorder:
        def process(self, near, far):
            seen.append(far.copy())
            return near

    canceller = Aec3Canceller(Recorder(), 1600)  # 0.1 s of dither at this rate: the blocks below wrap around it
    far = np.zeros(480, np.float32)
    blocks = [canceller.process(far, far) for _ in range(7)]
    assert all(b is far for b in blocks)  # the near end goes to the library as it is
    dither = np.concatenate(seen)
    assert all(s.dtype == np.float32 and s.shape == far.shape for s in seen)
    rms_dbfs = 10 * np.log10(np.mean(dither.astype(np.float64) ** 2))
    assert abs(rms_dbfs - REFERENCE_DITHER_DBFS) < 1.0 and REFERENCE_DITHER_DBFS < -100
    assert np.array_equal(dither[1600:3200], dither[:1600])  # one period, in order, across the calls
    assert np.all(np.abs(dither) < 2 ** -15)  # below one step of 16-bit PCM: nothing audible
