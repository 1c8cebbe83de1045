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
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from dora_voice_tools.launcher import LaunchError, failure_excerpt, first_failure, read_report, run_dataflow
from dora_voice_tools.resources import QUICKSTART_RECORDING, VOICE_DATAFLOW, runs_dir

logger = logging.getLogger(__name__)

QUIET_DBFS = -30.0
"""A recording whose peak is below this (dBFS) is called quiet when no speech was found in it."""


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def print_report(report: Path) -> tuple[int, int]:
    """Print the per-turn table and the summary (as the monitor printed them) from a JSONL timing report and the
    monitor's session record beside it; return ``(turns, utterances without a transcript)``."""
    from dora_voice_monitor.collector import TurnRecord, summarize
    from dora_voice_monitor.report import live_header, live_row, session_summary
    from dora_voice_monitor.sinks import read_session

    turns = [TurnRecord.from_json(record) for record in read_report(report)]
    unanswered, errors = read_session(report)
    print(live_header())
    for turn in turns:
        print(live_row(turn))
    print()
    print(session_summary(summarize(turns, errors, unanswered)))
    return len(turns), len(unanswered)


def cmd_run(args: argparse.Namespace) -> int:
    runs = runs_dir()
    out_dir = Path(args.out_dir or runs / time.strftime("%Y%m%d-%H%M%S")).resolve()
    audio_in = Path(args.input).expanduser().resolve()
    duration_s, peak_dbfs = check_input(audio_in)
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
        print(failure_excerpt(result.log), file=sys.stderr)
        print(f"dora-voice: the dataflow failed (exit {result.returncode}); full log: {out_dir}/dora.log",
              file=sys.stderr)
        cause = first_failure(result.log)
        if cause:  # last, so it is what the user reads: the other nodes' errors follow from it
            print(f"dora-voice: first failure: {cause}", file=sys.stderr)
        return result.returncode
    turns, unanswered = print_report(result.report_path)
    if unanswered:
        print(f"\n{unanswered} utterance(s) got no transcript: Whisper found no words it was confident of (the asr "
              f"lines of {out_dir}/dora.log show what it heard). For noisy or telephone-band (8 kHz) recordings, a "
              f"larger ASR model helps: dora-voice-models install whisper-base, then --set ASR_MODEL=whisper-base")
    elif turns == 0:
        hint = (": a recording this quiet may need a lower VAD_THRESHOLD (--set VAD_THRESHOLD=0.3), or a louder "
                "export" if peak_dbfs < QUIET_DBFS else "")
        print(f"\nno turn: the VAD heard no speech in {audio_in} ({duration_s:.2f} s of audio, peak "
              f"{peak_dbfs:.0f} dBFS){hint}")
    print(f"\nwhat the listener heard: {audio_out}\ntiming report: {result.report_path}\nwall time: "
          f"{result.wall_s:.1f} s")
    return 0


def check_input(path: Path) -> tuple[float, float]:
    """Check ``--input`` as the mic node will (:func:`dora_voice.nodes.mic.check_input_samples`), before dora
    starts, so that a file the mic cannot replay stops the command at once with one line naming it.

    Returns:
        ``(duration_s, peak_dbfs)`` of the recording (the peak of its mono mix, dB relative to full scale).

    Raises:
        SystemExit: the file is missing, cannot be decoded as audio, or holds no usable samples.
    """
    from dora_voice import audio
    from dora_voice.nodes.mic import check_input_samples

    try:
        samples, rate = audio.read_wav_mono(path)
        samples = check_input_samples(path, samples, rate)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"dora-voice: --input: {exc}") from None
    peak = float(np.max(np.abs(samples)))
    return samples.shape[0] / rate, 20 * math.log10(peak) if peak > 0 else float("-inf")


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
