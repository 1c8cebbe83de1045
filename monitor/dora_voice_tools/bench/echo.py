"""The echo plan (``dora-voice-bench --plan echo``): full duplex on open speakers, in a simulated room.

One conversation per variant through ``voice-chatbot-room.yml``: the user's utterances (the plan's clips, cycled)
are placed in one input WAV; utterance 0 asks, and every later utterance starts :data:`BARGE_IN_GAPS_S` (cycled)
after the end of the one before, so it lands while the answer to that one plays into the room (the answer starts
about 1-1.5 s after the end of the question on a quiet machine, up to 4 s on a loaded one). Utterances whose onset
falls in a pause between sentences are reported apart and not counted as barge-ins. The room feeds the answer back into the microphone signal; the
figures say whether the assistant interrupted itself, whether the user's barge-ins stopped it and how fast, how
much echo the AEC removed, and how well the user's speech was recognised through the echo.

Figures (:func:`analyze`; times on the mic's clock, whose origin is recovered from the answer WAV):

* ``self_interruptions``: barge-ins whose speech onset is not within any user utterance (from 300 ms before its
  speech onset to 300 ms after its end): the assistant stopped for its own echo (or noise).
* ``pauses_resumed``: times playback paused at a speech onset that was no barge-in and resumed (a hole in the
  answer, ``pause_ms`` long in all): with the AEC, echo or noise the VAD took for a speech onset.
* ``barge_ins``: user utterances (after the first) whose speech onset falls while the assistant is audible: the
  answer WAV is louder than :data:`AUDIBLE_DBFS` in the 60 ms around the onset (mid-sentence, not in a pause).
* ``barge_ins_detected``: those that stopped playback; ``barge_in_from_onset_ms_p90``: speech onset (the
  recording's first frame above :data:`ONSET_DBFS`) to playback stopped, p90 over the detected ones.
* ``erle_db_p50``: median ERLE of the aec node's windows (``ECHO_REPORT``) that do not overlap any user utterance
  (with 200 ms margins) and had the assistant audible: echo removed while only the assistant speaks.
* ``wer_during_playback``: word error rate over the barge-in utterances of the transcripts the pipeline produced;
  ``wer_clean``: the same utterances transcribed alone, without echo, by the same ASR model and settings.
  Both are corpus WERs (errors over reference words), after lower-casing, removing punctuation and spelling out
  numbers (inflect). An utterance with no transcript counts as all words deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dora_voice import audio
from dora_voice_monitor.collector import TurnRecord, percentile

RATE_HZ = 16_000
BARGE_IN_GAPS_S = (4.5, 5.0, 5.5, 6.0)
"""Start of each barge-in utterance after the end of the utterance before it, s (cycled)."""
LEAD_S = 0.5
"""Silence before the first utterance, s."""
TAIL_S = 6.0
"""Silence after the last utterance, s (its answer starts playing; the mic then ends the run)."""
ONSET_DBFS = -40.0
"""A 10 ms frame of a clip louder than this (RMS) is speech: the clip's speech onset and end."""
AUDIBLE_DBFS = -45.0
"""The assistant is audible at an instant when the answer WAV's RMS over the 60 ms around it exceeds this."""
MARGIN_NS = 300_000_000
"""A barge-in belongs to a user utterance when its onset is within this of the utterance's speech (ns)."""
ERLE_MARGIN_NS = 200_000_000
"""ERLE windows this close to a user utterance are left out (ns)."""

ECHO_KEYS = ("self_interruptions", "barge_ins", "barge_ins_detected", "barge_in_from_onset_ms_p90", "erle_db_p50",
             "wer_clean", "wer_during_playback")
"""The keys of ``summary.json``'s ``echo`` entry (issue 12), in order."""


@dataclass(frozen=True)
class Utterance:
    """One user utterance placed in the conversation.

    Attributes:
        name: the clip's name.
        transcript: what it says (None when unknown).
        start_s / onset_s / end_s: clip start, first and last speech frame, s from the input's start.
        samples: the clip, float32 16 kHz.
    """

    name: str
    transcript: str | None
    start_s: float
    onset_s: float
    end_s: float
    samples: np.ndarray


@dataclass(frozen=True)
class Conversation:
    """The composed input: ``samples`` (float32, 16 kHz) and its utterances in order."""

    samples: np.ndarray
    utterances: tuple[Utterance, ...]


