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

Whatever the strategy, :meth:`ConversationHistory.fit` bounds every prompt by tokens against the model's context
window: it drops the oldest exchanges, and shortens a user message that alone would not fit, so that a long session
or a long utterance never asks the runtime for more than its context holds.

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


MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens a chat template adds around each message (role markers, separators; ChatML uses 5), counted on top of
the content's own tokens when a prompt is fitted to the context window."""


@dataclass
class Exchange:
    """One turn: what the user said and what the assistant said (as far as it was heard; ``""`` for nothing)."""

    turn_id: int
    user: str
    assistant: str
    tokens: int | None = None  # prompt tokens of the pair, overhead included; computed once when needed


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
        """The prompt for a new user message: system, kept exchanges, the new message.

        An exchange whose answer the listener heard none of (a barge-in before its first word) has no assistant
        message: its user text opens the next user message, on a line of its own, so roles still alternate (some
        chat templates refuse two user messages in a row) and the question that was cut short stays in context.
        A placeholder reply ("...") would be imitated: measured with Qwen2.5-Coder-0.5B, greedy, over 8 follow-up
        questions, the next reply was "..." itself in 5 of them (README, *Conversation behaviour*).
        """
        out: list[Message] = [{"role": "system", "content": self.system_prompt}]
        unanswered: list[str] = []
        for ex in self.exchanges:
            if not ex.assistant.strip():
                unanswered.append(ex.user)
                continue
            out.append({"role": "user", "content": "\n".join([*unanswered, ex.user])})
            out.append({"role": "assistant", "content": ex.assistant})
            unanswered = []
        out.append({"role": "user", "content": "\n".join([*unanswered, user_text]) if user_text else
                    "\n".join(unanswered)})
        return out

    def fit(self, user_text: str, budget_tokens: int) -> tuple[list[Message], int, bool]:
        """The prompt for ``user_text`` (as :meth:`messages`) made to fit ``budget_tokens``.

        The system prompt and the newest user message are always kept. Oldest exchanges are dropped from the
        history for good (so later prompts keep a stable prefix) until the prompt fits; if the new message alone
        does not fit beside the system prompt, only its end is kept (the newest words of a long utterance carry
        the request), behind ``"... "``.

        Args:
            user_text: the new user message.
            budget_tokens: tokens the prompt may take (context window minus the reply's ``max_tokens``).

        Returns:
            ``(messages, exchanges_dropped, user_text_shortened)``.

        Raises:
            ValueError: the system prompt alone does not leave room for a message (a configuration error).
        """
        system = self.count_tokens(self.system_prompt) + MESSAGE_OVERHEAD_TOKENS
        room = budget_tokens - system - MESSAGE_OVERHEAD_TOKENS
        if room < 16:
            raise ValueError(f"the system prompt takes {system} tokens of a {budget_tokens}-token prompt budget: "
                             "shorten LLM_SYSTEM_PROMPT, lower LLM_MAX_TOKENS or raise LLM_CONTEXT_TOKENS")
        user_tokens = self.count_tokens(user_text)
        shortened = False
        if user_tokens > room:
            user_text, user_tokens = self._keep_end(user_text, user_tokens, room)
            shortened = True
        dropped = 0
        total = user_tokens + sum(self._exchange_tokens(ex) for ex in self.exchanges)
        while self.exchanges and total > room:
            total -= self._exchange_tokens(self.exchanges.pop(0))
            dropped += 1
        return self.messages(user_text), dropped, shortened

    def _exchange_tokens(self, ex: Exchange) -> int:
        if ex.tokens is None:
            ex.tokens = self.count_tokens(ex.user) + self.count_tokens(ex.assistant) + 2 * MESSAGE_OVERHEAD_TOKENS
        return ex.tokens

    def _keep_end(self, text: str, tokens: int, room: int) -> tuple[str, int]:
        """The longest end of ``text`` (cut at a space) that fits ``room`` tokens with its ``"... "`` marker."""
        keep = len(text)
        while True:
            keep = max(1, min(keep - 1, int(keep * room / max(tokens, 1) * 0.95)))
            tail = text[-keep:]
            space = tail.find(" ")
            if 0 <= space < len(tail) - 1:
                tail = tail[space + 1:]
            tail = "... " + tail
            tokens = self.count_tokens(tail)
            if tokens <= room or keep == 1:
                return tail, tokens

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
        """Replace the assistant text of ``turn_id`` by what the listener heard (after a barge-in; ``""`` when
        nothing: see :meth:`messages`).

        Returns:
            True if the turn is still in the history.
        """
        for ex in self.exchanges:
            if ex.turn_id == turn_id:
                ex.assistant = heard
                ex.tokens = None
                return True
        return False

    def _tokens(self) -> int:
        return sum(self._exchange_tokens(ex) for ex in self.exchanges)

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
