"""Running the bench: one dataflow run judged by its turns (:func:`execute`), the stress plan's completeness
checks, and the node memory (RSS) sampler.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from dora_voice_monitor.collector import TurnRecord

from dora_voice_tools.launcher import LaunchError, run_dataflow

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOG_NOISE = ("fault tolerance stats",)
_BACKTRACE_FRAME = re.compile(r"^\s+(\d+: |at /)")
_ERROR_LINE = re.compile(r"\bERROR\b|Traceback|Error:|failed:")


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class RunOutcome:
    """What one dataflow run gave the bench.

    Attributes:
        label: ``item variant`` (for messages).
        run_dir: its folder (``dora.log``, ``timing.jsonl``, ``answer.wav``).
        returncode: exit status of ``dora run`` (-1 when it could not start).
        wall_s: seconds the run took.
        turns: the monitor's turn records.
        problems: why the run counts as failed (empty when it did not).
    """

    label: str
    run_dir: Path
    returncode: int
    wall_s: float
    turns: list[TurnRecord]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the run exited cleanly and every expected turn was reported complete."""
        return not self.problems


def turn_problems(turns: Sequence[TurnRecord], expected: int | None) -> list[str]:
    """What is wrong with a run's turns: turn ids ``0..expected-1`` missing (``expected=None``: at least one turn
    needed), incomplete turns, lost segments, synthesized segments not all played (uninterrupted turns)."""
    problems = []
    ids = {t.turn_id for t in turns}
    if expected is None:
        if not turns:
            problems.append("no turn reported")
    else:
        missing = sorted(set(range(expected)) - ids)
        if missing:
            problems.append(f"{len(missing)} of {expected} turns missing (ids {_ids(missing)})")
    for what, bad in (("incomplete", [t.turn_id for t in turns if not t.complete]),
                      ("lost segments", [t.turn_id for t in turns if t.segments_lost]),
                      ("segments played != synthesized",
                       [t.turn_id for t in turns if not t.interrupted and t.segments_played != t.tts_segments])):
        if bad:
            problems.append(f"{what}: turns {_ids(bad)}")
    return problems


