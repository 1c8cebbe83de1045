"""LLM backends: the MLX adapter against the documented mlx-lm API (fake module) and for real (mlx[cpu] on Linux,
with the MLX folder built from the test GGUF), llama.cpp for real."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest

from dora_voice.llm_backends import LlamaCppBackend, MlxBackend, default_backend_name
from dora_voice.models import TEST_LLM, resolve_llm


@dataclass
class GenerationResponse:  # mlx_lm.generate.GenerationResponse carries .text (the new text) among others
    text: str
    token: int


class FakeTokenizer:
    def __init__(self) -> None:
        self.templates: list[tuple[list, bool]] = []

    def apply_chat_template(self, messages, add_generation_prompt=False, **kwargs):
        self.templates.append((messages, add_generation_prompt))
        return [1, 2, 3]

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def fake_mlx_lm(pieces: list[str]):
    calls: dict = {}
    tokenizer = FakeTokenizer()

    def load(path):
        calls["load"] = path
        return "model", tokenizer

    def stream_generate(model, tok, prompt, max_tokens=256, sampler=None, **kwargs):
        calls["generate"] = dict(model=model, prompt=prompt, max_tokens=max_tokens, sampler=sampler)
        for i, piece in enumerate(pieces[:max_tokens]):
            yield GenerationResponse(piece, i)

    sample_utils = types.SimpleNamespace(make_sampler=lambda temp=0.0, **kw: ("sampler", temp))
    module = types.SimpleNamespace(load=load, stream_generate=stream_generate, sample_utils=sample_utils)
    return module, calls, tokenizer


def test_mlx_adapter_streams_text_deltas() -> None:
    module, calls, tokenizer = fake_mlx_lm(["Hel", "lo", "", " there", "."])
    backend = MlxBackend("/models/qwen-mlx", temperature=0.2, mlx_lm=module)
    messages = [{"role": "user", "content": "hi"}]
    assert list(backend.stream(messages, max_tokens=4)) == ["Hel", "lo", " there"]
    assert calls["load"] == "/models/qwen-mlx"
    assert calls["generate"]["max_tokens"] == 4 and calls["generate"]["prompt"] == [1, 2, 3]
    assert calls["generate"]["sampler"] == ("sampler", 0.2)
    assert tokenizer.templates == [(messages, True)]
    assert backend.count_tokens("a b c") == 3


def test_default_backend_is_llama_cpp_on_linux() -> None:
    assert default_backend_name() == "llama_cpp"


@pytest.fixture(scope="module")
def llama() -> LlamaCppBackend:
    return LlamaCppBackend(resolve_llm(None, TEST_LLM), threads=2, context_tokens=1024, temperature=0.0, seed=1)


@pytest.mark.real_model
def test_llama_cpp_streams_and_can_be_stopped(llama: LlamaCppBackend) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Count to ten."}]
    stream = llama.stream(messages, max_tokens=40)
    first = [next(stream) for _ in range(3)]
    assert all(isinstance(t, str) and t for t in first)
    stream.close()  # barge-in: stop generation mid-way
    again = list(llama.stream(messages, max_tokens=5))
    assert 1 <= len(again) <= 5
    assert llama.count_tokens("hello world") >= 2


@pytest.mark.real_model
def test_llama_cpp_prefill_after_dropping_old_exchanges_moves_the_kept_ones_in_the_cache(llama) -> None:
    system = {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}
    exchanges = []
    for k, (q, a) in enumerate([("Name a red fruit.", "A strawberry is a red fruit."),
                                ("Name a yellow fruit.", "A banana is a yellow fruit."),
                                ("Name a green vegetable.", "Broccoli is a green vegetable."),
                                ("Name a purple vegetable.", "An eggplant is a purple vegetable.")]):
        exchanges += [{"role": "user", "content": f"{q} ({k})"}, {"role": "assistant", "content": a}]
    question = {"role": "user", "content": "Name an orange fruit."}
    list(llama.stream([system, *exchanges, question], max_tokens=1))  # the whole history is in the cache
    kept = exchanges[4:]  # the oldest two exchanges dropped, as the sliding history does
    steps = list(llama.prefill([system, *kept, {"role": "user", "content": ""}]))
    reused, evaluated = llama.last_prefill
    assert steps and reused >= 30 and evaluated < reused  # the kept exchanges moved, not evaluated again
    shifted = "".join(llama.stream([system, *kept, question], max_tokens=12))
    llama.llm.reset()  # the same prompt on an empty cache
    fresh = "".join(llama.stream([system, *kept, question], max_tokens=12))
    # Greedy, the same start of the answer. Only the start: a shifted cache is rotated in place (RoPE), not
    # evaluated again, so its values differ in the last bits, and past the first words the 135M model's greedy path
    # can fork ("An orange fruit is ..." against "An orange is ..." with llama.cpp built for AVX-512 here). A cache
    # moved wrongly answers something else from the first token on.
    assert shifted.split()[:2] == fresh.split()[:2], (shifted, fresh)
    assert "orange" in shifted.lower(), shifted


@pytest.mark.real_model
def test_llama_cpp_ignore_eos_runs_to_max_tokens() -> None:
    # What the end-to-end tests rely on: however the small model would have answered, the reply is max_tokens long.
    backend = LlamaCppBackend(resolve_llm(None, TEST_LLM), threads=2, context_tokens=512, temperature=0.0, seed=1,
                              ignore_eos=True)
    assert backend.logit_bias and set(backend.logit_bias.values()) == {float("-inf")}
    assert backend.llm.token_eos() in backend.logit_bias
    messages = [{"role": "system", "content": "Reply with one word."}, {"role": "user", "content": "Say yes."}]
    reply = "".join(backend.stream(messages, max_tokens=24))
    assert backend.finish_reason == "length", reply
    assert backend.count_tokens(reply) >= 20


# -- MLX for real: mlx[cpu] + mlx-lm run on this Linux CPU (installed by setup.sh --test) ------------------------

@pytest.fixture(scope="module")
def mlx_folder():
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (setup.sh --test installs it)")
    from dora_voice.mlx_models import ensure_mlx_model

    return ensure_mlx_model(TEST_LLM)  # built by setup.sh --test; rebuilt here if missing


def test_mlx_folder_is_built_from_the_gguf_with_its_quantization(mlx_folder) -> None:
    import json

    config = json.loads((mlx_folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_traditional"] is True
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # Q8_0 embedding
    assert (mlx_folder / "tokenizer.json").is_file() and (mlx_folder / "model.safetensors").stat().st_size > 50e6


def test_mlx_backend_streams_a_real_answer_and_can_be_stopped(mlx_folder) -> None:
    backend = MlxBackend(mlx_folder, temperature=0.0)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = "".join(backend.stream(messages, max_tokens=16))
    assert "Paris" in reply  # the weights, tokenizer and rotary layout are right, or this is gibberish
    assert backend.finish_reason in ("stop", "length")
    stream = backend.stream(messages, max_tokens=16)
    assert next(stream)
    stream.close()  # barge-in
    assert backend.count_tokens("hello world") >= 2


def test_mlx_conversion_refuses_a_file_it_cannot_convert_and_leaves_nothing(tmp_path) -> None:
    pytest.importorskip("mlx.core", reason="mlx is not installed")
    from dora_voice.mlx_models import build_mlx_model
    from dora_voice.models import ModelError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="MLX cannot read bad.gguf|only llama GGUF models convert"):
        build_mlx_model(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.real_model
def test_llama_cpp_a_partial_prompt_evaluated_ahead_on_one_thread_is_reused_by_the_full_one() -> None:
    backend = LlamaCppBackend(resolve_llm(None, TEST_LLM), threads=2, context_tokens=512, temperature=0.0, seed=1,
                              prefill_threads=1)
    system = {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}
    words = "Tell me the name of the river that runs through the middle of Paris".split()
    assert list(backend.prefill([system, {"role": "user", "content": " ".join(words[:9])}], open_end=True))
    _reused, evaluated_ahead = backend.last_prefill
    # Open at the end: the template's end of message is not in the cache (the text goes on).
    assert backend.llm.input_ids[backend.llm.n_tokens - 1] != backend.llm.token_eos()
    assert evaluated_ahead > 0 and backend._template_tail([system]) >= 3
    # The whole question shares the prefix evaluated ahead: only its last words and the template's end are
    # evaluated now.
    list(backend.prefill([system, {"role": "user", "content": " ".join(words)}]))
    _reused, evaluated_now = backend.last_prefill
    tail_words = backend.count_tokens(" " + " ".join(words[9:]))
    assert evaluated_now <= tail_words + backend._template_tail([system]) + 1
    cached = list(backend.llm.input_ids[:backend.llm.n_tokens])
    ahead = "".join(backend.stream([system, {"role": "user", "content": " ".join(words)}], max_tokens=8))
    backend.llm.reset()  # the same prompt on an empty cache, all threads
    list(backend.prefill([system, {"role": "user", "content": " ".join(words)}]))
    # The cache holds exactly the tokens of the whole prompt evaluated at once: nothing of the open end is left.
    assert cached == list(backend.llm.input_ids[:backend.llm.n_tokens])
    fresh = "".join(backend.stream([system, {"role": "user", "content": " ".join(words)}], max_tokens=8))
    # Greedy, the same first word. Only the first: a prompt evaluated in two batches on one thread, then two, is
    # not bit-identical to one batch on two threads (llama.cpp picks its kernels by batch size), and the 135M
    # model's greedy path can fork after it ("The river that ..." against "The sea that ..." with llama.cpp built
    # for AVX-512 here).
    assert ahead.split()[:1] == fresh.split()[:1], (ahead, fresh)
