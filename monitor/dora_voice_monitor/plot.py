"""Timeline PNG of one turn: where the time between the end of speech and the last sample went.

One horizontal time axis in ms from :attr:`~dora_voice_monitor.collector.TurnRecord.origin_ns` (the end of speech for
voice turns, ``llm_start`` for typed ones). One row for the user's input (speech, ASR) and one row per chunk, each
with three bars: LLM generation (the chunk's ``llm_gen_ms`` before it was emitted), TTS (text queued, then
synthesis, with a tick at the first audio fragment) and playback (estimated from each segment's end and audio
length). Vertical markers: speech end, LLM start, first token, first audio played, barge-in. Uses matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from dora_voice_monitor.collector import TurnRecord
from dora_voice_monitor.report import truncate

logger = logging.getLogger(__name__)

_COLOURS = {"speech": "#9e9e9e", "asr": "#8d6e63", "llm": "#1f77b4", "tts_wait": "#ffd8b0", "tts": "#ff7f0e",
            "play": "#2ca02c"}
_BAR_H = 0.24  # bar height, in row units


def plot_turn_timeline(turn: TurnRecord, path: str | Path) -> Path:
    """Draw the turn's timeline and save it as a PNG.

    Args:
        turn: a built turn record.
        path: where to write the PNG; parent folders are created.

    Returns:
        The path written.

    Raises:
        ValueError: the turn has no timestamp to place on an axis (no ``llm_start`` and no speech end).
    """
    origin = turn.origin_ns
    if origin is None:
        raise ValueError(f"turn {turn.turn_id} has neither speech end nor llm_start: nothing to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def ms(t_ns: int | None) -> float | None:
        return None if t_ns is None else (t_ns - origin) / 1e6

    def bar(ax, row: float, offset: float, start_ns: int | None, end_ns: int | None, colour: str) -> None:
        start, end = ms(start_ns), ms(end_ns)
        if start is not None and end is not None and end >= start:
            ax.broken_barh([(start, max(end - start, 0.5))], (row + offset - _BAR_H / 2, _BAR_H),
                           facecolors=colour, edgecolor="none")

    rows = len(turn.chunks) + 1
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.55 * rows), dpi=100)
    labels = ["input"]
    # Row 0: the user's speech and the ASR.
    bar(ax, 0, 0, turn.speech_start_ns, turn.speech_end_ns, _COLOURS["speech"])
    bar(ax, 0, 0, turn.speech_end_ns, turn.transcript_ns if turn.source == "voice" else None, _COLOURS["asr"])
    if turn.source != "voice" and turn.transcript_ns is not None:
        ax.plot([ms(turn.transcript_ns)], [0], marker="o", color=_COLOURS["speech"])
    for row, chunk in enumerate(turn.chunks, start=1):
        labels.append(f"#{chunk.number} {truncate(chunk.text, 24)}")
        gen_start = (None if chunk.llm_emit_ns is None or chunk.llm_gen_ms is None
                     else chunk.llm_emit_ns - int(chunk.llm_gen_ms * 1e6))
        bar(ax, row, -_BAR_H, gen_start, chunk.llm_emit_ns, _COLOURS["llm"])
        synth_start = (None if chunk.tts_done_ns is None or chunk.tts_gen_ms is None
                       else max(chunk.tts_done_ns - int(chunk.tts_gen_ms * 1e6), chunk.tts_start_ns or 0))
        bar(ax, row, 0, chunk.tts_start_ns, synth_start, _COLOURS["tts_wait"])  # text queued at the TTS
        bar(ax, row, 0, synth_start, chunk.tts_done_ns, _COLOURS["tts"])
        if chunk.tts_first_fragment_ns is not None:
            ax.plot([ms(chunk.tts_first_fragment_ns)], [row], marker="|", markersize=12, color="black")
        bar(ax, row, _BAR_H, chunk.play_start_ns, chunk.play_end_ns, _COLOURS["play"])

    markers = [("speech end", turn.speech_end_ns, "#616161", "--"),
               ("LLM start", turn.llm_start_ns, "#616161", ":"),
               ("first token", turn.llm_first_token_ns, _COLOURS["llm"], ":"),
               ("first audio", turn.playback_started_ns, _COLOURS["play"], "--"),
               ("barge-in", turn.barge_in_ns, "#d62728", "-")]
    label_y = 0.99
    for name, t_ns, colour, style in markers:
        x = ms(t_ns)
        if x is not None:
            ax.axvline(x, color=colour, linestyle=style, linewidth=1.2)
            # labels stack downwards so that close markers do not print over each other
            ax.text(x, label_y, f" {name} {x:.0f} ms", transform=ax.get_xaxis_transform(), fontsize=8,
                    color=colour, va="top", ha="left")
            label_y -= 0.07

    ax.set_yticks(range(rows), labels, fontsize=8)
    ax.set_ylim(rows - 0.5, -1.6)  # first row at the top, room above it for the marker labels
    origin_name = "speech end" if turn.speech_end_ns is not None else "LLM start"
    ax.set_xlabel(f"ms from {origin_name}")
    ax.grid(axis="x", alpha=0.3)
    parts = []
    if turn.first_audio_ms is not None:
        parts.append(f"first audio {turn.first_audio_ms:.0f} ms after speech end")
    if turn.llm_start_to_first_audio_ms is not None:
        parts.append(f"{turn.llm_start_to_first_audio_ms:.0f} ms after LLM start")
    parts.append(f"{turn.segments} chunks, {turn.segments_played} of {turn.tts_segments} segments played"
                 + (", interrupted" if turn.interrupted else ""))
    title = f"turn {turn.turn_id} ({turn.source}): " + "; ".join(parts)
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[Patch(color=_COLOURS[k], label=label) for k, label in (
        ("speech", "speech"), ("asr", "ASR"), ("llm", "LLM generation"), ("tts_wait", "TTS queue"),
        ("tts", "TTS synthesis (| first audio)"), ("play", "playback"))],
        loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / rows), fontsize=8, ncol=6,
        frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    logger.debug("wrote timeline of turn %d to %s", turn.turn_id, path)
    return path