def _ids(ids: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def log_tail(log: str, lines: int = 40) -> str:
    """What to show of a failed run's dora log: its error lines (up to 10), then its last ``lines`` lines, without
    ANSI colour codes, periodic daemon statistics or the frames of Rust back-traces."""
    kept = [_ANSI.sub("", line) for line in log.splitlines()
            if not any(n in line for n in _LOG_NOISE) and not _BACKTRACE_FRAME.match(line)]
    tail = kept[-lines:]
    errors = [line for line in kept[:-lines] if _ERROR_LINE.search(line)][-10:]
    return "\n".join(errors + (["..."] if errors else []) + tail)


def execute(yaml_path: Path, run_dir: Path, env: Mapping[str, str], timeout_s: float, label: str,
            expected_turns: int | None) -> RunOutcome:
    """Run one dataflow and judge its turns (:func:`turn_problems`); never raises for a failed run.

    (``run_dataflow`` sets dora's finish-drain grace to ``timeout_s``: see :func:`dora_voice_tools.launcher.node_env`.)
    """
    try:
        result = run_dataflow(yaml_path, run_dir, env, timeout_s=timeout_s)
    except LaunchError as exc:
        return RunOutcome(label, run_dir, -1, 0.0, [], [str(exc)])
    turns = [TurnRecord.from_json(record) for record in result.turns]
    problems = [] if result.returncode == 0 else [f"dora run exited with status {result.returncode}"]
    problems += turn_problems(turns, expected_turns)
    return RunOutcome(label, run_dir, result.returncode, result.wall_s, turns, problems)


# --------------------------------------------------------------------------------------------------------------
# Stress: completeness and memory


@dataclass(frozen=True)
class RssSample:
    """Resident memory of one node at one instant.

    Attributes:
        t_ns: wall clock (``time.time_ns()``) of the sample.
        node: the node's console script (``dora-voice-llm``, ...).
        rss_kb: ``VmRSS`` in KiB, summed over the node's processes.
    """

    t_ns: int
    node: str
    rss_kb: int


def cpu_times(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """``(steal, total)`` clock ticks of all CPUs since boot, from the ``cpu`` line of ``/proc/stat``; ``None`` where
    it cannot be read (not Linux). ``steal`` is the time the hypervisor gave this virtual machine's CPUs to others
    (proc(5), the 8th value)."""
    try:
        with open(proc / "stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest time is in user)
    return ticks[7], sum(ticks)


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share (%) of the CPU time between two :func:`cpu_times` readings that the hypervisor took; ``None``
    without both readings or without time between them."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


class RssSampler:
    """Samples, every ``interval_s`` in a thread, ``VmRSS`` of the descendants of ``root_pid`` whose command line
    contains ``match`` (the node console scripts), from ``/proc``.

    Only descendants count, so the dataflows of other users of the machine are not mixed in.

    Args:
        interval_s: seconds between samples.
        root_pid: whose descendants to sample (default: this process).
        match: substring of the command line that marks a node.
        proc: the proc file system root (a fake tree in tests).
        clock_ns: wall clock.
    """

    def __init__(self, interval_s: float = 2.0, *, root_pid: int | None = None, match: str = "dora-voice-",
                 proc: Path = Path("/proc"), clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.interval_s = interval_s
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.match = match
        self.proc = Path(proc)
        self.clock_ns = clock_ns
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, pid: int, name: str) -> str | None:
        try:
            return (self.proc / str(pid) / name).read_bytes().decode("utf-8", "replace")
        except OSError:
            return None

    def _parents(self) -> dict[int, int]:
        parents = {}
        for entry in self.proc.iterdir():
            if entry.name.isdigit():
                stat = self._read(int(entry.name), "stat")
                if stat and ")" in stat:
                    fields = stat.rsplit(")", 1)[1].split()
                    if len(fields) >= 2 and fields[1].lstrip("-").isdigit():
                        parents[int(entry.name)] = int(fields[1])
        return parents

    def sample_once(self) -> list[RssSample]:
        """Take one sample of every matching descendant (a process that exits meanwhile is skipped)."""
        parents = self._parents()
        now = self.clock_ns()
        totals: dict[str, int] = {}
        for pid in parents:
            ancestor, hops = parents.get(pid), 0
            while ancestor not in (None, 0, self.root_pid) and hops < 64:
                ancestor, hops = parents.get(ancestor), hops + 1
            if ancestor != self.root_pid:
                continue
            cmdline = self._read(pid, "cmdline") or ""
            node = next((Path(arg).name for arg in cmdline.split("\0") if self.match in Path(arg).name), None)
            status = self._read(pid, "status") or ""
            rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), None)
            if node and rss and rss.isdigit():
                totals[node] = totals.get(node, 0) + int(rss)
        taken = [RssSample(now, node, kb) for node, kb in sorted(totals.items())]
        self.samples += taken
        return taken

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except OSError as exc:  # /proc raced with an exiting process tree; try again next time
                logger.debug("RSS sample failed: %s", exc)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def stress_checks(turns: Sequence[TurnRecord], expected: int, returncode: int) -> dict[str, dict[str, Any]]:
    """The stress plan's verdicts: ``{check: {"ok": bool, "detail": str}}`` for a clean exit, turn ids
    ``0..expected-1`` all present, every turn complete, no segment lost, every synthesized segment played, and a
    non-empty reply."""
    ids = {t.turn_id for t in turns}
    missing = sorted(set(range(expected)) - ids)

    def verdict(bad: Sequence[int], what: str) -> dict[str, Any]:
        return {"ok": not bad, "detail": f"{what}: turns {_ids(list(bad))}" if bad else "ok"}

    return {
        "exit_status_0": {"ok": returncode == 0, "detail": f"dora run exited with {returncode}"},
        "all_turn_ids_present": {"ok": not missing, "detail": (f"missing {_ids(missing)}" if missing else
                                                               f"0..{expected - 1} present")},
        "turns_complete": verdict([t.turn_id for t in turns if not t.complete], "incomplete"),
        "segments_lost_0": verdict([t.turn_id for t in turns if t.segments_lost != 0], "lost segments"),
        "segments_played_eq_tts_segments": verdict(
            [t.turn_id for t in turns if t.segments_played != t.tts_segments], "played != synthesized"),
        "replies_non_empty": verdict([t.turn_id for t in turns if not t.reply.strip()], "empty reply"),
    }


# --------------------------------------------------------------------------------------------------------------
# Soak: a long session


SOAK_KEYS = ("turns", "complete", "segments_produced", "segments_played", "segments_lost", "underrun_ms_total",
             "ttft_p50_ms", "ttft_p90_ms", "rss_growth_second_half_pct")
"""The keys of summary.json's ``soak`` entry (issue 10), in order."""

SOAK_RSS_GROWTH_MAX_PCT = 3.0
"""Target: no node's RSS grows by more than this over the second half of the session (%)."""


def soak_voice_input(clips: Sequence[Path], turns: int, gap_s: float, out_path: Path) -> Path:
    """Write the voice part of a soak: ``turns`` utterances, the ``clips`` cycled, each followed by ``gap_s`` s of
    silence (longer than the VAD's end-of-turn silence), as one 16 kHz WAV.

    Raises:
        ValueError: no clips, or a clip that cannot be read.
    """
    import numpy as np  # noqa: PLC0415 - only the soak needs audio here

    from dora_voice import audio  # noqa: PLC0415

    if not clips:
        raise ValueError("a soak needs at least one voice clip")
    rate = 16_000
    loaded = []
    for clip in clips:
        samples, clip_rate = audio.read_wav_mono(clip)
        loaded.append(audio.resample(samples, clip_rate, rate) if clip_rate != rate else samples)
    gap = np.zeros(int(gap_s * rate), dtype=np.float32)
    parts = []
    for k in range(turns):
        parts += [loaded[k % len(loaded)].astype(np.float32), gap]
    audio.write_wav(out_path, np.concatenate(parts), rate)
    return out_path


def rss_growth_pct(memory: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per node, RSS growth over the second half of a run, % of its mid-run RSS (from :func:`rss_report` rows)."""
    return {node: round(100.0 * (r["end_mb"] - r["mid_mb"]) / r["mid_mb"], 2) if r["mid_mb"] else 0.0
            for node, r in memory.items()}


def soak_entry(turns: Sequence[TurnRecord], rss_growth: Mapping[str, float]) -> dict[str, Any]:
    """The ``soak`` entry of summary.json: exactly :data:`SOAK_KEYS`, over every turn of the session."""
    from dora_voice_monitor.collector import percentile  # noqa: PLC0415

    ttft = [t.llm_ttft_ms for t in turns if t.llm_ttft_ms is not None]
    entry = {
        "turns": len(turns),
        "complete": sum(1 for t in turns if t.complete),
        "segments_produced": sum(t.tts_segments for t in turns),
        "segments_played": sum(t.segments_played for t in turns),
        "segments_lost": sum(t.segments_lost for t in turns),
        "underrun_ms_total": round(sum(t.underrun_ms or 0.0 for t in turns), 1),
        "ttft_p50_ms": round(percentile(ttft, 50), 1) if ttft else None,
        "ttft_p90_ms": round(percentile(ttft, 90), 1) if ttft else None,
        "rss_growth_second_half_pct": dict(sorted(rss_growth.items())),
    }
    assert tuple(entry) == SOAK_KEYS
    return entry


def soak_targets(entry: Mapping[str, Any], expected_turns: int) -> dict[str, dict[str, Any]]:
    """The soak's targets: every turn reported and complete, 0 lost, 0 ms of underruns, TTFT p90 <= 2 x p50, no
    node's RSS growing more than :data:`SOAK_RSS_GROWTH_MAX_PCT` % over the second half."""
    p50, p90 = entry["ttft_p50_ms"], entry["ttft_p90_ms"]
    growth = entry["rss_growth_second_half_pct"]
    worst = max(growth.items(), key=lambda kv: kv[1]) if growth else ("-", 0.0)
    return {
        "all_turns_complete": {"ok": entry["turns"] >= expected_turns and entry["complete"] == entry["turns"],
                               "detail": f"{entry['complete']} complete of {entry['turns']} reported, "
                                         f"{expected_turns} asked"},
        "segments_lost_0": {"ok": entry["segments_lost"] == 0,
                            "detail": f"{entry['segments_lost']} lost, {entry['segments_played']} of "
                                      f"{entry['segments_produced']} played"},
        "underrun_ms_0": {"ok": entry["underrun_ms_total"] == 0, "detail": f"{entry['underrun_ms_total']} ms"},
        "ttft_p90_le_2x_p50": {"ok": p50 is not None and p90 is not None and p90 <= 2 * p50,
                               "detail": f"p50 {p50} ms, p90 {p90} ms"},
        "rss_growth_le_3pct": {"ok": bool(growth) and worst[1] <= SOAK_RSS_GROWTH_MAX_PCT,
                               "detail": f"largest: {worst[0]} {worst[1]:+.2f} %"},
    }
