"""``monitor_streaming_timing``: attach to a running dataflow as a dora dynamic node and report its timing.

The dataflow's YAML declares the node with ``path: dynamic`` and wires the timing outputs to it; this command then
starts it by hand (``dora.Node(node_id)``), at any time while the dataflow runs. It runs the same
:class:`~dora_voice_monitor.node.MonitorCore` as the ``dora-voice-monitor`` node, so tables, JSONL and plots are
identical. Only events sent after it attached are seen: a turn already under way when it attaches is reported
incomplete (or, with ``--turns``, may be the one counted).

Measured with dora 1.1 (``dora run``): the dataflow neither waits for the dynamic node nor stalls when it leaves
(backpressure inputs included); after the dataflow ends the node receives ``INPUT_CLOSED``/``STOP`` and then the end
of the stream. Dynamic nodes reach the daemon on the fixed local port 53291: one ``dora run`` (or one ``dora up``
daemon) at a time can host them. A leftover ``dora up`` daemon answers instead of the ``dora run`` one and reports
"no node with ID": ``dora destroy`` removes it.
"""

from __future__ import annotations

import argparse
import os
import dataclasses
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from dora_voice.config import load_config
from dora_voice.logs import setup_logging
from dora_voice.runtime import run_node

from dora_voice_monitor.node import TIMING_INPUTS, TIMING_SUFFIX, TTS_AUDIO_INPUT, MonitorConfig, MonitorCore

logger = logging.getLogger(__name__)

DEFAULT_NODE_ID = "monitor-dynamic"

_YAML_EXAMPLE = """\
  - id: monitor-dynamic
    path: dynamic
    inputs:
{inputs}
      tts_audio: {{source: tts/audio, queue_size: 1000, queue_policy: backpressure}}   # only for --save-audio"""

EXIT_OK, EXIT_ATTACH_FAILED, EXIT_TOO_FEW_TURNS, EXIT_INTERRUPTED = 0, 2, 3, 130


def yaml_example() -> str:
    """The YAML entry that declares the dynamic monitor node with every usual timing input."""
    lines = [f"      {input_id}: {{source: {desc.split(':')[0]}, queue_size: 1000, queue_policy: backpressure}}"
             for input_id, desc in TIMING_INPUTS.items()]
    return _YAML_EXAMPLE.format(inputs="\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The ``monitor_streaming_timing`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="monitor_streaming_timing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Attach to a RUNNING dora-voice dataflow as a dora dynamic node and report, per turn, where the time\n"
            "went: ASR latency, LLM TTFT, TTS TTFB, voice-to-voice first audio, LLM start to first audio, and\n"
            "segments produced/played. Prints a live row per turn and a summary (p50/p90/mean) at the end."),
        epilog=(
            "The dataflow YAML must declare the dynamic node, for example:\n\n" + yaml_example() + "\n\n"
            "Then, in one terminal:  dora run dataflow.yml          (or: dora up && dora start dataflow.yml)\n"
            "and in another:         monitor_streaming_timing --verbose --jsonl turns.jsonl --plot plots/\n\n"
            "Environment: TIMING_REPORT, MONITOR_VERBOSE, MONITOR_PLOT_DIR and MONITOR_SAVE_AUDIO give defaults\n"
            "for --jsonl, --verbose, --plot and --save-audio. Exit status: 0 done, 2 could not attach,\n"
            "3 fewer than --turns turns before --timeout or the end of the dataflow, 130 Ctrl-C."),
    )
    parser.add_argument("--node-id", default=DEFAULT_NODE_ID,
                        help=f"id of the 'path: dynamic' node in the YAML (default: {DEFAULT_NODE_ID})")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print each turn's TIMELINE, SUMMARY and CHUNK BREAKDOWN")
    parser.add_argument("--jsonl", type=Path, metavar="PATH",
                        help="write one JSON object per completed turn to PATH (flushed per turn)")
    parser.add_argument("--plot", type=Path, metavar="PATH",
                        help="timeline PNGs: a directory (turn_<id>.png each) or a .png file (first turn; later "
                             "turns go to <stem>_turn<id>.png beside it)")
    parser.add_argument("--save-audio", type=Path, metavar="WAV",
                        help="write all TTS audio to WAV (the YAML must wire tts/audio to the 'tts_audio' input)")
    parser.add_argument("--turns", type=_positive_int, metavar="N", help="exit after N completed turns")
    parser.add_argument("--timeout", type=_positive_float, metavar="S",
                        help="exit after S seconds, reporting what was seen")
    parser.add_argument("--wait-for-dataflow", type=_positive_float, default=0.0, metavar="S",
                        help="keep trying to attach for up to S seconds (start the monitor before the dataflow)")
    return parser


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def explain_attach_error(node_id: str, exc: Exception) -> str:
    """A message that says why ``Node(node_id)`` failed and what to do, from dora's error text."""
    text = str(exc)
    cause = next((line.strip() for line in text.splitlines() if "no node with ID" in line or "refused" in line),
                 text.splitlines()[0] if text else type(exc).__name__)
    cause = re.sub(r"^\d+:\s*", "", cause)  # dora numbers the lines of its error chain
    lines = [f"monitor_streaming_timing: cannot attach to a running dataflow as dynamic node {node_id!r}.",
             f"  dora said: {cause}"]
    if "no node with ID" in text:
        lines += [
            f"  A dora daemon is running, but its dataflow has no node {node_id!r}. Either:",
            "    - the YAML does not declare it: run the live-monitor variant instead",
            "      (dataflows/voice-chatbot-live-monitor.yml), add the entry below, or pass --node-id, or",
            "    - another daemon answered: dynamic nodes reach the one daemon on local port 53291, which is a",
            "      leftover 'dora up' (check 'dora list'; remove it with 'dora destroy', then start the dataflow",
            "      again) or an older 'dora run' still running.",
        ]
    else:
        lines += [
            "  No dataflow is running. Start one that declares the dynamic node, in another terminal:",
            "    dora run dataflows/voice-chatbot-live-monitor.yml",
            "    (or: dora up && dora start dataflows/voice-chatbot-live-monitor.yml)",
            "  or pass --wait-for-dataflow S to keep trying while it starts.",
        ]
    lines += ["", "  YAML entry:", yaml_example()]
    return "\n".join(lines)


