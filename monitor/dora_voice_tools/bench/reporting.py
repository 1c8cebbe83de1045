"""Reporting the bench: medians and ratios per item, summary.json entries, the plain-ASCII tables (side by side,
voice per clip, stress memory) and ``--list``.

Durations are in ms (``*_ms``) or s (``*_s``), as in :class:`~dora_voice_monitor.collector.TurnRecord`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from dora_voice_monitor.collector import TurnRecord, percentile
from dora_voice_monitor.report import fmt_ms, fmt_num, truncate

from dora_voice_tools.bench.plans import Catalog
from dora_voice_tools.bench.running import RssSample

COMPARE_ROWS: tuple[tuple[str, str], ...] = (
    ("llm_ttft_ms", "llm_ttft_ms"), ("tokens_per_s", "tokens_per_s"), ("llm_total_ms", "llm_total_ms"),
    ("first_chunk_ms", "llm_first_chunk_ms"), ("tts_ttfb_ms", "tts_ttfb_ms"),
    ("llm_start_to_first_audio_ms", "llm_start_to_first_audio_ms"), ("wall_s", "wall_s"), ("audio_s", "audio_s"),
    ("rtf", "rtf"), ("underruns", "underruns"), ("llm_tokens", "llm_tokens"),
)
"""Rows of the side-by-side table: (label, :class:`TurnRecord` field). summary.json uses the field names."""

VOICE_ROWS: tuple[tuple[str, str], ...] = (("first_audio_ms", "first_audio_ms"), ("asr_latency_ms", "asr_latency_ms"))
"""Rows added on top of :data:`COMPARE_ROWS` for voice scenarios."""

VOICE_METRICS = ("first_audio_ms", "asr_latency_ms", "llm_ttft_ms", "tts_ttfb_ms", "llm_start_to_first_audio_ms")
"""Columns of the per-clip voice table (ms), with p50/p90 over all voice turns."""

FIRST_AUDIO = {"text": "llm_start_to_first_audio_ms", "voice": "first_audio_ms"}
"""The first-audio latency of each pipeline: typed turns have no speech end, so LLM start -> first sample played."""


# --------------------------------------------------------------------------------------------------------------
# Aggregation


def median(values: Iterable[float | None]) -> float | None:
    """Median of the known values (``None`` ignored), or ``None`` when none is known."""
    known = [v for v in values if v is not None]
    return percentile(known, 50) if known else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is unknown or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def row_fields(pipeline: str) -> tuple[tuple[str, str], ...]:
    """The (label, field) rows of the side-by-side table for a pipeline."""
    return (VOICE_ROWS + COMPARE_ROWS) if pipeline == "voice" else COMPARE_ROWS


def variant_summary(turns: Sequence[TurnRecord], pipeline: str, *, failed: bool) -> dict[str, Any]:
    """One variant's entry of summary.json: the median of every table metric over the turns (keys are
    :class:`TurnRecord` field names, units in the names), ``turns`` counted, and ``failed``."""
    out: dict[str, Any] = {f: median(getattr(t, f) for t in turns) for _label, f in row_fields(pipeline)}
    out["turns"] = len(turns)
    out["failed"] = failed
    return out


def item_summary(pipeline: str, by_variant: Mapping[str, Sequence[TurnRecord]],
                 failed: Mapping[str, bool]) -> dict[str, Any]:
    """An item's entry of summary.json: ``{variant: medians, ..., "first_audio_ratio": r}``; ``r`` is the first
    variant's median first-audio latency (:data:`FIRST_AUDIO`) over the second's (streaming/batch), present when
    there are exactly two variants (``None`` when either is unknown)."""
    out: dict[str, Any] = {v: variant_summary(turns, pipeline, failed=failed.get(v, False))
                           for v, turns in by_variant.items()}
    names = list(by_variant)
    if len(names) == 2:
        metric = FIRST_AUDIO[pipeline]
        out["first_audio_ratio"] = ratio(out[names[0]][metric], out[names[1]][metric])
    return out


def overall_stats(turns: Sequence[TurnRecord], metrics: Sequence[str] = VOICE_METRICS) -> dict[str, dict]:
    """``{metric: {"p50": x, "p90": y, "n": k}}`` over every turn where the metric is known (``None`` when none)."""
    out = {}
    for metric in metrics:
        values = [getattr(t, metric) for t in turns if getattr(t, metric) is not None]
        out[metric] = {"p50": percentile(values, 50) if values else None,
                       "p90": percentile(values, 90) if values else None, "n": len(values)}
    return out


def paired_differences(runs: Sequence[tuple[Sequence[TurnRecord], Sequence[TurnRecord]]],
                       metric: str = "first_audio_ms") -> dict[str, Any] | None:
    """Turn-by-turn differences of ``metric`` between two variants that answered the same recordings.

    Each pair of runs (the first variant's, the second's) of one recording and repetition is matched turn by turn in
    turn order; a pair whose runs found a different number of turns (the VAD split the recording differently) is
    left out. Compared this way, what each recording happens to cost (which turns wait for ``TURN_MAX_WAIT_MS``,
    how long each answer's first chunk is) cancels out, which the two variants' own p50 over a few turns do not.

    Returns:
        ``{"metric", "pairs", "median_ms", "mean_ms", "min_ms", "max_ms", "runs_left_out"}`` (second minus first,
        ms), or ``None`` when no turn could be paired.
    """
    diffs: list[float] = []
    left_out = 0
    for first, second in runs:
        a, b = sorted(first, key=lambda t: t.turn_id), sorted(second, key=lambda t: t.turn_id)
        if len(a) != len(b):
            left_out += 1
            continue
        diffs += [getattr(y, metric) - getattr(x, metric) for x, y in zip(a, b)
                  if getattr(x, metric) is not None and getattr(y, metric) is not None]
    if not diffs:
        return None
    return {"metric": metric, "pairs": len(diffs), "median_ms": percentile(diffs, 50),
            "mean_ms": sum(diffs) / len(diffs), "min_ms": min(diffs), "max_ms": max(diffs), "runs_left_out": left_out}


def render_paired(variants: Sequence[str], entry: Mapping[str, Any] | None) -> str:
    """One line: the paired differences of :func:`paired_differences`, second variant minus first."""
    if entry is None:
        return f"paired turn by turn ({variants[1]} - {variants[0]}): no turns to pair"
    left = f"; {entry['runs_left_out']} run pair(s) left out (different turns)" if entry["runs_left_out"] else ""
    return (f"paired turn by turn ({variants[1]} - {variants[0]}, {entry['metric']}): median "
            f"{entry['median_ms']:+.0f} ms, mean {entry['mean_ms']:+.0f} ms over {entry['pairs']} turns "
            f"(from {entry['min_ms']:+.0f} to {entry['max_ms']:+.0f} ms){left}")


def median_turn(turns: Sequence[TurnRecord], metric: str) -> TurnRecord | None:
    """The turn whose ``metric`` is closest to the median (lowest turn id on ties); ``None`` when none has it."""
    known = [t for t in turns if getattr(t, metric) is not None]
    if not known:
        return turns[0] if turns else None
    mid = median(getattr(t, metric) for t in known)
    return min(known, key=lambda t: (abs(getattr(t, metric) - mid), t.turn_id))


# --------------------------------------------------------------------------------------------------------------
# Rendering (plain ASCII, as report.py)


def fmt_metric(name: str, value: float | None) -> str:
    """A metric value with the precision its unit deserves: whole ms, s to 0.01, rtf to 0.001, else (rates,
    counts) 0.1."""
    if name.endswith("_ms"):
        digits = 0
    elif name.endswith("_s") and not name.endswith("_per_s"):
        digits = 2
    else:
        digits = 3 if name == "rtf" else 1
    return fmt_num(value, digits)


def render_compare_table(name: str, entry: Mapping[str, Any], pipeline: str, *, repeat: int, note: str = "") -> str:
    """The side-by-side table of one item: rows are metrics (:func:`row_fields`), columns the variants' medians
    and, with two variants, their ratio; then the first-audio ratio line."""
    variants = [k for k, v in entry.items() if isinstance(v, Mapping)]
    two = len(variants) == 2
    width = max([14] + [len(v) + 2 for v in variants])  # long variant names keep a gap between columns
    header = f"{'metric':<30}" + "".join(f"{v:>{width}}" for v in variants) + (f"{'ratio':>10}" if two else "")
    lines = [f"{name} ({pipeline}, {repeat} repetition{'' if repeat == 1 else 's'}, medians)"
             + (f"  {note}" if note else ""), header, "-" * len(header)]
    for label, metric in row_fields(pipeline):
        values = [entry[v].get(metric) for v in variants]
        row = f"{label:<30}" + "".join(f"{fmt_metric(metric, x):>{width}}" for x in values)
        if two:
            row += f"{fmt_num(ratio(values[0], values[1]), 2):>10}"
        lines.append(row)
    turns = "  ".join(f"{v}: {entry[v]['turns']} turns" + (" FAILED" if entry[v]["failed"] else "")
                      for v in variants)
    lines.append(turns)
    if two:
        lines.append(f"first audio ({FIRST_AUDIO[pipeline]}) {variants[0]}/{variants[1]} = "
                     f"{fmt_num(entry.get('first_audio_ratio'), 2)}")
    return "\n".join(lines)


def render_voice_table(variant: str, rows: Sequence[tuple[str, Sequence[TurnRecord], str | None]],
                       overall: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-clip voice table of one variant: one row per clip (medians over its turns, ms), what the ASR heard
    against the reference, then p50 and p90 over all turns.

    Args:
        variant: the column's name.
        rows: ``(clip name, its turns, reference transcript or None)``.
        overall: :func:`overall_stats` of all turns.
    """
    head = f"{'clip':<20}" + "".join(f"{m:>16}" for m in VOICE_METRICS[:-1]) + f"{'llm_start_to_1st':>18}"
    lines = [f"voice-to-voice ({variant}; ms; medians per clip; llm_start_to_1st = llm_start_to_first_audio_ms)",
             head + "  heard / reference", "-" * (len(head) + 20)]
    for name, turns, reference in rows:
        values = [median(getattr(t, m) for t in turns) for m in VOICE_METRICS]
        heard = " / ".join(t.transcript for t in turns) or "-"
        cells = "".join(f"{fmt_metric(m, v):>16}" for m, v in zip(VOICE_METRICS[:-1], values[:-1]))
        lines.append(f"{truncate(name, 19):<20}{cells}{fmt_metric(VOICE_METRICS[-1], values[-1]):>18}  "
                     f"{truncate(heard, 40)!r} / {reference or '-'}")
    lines.append("-" * (len(head) + 20))
    last = VOICE_METRICS[-1]
    for q in ("p50", "p90"):
        cells = "".join(f"{fmt_metric(m, overall[m][q]):>16}" for m in VOICE_METRICS[:-1])
        lines.append(f"{q + ' (all turns)':<20}{cells}{fmt_metric(last, overall[last][q]):>18}")
    return "\n".join(lines)


def normalize_words(text: str) -> str:
    """Text reduced for WER: numbers, abbreviations and symbols spelled out as the TTS would say them
    (:func:`dora_voice.text.normalize.normalize_for_speech`), lower case, punctuation dropped."""
    import re

    from dora_voice.text.normalize import normalize_for_speech

    spoken = normalize_for_speech(text).lower().replace("-", " ")
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", spoken).split())


def corpus_wer(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Corpus WER (word errors over all reference words, jiwer) of ``(reference, hypothesis)`` pairs after
    :func:`normalize_words`; ``None`` without pairs or without jiwer (installed with the test extras)."""
    try:
        import jiwer
    except ImportError:
        return None
    refs = [normalize_words(r) for r, _h in pairs]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        return None
    hyps = [normalize_words(pairs[i][1]) or "-" for i in keep]
    return float(jiwer.wer([refs[i] for i in keep], hyps))


V2V_LABELS = (("v2v_eot_ms", "eot"), ("v2v_asr_ms", "asr"), ("v2v_llm_ttft_ms", "ttft"),
              ("v2v_first_chunk_ms", "chunk1"), ("v2v_tts_ms", "tts"), ("v2v_playback_ms", "play"))
"""The parts of voice-to-voice (:data:`dora_voice_monitor.collector.V2V_PARTS`) and their short column names."""


def _runs(turns: Sequence[TurnRecord]) -> list[list[TurnRecord]]:
    """The turns of a clip grouped by run (repetition: each run is a session of its own), in turn order."""
    runs: dict[str, list[TurnRecord]] = {}
    for turn in turns:
        runs.setdefault(turn.session_id, []).append(turn)
    return [sorted(run, key=lambda t: t.turn_id) for run in runs.values()]


def render_v2v_parts_table(variant: str, rows: Sequence[tuple[str, Sequence[TurnRecord], str | None]]) -> str:
    """Voice-to-voice as the sum of its parts, per clip (medians over its turns, ms), with the rules that ended the
    turns (``model:0.97``, ``max_wait:0.21``, ``silence``), underruns and the clip's WER (each run's transcripts,
    in turn order, against the reference; over its runs, each a session of its own); then p50 of each part over
    all turns with its share of their sum, and the corpus WER over the clips with a reference.

    Args:
        variant: the column's name.
        rows: ``(clip name, its turns, reference transcript or None)``.
    """
    head = f"{'clip':<20}{'turns':>6}{'v2v':>7}" + "".join(f"{label:>8}" for _f, label in V2V_LABELS)
    head += f"{'underr':>8}{'WER':>7}  end of turn (rule:P)"
    lines = [f"voice-to-voice in parts ({variant}; ms; medians per clip): eot = speech end -> end of turn decided, "
             "asr -> transcript,", "ttft -> first token, chunk1 -> first chunk, tts -> first audio fragment, "
             "play -> first sample played", head, "-" * len(head)]
    pairs = []
    for name, turns, reference in rows:
        ordered = sorted(turns, key=lambda t: t.turn_id)
        clip_pairs = [(reference, " ".join(t.transcript for t in run)) for run in _runs(turns)] if reference else []
        wer = corpus_wer(clip_pairs) if clip_pairs else None
        pairs += clip_pairs
        rules = " ".join(f"{t.eot_rule}:{t.eot_probability:.2f}" if t.eot_probability is not None
                         else str(t.eot_rule or "-") for t in ordered)
        cells = "".join(f"{fmt_ms(median(getattr(t, f) for t in turns)):>8}" for f, _l in V2V_LABELS)
        lines.append(f"{truncate(name, 19):<20}{len(turns):>6}{fmt_ms(median(t.first_audio_ms for t in turns)):>7}"
                     f"{cells}{sum(t.underruns or 0 for t in turns):>8}{fmt_num(wer, 3):>7}  {truncate(rules, 60)}")
    lines.append("-" * len(head))
    turns = [t for _n, ts, _r in rows for t in ts]
    parts = {f: median(getattr(t, f) for t in turns) for f, _l in V2V_LABELS}
    total = sum(v for v in parts.values() if v is not None) or None
    v2v = [t.first_audio_ms for t in turns if t.first_audio_ms is not None]
    lines.append(f"{'p50 (all turns)':<20}{len(turns):>6}{fmt_ms(percentile(v2v, 50) if v2v else None):>7}"
                 + "".join(f"{fmt_ms(parts[f]):>8}" for f, _l in V2V_LABELS)
                 + f"{sum(t.underruns or 0 for t in turns):>8}{fmt_num(corpus_wer(pairs), 3):>7}  (corpus WER)")
    lines.append(f"{'p90 (all turns)':<26}{fmt_ms(percentile(v2v, 90) if v2v else None):>7}")
    if total:
        lines.append("share of the parts' p50 sum: " + ", ".join(
            f"{label} {100 * parts[f] / total:.0f}%" for f, label in V2V_LABELS if parts[f] is not None))
    rules: dict[str, int] = {}
    for t in turns:
        rules[t.eot_rule or "-"] = rules.get(t.eot_rule or "-", 0) + 1
    lines.append("end of turn: " + ", ".join(f"{rule} {n}" for rule, n in sorted(rules.items())))
    hits = sum(t.speculation == "hit" for t in turns)
    misses = sum(t.speculation == "miss" for t in turns)
    cancelled = sum(t.speculation_cancelled or 0 for t in turns)
    lines.append(f"speculation: {hits} hit(s), {misses} miss(es), {cancelled} speculative transcript(s) cancelled")
    llm_hits = sum(t.llm_speculation == "hit" for t in turns)
    llm_misses = sum(t.llm_speculation == "miss" for t in turns)
    llm_cancelled = sum(t.llm_speculation_cancelled or 0 for t in turns)
    tts_cancelled = sum(t.tts_speculation_cancelled or 0 for t in turns)
    lines.append(f"reply begun during the pause: {llm_hits} hit(s), {llm_misses} miss(es), {llm_cancelled} "
                 f"cancelled; its audio synthesized ahead and dropped unheard: {tts_cancelled}")
    prefilled = [t.prefilled_words for t in turns if t.prefilled_words]
    lines.append(f"prompt evaluated while the user spoke: {len(prefilled)} of {len(turns)} turn(s)"
                 + (f", {sum(prefilled) / len(prefilled):.1f} words on average" if prefilled else ""))
    return "\n".join(lines)


BOUND_ABS_MB = 16.0
BOUND_REL = 0.05
"""A node's memory counts as bounded when it grew by at most max(:data:`BOUND_ABS_MB`, :data:`BOUND_REL` x its
RSS at mid-run) over the second half of the run: start-up growth (model pages, caches) settles in the first turns,
while a leak keeps growing with the turns."""


def rss_report(samples: Sequence[RssSample], start_ns: int, mid_ns: int, end_ns: int) -> dict[str, dict[str, Any]]:
    """Per node, RSS (MiB) at the first sample at or after ``start_ns`` (first turn started: models loaded), at the
    first at or after ``mid_ns``, at the last at or before ``end_ns`` (last answer played), the peak in between,
    ``growth_mb`` = end - start, ``late_growth_mb`` = end - mid, and ``bounded`` (see :data:`BOUND_REL`)."""
    out: dict[str, dict[str, Any]] = {}
    for node in sorted({s.node for s in samples}):
        mine = [s for s in samples if s.node == node and start_ns <= s.t_ns <= end_ns]
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        mid = next((s for s in mine if s.t_ns >= mid_ns), last)
        start_mb, mid_mb, end_mb = first.rss_kb / 1024, mid.rss_kb / 1024, last.rss_kb / 1024
        late = end_mb - mid_mb
        out[node] = {"start_mb": start_mb, "mid_mb": mid_mb, "end_mb": end_mb,
                     "peak_mb": max(s.rss_kb for s in mine) / 1024, "growth_mb": end_mb - start_mb,
                     "late_growth_mb": late, "samples": len(mine),
                     "bounded": late <= max(BOUND_ABS_MB, BOUND_REL * mid_mb)}
    return out


def render_rss_table(report: Mapping[str, Mapping[str, Any]]) -> str:
    """The stress plan's memory table: one row per node, MiB."""
    head = (f"{'node':<24}{'start_mb':>10}{'mid_mb':>10}{'end_mb':>10}{'peak_mb':>10}{'growth_mb':>11}"
            f"{'late_growth':>13}{'samples':>9}  bounded")
    lines = ["node memory (VmRSS, MiB; start = first turn started, end = last answer played)", head, "-" * len(head)]
    for node, r in report.items():
        lines.append(f"{node:<24}{r['start_mb']:>10.1f}{r['mid_mb']:>10.1f}{r['end_mb']:>10.1f}{r['peak_mb']:>10.1f}"
                     f"{r['growth_mb']:>+11.1f}{r['late_growth_mb']:>+13.1f}{r['samples']:>9}  "
                     f"{'yes' if r['bounded'] else 'NO'}")
    if not report:
        lines.append("(no node process sampled)")
    return "\n".join(lines)


def render_list(catalog: Catalog) -> str:
    """``--list``: every plan and scenario with its description."""
    lines = ["plans:"]
    for p in catalog.plans.values():
        what = f"stress, {p.repeat} turns" if p.kind == "stress" else f"repeat {p.repeat}"
        if p.kind == "answers":
            what = f"answers, questions {p.questions.name if p.questions else '-'}"
        what += f", stream={p.stream}" if p.stream else ""
        what += f", variants: {', '.join(p.variants)}" if p.variants else ""
        selection = "" if p.kind == "answers" else f"; scenarios: {', '.join(p.scenarios)}"
        lines.append(f"  {p.name:<14}{p.description} [{what}{selection}]")
    lines.append("scenarios:")
    for s in catalog.scenarios.values():
        source = s.query if s.query is not None else str(s.audio or s.clips)
        lines.append(f"  {s.name:<18}{s.pipeline:<6}stream={s.stream:<8}{s.description}")
        lines.append(f"  {'':<18}{truncate(source, 76)}")
    return "\n".join(lines)
