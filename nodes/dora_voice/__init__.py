"""dora-voice: a low-latency, fully offline, streaming voice assistant built as a dora-rs dataflow."""

__version__ = "0.1.0"
