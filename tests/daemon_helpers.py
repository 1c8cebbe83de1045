"""Helpers for the tests that run dora with a coordinator and daemons (``dora up``, ``run-local-cluster.sh``)."""

from __future__ import annotations

import os
import signal
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = "all nodes are ready"


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with this venv's bin dir first on PATH (the daemons resolve the node commands from it)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RUST_BACKTRACE"] = "0"
    for name in ("AUDIO_INPUT", "AUDIO_OUTPUT", "TIMING_REPORT", "DORA_COORDINATOR_PORT", "DORA_COORDINATOR_ADDR"):
        env.pop(name, None)
    env.update(extra or {})
    return env


class Output:
    """Collects a process's combined output on a thread; :meth:`wait_for` waits for a line containing a text."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._proc = proc
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, text: str, timeout_s: float) -> bool:
        if any(text in line for line in self.lines):
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._new.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            if text in line:
                return True
        return False

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _default_sigint() -> None:
    # A test runner started as a background job inherits SIGINT ignored, and a shell cannot trap a signal that was
    # ignored when it started: give the child the terminal's default, as a user's Ctrl-C would find it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, Output]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", preexec_fn=_default_sigint)
    return proc, Output(proc)


def dora(*args: str, env: dict[str, str], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["dora", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def processes_running(pattern: str) -> list[str]:
    """Command lines of live processes containing ``pattern`` (to check that a teardown left nothing behind)."""
    return list(pids_running(pattern).values())


def pids_running(pattern: str) -> dict[int, str]:
    """Live (not zombie) processes whose command line contains ``pattern``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if pattern in cmdline and state != "Z":
                found[int(entry.name)] = cmdline.strip()
    return found
