"""``dora-voice-monitor``: the dataflow node that collects every node's timing events and reports per turn.

Prints the live per-turn table to stdout as turns complete (``dora run`` shows it as ``stdout monitor: ...``) and the
session summary when the dataflow ends; optionally writes a JSONL record per turn (``TIMING_REPORT``), a timeline PNG
per turn (``MONITOR_PLOT_DIR``) and a WAV of all TTS audio (``MONITOR_SAVE_AUDIO``). With ``MONITOR_VERBOSE=true``
each turn also gets its TIMELINE, SUMMARY and CHUNK BREAKDOWN.

:class:`MonitorCore` is dora-free and is shared with ``monitor_streaming_timing`` (:mod:`dora_voice_monitor.cli`),
which runs the same core as a dynamic node attached to a running dataflow.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

import pyarrow as pa
from dora_voice.config import env_field, parse_bool, parse_optional_path
from dora_voice.contracts import NodeContract
from dora_voice.runtime import Emit, NodeCore, UnknownInputError, run_node
from dora_voice.schema import AudioFragment, Key, TimingEvent, TimingKind

from dora_voice_monitor import report
from dora_voice_monitor.collector import DEFAULT_GRACE_S, TimingCollector, TurnRecord, summarize, summarize_echo
from dora_voice_monitor.sinks import JsonlWriter, PlotTarget, WavCollector, session_path, write_session

logger = logging.getLogger(__name__)

TIMING_SUFFIX = "timing"
"""Any input whose id ends with this carries :class:`~dora_voice.schema.TimingEvent`s."""

TTS_AUDIO_INPUT = "tts_audio"
"""Input id of the TTS audio (``tts/audio``, :class:`~dora_voice.schema.AudioFragment`), used for the WAV only."""

ECHO_FIELDS = (Key.DURATION_MS, Key.AUDIO_MS, Key.ERLE_DB, Key.DELAY_MS, Key.CPU_PERCENT, Key.CANCELLER_CPU_PERCENT)
"""The ``aec_stats`` fields written to ``ECHO_REPORT``."""

TIMING_INPUTS = {
    "mic_timing": "mic/timing: TimingEvent (stream_started)",
    "aec_timing": "aec/timing: TimingEvent (aec_stats: ERLE, echo delay, CPU)",
    "vad_timing": "vad/timing: TimingEvent (speech_started, speech_ended)",
    "asr_timing": "asr/timing: TimingEvent (asr_done)",
    "text_input_timing": "text-input/timing: TimingEvent (text_input)",
    "llm_timing": "llm/timing: TimingEvent (llm_start, llm_first_token, llm_chunk, llm_done)",
    "tts_timing": "tts/timing: TimingEvent (tts_segment_start, tts_first_fragment, tts_segment_done, tts_done)",
    "speaker_timing": "speaker/timing: TimingEvent (playback_started, segment_played, turn_played, barge_in)",
}
"""The usual timing inputs; the node accepts any input id ending in ``timing``."""


@dataclass(frozen=True)
class MonitorConfig:
    """Monitor settings, from the environment (``load_config(MonitorConfig)``) or built by the CLI."""

    timing_report: Path | None = env_field(
        "TIMING_REPORT", None, parse_optional_path,
        "JSONL file: one JSON object per completed turn, written and flushed as each turn completes")
    verbose: bool = env_field(
        "MONITOR_VERBOSE", False, parse_bool, "print TIMELINE, SUMMARY and CHUNK BREAKDOWN for every turn")
    plot_dir: Path | None = env_field(
        "MONITOR_PLOT_DIR", None, parse_optional_path,
        "directory for one timeline PNG per turn (turn_<id>.png); a .png path also works")
    echo_report: Path | None = env_field(
        "ECHO_REPORT", None, parse_optional_path,
        "JSONL file: one JSON object per aec_stats window (t_ns, duration_ms, audio_ms, erle_db, delay_ms, "
        "cpu_percent, canceller_cpu_percent), written as they arrive")
    save_audio: Path | None = env_field(
        "MONITOR_SAVE_AUDIO", None, parse_optional_path,
        "WAV file collecting all TTS audio (needs the tts_audio input)")


CONTRACT = NodeContract(
    path="dora-voice-monitor",
    inputs={**TIMING_INPUTS, TTS_AUDIO_INPUT: "tts/audio: AudioFragment (optional, for MONITOR_SAVE_AUDIO)"},
    outputs=(),
    config=MonitorConfig,
)


class MonitorCore(NodeCore):
    """Feeds timing events to a :class:`TimingCollector` and reports each turn as it completes.

    Output goes to ``out`` (stdout by default): a live table row per turn (with its verbose blocks when configured)
    and the session summary at :meth:`on_end`. The core has no dora outputs: a bad message is counted and logged
    like in every node, and its ``input_error`` event goes to the collector, so the summary lists it.

    Args:
        config: what to write besides ``out``.
        out: text stream for the table and summaries.
        max_turns: :meth:`finished` turns true after this many turns were reported (``None``: never).
        node_id: name used in logs and on this node's own input errors.
        clock_ns: wall clock (ns) for this node's own input-error events.
        monotonic_ns: clock (ns) for the collector's grace period.
        grace_s: see :class:`TimingCollector`.

    Attributes:
        turns: turn records reported so far, in reporting order.
    """

    def __init__(self, config: MonitorConfig, *, out: TextIO | None = None, max_turns: int | None = None,
                 node_id: str = "monitor", clock_ns: Callable[[], int] = time.time_ns,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns, grace_s: float = DEFAULT_GRACE_S) -> None:
        super().__init__(clock_ns)
        self.node_id = node_id
        self.config = config
        self.out = out if out is not None else sys.stdout
        self.max_turns = max_turns
        self.collector = TimingCollector(grace_s=grace_s, clock_ns=monotonic_ns)
        self.turns: list[TurnRecord] = []
        self._jsonl = JsonlWriter(config.timing_report) if config.timing_report else None
        if config.timing_report:  # an earlier run's session record would describe another session
            session_path(config.timing_report).unlink(missing_ok=True)
        self._echo = JsonlWriter(config.echo_report) if config.echo_report else None
        self._plots = PlotTarget(config.plot_dir) if config.plot_dir else None
        self._audio = WavCollector(config.save_audio) if config.save_audio else None
        self._ended = False

    def on_input(self, input_id: str, value: pa.Array, metadata: Mapping[str, Any]) -> Iterable[Emit]:
        """Decode and collect a timing event, or append a TTS fragment to the WAV.

        Raises:
            SchemaError: a malformed timing event or audio fragment (counted by :meth:`handle`).
            UnknownInputError: an input id that neither ends in ``timing`` nor is ``tts_audio``.
        """
        if input_id.endswith(TIMING_SUFFIX):
            event = TimingEvent.decode(value, metadata)
            self._report(self.collector.add(event))
            if event.kind is TimingKind.AEC_STATS and self._echo is not None:
                self._echo.write({"t_ns": event.t_ns, **{k: event.fields[k] for k in ECHO_FIELDS if k in event.fields}})
        elif input_id == TTS_AUDIO_INPUT:
            if self._audio is not None:
                self._audio.write(AudioFragment.decode(value, metadata))
        else:
            raise UnknownInputError(f"unknown input id {input_id!r}: expected *{TIMING_SUFFIX} or {TTS_AUDIO_INPUT}")
        return ()

    def reject(self, input_id: str, exc: Exception) -> list[Emit]:
        """Count and log a bad message like every node; its ``input_error`` event goes to the collector."""
        for _output, value, meta in super().reject(input_id, exc):
            self._report(self.collector.add(TimingEvent.decode(value, meta)))
        return []

    def finished(self) -> bool:
        """True once ``max_turns`` turns have been reported."""
        return self.max_turns is not None and len(self.turns) >= self.max_turns

    def on_end(self) -> Iterable[Emit]:
        """Report the turns still open (unless ``max_turns`` was reached), print the summary, close the files.

        Safe to call twice (the CLI calls it on Ctrl-C); the second call does nothing.
        """
        if self._ended:
            return ()
        self._ended = True
        if self.finished():
            if self.collector.open_turns:
                logger.info("%d turns reached; not reporting open turns %s", self.max_turns,
                            self.collector.open_turns)
        else:
            self._report(self.collector.flush())
        self._write(report.session_summary(summarize(self.turns, self.collector.error_details(),
                                                     self.collector.unanswered_turns)))
        if self.config.timing_report:
            write_session(self.config.timing_report, self.collector.unanswered_turns, self.collector.error_details())
        echo = report.echo_summary(summarize_echo(self.collector.aec_stats))
        if echo:
            self._write(echo)
        for sink in (self._jsonl, self._echo, self._audio):
            if sink is not None:
                sink.close()
        return ()

    def _report(self, turns: list[TurnRecord]) -> None:
        for turn in turns:
            if self.finished():
                logger.info("turn %d not reported: %d turns reached", turn.turn_id, self.max_turns)
                continue
            self.turns.append(turn)
            if self.config.verbose:
                self._write(report.verbose_turn(turn) + "\n")
            if self.config.verbose or len(self.turns) == 1:
                self._write(report.live_header())
            self._write(report.live_row(turn))
            if self._jsonl is not None:
                self._jsonl.write(turn.to_json())
            if self._plots is not None:
                self._plots.draw(turn)

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def main(argv: list[str] | None = None) -> None:
    """Console script ``dora-voice-monitor``: run the monitor as a node of the dataflow."""
    from dora import Node

    from dora_voice.nodes import node_cli

    from dora_voice.nodes import fatal

    config, _ = node_cli(CONTRACT, __doc__, argv)
    try:
        core = MonitorCore(config)
    except OSError as exc:  # TIMING_REPORT / MONITOR_SAVE_AUDIO / MONITOR_PLOT_DIR cannot be written
        fatal(CONTRACT.path, f"cannot write {exc.filename or 'an output file'}: {exc.strerror or exc} "
              "(check TIMING_REPORT, MONITOR_SAVE_AUDIO and MONITOR_PLOT_DIR)")
    run_node(Node(), core)