def attach(node_id: str, wait_s: float, *, node_factory: Any = None, sleep=time.sleep,
           monotonic=time.monotonic) -> Any:
    """``dora.Node(node_id)``, retried every 0.5 s for up to ``wait_s`` seconds.

    Raises:
        RuntimeError: dora's error from the last attempt.
    """
    if node_factory is None:
        from dora import Node as node_factory
    deadline = monotonic() + wait_s
    while True:
        try:
            return node_factory(node_id)
        except RuntimeError:
            if monotonic() >= deadline:
                raise
            sleep(0.5)


class DeadlineNode:
    """A ``dora.Node`` whose ``next()`` returns ``None`` at a deadline and wakes every ``poll_s`` seconds.

    Waking lets Python see Ctrl-C while dora blocks; dora's timeout events are swallowed here.

    Args:
        node: the dora node.
        timeout_s: seconds from now until ``next()`` ends the stream (``None``: no deadline).
        poll_s: longest single wait in dora (s).
    """

    def __init__(self, node: Any, timeout_s: float | None, *, poll_s: float = 0.5, monotonic=time.monotonic) -> None:
        self._node = node
        self._monotonic = monotonic
        self._deadline = None if timeout_s is None else monotonic() + timeout_s
        self._poll_s = poll_s
        self.timed_out = False

    def next(self) -> dict | None:
        """The next event, or ``None`` when the stream ended or the deadline passed."""
        while True:
            wait = self._poll_s
            if self._deadline is not None:
                remaining = self._deadline - self._monotonic()
                if remaining <= 0:
                    self.timed_out = True
                    return None
                wait = min(wait, remaining)
            event = self._node.next(wait)
            if event is None:
                return None
            if event.get("type") == "ERROR" and "Timeout" in str(event.get("error", "")):
                continue
            return event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def _check_inputs(node: Any, node_id: str, config: MonitorConfig) -> None:
    """Warn when the YAML wires no timing input, or no audio while --save-audio is asked for."""
    try:
        inputs = set((node.node_config() or {}).get("inputs", {}))
    except Exception:  # noqa: BLE001 - the check is advice only; dora raises various errors here
        return
    timing = sorted(i for i in inputs if i.endswith(TIMING_SUFFIX))
    logger.info("attached as %r; timing inputs: %s", node_id, ", ".join(timing) or "none")
    if not timing:
        logger.warning("node %r has no input ending in %r: no turn can be reported", node_id, TIMING_SUFFIX)
    if config.save_audio is not None and TTS_AUDIO_INPUT not in inputs:
        logger.warning("--save-audio: node %r has no %r input (source tts/audio): no audio will be written",
                       node_id, TTS_AUDIO_INPUT)


def main(argv: list[str] | None = None) -> int:
    """Console script ``monitor_streaming_timing``; returns the exit status (see ``--help``)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    os.environ.setdefault("RUST_BACKTRACE", "0")  # dora's shutdown warnings without a 30-frame backtrace each
    overrides = {name: value for name, value in (("timing_report", args.jsonl), ("plot_dir", args.plot),
                                                  ("save_audio", args.save_audio)) if value is not None}
    if args.verbose:
        overrides["verbose"] = True
    config = dataclasses.replace(load_config(MonitorConfig), **overrides)

    try:
        node = attach(args.node_id, args.wait_for_dataflow)
    except RuntimeError as exc:
        print(explain_attach_error(args.node_id, exc), file=sys.stderr)
        return EXIT_ATTACH_FAILED
    _check_inputs(node, args.node_id, config)

    core = MonitorCore(config, max_turns=args.turns, node_id=args.node_id)
    events = DeadlineNode(node, args.timeout)
    try:
        run_node(events, core)
    except KeyboardInterrupt:
        logger.info("interrupted")
        core.on_end()
        return EXIT_INTERRUPTED
    if events.timed_out:
        logger.info("--timeout %.1f s reached", args.timeout)
    if args.turns is not None and len(core.turns) < args.turns:
        logger.warning("%d of %d turns reported", len(core.turns), args.turns)
        return EXIT_TOO_FEW_TURNS
    return EXIT_OK
