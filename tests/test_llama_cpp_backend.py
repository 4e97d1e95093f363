"""The llama.cpp backend: its stop rules and cache key with a fake model, and the real GGUF where llama-cpp-python is installed."""

from __future__ import annotations

import pytest

from lgcd_core.config import ConfigError, GenerationConfig, LLMConfig
from lgcd_core.language.generation_cache import cache_key
from lgcd_core.language.llama_cpp_backend import LlamaCppBackend
from lgcd_core.language.llm_backends import TransformersBackend, make_backend
from lgcd_core.language.parsing import parse_answer

EOS = 99
PIECES = {1: "Sure:\n", 2: "1. Wok", 3: "\n", 4: "2. Ladle", 5: "3. Tongs", 6: "4. Pan"}


class FakeLlama:
    """What the backend uses of ``llama_cpp.Llama``: a prompt of 3 tokens, then the scripted answer."""

    def __init__(self, answer: list[int], n_ctx: int = 2048) -> None:
        self.answer, self._n_ctx, self.seeds, self.sampling = answer, n_ctx, [], []

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        assert special and not add_bos  # the chat template's markers are special tokens, added by the template
        return [7, 8, 9]

    def n_ctx(self) -> int:
        return self._n_ctx

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def token_eos(self) -> int:
        return EOS

    def detokenize(self, tokens: list[int]) -> bytes:
        return "".join(PIECES[t] for t in tokens).encode()

    def generate(self, tokens, reset: bool, **sampling):
        self.sampling.append(sampling)
        yield from self.answer


class PlainTokenizer:
    chat_template = None


def backend_with(answer: list[int], n_ctx: int = 2048, **llm) -> tuple[LlamaCppBackend, FakeLlama]:
    backend = LlamaCppBackend(LLMConfig(backend="llama_cpp", **llm))
    fake = FakeLlama(answer, n_ctx)
    backend.__dict__.update(model=fake, tokenizer=PlainTokenizer())  # the cached properties, filled in
    return backend, fake


def test_an_answer_stops_at_n_complete_items_the_end_token_or_the_cap() -> None:
    items = [1, 2, 3, 4, 3, 5, 3, 6, 3]
    complete, _ = backend_with(items, n_descriptions=2)
    answer = complete.generate_one("p")
    assert answer.text == "Sure:\n1. Wok\n2. Ladle" and answer.n_tokens == 5  # stopped on the line that completed item 2
    assert parse_answer(answer.text, 2)[0] == ["Wok", "Ladle"]

    ended, _ = backend_with([1, 2, 3, EOS, 4], n_descriptions=5)
    assert ended.generate_one("p").text == "Sure:\n1. Wok" and ended.timer.answer_tokens == 3

    capped, _ = backend_with(items, n_descriptions=5, generation=GenerationConfig(max_new_tokens=4))
    answer = capped.generate_one("p")
    assert answer.n_tokens == 4 and answer.text == "Sure:\n1. Wok\n2. Ladle"
    stats = capped.run_stats()["llm_timing"]
    assert stats["prompt_tokens"] == stats["padded_prompt_tokens"] == 3 and stats["answer_tokens"] == stats["decode_slots"] == 4


def test_greedy_by_default_with_llama_cpps_repeat_penalty_off_and_the_seed_set_per_prompt() -> None:
    backend, fake = backend_with([1, EOS])
    list(backend.stream(["a", "b", "c"], batch_size=2))
    assert fake.sampling[0] == {"temp": 0.0, "repeat_penalty": 1.0} and fake.seeds == [0, 0, 0]
    sampled, fake = backend_with([1, EOS], generation=GenerationConfig(do_sample=True, temperature=0.5, seed=3))
    sampled.generate_one("a")
    assert fake.sampling[0]["temp"] == 0.5 and fake.seeds == [3]


def test_a_prompt_that_does_not_fit_the_context_is_a_failed_answer_not_a_crash() -> None:
    backend, _ = backend_with([1, EOS], n_ctx=40, generation=GenerationConfig(max_new_tokens=38))  # 3 + 38 > 40
    answer = backend.generate_one("p")
    assert answer.error and "n_ctx" in answer.error and answer.text == ""


def test_its_answers_are_cached_apart_from_the_transformers_backends_and_it_needs_a_gguf() -> None:
    llama, torch_backend = make_backend(LLMConfig(backend="llama_cpp"), "cpu"), TransformersBackend(LLMConfig(), "cpu")
    assert isinstance(llama, LlamaCppBackend) and llama.model_id == torch_backend.model_id
    assert cache_key(llama.model_id, "t", "p", llama.settings) != cache_key(torch_backend.model_id, "t", "p", torch_backend.settings)
    assert LlamaCppBackend(LLMConfig(backend="llama_cpp", llama_cpp={"n_threads": 1})).settings == llama.settings
    with pytest.raises(ConfigError, match="GGUF"):
        LlamaCppBackend(LLMConfig(backend="llama_cpp", model="some/safetensors-model"))


def test_the_packaged_gguf_answers_the_same_twice_and_its_answers_parse() -> None:
    pytest.importorskip("llama_cpp", reason="optional extra llama-cpp (pip install -e '.[llama-cpp]') not installed")
    backend = LlamaCppBackend(LLMConfig(backend="llama_cpp", n_descriptions=3, llama_cpp={"n_threads": 1}))
    prompts = ["A shopper bought: Nongshim Udon Noodle Bowl; V8 Tropical Orange Juice. List 3 kitchen products "
               "they may buy next, one per line, numbered.",
               "A shopper bought: a cast iron skillet; a chef's knife. List 3 food products they may buy next, "
               "one per line, numbered."]
    first = [a for _, a in next(backend.stream(prompts, batch_size=2))]
    again = [backend.generate_one(p) for p in prompts]
    assert [a.text for a in first] == [a.text for a in again]
    assert all(a.error is None and a.n_tokens > 0 for a in first)
    assert any(parse_answer(a.text, 3)[0] for a in first)
    stats = backend.run_stats()["llm_timing"]
    assert stats["answer_tokens"] == sum(a.n_tokens for a in first + again) and stats["prefill_s"] > 0
