"""Plain-text rendering of turn records: the live per-turn table, the session summary, and the verbose per-turn
TIMELINE, SUMMARY and CHUNK BREAKDOWN blocks (formats and names from the chunked LLM + TTS integration-test note).

Every function returns a string (lines joined by ``\\n``, no trailing newline); the node and the CLI decide where it
goes. ASCII only: no ANSI colour, no emoji, no box-drawing characters. Durations print as whole ms; ``-`` marks a
value that is unknown.
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

from dora_voice_monitor.collector import ChunkRecord, EchoSummary, SessionSummary, TurnRecord

RULE_WIDTH = 97
"""Width of the ``=`` and ``-`` rules (characters)."""

_LIVE_COLUMNS = (  # (header, width)
    ("turn", 5), ("src", 6), ("asr_latency_ms", 15), ("llm_ttft_ms", 12), ("tts_ttfb_ms", 12),
    ("first_audio_ms", 15), ("llm_start_to_first_audio_ms", 28), ("chunks", 7), ("segments", 9),
)
_CHUNK_COLUMNS = (  # (header, width): the CHUNK BREAKDOWN table
    ("#", 4), ("Tokens", 8), ("LLM TTFT", 10), ("LLM Gen", 10), ("TTS TTFB", 10), ("TTS Gen", 10), ("Audio", 10),
    ("Combined", 10), ("Text", 0),
)


def fmt_ms(value: float | None) -> str:
    """Whole milliseconds, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.0f}"


