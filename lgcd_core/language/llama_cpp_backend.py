"""llama.cpp backend for pseudo-text generation (``llm.backend: llama_cpp``; optional extra ``llama-cpp``).

It reads the GGUF file itself, with llama.cpp's own quantised kernels, instead of the float weights that
transformers dequantises the GGUF into. One prompt at a time: the prompt is formatted with the same chat
template as the transformers backend, read in one pass (prefill), then decoded token by token
until the end-of-answer token, ``llm.n_descriptions`` complete list items (checked when a line ends, as
the transformers backend does) or the token cap. Greedy unless ``generation.do_sample``; sampling is
seeded per prompt, so the same prompt gives the same answer in any order.

The answers are not the transformers backend's (other kernels, quantised arithmetic), so they are
cached under their own key (``settings['backend'] = 'llama_cpp'``). Threads and context size change
the speed, not the answers, and stay out of the key.

Install: ``pip install llama-cpp-python`` (or ``pip install -e '.[llama-cpp]'``); it compiles llama.cpp
from source for a few minutes. It is never part of the default install.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from functools import cached_property

from lgcd_core.config import ConfigError, LLMConfig
from lgcd_core.language.llm_backends import Answer, GenerationTimer, chat_text, resolve_llm, token_cap
from lgcd_core.language.parsing import count_complete_items


class LlamaCppBackend:
    """The ``LLMBackend`` interface over ``llama_cpp.Llama``; the model loads on the first generation."""

    def __init__(self, llm: LLMConfig) -> None:
        self.llm = llm
        self.gen = llm.generation
        self.path, self.gguf = resolve_llm(llm.model, llm.gguf_file)
        if not self.gguf:
            raise ConfigError("llm.backend 'llama_cpp' reads a GGUF file: set llm.gguf_file (the file inside llm.model)")
        self.model_id = f"{llm.model}|{self.gguf}"
        self.max_new_tokens = token_cap(llm.generation, llm.n_descriptions)
        self.stop_after_items = llm.n_descriptions
        self.settings = {"backend": "llama_cpp", **llm.generation.model_dump(), "max_new_tokens": self.max_new_tokens,
                         "stop_after_items": self.stop_after_items}
        self.timer = GenerationTimer()

    @cached_property
    def tokenizer(self):
        """The transformers tokenizer of the same GGUF: only for the chat template, shared with the transformers backend."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, gguf_file=self.gguf, trust_remote_code=self.llm.trust_remote_code)

    @cached_property
    def model(self):  # -> llama_cpp.Llama
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise RuntimeError("llm.backend 'llama_cpp' needs the package llama-cpp-python "
                               "(pip install -e '.[llama-cpp]'; it compiles llama.cpp)") from err
        cfg = self.llm.llama_cpp
        return Llama(model_path=os.path.join(self.path, self.gguf), n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
                     n_gpu_layers=cfg.n_gpu_layers, seed=self.gen.seed, verbose=False)

    def sampling(self) -> dict:
        """``Llama.generate`` settings from the YAML: temp 0 is greedy; llama.cpp's own repeat penalty is off unless set."""
        if not self.gen.do_sample:
            return {"temp": 0.0, "repeat_penalty": self.gen.repetition_penalty}
        return {"temp": self.gen.temperature, "top_p": self.gen.top_p, "top_k": 0, "min_p": 0.0,
                "repeat_penalty": self.gen.repetition_penalty}

    def generate_one(self, prompt: str) -> Answer:
        """One prompt: prefill, then decode until the end token, a complete list or the cap."""
        model = self.model
        tokens = model.tokenize(chat_text(self.tokenizer, prompt).encode("utf-8"), add_bos=False, special=True)
        if len(tokens) + self.max_new_tokens > model.n_ctx():
            return Answer("", 0, error=f"prompt of {len(tokens)} tokens + {self.max_new_tokens} new exceeds "
                                       f"llm.llama_cpp.n_ctx = {model.n_ctx()}")
        model.set_seed(self.gen.seed)
        new: list[int] = []
        text = b""
        started = time.perf_counter()
        first = None
        for token in model.generate(tokens, reset=True, **self.sampling()):
            if first is None:
                first = time.perf_counter()
            if token == model.token_eos():
                break
            new.append(token)
            piece = model.detokenize([token])
            text += piece
            if len(new) >= self.max_new_tokens:
                break
            if self.stop_after_items and b"\n" in piece and \
                    count_complete_items(text.decode("utf-8", errors="replace")) >= self.stop_after_items:
                break
        ended = time.perf_counter()
        first = first or ended  # the first token comes out of the prefill pass
        self.timer.add_unbatched(len(tokens), len(new), first - started, ended - first)
        return Answer(text.decode("utf-8", errors="replace").strip(), len(new))

    def stream(self, prompts: list[str], batch_size: int) -> Iterator[list[tuple[int, Answer]]]:
        """Groups of ``batch_size`` answers (each saved by the caller before the next group is generated)."""
        for start in range(0, len(prompts), batch_size):
            yield [(i, self.generate_one(p)) for i, p in enumerate(prompts[start : start + batch_size], start=start)]

    def run_stats(self) -> dict:
        """Prompt and answer tokens, and seconds of prefill vs decoding (no padding: one prompt at a time)."""
        return {"llm_timing": self.timer.stats()}
