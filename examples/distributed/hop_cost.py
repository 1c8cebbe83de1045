"""Cost of a cross-machine edge: one-way latency of a text message and of 1 s of audio, same daemon vs across two.

Runs a three-node dataflow through ``run-local-cluster.sh`` (coordinator and daemons ``edge`` and ``server`` on
this host): ``sender`` on edge sends a one-element string array and a 1 s float32 array at 16 kHz (the size of
``vad/speech`` for one second of speech) alternately every ``--interval-ms``, each stamped with ``time.time_ns()``
in its metadata; ``near`` (on edge, same daemon) and ``far`` (on server, the other daemon) take each message with
``queue_policy: backpressure`` like the pipeline's inputs and record receive time minus send time. Prints p50/p90/
p99 per kind and path, and the extra cost of the cross-machine edge (far minus near). The first second of messages
is left out (dora proves node-to-node routes at start-up).

    python examples/distributed/hop_cost.py --messages 300
    python examples/distributed/hop_cost.py --json hop.json       # also write the figures

The same script is the node (``--role sender|receiver``), so nothing else is needed on the PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("text", "audio_1s")
AUDIO_SAMPLES = 16_000


def _sender(count: int, interval_s: float) -> None:
    import numpy as np
    import pyarrow as pa
    from dora import Node

    node = Node()
    time.sleep(1.0)
    audio = pa.array(np.zeros(AUDIO_SAMPLES, dtype=np.float32))
    for i in range(count):
        for kind in KINDS:
            value = pa.array([f"message {i}: the quick brown fox jumps over the lazy dog"]) if kind == "text" else audio
            node.send_output(kind, value, {"index": i, "sent_ns": time.time_ns()})
            time.sleep(interval_s / 2)


def _receiver(result: Path) -> None:
    from dora import Node

    node = Node()
    seen: dict[str, list[tuple[int, float]]] = {kind: [] for kind in KINDS}
    for event in node:
        if event["type"] == "INPUT" and event["id"] in seen:
            now = time.time_ns()
            seen[event["id"]].append((int(event["metadata"]["index"]), (now - event["metadata"]["sent_ns"]) / 1e6))
    result.write_text(json.dumps(seen))


def _yaml(script: Path, results: Path, count: int, interval_ms: float) -> str:
    python = sys.executable
    inputs = "".join(f"      {k}: {{source: sender/{k}, queue_size: 1000, queue_policy: backpressure}}\n" for k in KINDS)
    text = ("nodes:\n"
            f"  - id: sender\n    path: {python}\n    args: -u {script} --role sender --messages {count} "
            f"--interval-ms {interval_ms}\n    outputs: [{', '.join(KINDS)}]\n    deploy: {{machine: edge}}\n")
    for name, machine in (("near", "edge"), ("far", "server")):
        text += (f"  - id: {name}\n    path: {python}\n    args: -u {script} --role receiver --result "
                 f"{results / (name + '.json')}\n    inputs:\n{inputs}    deploy: {{machine: {machine}}}\n")
    return text


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(results: dict[str, dict[str, list]], skip_first: int) -> dict[str, dict[str, float]]:
    """``{path: {kind: [(index, latency_ms), ...]}}`` -> ``{"near/text": {"p50": ..., ...}, ...}`` (ms)."""
    figures = {}
    for path, kinds in results.items():
        for kind, samples in kinds.items():
            values = [ms for index, ms in samples if index >= skip_first]
            if values:
                figures[f"{path}/{kind}"] = {"n": len(values), **{f"p{q}": round(_percentile(values, q), 3)
                                                                 for q in (50, 90, 99)}}
    for kind in KINDS:
        near, far = figures.get(f"near/{kind}"), figures.get(f"far/{kind}")
        if near and far:
            figures[f"extra/{kind}"] = {f"p{q}": round(far[f"p{q}"] - near[f"p{q}"], 3) for q in (50, 90, 99)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("run", "sender", "receiver"), default="run", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=300, help="messages of each kind (default 300)")
    parser.add_argument("--interval-ms", type=float, default=40.0, help="between two messages of a kind (default 40)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.role == "sender":
        _sender(args.messages, args.interval_ms / 1000)
        return 0
    if args.role == "receiver":
        _receiver(args.result)
        return 0

    with tempfile.TemporaryDirectory(prefix="dora-voice-hop-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "hop.yml").write_text(_yaml(Path(__file__).resolve(), tmp_path, args.messages, args.interval_ms))
        proc = subprocess.run(["bash", str(HERE / "run-local-cluster.sh"), "--dataflow", str(tmp_path / "hop.yml"),
                               "--workdir", str(tmp_path / "cluster"), "--timeout", "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:])
            return proc.returncode
        results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("near", "far")}
    skip = int(1000 / args.interval_ms) + 1
    figures = summarize(results, skip)
    print(f"one-way latency, ms ({args.messages - skip} messages of each kind after the first second; "
          f"near = same daemon, far = the other daemon)")
    print(f"{'path/kind':<18} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8}")
    for key, row in figures.items():
        print(f"{key:<18} {row.get('n', ''):>5} {row['p50']:>8.2f} {row['p90']:>8.2f} {row['p99']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RUST_BACKTRACE", "0")
    sys.exit(main())
