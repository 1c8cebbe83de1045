"""LLM runtimes behind one small interface: llama.cpp (Linux default) and MLX (macOS default).

A backend streams the assistant's reply to a chat as text deltas (one per generated token). Closing the returned
iterator stops generation (used by barge-in). Backends are imported lazily: ``mlx_lm`` is imported only when the
MLX backend is chosen, ``llama_cpp`` only for llama.cpp.

Prompt caching: llama-cpp-python's ``Llama`` keeps the KV cache of its last evaluation and reuses the longest
common token prefix on the next call, so a stable prefix (system prompt + history that only grows) is evaluated
once; :meth:`warmup` evaluates the system prompt before the first turn.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Protocol

logger = logging.getLogger(__name__)

Message = dict[str, str]
"""One chat message: ``{"role": "system"|"user"|"assistant", "content": str}``."""


class LlmBackend(Protocol):
    """What the LLM node needs from a runtime."""

    name: str
    finish_reason: str
    """Why the last :meth:`stream` ended: ``"stop"`` (the model ended), ``"length"`` (``max_tokens``) or ``""``."""

    def stream(self, messages: list[Message], max_tokens: int) -> Iterator[str]:
        """Yield the reply as text deltas, one per token, until done or ``max_tokens``."""

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in this model's vocabulary."""

    def warmup(self, messages: list[Message]) -> None:
        """Evaluate ``messages`` once (fills the prompt cache, pages the weights in)."""


PREFILL_BATCH_TOKENS = 32
"""Tokens per piece of an interruptible prefill (:meth:`LlamaCppBackend.prefill`): about 50-80 ms on 2 cores with
the 0.5B default, so a new turn waits at most that long for the cache re-evaluation to yield."""


class LlamaCppBackend:
    """llama-cpp-python (GGUF) with ``create_chat_completion(stream=True)``; chat template read from the GGUF.

    Args:
        model_path: GGUF file.
        threads: CPU threads for generation and prompt evaluation.
        context_tokens: context window (``n_ctx``).
        temperature: sampling temperature (0 = greedy).
        seed: RNG seed, for repeatable benchmarks.
        repeat_penalty: llama.cpp's ``repeat_penalty`` over the last 64 tokens (``last_n_tokens_size``); 1.0 = off.
        ignore_eos: never end the reply: the end-of-sequence and end-of-turn tokens get a logit bias of -inf
            (llama.cpp's ``--ignore-eos``), so generation runs to ``max_tokens``. Tests and benchmarks use it to
            make a reply's length certain, whatever a small model would have said.
    """

    name = "llama_cpp"

    def __init__(self, model_path: Path, *, threads: int, context_tokens: int, temperature: float, seed: int,
                 repeat_penalty: float = 1.0, ignore_eos: bool = False) -> None:
        from llama_cpp import Llama

        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.finish_reason = ""
        self.llm = Llama(model_path=str(model_path), n_ctx=context_tokens, n_threads=threads, n_threads_batch=threads,
                         seed=seed, verbose=False)
        self.logit_bias: dict[int, float] | None = None
        if ignore_eos:
            ends = {self.llm.token_eos(), self.llm._model.token_eot()}
            self.logit_bias = {token: float("-inf") for token in ends if token >= 0}

    def stream(self, messages: list[Message], max_tokens: int) -> Iterator[str]:
        self.finish_reason = ""
        chunks = self.llm.create_chat_completion(messages=messages, stream=True, max_tokens=max_tokens,
                                                 temperature=self.temperature, repeat_penalty=self.repeat_penalty,
                                                 logit_bias=self.logit_bias)
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
                delta = choice.get("delta", {}).get("content")
                if delta:
                    yield delta
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def warmup(self, messages: list[Message]) -> None:
        for _ in self.stream(messages, max_tokens=1):
            pass

    def prefill(self, messages: list[Message], batch_tokens: int = PREFILL_BATCH_TOKENS) -> Iterator[int]:
        """Evaluate the prompt of ``messages`` into the KV cache in pieces of ``batch_tokens``, yielding the tokens
        evaluated so far after each piece, so the caller can stop between pieces (a new turn arrived: its prompt
        then reuses what was evaluated; llama.cpp matches the longest cached prefix).

        The prompt tokens are the ones ``create_chat_completion`` would evaluate (same chat template, same prefix
        match): they are captured from its first ``eval`` call, which is stopped before it computes anything.
        """
        captured: list[int] = []
        n_past = [0]

        def capture(tokens: Any) -> None:
            captured.extend(int(t) for t in tokens)
            n_past[0] = self.llm.n_tokens
            raise _PromptCaptured

        self.llm.eval = capture  # shadows the method on this instance only
        try:
            for _ in self.llm.create_chat_completion(messages=messages, stream=True, max_tokens=1):
                pass
        except _PromptCaptured:
            pass
        finally:
            del self.llm.eval
        self.llm.n_tokens = n_past[0]
        for start in range(0, len(captured), batch_tokens):
            self.llm.eval(captured[start: start + batch_tokens])
            yield start + len(captured[start: start + batch_tokens])


class _PromptCaptured(Exception):
    """Internal: stops ``create_chat_completion`` once its prompt tokens are known."""


class MlxBackend:
    """mlx-lm on Apple silicon: ``mlx_lm.load`` + ``mlx_lm.stream_generate`` (documented mlx-lm API).

    Each ``stream_generate`` response carries the newly decoded text in ``.text``. A prompt cache from
    ``mlx_lm.models.cache.make_prompt_cache`` is kept between turns when available.
    """

    name = "mlx"

    def __init__(self, model_path: Path, *, temperature: float, repeat_penalty: float = 1.0,
                 mlx_lm: Any | None = None) -> None:
        if mlx_lm is None:
            import mlx_lm  # noqa: PLC0415 - only when this backend is chosen
        self.mlx_lm = mlx_lm
        self.model, self.tokenizer = mlx_lm.load(str(model_path))
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.finish_reason = ""

    def _prompt(self, messages: list[Message]) -> Any:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def stream(self, messages: list[Message], max_tokens: int) -> Iterator[str]:
        self.finish_reason = ""
        kwargs: dict[str, Any] = {"max_tokens": max_tokens}
        sample_utils = getattr(self.mlx_lm, "sample_utils", None)
        if sample_utils is not None and hasattr(sample_utils, "make_sampler"):
            kwargs["sampler"] = sample_utils.make_sampler(temp=self.temperature)
        if self.repeat_penalty != 1.0 and sample_utils is not None and hasattr(sample_utils, "make_logits_processors"):
            kwargs["logits_processors"] = sample_utils.make_logits_processors(repetition_penalty=self.repeat_penalty)
        for response in self.mlx_lm.stream_generate(self.model, self.tokenizer, self._prompt(messages), **kwargs):
            self.finish_reason = getattr(response, "finish_reason", None) or self.finish_reason
            if response.text:
                yield response.text

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def warmup(self, messages: list[Message]) -> None:
        for _ in self.stream(messages, max_tokens=1):
            pass


def default_backend_name() -> str:
    """``mlx`` on macOS, ``llama_cpp`` elsewhere."""
    return "mlx" if sys.platform == "darwin" else "llama_cpp"
