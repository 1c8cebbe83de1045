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


MIN_SHIFT_TOKENS = 16
"""Shortest run of cached tokens worth moving instead of evaluating again (:meth:`LlamaCppBackend.prefill`)."""

PREFILL_BATCH_TOKENS = 32
"""Tokens per piece of an interruptible prefill (:meth:`LlamaCppBackend.prefill`): about 50-80 ms on 2 cores with
the 0.5B default, so a new turn waits at most that long for the cache re-evaluation to yield."""


class LlamaCppBackend:
    """llama-cpp-python (GGUF) with ``create_chat_completion(stream=True)``; chat template read from the GGUF.

    Args:
        model_path: GGUF file.
        threads: CPU threads for generation and prompt evaluation.
        prefill_threads: CPU threads for the prompts :meth:`prefill` evaluates ahead, off the user's path (None: the
            same as ``threads``). Fewer leave the other cores to the nodes on the user's path meanwhile.
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
                 repeat_penalty: float = 1.0, ignore_eos: bool = False, prefill_threads: int | None = None) -> None:
        from llama_cpp import Llama

        self.threads = threads
        self.prefill_threads = prefill_threads or threads
        self._tail_tokens: int | None = None
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.finish_reason = ""
        self.llm = Llama(model_path=str(model_path), n_ctx=context_tokens, n_threads=threads, n_threads_batch=threads,
                         seed=seed, verbose=False)
        self.logit_bias: dict[int, float] | None = None
        self.last_prefill = (0, 0)  # the last prefill's (tokens reused by shifting the cache, tokens evaluated)
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

    def prefill(self, messages: list[Message], batch_tokens: int = PREFILL_BATCH_TOKENS, *,
                open_end: bool = False) -> Iterator[int]:
        """Evaluate the prompt of ``messages`` into the KV cache in pieces of ``batch_tokens``, yielding the tokens
        evaluated so far after each piece, so the caller can stop between pieces (a new turn arrived: its prompt
        then reuses what was evaluated; llama.cpp matches the longest cached prefix).

        ``open_end``: stop at the end of the last message's text, leaving out the chat template's tokens after it
        (end of message, assistant header): for a user message that is still growing (a partial transcript), whose
        next version continues the text, so those tokens would be evaluated again each time.

        The prompt tokens are the ones ``create_chat_completion`` would evaluate (same chat template, same prefix
        match): they are captured from its first ``eval`` call, which is stopped before it computes anything.
        Exchanges the history kept are not evaluated again but moved in the cache (:meth:`_shift_cache`).
        """
        captured: list[int] = []
        n_past = [0]
        cached = [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]  # what the KV cache holds, in order

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
        if open_end:
            captured = captured[: max(0, len(captured) - self._template_tail(messages))]
        reused = self._shift_cache(cached, n_past[0], captured)
        self.last_prefill = (reused, len(captured) - reused)
        if reused:
            yield reused
        for start in range(reused, len(captured), batch_tokens):
            self._eval_with_threads(captured[start: start + batch_tokens], self.prefill_threads)
            yield start + len(captured[start: start + batch_tokens])

    def _template_tail(self, messages: list[Message]) -> int:
        """Tokens the chat template puts after the last message's text (the common end of two prompts whose last
        messages differ), measured once."""
        if self._tail_tokens is None:
            try:
                self._tail_tokens = self._measure_tail(messages)
            except Exception as exc:  # noqa: BLE001 - an unusual template: evaluate the whole prompt, as before
                logger.warning("could not measure the chat template's tail (%s: %s); partial prompts are evaluated "
                               "whole", type(exc).__name__, str(exc)[:200])
                self._tail_tokens = 0
        return self._tail_tokens

    def _measure_tail(self, messages: list[Message]) -> int:
        role = messages[-1]["role"]
        ends = [self.llm.tokenize(self._prompt_text([*messages[:-1], {"role": role, "content": content}])
                                  .encode("utf-8"), add_bos=False, special=True)
                for content in ("alpha", "beta gamma")]
        tail = 0
        while tail < min(map(len, ends)) and ends[0][-1 - tail] == ends[1][-1 - tail]:
            tail += 1
        return tail

    def _prompt_text(self, messages: list[Message]) -> str:
        """The prompt ``create_chat_completion`` would give ``messages``, as text (the GGUF's chat template)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

        template = self.llm.metadata.get("tokenizer.chat_template", "")
        eos = self.llm._model.token_get_text(self.llm.token_eos())
        bos = self.llm._model.token_get_text(self.llm.token_bos())
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)(messages=messages).prompt

    def _eval_with_threads(self, tokens: list[int], threads: int) -> None:
        """``Llama.eval`` with ``threads`` for the batch (``llama_set_n_threads``), then the usual count again."""
        import llama_cpp  # noqa: PLC0415 - the backend's own module, imported with it

        if threads == self.threads:
            self.llm.eval(tokens)
            return
        llama_cpp.llama_set_n_threads(self.llm._ctx.ctx, self.threads, threads)
        try:
            self.llm.eval(tokens)
        finally:
            llama_cpp.llama_set_n_threads(self.llm._ctx.ctx, self.threads, self.threads)

    def _shift_cache(self, cached: list[int], keep: int, new: list[int]) -> int:
        """Reuse cached tokens that moved: when the history dropped its oldest exchanges, the exchanges it kept are
        still in the KV cache, further on. Their entries are moved down to follow the ``keep`` tokens that still
        match (the system prompt), by llama.cpp's position shift (RoPE-rotated keys, as llama.cpp's own context
        shift does it), instead of being evaluated again.

        Args:
            cached: the tokens in the KV cache before, positions ``0..len-1``.
            keep: how many of them the new prompt starts with (llama-cpp-python's prefix match).
            new: the new prompt's tokens after those ``keep``.

        Returns:
            How many tokens of ``new`` are now in the cache after position ``keep`` (0 when nothing was shifted:
            no run of at least :data:`MIN_SHIFT_TOKENS` cached tokens starts ``new``, or the model's cache cannot
            shift).
        """
        import llama_cpp  # noqa: PLC0415 - the backend's own module, imported with it

        if keep == 0 or len(new) < MIN_SHIFT_TOKENS or len(cached) <= keep:
            return 0
        best_at, best_len = -1, 0
        for at in range(keep + 1, len(cached)):
            if cached[at] != new[0]:
                continue
            length = 0
            while at + length < len(cached) and length < len(new) and cached[at + length] == new[length]:
                length += 1
            if length > best_len:
                best_at, best_len = at, length
        if best_len < MIN_SHIFT_TOKENS:
            return 0
        ctx = self.llm._ctx
        if not llama_cpp.llama_memory_can_shift(ctx.memory):
            return 0
        ctx.kv_cache_seq_rm(-1, keep, best_at)  # the dropped exchanges
        ctx.kv_cache_seq_shift(0, best_at, best_at + best_len, keep - best_at)  # the kept ones (sequence 0), moved down
        ctx.kv_cache_seq_rm(-1, keep + best_len, -1)  # whatever followed them (the last prompt's tail)
        self.llm.input_ids[keep: keep + best_len] = list(cached[best_at: best_at + best_len])
        self.llm.n_tokens = keep + best_len
        return best_len


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
