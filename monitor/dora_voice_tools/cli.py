"""``dora-voice``: run the voice chatbot on a recording or live, and list audio devices.

    dora-voice run [--input q.wav] [--output a.wav]    answer a recording, print the per-turn timing table
    dora-voice live                                     talk to it through the default microphone and speaker
    dora-voice devices                                  list audio devices (pick with AUDIO_INPUT_DEVICE / ..._OUTPUT_DEVICE)

Both ``run`` and ``live`` start the packaged copy of ``dataflows/voice-chatbot.yml`` with ``dora run`` (``--dataflow``
picks another); tunables are the nodes' env vars (``LLM_ENABLE_STREAMING=false dora-voice run`` for the batch
baseline; ``--set KEY=VALUE`` works too). Run folders go to ``runs/`` in the current directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from dora_voice_tools.launcher import LaunchError, first_failure, read_report, run_dataflow
from dora_voice_tools.resources import QUICKSTART_RECORDING, VOICE_DATAFLOW, runs_dir

logger = logging.getLogger(__name__)


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def print_report(report: Path) -> int:
    """Print the per-turn table and the summary from a JSONL timing report; return the number of turns."""
    from dora_voice_monitor.collector import TurnRecord, summarize
    from dora_voice_monitor.report import live_header, live_row, session_summary

    turns = [TurnRecord.from_json(record) for record in read_report(report)]
    print(live_header())
    for turn in turns:
        print(live_row(turn))
    print()
    print(session_summary(summarize(turns)))
    return len(turns)


def cmd_run(args: argparse.Namespace) -> int:
    runs = runs_dir()
    out_dir = Path(args.out_dir or runs / time.strftime("%Y%m%d-%H%M%S")).resolve()
    audio_in = Path(args.input).expanduser().resolve()
    if not audio_in.is_file():
        raise SystemExit(f"--input {audio_in}: no such file")
    audio_out = Path(args.output).expanduser().resolve() if args.output else out_dir / "answer.wav"
    env = {"AUDIO_INPUT": str(audio_in), "AUDIO_OUTPUT": str(audio_out),
           "TIMING_REPORT": str(out_dir / "timing.jsonl"), **_parse_sets(args.set)}
    print(f"dora-voice: answering {audio_in} (logs in {out_dir}/dora.log) ...", flush=True)
    result = run_dataflow(Path(args.dataflow), out_dir, env, timeout_s=args.timeout, stream_output=args.verbose)
    latest = runs.resolve() / "latest"
    if out_dir.parent == latest.parent:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out_dir.name)
    if result.returncode != 0:
        sys.stderr.write(result.log[-6000:])
        print(f"dora-voice: the dataflow failed (exit {result.returncode}); full log: {out_dir}/dora.log",
              file=sys.stderr)
        cause = first_failure(result.log)
        if cause:  # last, so it is what the user reads: the other nodes' errors follow from it
            print(f"dora-voice: first failure: {cause}", file=sys.stderr)
        return result.returncode
    print_report(result.report_path)
    print(f"\nwhat the listener heard: {audio_out}\ntiming report: {result.report_path}\nwall time: "
          f"{result.wall_s:.1f} s")
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    env = {key: value for key, value in _parse_sets(args.set).items()}
    for name in ("AUDIO_INPUT", "AUDIO_OUTPUT"):
        if os.environ.get(name):
            print(f"dora-voice live: ignoring {name} from the environment (live uses devices)", file=sys.stderr)
        env[name] = ""
    out_dir = Path(args.out_dir or runs_dir() / ("live-" + time.strftime("%Y%m%d-%H%M%S"))).resolve()
    print("dora-voice: live conversation, speak after the models are loaded; Ctrl-C to stop", flush=True)
    try:
        result = run_dataflow(Path(args.dataflow), out_dir, env, timeout_s=args.timeout, stream_output=True)
    except KeyboardInterrupt:
        return 130
    print_report(result.report_path)
    return result.returncode


def cmd_devices(_args: argparse.Namespace) -> int:
    from dora_voice.audio import describe_devices

    print(describe_devices())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dora-voice`` argument parser (defaults point into the package, never into a checkout)."""
    parser = argparse.ArgumentParser(prog="dora-voice", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "answer a recording"), ("live", "talk through the microphone and speaker")):
        p = sub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("--input", default=str(QUICKSTART_RECORDING), help="WAV to answer (any rate, mono or "
                           "stereo; default: a recording shipped with the package, 'go forward ten meters')")
            p.add_argument("--output", help="WAV of what the listener hears (default: <out-dir>/answer.wav)")
        p.add_argument("--dataflow", default=str(VOICE_DATAFLOW),
                       help="dataflow YAML (default: the packaged voice-chatbot.yml)")
        p.add_argument("--out-dir", help="where logs and reports go (default: runs/<timestamp> in the current "
                       "directory)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="env var for every node")
        p.add_argument("--timeout", type=float, default=600 if name == "run" else 24 * 3600,
                       help="stop the dataflow after this many seconds")
        p.add_argument("--verbose", action="store_true", help="show dora's and the nodes' logs as they come")
    sub.add_parser("devices", help="list audio devices")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dora-voice`` console script."""
    from dora_voice.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging("WARNING")
    handlers = {"run": cmd_run, "live": cmd_live, "devices": cmd_devices}
    try:
        sys.exit(handlers[args.command](args))
    except LaunchError as exc:
        sys.exit(f"dora-voice: {exc}")
