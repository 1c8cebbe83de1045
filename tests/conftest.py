"""Shared fixtures. Helpers live in modules of their own (``fakes``, ``recordings``); tests import those, never
this file or each other."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dora_voice import audio

from fakes import FakeClock
from pulse import pactl as _pactl


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def null_sink():
    """A fresh 48 kHz PulseAudio null sink that sounddevice's ``pulse`` device plays into and records from."""
    if shutil.which("pactl") is None:
        pytest.skip("pactl not found: install pulseaudio and pulseaudio-utils for the null-sink device test")
    started_server = False
    if _pactl("info").returncode != 0:
        if shutil.which("pulseaudio") is None:
            pytest.skip("no PulseAudio server running and no pulseaudio binary to start one")
        subprocess.run(["pulseaudio", "--start", "--exit-idle-time=-1"], capture_output=True, timeout=20)
        if _pactl("info").returncode != 0:
            pytest.skip("no PulseAudio server could be started (pulseaudio --start failed)")
        started_server = True
    try:
        audio.find_device("pulse", "output")
    except audio.AudioDeviceError as exc:
        pytest.skip(f"no 'pulse' PortAudio device (libportaudio2 and the ALSA pulse plugin are needed): {exc}")
    name = f"dvtest{os.getpid()}"
    loaded = _pactl("load-module", "module-null-sink", f"sink_name={name}", "rate=48000")
    if loaded.returncode != 0:
        pytest.skip(f"cannot load a null sink: {loaded.stderr.strip()}")
    saved = {key: os.environ.get(key) for key in ("PULSE_SINK", "PULSE_SOURCE")}
    os.environ["PULSE_SINK"], os.environ["PULSE_SOURCE"] = name, f"{name}.monitor"
    try:
        yield name
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _pactl("unload-module", loaded.stdout.strip())
        if started_server:
            subprocess.run(["pulseaudio", "--kill"], capture_output=True, timeout=20)
