"""Run a dataflow YAML with ``dora run`` and collect what it produced (used by the CLI, tests and benchmark).

``dora run`` needs the node console scripts on ``PATH``; :func:`run_dataflow` puts the directory of the running
Python interpreter first on ``PATH`` so the venv's scripts are found even when the venv is not activated.

``dora run`` writes its logs and a session file to ``out/`` beside the YAML it is given. A dataflow shipped inside
this package (:mod:`dora_voice_tools.resources`) is therefore run from a copy placed in the run's folder, so
nothing is written into the installed package (read-only in a system install); its nodes are console scripts, so
the copy runs the same nodes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dora_voice.link import ACK_PREFIX
from dora_voice.schema import Output
from dora_voice_monitor.sinks import session_path
from dora_voice_tools import resources

logger = logging.getLogger(__name__)

class LaunchError(RuntimeError):
    """``dora`` is missing, the YAML does not exist, or the dataflow failed."""


@dataclass
class RunResult:
    """What one ``dora run`` produced.

    Attributes:
        returncode: exit status of ``dora run`` (0 when every node finished cleanly).
        wall_s: seconds the run took.
        out_dir: folder holding ``dora.log`` (the CLI's output) and the files the nodes wrote.
        report_path: the monitor's JSONL (``TIMING_REPORT``).
        output_wav: the speaker's WAV (``AUDIO_OUTPUT``), when asked for.
        turns: the JSONL records, one per completed turn.
    """

    returncode: int
    wall_s: float
    out_dir: Path
    report_path: Path
    output_wav: Path | None
    turns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log(self) -> str:
        """Everything ``dora run`` printed."""
        path = self.out_dir / "dora.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def node_env(extra: Mapping[str, str] | None = None, *, timeout_s: float = 600.0) -> dict[str, str]:
    """The environment for ``dora run``: this one, the interpreter's bin dir first on PATH, plus ``extra``.

    ``DORA_FINISH_DRAIN_GRACE_SECS`` defaults to ``timeout_s``: dora 1.1 otherwise stops a dataflow whose nodes
    have all been silent for 120 s once no source node runs (a batch-mode LLM generating a long reply is silent).
    (``DORA_ZENOH_MULTICAST`` is left alone: ``dora run`` turns zenoh scouting off by itself when the YAML declares
    no dynamic node, and a YAML that declares one needs it: scouting is how the live monitor finds the run.)
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("RUST_BACKTRACE", "0")
    env.setdefault("DORA_FINISH_DRAIN_GRACE_SECS", str(int(timeout_s)))
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def dora_executable() -> str:
    """Path of the ``dora`` CLI.

    Raises:
        LaunchError: not installed.
    """
    candidate = Path(sys.executable).parent / "dora"
    found = str(candidate) if candidate.exists() else shutil.which("dora")
    if not found:
        raise LaunchError("the dora CLI is not installed: run examples/voice-chatbot/setup.sh "
                          "(or pip install dora-rs-cli==1.1.0)")
    return found


def run_dataflow(yaml_path: Path, out_dir: Path, env: Mapping[str, str] | None = None, *,
                 timeout_s: float = 600.0, stream_output: bool = False) -> RunResult:
    """Run ``yaml_path`` to completion with ``dora run`` and read the monitor's report.

    Args:
        yaml_path: dataflow YAML.
        out_dir: created if needed; receives ``dora.log`` and ``timing.jsonl`` (unless ``TIMING_REPORT`` is set),
            and a copy of ``yaml_path`` (run instead of it) when that is a dataflow shipped in this package.
        env: extra environment for every node (``AUDIO_INPUT``, ``LLM_ENABLE_STREAMING``, ...).
        timeout_s: passed to ``dora run --stop-after``; the process is also killed 30 s after it.
        stream_output: also copy dora's output to this process's stderr as it comes.

    Returns:
        The :class:`RunResult`; a non-zero ``returncode`` is returned, not raised.

    Raises:
        LaunchError: the YAML or the dora CLI is missing.
    """
    yaml_path = Path(yaml_path).resolve()
    if not yaml_path.is_file():
        raise LaunchError(f"no dataflow at {yaml_path}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if yaml_path.is_relative_to(resources.PACKAGE_DIR):
        yaml_path = Path(shutil.copy(yaml_path, out_dir / yaml_path.name))
    extra = dict(env or {})
    extra.setdefault("TIMING_REPORT", str(out_dir / "timing.jsonl"))
    report = Path(extra["TIMING_REPORT"])
    report.unlink(missing_ok=True)
    session_path(report).unlink(missing_ok=True)
    machines = parse_machines(extra.get(MACHINES_ENV, ""))
    if machines:
        # Two daemons on this host (edge and server): the same YAML with `deploy: {machine: ...}` per node.
        overlay = out_dir / f"{yaml_path.stem}-{'-'.join(sorted(set(machines.values())))}.yml"
        overlay.write_text(deploy_overlay(yaml_path.read_text(encoding="utf-8"), machines), encoding="utf-8")
        cmd = ["bash", str(resources.CLUSTER_SCRIPT), "--dataflow", str(overlay), "--workdir", str(out_dir / "cluster"),
               "--timeout", str(int(timeout_s))]
    else:
        cmd = [dora_executable(), "run", str(yaml_path), "--stop-after", f"{int(timeout_s)}s"]
    logger.info("running %s", " ".join(cmd))
    started = time.perf_counter()
    with open(out_dir / "dora.log", "w", encoding="utf-8") as log:
        for attempt in range(1, START_ATTEMPTS + 1):
            returncode, hung = _run_once(cmd, yaml_path.parent, node_env(extra, timeout_s=timeout_s), log,
                                         timeout_s=timeout_s, stream_output=stream_output, graceful=bool(machines))
            if not hung:
                break
            logger.warning("dora run: the nodes never all became ready within %.0f s (attempt %d of %d)",
                           START_TIMEOUT_S, attempt, START_ATTEMPTS)
            log.write(f"[launcher] nodes not ready after {START_TIMEOUT_S:.0f} s: killed (attempt {attempt})\n")
            if report.exists():
                report.unlink()
    wall_s = time.perf_counter() - started
    output = extra.get("AUDIO_OUTPUT")
    return RunResult(returncode, wall_s, out_dir, report, Path(output) if output else None, read_report(report))


MACHINES_ENV = "DORA_VOICE_MACHINES"
"""Run through a coordinator and one daemon per machine on this host instead of ``dora run``:
``"edge=mic,vad,speaker,monitor,text-input;server=asr,llm,tts"`` (machine id = node ids; nodes not named go to
the first machine). Used by the bench's ``distributed`` plan; ``run-local-cluster.sh`` does the rest."""



def parse_machines(spec: str) -> dict[str, str]:
    """``"edge=mic,vad;server=asr"`` -> ``{"mic": "edge", "vad": "edge", "asr": "server"}`` (empty: ``{}``).

    Raises:
        LaunchError: a part without ``=``, an empty machine id, or a node named twice.
    """
    machines: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        machine, sep, nodes = part.partition("=")
        if not sep or not machine.strip():
            raise LaunchError(f"{MACHINES_ENV}={spec!r}: expected machine=node,node;machine=node,...")
        for node in filter(None, (n.strip() for n in nodes.split(","))):
            if node in machines:
                raise LaunchError(f"{MACHINES_ENV}: node {node!r} is given two machines")
            machines[node] = machine.strip()
    if machines:
        machines.setdefault("*", spec.split("=", 1)[0].strip())
    return machines


def deploy_overlay(yaml_text: str, machines: Mapping[str, str]) -> str:
    """The dataflow YAML with ``deploy: {machine: ...}`` on every node (``machines["*"]`` for nodes not named), and
    reliable delivery (:mod:`dora_voice.link`) wired on every edge between two machines: the
    receiver gets an ``ack`` output, the sender an input ``ack_<receiver>`` from it.

    Dynamic nodes are left out: they attach to a daemon of their own choosing.
    """
    import yaml

    flow = yaml.safe_load(yaml_text)
    nodes = {node["id"]: node for node in flow["nodes"] if node.get("path") != "dynamic"}
    for node in nodes.values():
        node["deploy"] = {"machine": machines.get(node["id"], machines.get("*"))}
    for receiver in nodes.values():
        for input_id, spec in list((receiver.get("inputs") or {}).items()):
            if input_id.startswith(ACK_PREFIX):
                continue  # a report edge added here: not reported on itself
            source = (spec.get("source") if isinstance(spec, dict) else spec).split("/", 1)[0]
            sender = nodes.get(source)
            if sender is None or sender["deploy"] == receiver["deploy"]:
                continue
            if Output.ACK not in receiver.setdefault("outputs", []):
                receiver["outputs"].append(Output.ACK)
            sender.setdefault("inputs", {})[f"{ACK_PREFIX}{receiver['id']}"] = {
                "source": f"{receiver['id']}/{Output.ACK}", "queue_size": 10, "queue_policy": "backpressure"}
    return yaml.safe_dump(flow, sort_keys=False)


START_TIMEOUT_S = 120.0
"""Longest wait for dora's "all nodes are ready" (model loading included) before a start-up counts as hung."""
START_ATTEMPTS = 2
"""dora 1.1 rarely (about 1 run in 50 here) leaves one node blocked inside ``Node()`` and never starts the
dataflow; such a start is killed and tried once more."""
_READY_MARK = "all nodes are ready"


def _run_once(cmd: list[str], cwd: Path, env: dict[str, str], log: Any, *, timeout_s: float,
              stream_output: bool, graceful: bool = False) -> tuple[int, bool]:
    """One ``dora run``; returns ``(returncode, hung)``. Kills the run's process group on a hung start-up
    (``hung``: no "all nodes are ready" within :data:`START_TIMEOUT_S`) or 30 s past ``timeout_s`` (``graceful``:
    SIGINT first, for the cluster script, whose daemons a SIGKILL would orphan). Ctrl-C is
    passed on to the run (it has its own session) before it is raised here."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    begun = time.monotonic()
    ready = hung = False
    try:
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                log.write(line)
                log.flush()
                if stream_output:
                    sys.stderr.write(line)
                ready = ready or _READY_MARK in line
            elapsed = time.monotonic() - begun
            hung = not ready and elapsed > START_TIMEOUT_S
            if hung or elapsed > timeout_s + 30:
                if graceful:
                    _stop(proc)
                else:
                    _kill_group(proc, signal.SIGKILL)
                break
    except KeyboardInterrupt:
        _kill_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
        raise
    return proc.wait(), hung


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (``dora run`` stops its nodes; ``run-local-cluster.sh`` tears its cluster down), SIGKILL after
    20 s."""
    _kill_group(proc, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal ``dora run`` and the nodes it spawned (they share its process group)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def read_report(path: Path) -> list[dict[str, Any]]:
    """The JSONL timing report as a list of per-turn records (empty when the file is missing)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


_LOG_LINE = re.compile(r"^(?:\S+\s+)?(?:\d\d:\d\d:\d\d\s+)?(stderr|stdout|ERROR|WARN)\s+([\w-]+):\s+(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CAUSE = re.compile(r"^(dora-voice-[\w-]+: .+|[A-Za-z_.]*(Error|Exception): .+)$")


def first_failure(log: str) -> str | None:
    """The first cause of a failed run in dora's output: ``"node: message"`` for the earliest line a node wrote that
    states a fatal error (a node's own exit message ``dora-voice-x: ...``, or a Python exception line), or ``None``.

    When one node fails at start, the nodes that then cannot connect print their own tracebacks after it; the
    earliest cause is the one to fix. dora 1.1 labels what a node writes to stderr ``stdout`` in its log lines, so
    both labels are searched (and dora's own ``ERROR``, which repeats a node's stderr when it exits).
    """
    for raw in log.splitlines():
        match = _LOG_LINE.match(_ANSI.sub("", raw).strip())
        if match and match.group(1) != "WARN" and _CAUSE.match(match.group(3).strip()):
            return f"{match.group(2)}: {match.group(3).strip()}"
    return None


def failure_excerpt(log: str, lines: int = 12) -> str:
    """The last ``lines`` lines of dora's output worth showing after a failed run: ANSI colours removed, and
    without the Rust backtrace frames dora prints after its error (``  12: symbol`` / ``at file:line``)."""
    kept = []
    for raw in log.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        if not line or _BACKTRACE.match(line) or line.startswith("Stack backtrace:"):
            continue
        kept.append(line)
    return "\n".join(kept[-lines:])


_BACKTRACE = re.compile(r"^\s+(\d+: |at )")