def speech_bounds(samples: np.ndarray, rate: int = RATE_HZ) -> tuple[float, float]:
    """``(onset_s, end_s)``: first and last 10 ms frame louder than :data:`ONSET_DBFS`.

    Raises:
        ValueError: the clip has no such frame.
    """
    frame = rate // 100
    n = samples.shape[0] // frame
    rms = np.sqrt(np.mean(samples[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(rms) > ONSET_DBFS)
    if not loud.size:
        raise ValueError("no speech above -40 dBFS in the clip")
    return loud[0] * frame / rate, (loud[-1] + 1) * frame / rate


def compose(clips: Sequence[tuple[str, str | None, np.ndarray]], turns: int) -> Conversation:
    """Place ``turns`` utterances (the clips cycled) as described in the module docstring.

    Args:
        clips: ``(name, transcript, samples)`` with float32 16 kHz samples.
        turns: number of utterances, >= 2.

    Raises:
        ValueError: fewer than 2 turns, no clips, or a clip without speech.
    """
    if turns < 2 or not clips:
        raise ValueError(f"an echo conversation needs clips and at least 2 utterances, got {turns}")
    parts = [np.zeros(int(LEAD_S * RATE_HZ), dtype=np.float32)]
    t = LEAD_S
    utterances: list[Utterance] = []
    for k in range(turns):
        name, transcript, samples = clips[k % len(clips)]
        if k:
            gap = BARGE_IN_GAPS_S[(k - 1) % len(BARGE_IN_GAPS_S)]
            start = utterances[-1].end_s + gap
            parts.append(np.zeros(int(round((start - t) * RATE_HZ)), dtype=np.float32))
            t += parts[-1].shape[0] / RATE_HZ
        onset, end = speech_bounds(samples)
        utterances.append(Utterance(name, transcript, t, t + onset, t + end, samples))
        parts.append(samples.astype(np.float32))
        t += samples.shape[0] / RATE_HZ
    parts.append(np.zeros(int(TAIL_S * RATE_HZ), dtype=np.float32))
    return Conversation(np.concatenate(parts), tuple(utterances))


_WORD = re.compile(r"[a-z']+|\d+")


def normalize_transcript(text: str) -> str:
    """Lower case, no punctuation, numbers spelled out (inflect): what WER compares."""
    import inflect  # noqa: PLC0415 - a project dependency, only needed here

    engine = inflect.engine()
    words = []
    for token in _WORD.findall(text.lower().replace("-", " ")):
        if token.isdigit():
            words += re.sub(r"[^a-z ]", " ", engine.number_to_words(token, andword="")).split()
        else:
            words.append(token)
    return " ".join(words)


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate over all pairs (edit operations over reference words), after :func:`normalize_transcript`.

    Raises:
        ValueError: no references, or the lists differ in length.
    """
    import jiwer  # noqa: PLC0415 - the WER library (jiwer, Apache-2.0)

    if not references or len(references) != len(hypotheses):
        raise ValueError("need as many hypotheses as references, at least one")
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


def origin_ns(turns: Sequence[TurnRecord], answer: np.ndarray, rate: int) -> int | None:
    """Wall clock of input sample 0, from the first answer: the answer WAV is on the mic's clock (its sample 0 is
    the mic stream's start), and the turn's ``playback_started_ns`` is its first sample."""
    first = min((t for t in turns if t.playback_started_ns is not None), key=lambda t: t.playback_started_ns,
                default=None)
    loud = np.flatnonzero(np.abs(answer) > 0)
    if first is None or not loud.size:
        return None
    return int(first.playback_started_ns - max(0, int(loud[0]) - 1) * 1_000_000_000 // rate)


def audible_at(answer: np.ndarray, rate: int, t_s: float) -> bool:
    """The answer WAV is louder than :data:`AUDIBLE_DBFS` over the 60 ms around ``t_s``."""
    lo, hi = max(0, int((t_s - 0.03) * rate)), int((t_s + 0.03) * rate)
    window = answer[lo:hi]
    return bool(window.size) and audio.rms_dbfs(window) > AUDIBLE_DBFS


def analyze(conversation: Conversation, turns: Sequence[TurnRecord], answer: np.ndarray, answer_rate: int,
            windows: Sequence[Mapping[str, Any]], clean: Mapping[str, str]) -> dict[str, Any]:
    """The echo figures of one run (see the module docstring).

    Args:
        conversation: the composed input.
        turns: the run's turn records.
        answer: the speaker's WAV (what the listener heard), mono float32; ``answer_rate`` its rate in Hz.
        windows: the aec node's ``aec_stats`` windows (``ECHO_REPORT`` lines), possibly none.
        clean: clip name -> its transcript when transcribed alone (for ``wer_clean``).

    Returns:
        The :data:`ECHO_KEYS` figures plus details: ``barge_in_from_onset_ms`` (each detected), ``missed``
        (utterance indices), ``in_pause`` (utterances that started in a pause of the answer, not counted),
        ``echo_turns`` (transcribed turns that match no user utterance), ``aec_cpu_percent`` (the aec node's
        process) and ``aec_canceller_cpu_percent`` (the echo cancellers' own share of it), ``echo_delay_ms``,
        ``erle_windows``; None for a figure without data.
    """
    origin = origin_ns(turns, answer, answer_rate)
    if origin is None:
        raise ValueError("no answer was played: cannot place the run on the input's clock")
    ns = 1_000_000_000
    spans = [(origin + int(u.onset_s * ns), origin + int(u.end_s * ns)) for u in conversation.utterances]

    def owner(t_ns: int | None) -> int | None:
        if t_ns is None:
            return None
        for k, (a, b) in enumerate(spans):
            if a - MARGIN_NS <= t_ns <= b + MARGIN_NS:
                return k
        return None

    barge_ins = [k for k, u in enumerate(conversation.utterances) if k and audible_at(answer, answer_rate, u.onset_s)]
    in_pause = [k for k, u in enumerate(conversation.utterances)
                if k and k not in barge_ins and any(t.playback_started_ns is not None and
                                                   t.playback_started_ns < spans[k][0] for t in turns)]
    stops: dict[int, int] = {}
    self_interruptions = 0
    for turn in turns:
        if not turn.interrupted or turn.barge_in_ns is None:
            continue
        k = owner(turn.barge_in_onset_ns)
        if k is None:
            self_interruptions += 1
        elif k not in stops:
            stops[k] = turn.barge_in_ns
    detected = [k for k in barge_ins if k in stops]
    delays = [(stops[k] - spans[k][0]) / 1e6 for k in detected]

    by_utterance: dict[int, str] = {}
    echo_turns = 0
    for turn in turns:
        if turn.source != "voice":
            continue
        k = owner(turn.speech_start_ns)
        if k is None:
            echo_turns += 1
        else:
            by_utterance[k] = (by_utterance.get(k, "") + " " + (turn.transcript or "")).strip()
    scored = [k for k in barge_ins if conversation.utterances[k].transcript]
    references = [conversation.utterances[k].transcript or "" for k in scored]
    wer_playback = corpus_wer(references, [by_utterance.get(k, "") for k in scored]) if scored else None
    wer_clean = (corpus_wer(references, [clean.get(conversation.utterances[k].name, "") for k in scored])
                 if scored and clean else None)

    user = [(a - ERLE_MARGIN_NS, b + ERLE_MARGIN_NS) for a, b in spans]
    erle = [float(w["erle_db"]) for w in windows if "erle_db" in w and not any(
        a < int(w["t_ns"]) + int(float(w["duration_ms"]) * 1e6) and int(w["t_ns"]) < b for a, b in user)]
    cpu = [float(w["cpu_percent"]) for w in windows if "cpu_percent" in w]
    canceller_cpu = [float(w["canceller_cpu_percent"]) for w in windows if "canceller_cpu_percent" in w]
    delays_est = [float(w["delay_ms"]) for w in windows if float(w.get("delay_ms", -1)) >= 0]
    return {
        "self_interruptions": self_interruptions,
        "barge_ins": len(barge_ins),
        "barge_ins_detected": len(detected),
        "barge_in_from_onset_ms_p90": percentile(delays, 90) if delays else None,
        "erle_db_p50": percentile(erle, 50) if erle else None,
        "wer_clean": wer_clean,
        "wer_during_playback": wer_playback,
        "barge_in_from_onset_ms": [round(d, 1) for d in delays],
        "barge_in_from_onset_ms_max": max(delays) if delays else None,
        "missed": [k for k in barge_ins if k not in stops],
        "in_pause": in_pause,
        "echo_turns": echo_turns,
        "pauses_resumed": sum(t.pauses_resumed for t in turns),
        "pause_ms": float(sum(t.pause_ms or 0.0 for t in turns)),
        "erle_windows": len(erle),
        "aec_cpu_percent": float(np.mean(cpu)) if cpu else None,
        "aec_canceller_cpu_percent": float(np.mean(canceller_cpu)) if canceller_cpu else None,
        "echo_delay_ms": delays_est[-1] if delays_est else None,
    }


def transcribe_clean(conversation: Conversation, transcribe: Callable[[np.ndarray], str]) -> dict[str, str]:
    """Each distinct clip of the conversation transcribed alone (no echo, no pipeline): name -> text."""
    out: dict[str, str] = {}
    for u in conversation.utterances:
        if u.name not in out:
            out[u.name] = transcribe(u.samples)
    return out


def render(variant: str, figures: Mapping[str, Any]) -> str:
    """The echo plan's table for one variant."""
    def fmt(value: Any, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [f"echo ({variant}):",
             f"  self-interruptions            {fmt(figures['self_interruptions'])}"
             f" (pauses resumed: {fmt(figures.get('pauses_resumed'))}, {fmt(figures.get('pause_ms'), 0)} ms)",
             f"  barge-ins detected            {figures['barge_ins_detected']}/{figures['barge_ins']} mid-sentence"
             f" (missed: {figures['missed'] or 'none'}; in a pause, not counted: {figures['in_pause'] or 'none'})",
             f"  onset -> stop, p90 / max      {fmt(figures['barge_in_from_onset_ms_p90'], 0)} / "
             f"{fmt(figures['barge_in_from_onset_ms_max'], 0)} ms",
             f"  ERLE p50 (assistant only)     {fmt(figures['erle_db_p50'])} dB over {figures['erle_windows']} windows"
             f", echo delay {fmt(figures['echo_delay_ms'])} ms, aec CPU {fmt(figures['aec_cpu_percent'], 2)}%"
             f" (the cancellers {fmt(figures.get('aec_canceller_cpu_percent'), 2)}%)",
             f"  WER during playback / clean   {fmt(figures['wer_during_playback'], 3)} / "
             f"{fmt(figures['wer_clean'], 3)}",
             f"  turns made of echo            {figures['echo_turns']}"]
    return "\n".join(lines)
