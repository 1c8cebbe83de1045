"""A dora node for the monitor's end-to-end tests: sends the scripted turns of ``monitor_scenarios`` as timing events.

Each event leaves on the output named after the node that would stamp it (``vad``, ``asr``, ``text_input``, ``llm``,
``tts``, ``speaker``), in timestamp order, paced at ``SENDER_PACE`` times the scripted gaps.

Environment:
    SENDER_TURNS: comma-separated turn ids to send (default ``0,1,2,3``); input errors (turn -1) are always sent.
    SENDER_PACE: pacing factor (default 0.02: the 23 s script takes about 0.5 s).
    SENDER_BAD_MESSAGE: ``true`` to also send one malformed timing message (an ``llm_chunk`` without
        ``segment_index``) before the script.
    SENDER_AUDIO: ``true`` to send, on output ``audio``, one AudioFragment per ``tts_segment_done`` holding
        ``audio_ms`` of a 16 kHz tone.
    SENDER_START_FILE: wait (up to 60 s) until this file exists before sending (lets a dynamic node attach first).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import monitor_scenarios
import numpy as np
from dora import Node
from dora_voice.schema import PIPELINE_SAMPLE_RATE_HZ, AudioFragment, Key, TimingEvent, TimingKind


def main() -> None:
    turns = {int(t) for t in os.environ.get("SENDER_TURNS", "0,1,2,3").split(",")}
    pace = float(os.environ.get("SENDER_PACE", "0.02"))
    start_file = os.environ.get("SENDER_START_FILE")
    send_audio = os.environ.get("SENDER_AUDIO", "").lower() == "true"
    node = Node()
    if start_file:
        deadline = time.monotonic() + 60
        while not Path(start_file).exists():
            if time.monotonic() > deadline:
                sys.exit(f"sender: {start_file} did not appear within 60 s")
            time.sleep(0.05)
    if os.environ.get("SENDER_BAD_MESSAGE", "").lower() == "true":
        value, meta = TimingEvent(kind=TimingKind.LLM_CHUNK, node="llm", session_id=monitor_scenarios.SESSION,
                                  turn_id=0, t_ns=monitor_scenarios.BASE_NS,
                                  fields={Key.SEGMENT_INDEX: 0, Key.TOKENS: 3}).encode()
        del meta[Key.SEGMENT_INDEX]  # a malformed message, as a sender that does not validate would send it
        node.send_output("llm", value, meta)
    events = [e for e in monitor_scenarios.all_turns() if e.turn_id in turns or e.turn_id < 0]
    previous = events[0].t_ns if events else 0
    for event in events:
        time.sleep(max(0.0, (event.t_ns - previous) / 1e9 * pace))
        previous = event.t_ns
        value, meta = event.encode()
        node.send_output(event.node.replace("-", "_"), value, meta)
        if send_audio and event.kind is TimingKind.TTS_SEGMENT_DONE:
            node.send_output("audio", *_fragment(event).encode())


def _fragment(done: TimingEvent) -> AudioFragment:
    """One fragment holding the segment's whole audio: a 220 Hz tone of ``audio_ms`` at 16 kHz."""
    n = round(done.fields[Key.AUDIO_MS] * PIPELINE_SAMPLE_RATE_HZ / 1000)
    samples = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / PIPELINE_SAMPLE_RATE_HZ)).astype(np.float32)
    return AudioFragment(samples=samples, sample_rate=PIPELINE_SAMPLE_RATE_HZ, session_id=done.session_id,
                         turn_id=done.turn_id, segment_index=done.fields[Key.SEGMENT_INDEX], fragment_index=0,
                         text_segment_index=0, is_last_fragment=True, is_final=False, is_streaming=True,
                         t_ns=done.t_ns)


if __name__ == "__main__":
    main()
