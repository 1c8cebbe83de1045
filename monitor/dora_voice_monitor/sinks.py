"""Where the monitor writes besides stdout: the JSONL turn report and its session record, per-turn timeline PNGs and
a WAV of TTS audio."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from dora_voice.schema import AudioFragment

from dora_voice_monitor.collector import TurnRecord

logger = logging.getLogger(__name__)


class JsonlWriter:
    """Appends one JSON object per turn to a file and flushes after each, so a crash loses no completed turn.

    Args:
        path: the JSONL file; created (parents too) and truncated on open.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and flush."""
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._file.closed:
            self._file.close()


def session_path(report: str | Path) -> Path:
    """Where the monitor writes what a session had besides its turns, beside the JSONL report ``report``:
    ``timing.jsonl`` -> ``timing.session.json``."""
    report = Path(report)
    return report.with_name(report.stem + ".session.json")


def write_session(report: str | Path, unanswered_turns: Sequence[int], input_errors: Sequence[str]) -> None:
    """Write the session record beside ``report`` (see :func:`session_path`): ``{"unanswered_turns": [turn ids with
    speech but no transcript], "input_errors": ["node: detail", ...]}``."""
    session_path(report).write_text(json.dumps({"unanswered_turns": list(unanswered_turns),
                                                "input_errors": list(input_errors)}, ensure_ascii=False) + "\n",
                                    encoding="utf-8")


def read_session(report: str | Path) -> tuple[list[int], list[str]]:
    """``(unanswered_turns, input_errors)`` from the session record beside ``report``; empty lists when there is
    none (a run that did not end cleanly, or a monitor without ``TIMING_REPORT``)."""
    path = session_path(report)
    if not path.exists():
        return [], []
    record = json.loads(path.read_text(encoding="utf-8"))
    return [int(t) for t in record.get("unanswered_turns", [])], [str(e) for e in record.get("input_errors", [])]


class PlotTarget:
    """Where each turn's timeline PNG goes.

    Args:
        target: a directory (``turn_<id>.png`` inside it, one per turn) or a ``.png`` path (the first turn drawn goes
            there, later turns to ``<stem>_turn<id>.png`` beside it).
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self._first = True

    def path_for(self, turn: TurnRecord) -> Path:
        """The PNG path for ``turn`` (call once per turn, in the order the turns are drawn)."""
        if self.target.suffix.lower() != ".png":
            return self.target / f"turn_{turn.turn_id:03d}.png"
        if self._first:
            self._first = False
            return self.target
        return self.target.with_name(f"{self.target.stem}_turn{turn.turn_id:03d}.png")

    def draw(self, turn: TurnRecord) -> Path | None:
        """Plot ``turn``; a turn that cannot be drawn is logged and skipped (returns ``None``)."""
        from dora_voice_monitor.plot import plot_turn_timeline  # matplotlib loads only when plots are asked for

        try:
            return plot_turn_timeline(turn, self.path_for(turn))
        except (ValueError, OSError) as exc:
            logger.warning("timeline of turn %d not drawn: %s", turn.turn_id, exc)
            return None


class WavCollector:
    """Writes every TTS audio fragment it is given, in arrival order, to one mono WAV (float32 in, 16-bit PCM out).

    The file opens at the first non-empty fragment, at that fragment's sample rate; fragments at another rate are
    skipped with a warning (the pipeline has one TTS voice, hence one rate).

    Args:
        path: the WAV file to write (parents created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sample_rate: int | None = None
        self.samples_written = 0
        self._file = None

    def write(self, fragment: AudioFragment) -> None:
        """Append ``fragment.samples``."""
        import soundfile

        if fragment.samples.size == 0:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.sample_rate = fragment.sample_rate
            self._file = soundfile.SoundFile(self.path, "w", samplerate=fragment.sample_rate, channels=1,
                                             subtype="PCM_16")
        if fragment.sample_rate != self.sample_rate:
            logger.warning("audio fragment at %d Hz skipped: %s is written at %d Hz", fragment.sample_rate,
                           self.path, self.sample_rate)
            return
        self._file.write(np.clip(fragment.samples, -1.0, 1.0))
        self.samples_written += fragment.samples.size

    @property
    def seconds(self) -> float:
        """Audio written so far (s)."""
        return self.samples_written / self.sample_rate if self.sample_rate else 0.0

    def close(self) -> None:
        """Finish the WAV header (idempotent)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
            logger.info("wrote %.2f s of TTS audio to %s", self.seconds, self.path)
