"""Conversation memory for the LLM, with strategies that keep the prompt prefix stable.

Why stability matters: llama.cpp reuses the KV cache of the longest common token prefix between two prompts, so
a history that only grows costs only the new turn's tokens, while dropping the oldest turn on every new turn makes
the whole history after the system prompt be re-evaluated (TTFT then grows with the history length).

Strategies (``HISTORY_STRATEGY``):
    * ``fixed`` — the last ``max_turns`` turns; drops one turn at a time (simple; the cache misses on every turn
      once the window is full).
    * ``sliding`` — a window of ``max_turns`` turns that, when full, drops the oldest half at once, so the prefix
      stays stable for ``max_turns / 2`` turns between cache misses.
    * ``token_budget`` — as many recent turns as fit ``max_tokens``; when over, drops oldest turns until the
      history is under half the budget (the same amortisation, measured in tokens).

When turns are dropped the LLM node re-evaluates the new prefix right away, while the answer is still playing
(:meth:`ConversationHistory.add` says when), so the next user turn does not pay for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from dora_voice.llm_backends import Message


class HistoryStrategy(str, enum.Enum):
    """How old turns are forgotten."""

    FIXED = "fixed"
    SLIDING = "sliding"
    TOKEN_BUDGET = "token_budget"


@dataclass
class Exchange:
    """One turn: what the user said and what the assistant said (as far as it was heard)."""

    turn_id: int
    user: str
    assistant: str


class ConversationHistory:
    """The system prompt plus recent exchanges.

    Args:
        system_prompt: first message of every prompt.
        strategy: see the module docstring.
        max_turns: turns kept by ``fixed`` and ``sliding`` (0 = no memory: every turn starts fresh).
        max_tokens: token budget of ``token_budget``.
        count_tokens: tokenizer length function, for ``token_budget``.
    """

    def __init__(self, system_prompt: str, strategy: HistoryStrategy, *, max_turns: int = 8, max_tokens: int = 1024,
                 count_tokens: Callable[[str], int] | None = None) -> None:
        if max_turns < 0:
            raise ValueError("max_turns must be >= 0")
        self.system_prompt = system_prompt
        self.strategy = strategy
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens or (lambda text: max(1, len(text) // 4))
        self.exchanges: list[Exchange] = []

    def messages(self, user_text: str) -> list[Message]:
        """The prompt for a new user message: system, kept exchanges, the new message."""
        out: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for ex in self.exchanges:
            out.append({"role": "user", "content": ex.user})
            out.append({"role": "assistant", "content": ex.assistant})
        out.append({"role": "user", "content": user_text})
        return out

    def add(self, turn_id: int, user: str, assistant: str) -> bool:
        """Record a finished turn and forget old ones according to the strategy.

        Returns:
            True when old turns were dropped (the prompt prefix changed: the LLM's cache will miss once).
        """
        self.exchanges.append(Exchange(turn_id, user, assistant))
        before = len(self.exchanges)
        self._trim()
        return len(self.exchanges) < before

    def set_heard(self, turn_id: int, heard: str) -> bool:
        """Replace the assistant text of ``turn_id`` by what the listener heard (after a barge-in).

        Returns:
            True if the turn is still in the history.
        """
        for ex in self.exchanges:
            if ex.turn_id == turn_id:
                ex.assistant = heard
                return True
        return False

    def _tokens(self) -> int:
        return sum(self.count_tokens(ex.user) + self.count_tokens(ex.assistant) + 8 for ex in self.exchanges)

    def _trim(self) -> None:
        if self.max_turns == 0 and self.strategy is not HistoryStrategy.TOKEN_BUDGET:
            self.exchanges.clear()
        elif self.strategy is HistoryStrategy.FIXED:
            del self.exchanges[: max(0, len(self.exchanges) - self.max_turns)]
        elif self.strategy is HistoryStrategy.SLIDING:
            if len(self.exchanges) > self.max_turns:
                keep = max(1, self.max_turns // 2)
                del self.exchanges[: len(self.exchanges) - keep]
        elif self._tokens() > self.max_tokens:
            while self.exchanges and self._tokens() > self.max_tokens // 2:
                del self.exchanges[0]