def fmt_num(value: float | None, digits: int = 1) -> str:
    """A number with ``digits`` decimals (ints as-is), or ``-`` when unknown."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def truncate(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with ``...`` when longer."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def clock(t_ns: int) -> str:
    """``HH:MM:SS.mmm`` local time of a wall-clock ns timestamp."""
    moment = _dt.datetime.fromtimestamp(t_ns / 1e9)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _row(cells: Sequence[str], columns: Sequence[tuple[str, int]]) -> str:
    parts = [cell.ljust(width) if width else cell for cell, (_h, width) in zip(cells, columns)]
    return "".join(parts).rstrip()


# --------------------------------------------------------------------------------------------------------------
# Live table


def live_header() -> str:
    """Header of the live per-turn table (print once, before the first row)."""
    header = _row([h for h, _w in _LIVE_COLUMNS], _LIVE_COLUMNS) + "  notes / transcript -> reply"
    return header + "\n" + "-" * len(header)


def _notes(turn: TurnRecord) -> list[str]:
    notes = []
    if not turn.complete:
        notes.append("INCOMPLETE")
    if turn.interrupted:
        notes.append(f"barge-in {fmt_ms(turn.barge_in_ms)}ms cancelled={turn.segments_cancelled}")
    if turn.pauses_resumed:
        notes.append(f"paused={turn.pauses_resumed} ({fmt_ms(turn.pause_ms)}ms, resumed)")
    if turn.segments_lost:
        notes.append(f"LOST={turn.segments_lost}")
    if turn.underruns:
        notes.append(f"underruns={turn.underruns} ({fmt_ms(turn.underrun_ms)}ms)")
    if turn.input_errors:
        notes.append(f"input_errors={turn.input_errors}")
    if turn.eot_rule is not None:
        notes.append(f"eot={turn.eot_rule}" + (f" p={turn.eot_probability:.2f}" if turn.eot_probability is not None
                                                else ""))
    for name in ("speculation", "speculation_cancelled", "llm_speculation", "llm_speculation_cancelled",
                 "tts_speculation_cancelled", "prefilled_words"):
        value = getattr(turn, name)
        if value in ("hit", "miss") or (isinstance(value, int) and value):  # a hit or miss, or a count above 0
            notes.append(f"{name}={value}")
    return notes


_V2V_LABELS = {"v2v_eot_ms": "end of turn", "v2v_asr_ms": "ASR", "v2v_llm_ttft_ms": "LLM TTFT",
               "v2v_first_chunk_ms": "first chunk", "v2v_tts_ms": "TTS", "v2v_playback_ms": "playback"}


def v2v_breakdown(turn: TurnRecord) -> str | None:
    """``first audio 650 ms = end of turn 230 + ASR 80 + ...``: voice-to-voice as the sum of its parts (voice turns
    with a first audio only; ``None`` otherwise)."""
    if turn.first_audio_ms is None:
        return None
    parts = " + ".join(f"{_V2V_LABELS[name]} {fmt_ms(value)}" for name, value in turn.v2v_parts.items())
    return f"first audio {fmt_ms(turn.first_audio_ms)}ms = {parts}"


def live_row(turn: TurnRecord, *, text_width: int = 36) -> str:
    """One line per completed turn: the headline latencies (ms), segments, transcript and reply.

    ``chunks`` is the LLM chunks produced; ``segments`` is audio segments synthesized/played (the TTS may split a
    chunk into several segments). Notes flag incomplete and interrupted turns, lost segments, underruns and input
    errors.
    """
    cells = [
        str(turn.turn_id), turn.source, fmt_ms(turn.asr_latency_ms), fmt_ms(turn.llm_ttft_ms),
        fmt_ms(turn.tts_ttfb_ms), fmt_ms(turn.first_audio_ms), fmt_ms(turn.llm_start_to_first_audio_ms),
        str(turn.segments), f"{turn.tts_segments}/{turn.segments_played}",
    ]
    notes = " ".join(f"[{n}]" for n in _notes(turn))
    text = f'"{truncate(turn.transcript, text_width)}" -> "{truncate(turn.reply, text_width)}"'
    return _row(cells, _LIVE_COLUMNS) + "  " + (notes + " " if notes else "") + text


# --------------------------------------------------------------------------------------------------------------
# Session summary


def session_summary(summary: SessionSummary) -> str:
    """The end-of-run summary: p50 / p90 / mean of every metric over turns, segment accounting, input errors."""
    lines = [
        "=" * RULE_WIDTH,
        (f"SESSION SUMMARY: {summary.turns} turn{'' if summary.turns == 1 else 's'} "
         f"({summary.incomplete_turns} incomplete, {summary.interrupted_turns} interrupted)"),
        "=" * RULE_WIDTH,
        f"{'metric':<30}{'n':>4}{'p50':>10}{'p90':>10}{'mean':>10}",
    ]
    for m in summary.metrics:
        digits = 3 if m.name == "rtf" else 2 if m.name in ("audio_s", "wall_s") else 1
        lines.append(f"{m.name:<30}{m.n:>4}{fmt_num(m.p50, digits):>10}{fmt_num(m.p90, digits):>10}"
                     f"{fmt_num(m.mean, digits):>10}")
    lines += [
        "",
        (f"segments: produced {summary.segments} (LLM chunks), synthesized {summary.tts_segments}, "
         f"played {summary.segments_played}, cancelled {summary.segments_cancelled}, lost {summary.segments_lost}"),
        f"underruns: {summary.underruns}",
        f"utterances without a transcript: {len(summary.unanswered_turns)}"
        + (f" (turns {', '.join(map(str, summary.unanswered_turns))})" if summary.unanswered_turns else ""),
        f"input errors: {len(summary.input_errors)}",
    ]
    shown = summary.input_errors[:20]
    lines += [f"  {truncate(detail, RULE_WIDTH - 2)}" for detail in shown]
    if len(summary.input_errors) > len(shown):
        lines.append(f"  ... and {len(summary.input_errors) - len(shown)} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Verbose, per turn


def timeline(turn: TurnRecord) -> str:
    """TIMELINE: every event of the turn in time order, ``[HH:MM:SS.mmm] WHO: what``, with the derived latencies."""
    items: list[tuple[int, int, str]] = []  # (t_ns, order, text): order keeps same-instant lines stable

    def add(t_ns: int | None, text: str) -> None:
        if t_ns is not None:
            items.append((t_ns, len(items), text))

    add(turn.speech_start_ns, "VAD: speech started")
    add(turn.speech_end_ns, "VAD: speech ended (last voiced sample)")
    rule = "" if turn.eot_rule is None else f", {turn.eot_rule}" + (
        f" P(complete)={turn.eot_probability:.2f}" if turn.eot_probability is not None else "")
    add(turn.eot_detected_ns, f"VAD: end of turn detected (+{fmt_ms(turn.eot_delay_ms)}ms{rule})")
    if turn.source == "voice":
        add(turn.transcript_ns, f'ASR: "{truncate(turn.transcript, 60)}" (ASR latency: '
                                f"{fmt_ms(turn.asr_latency_ms)}ms)")
    else:
        add(turn.transcript_ns, f'TEXT: "{truncate(turn.transcript, 60)}"')
    add(turn.llm_start_ns, "LLM: start (prompt submitted)")
    add(turn.llm_first_token_ns, f"LLM: first token (LLM TTFT: {fmt_ms(turn.llm_ttft_ms)}ms)")
    for c in turn.chunks:
        add(c.llm_emit_ns, f"LLM #{c.number}: chunk emitted, {fmt_num(c.tokens)} tokens, {fmt_ms(c.llm_gen_ms)}ms")
        words = len(c.text.split())
        add(c.tts_start_ns, f'TTS #{c.number}: sending "{truncate(c.text, 40)}" ({words} words)')
        add(c.tts_first_fragment_ns, f"TTS #{c.number}: first audio (TTS TTFB: {fmt_ms(c.tts_ttfb_ms)}ms, "
                                     f"Combined TTFB: {fmt_ms(c.combined_ms)}ms)")
        add(c.tts_done_ns, f"TTS #{c.number}: segment complete ({fmt_ms(c.tts_gen_ms)}ms, "
                           f"{fmt_ms(c.audio_ms)}ms audio)")
        add(c.play_end_ns, f"SPEAKER #{c.number}: played ({fmt_ms(c.played_audio_ms)}ms audio)")
    add(turn.llm_done_ns, f"LLM: done, {fmt_num(turn.llm_tokens)} tokens, {turn.segments} chunks "
                          f"({fmt_ms(turn.llm_total_ms)}ms)")
    add(turn.tts_done_ns, f"TTS: done, {turn.tts_segments} segments")
    v2v = f"first audio {fmt_ms(turn.first_audio_ms)}ms after speech end, " if turn.first_audio_ms is not None else ""
    add(turn.playback_started_ns, f"SPEAKER: playback started ({v2v}"
                                  f"{fmt_ms(turn.llm_start_to_first_audio_ms)}ms after LLM start)")
    add(turn.barge_in_ns, f"SPEAKER: barge-in, {turn.segments_cancelled} segments cancelled "
                          f"({fmt_ms(turn.barge_in_ms)}ms)")
    add(turn.turn_played_ns, f"SPEAKER: turn played ({turn.segments_played} segments, "
                             f"{fmt_num(turn.underruns)} underruns, {fmt_ms(turn.underrun_ms)}ms underrun)")
    lines = ["-" * RULE_WIDTH, f"TIMELINE (turn {turn.turn_id})", "-" * RULE_WIDTH]
    lines += [f"[{clock(t)}] {text}" for t, _o, text in sorted(items)]
    breakdown = v2v_breakdown(turn)
    if breakdown is not None:
        lines.append(breakdown)
    return "\n".join(lines)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def turn_summary(turn: TurnRecord) -> str:
    """SUMMARY: totals, first chunk against the averages over all chunks, wall time against audio time."""
    chunks = turn.chunks
    first: ChunkRecord | None = chunks[0] if chunks else None
    tokens = turn.llm_tokens if turn.llm_tokens is not None else sum(c.tokens or 0 for c in chunks)

    def line(label: str, value: str, indent: int = 2) -> str:
        return " " * indent + f"{label + ':':<{23 - indent}}{value}"

    synth_s = None if turn.rtf is None or turn.audio_s is None else turn.rtf * turn.audio_s
    speed = (f"{1 / turn.rtf:.1f}x faster than real-time" if turn.rtf else "-")
    lines = [
        "=" * RULE_WIDTH, f"SUMMARY (turn {turn.turn_id})", "=" * RULE_WIDTH,
        line("Total chunks", str(len(chunks))),
        line("Total LLM tokens", fmt_num(tokens)),
        line("Total audio", f"{fmt_num(turn.audio_s, 2)} seconds"),
        line("Total wall time", f"{fmt_num(turn.wall_s, 2)} seconds (LLM start to last sample played)"),
        line("TTS synthesis", f"{fmt_num(synth_s, 2)} seconds for {fmt_num(turn.audio_s, 2)} seconds of audio "
                              f"(RTF {fmt_num(turn.rtf, 3)}, {speed})"),
        "",
        "  First chunk:",
        line("LLM TTFT", f"{fmt_ms(first.llm_ttft_ms if first else None)}ms", 4),
        line("LLM gen time", f"{fmt_ms(first.llm_gen_ms if first else None)}ms", 4),
        line("TTS TTFB", f"{fmt_ms(first.tts_ttfb_ms if first else None)}ms", 4),
        line("TTS gen time", f"{fmt_ms(first.tts_gen_ms if first else None)}ms", 4),
        line("Combined TTFB", f"{fmt_ms(first.combined_ms if first else None)}ms", 4),
        line("Audio duration", f"{fmt_ms(first.audio_ms if first else None)}ms", 4),
        "",
        "  Averages (all chunks):",
        line("Avg LLM gen", f"{fmt_ms(_mean([c.llm_gen_ms for c in chunks]))}ms", 4),
        line("Avg TTS TTFB", f"{fmt_ms(_mean([c.tts_ttfb_ms for c in chunks]))}ms", 4),
        line("Avg TTS gen", f"{fmt_ms(_mean([c.tts_gen_ms for c in chunks]))}ms", 4),
        line("Avg Combined TTFB", f"{fmt_ms(_mean([c.combined_ms for c in chunks]))}ms", 4),
        "  (LLM TTFT exists for the first chunk only: later chunks stream on without a new request.)",
    ]
    return "\n".join(lines)


def chunk_breakdown(turn: TurnRecord, *, text_width: int = 40) -> str:
    """CHUNK BREAKDOWN: one row per chunk (#, Tokens, LLM TTFT, LLM Gen, TTS TTFB, TTS Gen, Audio, Combined, Text),
    durations in ms."""
    lines = ["CHUNK BREAKDOWN:", "-" * RULE_WIDTH, _row([h for h, _w in _CHUNK_COLUMNS], _CHUNK_COLUMNS),
             "-" * RULE_WIDTH]
    for c in turn.chunks:
        lines.append(_row([
            str(c.number), fmt_num(c.tokens), fmt_ms(c.llm_ttft_ms), fmt_ms(c.llm_gen_ms), fmt_ms(c.tts_ttfb_ms),
            fmt_ms(c.tts_gen_ms), fmt_ms(c.audio_ms), fmt_ms(c.combined_ms), truncate(c.text, text_width),
        ], _CHUNK_COLUMNS))
    return "\n".join(lines)


def verbose_turn(turn: TurnRecord) -> str:
    """TIMELINE, SUMMARY and CHUNK BREAKDOWN of one turn, in that order."""
    return "\n\n".join([timeline(turn), turn_summary(turn), chunk_breakdown(turn)])


def echo_summary(echo: EchoSummary | None) -> str:
    """One line on echo cancellation for the session summary ('' without an aec node at work)."""
    if echo is None:
        return ""
    return (f"echo cancellation: ERLE p50 {fmt_num(echo.erle_db_p50)} dB, p10 {fmt_num(echo.erle_db_p10)} dB over "
            f"{echo.measured}/{echo.windows} windows ({echo.reference_active_s:.1f} s with the assistant audible), "
            f"echo delay {fmt_num(echo.delay_ms)} ms, aec CPU {fmt_num(echo.cpu_percent)}% of a core (the "
            f"cancellers {fmt_num(echo.canceller_cpu_percent)}%)")
