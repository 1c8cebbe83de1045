"""dora-voice monitor: turns the pipeline's timing events into per-turn latency records, tables and timelines.

Layers (each usable on its own):
    * :mod:`.collector`: :class:`~.collector.TimingCollector`, a pure class fed ``TimingEvent``s that builds typed
      :class:`~.collector.TurnRecord`s (no dora, no I/O).
    * :mod:`.report`: plain-text rendering (live row, session summary, TIMELINE, SUMMARY, CHUNK BREAKDOWN).
    * :mod:`.plot`: one timeline PNG per turn (matplotlib, Agg).
    * :mod:`.sinks`: the JSONL report and the WAV of all TTS audio.
    * :mod:`.node`: the ``dora-voice-monitor`` dataflow node (:class:`~.node.MonitorCore` + ``main``).
    * :mod:`.cli`: ``monitor_streaming_timing``, the same core attached to a running dataflow as a dynamic node.
"""
