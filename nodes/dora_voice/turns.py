"""The session's turn sequence: which ``turn_id`` values can be right.

Turn ids are 0-based and grow by one per user utterance (the VAD or the text input hands them out). A node sees a
subsequence of them (an utterance without words never reaches the LLM), so ids may skip, but never by much: a node
that keeps per-turn state must not let one absurd id (``10**12`` from a bad sender) move its notion of "newest turn"
so far ahead that every later, genuine turn looks old. :class:`TurnSequence` is the one check every such node
(LLM, TTS, speaker, monitor) applies before it touches its state.
"""

from __future__ import annotations

from dora_voice.schema import SchemaError

MAX_TURN_ID_STEP = 1000
"""Largest jump (turns) from the newest turn id seen to a new one. A real session skips only utterances without a
transcript (noise, coughs), so even a long, noisy session stays far below; a jump beyond it is a bad message."""


class TurnSequence:
    """Tracks the newest turn id a node has accepted and rejects ids that cannot belong to the session.

    Args:
        max_step: largest accepted jump above the newest id (:data:`MAX_TURN_ID_STEP`); the first id of a session
            must be below it too (sessions start at 0).

    Attributes:
        newest: highest turn id accepted so far, ``-1`` before any.
    """

    def __init__(self, max_step: int = MAX_TURN_ID_STEP) -> None:
        self.max_step = max_step
        self.newest = -1

    def check(self, turn_id: int, what: str = "message") -> int:
        """Accept ``turn_id`` as a new or current turn and return it.

        Raises:
            SchemaError: ``turn_id`` is negative, or more than ``max_step`` above the newest id seen.
        """
        if turn_id < 0:
            raise SchemaError(f"{what}: turn_id {turn_id} is negative")
        if turn_id > self.newest + self.max_step:
            raise SchemaError(f"{what}: turn_id {turn_id} is impossible: the session's newest turn is {self.newest} "
                              f"and ids grow by one per utterance (at most {self.max_step} ahead)")
        self.newest = max(self.newest, turn_id)
        return turn_id

    def check_known(self, turn_id: int, what: str = "message") -> int:
        """Accept ``turn_id`` only as a turn already seen (feedback about a turn, e.g. a barge-in) and return it.

        Raises:
            SchemaError: ``turn_id`` is negative or newer than every turn seen.
        """
        if turn_id < 0 or turn_id > self.newest:
            raise SchemaError(f"{what}: turn_id {turn_id} is not a turn of this session (newest: {self.newest})")
        return turn_id
