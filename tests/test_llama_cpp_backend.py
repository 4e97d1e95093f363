"""The llama.cpp backend: stop rules, continuous batching, sampling and cache key with a scripted context, and the
real GGUF where llama-cpp-python is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lgcd_core.config import ConfigError, GenerationConfig, LLMConfig
from lgcd_core.language.generation_cache import cache_key
from lgcd_core.language.llama_cpp_backend import LlamaCppBackend, choose_token, model_cache_dir, reencoded_gguf
from lgcd_core.language.llm_backends import TransformersBackend
from lgcd_core.language.llm_base import resolve_llm
from lgcd_core.language.parsing import parse_answer
from lgcd_core.language.pseudo_text import make_backend

EOS, VOCAB = 99, 100
PIECES = {1: "Sure:\n", 2: "1. Wok", 3: "\n", 4: "2. Ladle", 5: "3. Tongs", 6: "4. Pan"}


def one_hot(token: int) -> np.ndarray:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[token] = 1.0
    return logits


class ScriptedContext:
    """What the backend uses of :class:`LlamaCppContext`: prompt ``p`` answers ``scripts[p]`` (then the end token)."""

    def __init__(self, scripts: dict[str, list[int]], n_ctx: int = 2048) -> None:
        self.prompts = list(scripts)
        self.scripts = [[*s, EOS] for s in scripts.values()]
        self.n_ctx_per_sequence = n_ctx
        self.at: dict[int, tuple[int, int]] = {}  # sequence -> (script, tokens fed so far)
        self.step_sizes: list[int] = []
        self.prefills: list[tuple[int, int]] = []  # (sequence, script)

    def tokenize(self, text: str) -> list[int]:
        return [7, 8, self.prompts.index(text)]  # the prompt's number is its last token

    def piece(self, token: int) -> bytes:
        return PIECES[token].encode()

    def is_end(self, token: int) -> bool:
        return token == EOS

    def prefill(self, seq: int, tokens: list[int]) -> np.ndarray:
        self.at[seq] = (tokens[-1], 0)
        self.prefills.append((seq, tokens[-1]))
        return one_hot(self.scripts[tokens[-1]][0])

    def step(self, feeds: list[tuple[int, int]]) -> list[np.ndarray]:
        self.step_sizes.append(len(feeds))
        rows = []
        for seq, token in feeds:
            script, fed = self.at[seq]
            assert self.scripts[script][fed] == token  # each sequence is fed its own last token
            self.at[seq] = (script, fed + 1)
            rows.append(one_hot(self.scripts[script][fed + 1]))
        return rows


class PlainTokenizer:
    chat_template = None


def backend_with(scripts: dict[str, list[int]], n_ctx: int = 2048, parallel: int = 16,
                 **llm) -> tuple[LlamaCppBackend, ScriptedContext]:
    backend = LlamaCppBackend(LLMConfig(backend="llama_cpp", llama_cpp={"parallel": parallel}, **llm))
    context = ScriptedContext(scripts, n_ctx)
    backend.__dict__.update(model=context, tokenizer=PlainTokenizer())  # the cached properties, filled in
    return backend, context


def test_an_answer_stops_at_n_complete_items_the_end_token_or_the_cap() -> None:
    items = [1, 2, 3, 4, 3, 5, 3, 6, 3]
    complete, _ = backend_with({"p": items}, n_descriptions=2)
    [answer] = complete.generate(["p"])
    assert answer.text == "Sure:\n1. Wok\n2. Ladle" and answer.n_tokens == 5  # stopped on the line that completed item 2
    assert parse_answer(answer.text, 2)[0] == ["Wok", "Ladle"]

    ended, _ = backend_with({"p": [1, 2, 3]}, n_descriptions=5)
    assert ended.generate(["p"])[0].text == "Sure:\n1. Wok" and ended.timer.answer_tokens == 3

    capped, _ = backend_with({"p": items}, n_descriptions=5, generation=GenerationConfig(max_new_tokens=4))
    [answer] = capped.generate(["p"])
    assert answer.n_tokens == 4 and answer.text == "Sure:\n1. Wok\n2. Ladle"
    stats = capped.run_stats()["llm_timing"]
    assert stats["prompt_tokens"] == stats["padded_prompt_tokens"] == 3 and stats["answer_tokens"] == stats["decode_slots"] == 4


def test_continuous_batching_refills_a_finished_sequence_and_keeps_each_answer_its_own() -> None:
    scripts = {"a": [1, 2, 3, 4, 3, 5, 3], "b": [2], "c": [1, 2, 3, 4], "d": [], "e": [4, 3, 5, 3, 6, 3, 2, 3]}
    backend, context = backend_with(scripts, parallel=2)
    groups = list(backend.stream(list(scripts), batch_size=2))
    answers = dict(item for group in groups for item in group)
    assert {i: a.text for i, a in answers.items()} == {
        i: "".join(PIECES[t] for t in s).strip() for i, s in enumerate(scripts.values())}
    assert [len(g) for g in groups] == [2, 2, 1]
    assert max(context.step_sizes) == 2  # never more sequences than `parallel`
    assert sum(context.step_sizes) == sum(len(s) for s in scripts.values())  # no step computes a finished answer
    assert len(context.step_sizes) < sum(len(s) for s in scripts.values())  # and answers were decoded side by side
    assert [script for _, script in context.prefills] == [0, 1, 2, 3, 4]  # prompts start in their order...
    assert [seq for seq, _ in context.prefills[:2]] == [0, 1] and {seq for seq, _ in context.prefills} == {0, 1}  # ...in freed sequences
    assert backend.generate(list(scripts)) == [answers[i] for i in range(len(scripts))]


def test_a_prompt_that_does_not_fit_the_context_is_a_failed_answer_not_a_crash() -> None:
    backend, _ = backend_with({"p": [1], "q": [2]}, n_ctx=40, generation=GenerationConfig(max_new_tokens=38))  # 3 + 38 > 40
    answers = backend.generate(["p", "q"])
    assert all(a.error and "n_ctx" in a.error and a.text == "" for a in answers)


def test_greedy_picks_the_argmax_and_sampling_is_seeded_nucleus_sampling_with_transformers_repetition_penalty() -> None:
    logits = np.array([0.0, 3.0, 2.9, -1.0, 1.0], dtype=np.float32)
    assert choose_token(logits, GenerationConfig(), [], None) == 1
    penalised = GenerationConfig(repetition_penalty=1.2)
    assert choose_token(logits, penalised, [1, 1], None) == 2 and logits[1] == 3.0  # 3.0 / 1.2 < 2.9; input untouched
    assert choose_token(np.array([-2.0, -1.0, -1.1]), penalised, [1], None) == 2  # a negative logit is multiplied

    sampled = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, seed=3)
    draws = [choose_token(logits, sampled, [], np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1]  # the same seed, the same draw
    many = {choose_token(logits, sampled, [], rng) for rng in [np.random.default_rng(0)] * 200}
    assert many == {1, 2, 4}  # probabilities .474, .429, .064 reach 95% (0 and 3 fall outside the nucleus)
    narrow = GenerationConfig(do_sample=True, top_p=0.01)
    assert {choose_token(logits, narrow, [], np.random.default_rng(s)) for s in range(20)} == {1}


def test_its_answers_are_cached_apart_from_the_transformers_backends_and_it_needs_a_gguf() -> None:
    llama, torch_backend = make_backend(LLMConfig(backend="llama_cpp"), "cpu"), TransformersBackend(LLMConfig(), "cpu")
    assert isinstance(llama, LlamaCppBackend) and llama.model_id == torch_backend.model_id
    assert cache_key(llama.model_id, "t", "p", llama.settings) != cache_key(torch_backend.model_id, "t", "p", torch_backend.settings)
    speed_only = LlamaCppBackend(LLMConfig(backend="llama_cpp", llama_cpp={"n_threads": 1, "parallel": 3, "n_ctx": 512}))
    assert speed_only.settings == llama.settings
    as_is = LlamaCppBackend(LLMConfig(backend="llama_cpp", llama_cpp={"weights": "as_is"}))
    assert cache_key(llama.model_id, "t", "p", llama.settings) != cache_key(as_is.model_id, "t", "p", as_is.settings)
    with pytest.raises(ConfigError, match="GGUF"):
        LlamaCppBackend(LLMConfig(backend="llama_cpp", model="some/safetensors-model"))


PROMPTS = [
    "A shopper bought: Nongshim Udon Noodle Bowl; V8 Tropical Orange Juice. List 3 kitchen products they may buy next, "
    "one per line, numbered.",
    "A shopper bought: a cast iron skillet; a chef's knife. List 3 food products they may buy next, one per line, numbered.",
    "A shopper bought: green tea; honey; oat milk. List 3 kitchen products they may buy next, one per line, numbered.",
    "A shopper bought: a stand mixer. List 3 food products they may buy next, one per line, numbered.",
    "A shopper bought: espresso beans; a milk frother. List 3 kitchen products they may buy next, one per line, numbered.",
]


def test_the_model_cache_is_the_configured_folder_or_the_users_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    assert model_cache_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir(None) == tmp_path / "xdg" / "lgcd" / "gguf"


def test_the_packaged_gguf_is_re_encoded_once_by_content_and_a_failed_conversion_leaves_nothing(tmp_path) -> None:
    pytest.importorskip("llama_cpp", reason="optional extra llama-cpp (pip install -e '.[llama-cpp]') not installed")
    path, gguf = resolve_llm("default", None)
    source = Path(path) / gguf
    assert reencoded_gguf(source, "as_is", tmp_path) == source
    f16 = reencoded_gguf(source, "f16", tmp_path / "cache")
    assert f16.is_file() and f16.stat().st_size > 2.5 * source.stat().st_size  # 16-bit floats instead of ~4.5 bits
    made = f16.stat().st_mtime_ns
    assert reencoded_gguf(source, "f16", tmp_path / "cache") == f16 and f16.stat().st_mtime_ns == made  # not made twice
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f16.name]

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match="could not re-encode"):
        reencoded_gguf(broken, "f16", tmp_path / "cache2")
    assert not any((tmp_path / "cache2").iterdir())


@pytest.mark.parametrize("weights", ["bf16", "as_is"])
def test_the_packaged_gguf_answers_the_same_alone_side_by_side_and_in_any_order(weights: str, tmp_path) -> None:
    pytest.importorskip("llama_cpp", reason="optional extra llama-cpp (pip install -e '.[llama-cpp]') not installed")
    settings = {"n_threads": 1, "weights": weights, "model_cache": str(tmp_path)}
    alone = LlamaCppBackend(LLMConfig(backend="llama_cpp", n_descriptions=3, llama_cpp={**settings, "parallel": 1}))
    batched = LlamaCppBackend(LLMConfig(backend="llama_cpp", n_descriptions=3, llama_cpp={**settings, "parallel": 3}))
    first = alone.generate(PROMPTS)
    side_by_side = dict(item for group in batched.stream(PROMPTS, batch_size=2) for item in group)
    order = [3, 0, 4, 2, 1]
    shuffled = batched.generate([PROMPTS[i] for i in order])  # other neighbours, other sequences, other cached prefixes
    assert [a.text for a in first] == [side_by_side[i].text for i in range(len(PROMPTS))]
    assert [first[i].text for i in order] == [a.text for a in shuffled]
    assert all(a.error is None and a.n_tokens > 0 for a in first)
    assert sum(bool(parse_answer(a.text, 3)[0]) for a in first) >= 3
    stats = batched.run_stats()["llm_timing"]
    assert stats["answer_tokens"] == 2 * sum(a.n_tokens for a in first) and stats["prefill_s"] > 0 and stats["decode_s"] > 0
