"""A dora node for the monitor's end-to-end tests: sends the scripted turns of ``monitor_scenarios`` as timing events.

Each event leaves on the output named after the node that would stamp it (``vad``, ``asr``, ``text_input``, ``llm``,
``tts``, ``speaker``), in timestamp order, paced at ``SENDER_PACE`` times the scripted gaps.

Environment:
    SENDER_TURNS: comma-separated turn ids to send (default ``0,1,2``); input errors (turn -1) are always sent.
    SENDER_PACE: pacing factor (default 0.02: the 23 s script takes about 0.5 s).
    SENDER_BAD_MESSAGE: ``true`` to also send one malformed timing message (an ``llm_chunk`` without
        ``segment_index``) before the script.
    SENDER_START_FILE: wait (up to 60 s) until this file exists before sending (lets a dynamic node attach first).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dora import Node

import monitor_scenarios
from dora_voice.schema import TimingEvent, TimingKind


def main() -> None:
    turns = {int(t) for t in os.environ.get("SENDER_TURNS", "0,1,2").split(",")}
    pace = float(os.environ.get("SENDER_PACE", "0.02"))
    start_file = os.environ.get("SENDER_START_FILE")
    node = Node()
    if start_file:
        deadline = time.monotonic() + 60
        while not Path(start_file).exists():
            if time.monotonic() > deadline:
                sys.exit(f"sender: {start_file} did not appear within 60 s")
            time.sleep(0.05)
    if os.environ.get("SENDER_BAD_MESSAGE", "").lower() == "true":
        bad = TimingEvent(kind=TimingKind.LLM_CHUNK, node="llm", session_id=monitor_scenarios.SESSION, turn_id=0,
                          t_ns=monitor_scenarios.BASE_NS, fields={"tokens": 3})
        node.send_output("llm", *bad.encode())
    events = [e for e in monitor_scenarios.all_turns() if e.turn_id in turns or e.turn_id < 0]
    previous = events[0].t_ns if events else 0
    for event in events:
        time.sleep(max(0.0, (event.t_ns - previous) / 1e9 * pace))
        previous = event.t_ns
        value, meta = event.encode()
        node.send_output(event.node.replace("-", "_"), value, meta)


if __name__ == "__main__":
    main()
