"""The real audio device path of the device tests: a PulseAudio null sink (its fixture is ``null_sink`` in
conftest.py) and the mic's device reader on the sink's monitor."""

from __future__ import annotations

import subprocess
import threading

from dora_voice.config import load_config
from dora_voice.nodes import mic
from dora_voice.schema import AudioChunk, Output

DEVICE_RATE = 48_000
"""Null sinks are created at 48 kHz (one at 16 kHz ran at half speed)."""


def pactl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10)



class Recorder:
    """The mic's device reader on the null sink's monitor, in a thread."""

    def __init__(self) -> None:
        config = load_config(mic.MicConfig, {"AUDIO_INPUT_DEVICE": "pulse"})
        self.stream = mic.open_input_stream(config)
        self.capture = mic.DeviceCapture(self.stream, block_ms=32, session_id="device-test")
        self.chunks: list[AudioChunk] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            for output_id, value, meta in self.capture.read_block():
                if output_id == Output.AUDIO:
                    self.chunks.append(AudioChunk.decode(value, meta))

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self.stream.stop()
        self.stream.close()
