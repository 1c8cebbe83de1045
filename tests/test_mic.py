"""mic node: the paced file schedule, resampling, device capture timestamps (fake stream), config and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dora_voice.config import ConfigError, load_config
from dora_voice.nodes import mic
from dora_voice.runtime import run_node
from dora_voice.schema import AudioChunk, Output, StreamStarted, TimingEvent, TimingKind

RATE = 16_000
from fakes import T0, FakeClock


def collect(replay: mic.FileReplay, clock: FakeClock, consumer_delay_ns=lambda k: 0):
    """Run the replay; return (stream_started, timing, [(sent_ns, chunk)])."""
    outputs = []
    k = 0
    for output_id, value, meta in replay.run():
        outputs.append((clock(), output_id, value, meta))
        if output_id == Output.AUDIO:
            clock.t_ns += consumer_delay_ns(k)
            k += 1
    started = [StreamStarted.decode(v, m) for _, o, v, m in outputs if o == Output.STREAM_STARTED]
    timing = [TimingEvent.decode(v, m) for _, o, v, m in outputs if o == Output.TIMING]
    chunks = [(t, AudioChunk.decode(v, m)) for t, o, v, m in outputs if o == Output.AUDIO]
    assert [o for _, o, _, _ in outputs[:2]] == [Output.STREAM_STARTED, Output.TIMING]
    return started, timing, chunks


def test_file_schedule_blocks_stamps_and_send_times() -> None:
    clock = FakeClock()
    samples = np.linspace(-0.5, 0.5, RATE, dtype=np.float32)  # 1.0 s
    replay = mic.FileReplay(samples, block_samples=512, trailing_silence_samples=24_000, session_id="s1",
                            clock_ns=clock, sleep=clock.sleep)
    started, timing, chunks = collect(replay, clock)

    assert started == [StreamStarted(stream_start_ns=T0, sample_rate=RATE, source="file", session_id="s1")]
    assert timing[0].kind is TimingKind.STREAM_STARTED and timing[0].t_ns == T0 and timing[0].node == "mic"
    total = RATE + 24_000
    assert len(chunks) == -(-total // 512)
    offsets = [c.sample_offset for _, c in chunks]
    assert offsets == list(range(0, total, 512))
    assert all(c.samples.shape[0] == 512 for _, c in chunks[:-1])
    assert sum(c.samples.shape[0] for _, c in chunks) == total
    for sent, chunk in chunks:
        end = chunk.sample_offset + chunk.samples.shape[0]
        assert chunk.t_ns == T0 + chunk.sample_offset * 1_000_000_000 // RATE
        assert sent == T0 + end * 1_000_000_000 // RATE  # sent exactly when its last sample has arrived
        assert chunk.sample_rate == RATE and chunk.session_id == "s1"
    stream = np.concatenate([c.samples for _, c in chunks])
    np.testing.assert_array_equal(stream[:RATE], samples)
    assert not stream[RATE:].any()  # trailing silence
    assert replay.max_lateness_ms == 0.0


def test_file_schedule_does_not_drift_behind_a_slow_consumer() -> None:
    clock = FakeClock()
    replay = mic.FileReplay(np.zeros(RATE, np.float32), block_samples=512, trailing_silence_samples=0,
                            session_id="s", clock_ns=clock, sleep=clock.sleep)
    # the consumer stalls 100 ms after block 3, then keeps up: the schedule catches up instead of shifting
    _, _, chunks = collect(replay, clock, consumer_delay_ns=lambda k: 100_000_000 if k == 3 else 0)
    late = [sent - (T0 + (c.sample_offset + c.samples.shape[0]) * 1_000_000_000 // RATE) for sent, c in chunks]
    assert max(late) > 0  # blocks right after the stall went out late, back to back
    assert late[-1] == 0 and late[-5] == 0  # and the schedule is back on time, not shifted by 100 ms
    assert all(c.t_ns == T0 + c.sample_offset * 1_000_000_000 // RATE for _, c in chunks)
    assert replay.max_lateness_ms == pytest.approx(100 - 32, abs=1)  # block 4 was due 32 ms after block 3


def test_file_replay_without_realtime_never_sleeps() -> None:
    clock = FakeClock()
    replay = mic.FileReplay(np.zeros(5000, np.float32), block_samples=512, trailing_silence_samples=1000,
                            session_id="s", realtime=False, clock_ns=clock, sleep=clock.sleep)
    _, _, chunks = collect(replay, clock)
    assert clock.sleeps == []
    assert sum(c.samples.shape[0] for _, c in chunks) == 6000
    assert chunks[-1][1].samples.shape[0] == 6000 - 11 * 512


def test_load_file_replay_resamples_a_441k_stereo_file(tmp_path) -> None:
    rate = 44_100
    t = np.arange(int(1.5 * rate)) / rate
    left = 0.6 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1).astype(np.float32)
    path = tmp_path / "q.wav"
    sf.write(str(path), stereo, rate, subtype="PCM_16")
    config = load_config(mic.MicConfig, {"AUDIO_INPUT": str(path), "MIC_TRAILING_SILENCE_MS": "500",
                                         "SESSION_ID": "abc"})
    clock = FakeClock()
    replay = mic.load_file_replay(config, clock_ns=clock, sleep=clock.sleep)
    assert abs(replay.samples.shape[0] - 24_000) <= 1
    assert replay.trailing_silence_samples == 8000
    _, _, chunks = collect(replay, clock)
    assert all(c.session_id == "abc" for _, c in chunks)
    voiced = np.concatenate([c.samples for _, c in chunks])[:24_000]
    spectrum = np.abs(np.fft.rfft(voiced * np.hanning(voiced.shape[0])))
    assert abs(np.argmax(spectrum) * RATE / voiced.shape[0] - 440) < 1.0
    assert np.max(np.abs(voiced[1000:-1000])) == pytest.approx(0.6, abs=0.01)
    # 1.5 s of file + 0.5 s of silence took 2.0 s of (fake) real time
    assert clock.t_ns - T0 == pytest.approx(2.0e9, abs=1e6)


def test_config_defaults_and_errors() -> None:
    config = load_config(mic.MicConfig, {})
    assert config.audio_input is None and config.block_ms == 32 and config.block_samples == 512
    assert config.trailing_silence_ms == 1500 and config.realtime is True
    assert len(config.session_id) == 12 and set(config.session_id) <= set("0123456789abcdef")
    assert load_config(mic.MicConfig, {}).session_id != config.session_id
    assert load_config(mic.MicConfig, {"MIC_REALTIME": "false"}).realtime is False
    with pytest.raises(ConfigError, match="MIC_BLOCK_MS"):
        load_config(mic.MicConfig, {"MIC_BLOCK_MS": "fast"})
    with pytest.raises(ConfigError, match="MIC_REALTIME"):
        load_config(mic.MicConfig, {"MIC_REALTIME": "maybe"})


class FakeInputStream:
    """Stands in for sounddevice.InputStream: a 440 Hz tone captured from T0 at 48 kHz.

    ``read`` blocks (advances the fake clock) until its last frame has been captured, plus ``late_ns[k]`` for read
    ``k``; ``read_available`` then counts frames captured but not yet read (0 when ``report_available`` is off).
    ``drop_frames[k]`` frames are lost before read ``k`` (an overflow).
    """

    def __init__(self, clock: FakeClock, rate: int = 48_000, report_available: bool = True) -> None:
        self.samplerate = float(rate)
        self.clock = clock
        self.position = 0  # frames consumed from the device (read or lost)
        self.read_available = 0
        self.report_available = report_available
        self.late_ns: dict[int, int] = {}
        self.drop_frames: dict[int, int] = {}
        self.reads = 0

    def read(self, frames: int):
        self.position += self.drop_frames.get(self.reads, 0)
        t = (self.position + np.arange(frames)) / self.samplerate
        data = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(-1, 1)
        self.position += frames
        ready_ns = T0 + int(self.position * 1e9 / self.samplerate)
        self.clock.t_ns = max(self.clock.t_ns, ready_ns) + self.late_ns.get(self.reads, 0)
        captured = int((self.clock.t_ns - T0) * self.samplerate // 1e9)
        self.read_available = max(0, captured - self.position) if self.report_available else 0
        self.reads += 1
        return data, False


def run_capture(capture: mic.DeviceCapture, reads: int) -> list:
    outputs = []
    for _ in range(reads):
        outputs += capture.read_block()
    return outputs


def test_device_capture_resamples_and_stamps_on_a_sample_clock() -> None:
    clock = FakeClock()
    stream = FakeInputStream(clock)
    stream.late_ns = {0: 5_000_000, 20: 40_000_000}  # late reads: read_available accounts for the backlog
    capture = mic.DeviceCapture(stream, block_ms=32, session_id="dev", clock_ns=clock)
    outputs = run_capture(capture, 60)
    ids = [o for o, _, _ in outputs]
    assert ids[:2] == [Output.STREAM_STARTED, Output.TIMING]
    assert StreamStarted.decode(outputs[0][1], outputs[0][2]).source == "device"
    chunks = [AudioChunk.decode(v, m) for o, v, m in outputs if o == Output.AUDIO]
    assert all(c.samples.shape[0] == 512 and c.sample_rate == RATE for c in chunks)
    assert [c.sample_offset for c in chunks] == list(range(0, 512 * len(chunks), 512))
    assert len(chunks) >= 58  # 60 reads of 32 ms, minus the resampler's delay
    assert capture.anchor_ns == pytest.approx(T0, abs=50_000)  # sample 0 was captured at T0
    assert all(c.t_ns == capture.anchor_ns + c.sample_offset * 1_000_000_000 // RATE for c in chunks)
    x = np.concatenate([c.samples for c in chunks])
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    assert abs(np.argmax(spectrum) * RATE / x.shape[0] - 440) < 1.0
    # the resampler's delay is compensated: output sample k is input time k / 16000 s
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(x.shape[0]) / RATE)
    assert np.max(np.abs(x[2000:-2000] - expected[2000:-2000])) < 0.01


def test_device_capture_takes_the_earliest_estimate_when_backlog_is_unknown() -> None:
    clock = FakeClock()
    stream = FakeInputStream(clock, report_available=False)
    stream.late_ns = {0: 7_000_000, 5: 3_000_000}  # late reads the stream cannot report
    capture = mic.DeviceCapture(stream, block_ms=32, session_id="dev", clock_ns=clock)
    outputs = run_capture(capture, 1)
    started = StreamStarted.decode(outputs[0][1], outputs[0][2])
    assert started.stream_start_ns == T0 + 7_000_000  # the only estimate so far
    run_capture(capture, 10)  # the next read returns on time: its estimate is earlier, and right
    assert capture.anchor_ns == pytest.approx(T0, abs=50_000)
    assert capture.reanchors == 0


def test_device_capture_reanchors_when_samples_are_lost() -> None:
    clock = FakeClock()
    stream = FakeInputStream(clock)
    stream.drop_frames = {10: 2400}  # 50 ms of frames lost: every later estimate is 50 ms after the sample clock
    capture = mic.DeviceCapture(stream, block_ms=32, session_id="dev", clock_ns=clock)
    run_capture(capture, 10 + mic.DeviceCapture.REANCHOR_BLOCKS - 1)
    assert capture.reanchors == 0  # not on the first few late blocks
    run_capture(capture, 2)
    assert capture.reanchors == 1
    assert capture.anchor_ns == pytest.approx(T0 + 50_000_000, abs=50_000)


def test_cli_help_lists_env_vars(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        mic.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("AUDIO_INPUT", "AUDIO_INPUT_DEVICE", "MIC_BLOCK_MS", "MIC_TRAILING_SILENCE_MS", "SESSION_ID",
                 "MIC_REALTIME", "--list-devices"):
        assert name in text


def test_cli_list_devices(monkeypatch, capsys) -> None:
    monkeypatch.setattr(mic.audio, "describe_devices", lambda: "  0 pulse, ALSA (32 in, 32 out)")
    with pytest.raises(SystemExit) as stop:
        mic.main(["--list-devices"])
    assert stop.value.code == 0
    assert "pulse" in capsys.readouterr().out


def test_missing_device_error_says_what_to_do(monkeypatch) -> None:
    def no_device(spec, kind):
        raise mic.audio.AudioDeviceError(f"no usable default {kind} device: none")

    monkeypatch.setattr(mic.audio, "find_device", no_device)
    with pytest.raises(mic.audio.AudioDeviceError) as exc:
        mic.open_input_stream(load_config(mic.MicConfig, {}))
    assert "python -m sounddevice" in str(exc.value) and "AUDIO_INPUT=file.wav" in str(exc.value)


def test_contract() -> None:
    assert mic.CONTRACT.path == "dora-voice-mic"
    assert mic.CONTRACT.inputs == {}
    assert set(mic.CONTRACT.outputs) == {Output.AUDIO, Output.STREAM_STARTED, Output.TIMING}
    assert "AUDIO_INPUT" in mic.CONTRACT.env()


class ScriptedNode:
    """A stand-in for ``dora.Node`` with no inputs: ``try_recv`` returns the scripted events in turn (``None`` = none
    pending), ``next`` ends the stream; sent outputs are recorded."""

    def __init__(self, outputs: list[str], events: dict[int, dict] | None = None) -> None:
        self.outputs = outputs
        self.events = events or {}  # poll number -> event
        self.polls = 0
        self.sent: list[tuple[str, object, dict]] = []

    def node_config(self) -> dict:
        return {"outputs": self.outputs}

    def try_recv(self):
        event = self.events.get(self.polls)
        self.polls += 1
        return event

    def next(self):
        return None

    def send_output(self, output_id, value, metadata) -> None:
        self.sent.append((output_id, value, metadata))


def test_run_node_drives_the_file_replay_like_iterating_it() -> None:
    samples = np.linspace(-0.5, 0.5, RATE // 2, dtype=np.float32)
    clock = FakeClock()
    expected = [(o, m) for o, _v, m in mic.FileReplay(samples, block_samples=512, trailing_silence_samples=512,
                                                        session_id="s", clock_ns=clock, sleep=clock.sleep).run()]
    clock = FakeClock()
    replay = mic.FileReplay(samples, block_samples=512, trailing_silence_samples=512, session_id="s",
                            clock_ns=clock, sleep=clock.sleep)
    node = ScriptedNode([Output.AUDIO, Output.STREAM_STARTED])  # no timing output wired: it is skipped
    run_node(node, replay)
    assert [(o, m) for o, _v, m in node.sent] == [(o, m) for o, m in expected if o != Output.TIMING]
    assert replay.done and replay.finished()


def test_stop_ends_the_file_replay_and_the_device_capture() -> None:
    clock = FakeClock()
    replay = mic.FileReplay(np.zeros(RATE, dtype=np.float32), block_samples=512, trailing_silence_samples=0,
                            session_id="s", clock_ns=clock, sleep=clock.sleep)
    node = ScriptedNode([Output.AUDIO, Output.STREAM_STARTED, Output.TIMING], {5: {"type": "STOP"}})
    run_node(node, replay)
    assert [o for o, _v, _m in node.sent] == [Output.STREAM_STARTED, Output.TIMING, Output.AUDIO, Output.AUDIO,
                                              Output.AUDIO]
    assert replay.stopped and not replay.done

    clock = FakeClock()
    capture = mic.DeviceCapture(FakeInputStream(clock), block_ms=32, session_id="dev", clock_ns=clock)
    node = ScriptedNode([Output.AUDIO, Output.STREAM_STARTED, Output.TIMING], {10: {"type": "STOP"}})
    run_node(node, capture)
    assert node.polls == 11 and capture.stream.reads == 10 and capture.stopped
