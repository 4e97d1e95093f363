"""llama.cpp backend for pseudo-text generation (``llm.backend: llama_cpp``; optional extra ``llama-cpp``).

It reads the GGUF file itself, with llama.cpp's own kernels, instead of the float32 weights that
transformers dequantises the GGUF into. Prompts are decoded together with continuous batching: one
llama.cpp context holds ``llm.llama_cpp.parallel`` sequences, each with its own KV cache. A prompt
is formatted with the same chat template as the transformers backend and read in one pass (prefill)
into a free sequence; then every running sequence gets its next token in one shared decoding step,
until its end-of-answer token, ``llm.n_descriptions`` complete list items (checked when a line ends, as
the transformers backend does) or the token cap; the sequence it frees takes the next prompt at once.
Nothing is padded and no finished answer is computed further.

The GGUF's weights are used as they are (``llm.llama_cpp.weights: as_is``) or re-encoded once by
llama.cpp's own converter (``llama_model_quantize``) into a file kept in ``llm.llama_cpp.model_cache``:
``bf16`` or ``f16`` turn a 4-bit file into 16-bit floats holding its values (to their rounding), which
llama.cpp multiplies with its matrix kernels instead of dot products over quantised blocks; on a CPU
with AVX512-BF16, bf16 reads prompts about 3.2x and decodes about 1.25x as fast as the 4-bit file at one
thread (``bench/results/llm_throughput_llama_cpp.md``). The activations are no longer quantised
either, so the answers change and ``weights`` enters the cache key.

Greedy unless ``generation.do_sample``; every prompt's sampling starts from ``generation.seed``, so
the same prompt gives the same answer in any order and next to any other prompts as far as llama.cpp's
arithmetic allows: each sequence has its own KV cache, and with the 4-bit file and f16 the answers of
48-100 Food-Kitchen users were the same at every ``parallel``; with bf16 the number of sequences in a
decoding step changes some rows' arithmetic (``parallel`` 16 and 64 answered a few of 100 users
differently). A run is reproducible for the same prompts and settings; a run resumed from the cache
may answer the remaining prompts slightly differently. The answers are not the transformers backend's
(other kernels, other arithmetic), so they are cached under their own key (``settings['backend'] =
'llama_cpp'``). Threads, context size and ``parallel`` stay out of the key.

Install: ``pip install llama-cpp-python`` (or ``pip install -e '.[llama-cpp]'``); it compiles llama.cpp
from source for a few minutes. It is never part of the default install.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from lgcd_core.config import ConfigError, GenerationConfig, LlamaCppConfig, LLMConfig
from lgcd_core.language.llm_base import Answer, GenerationTimer, chat_text, resolve_llm, token_cap
from lgcd_core.language.parsing import count_complete_items


def model_cache_dir(configured: str | None) -> Path:
    """Where re-encoded GGUF files are kept: ``configured``, else ``$XDG_CACHE_HOME/lgcd/gguf`` (``~/.cache/lgcd/gguf``)."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lgcd" / "gguf"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def reencoded_gguf(source: Path, weights: str, cache_dir: Path) -> Path:
    """``source`` with its weights re-encoded as ``weights`` by llama.cpp's converter, made once; ``source`` for as_is.

    The file is named by the source's content hash, so a changed source is converted again; it is
    written under a temporary name and renamed, so an interrupted conversion leaves nothing behind.
    """
    if weights == "as_is":
        return source
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    target = cache_dir / f"{source.stem}.{file_digest(source)}.{weights}.gguf"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
                    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[weights]
    params.allow_requantize, params.nthread = True, 1
    try:
        with suppress_stdout_stderr(disable=False):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if status != 0:
            raise RuntimeError(f"llama.cpp could not re-encode {source} as {weights} (status {status})")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


class LlamaCppContext:
    """The llama.cpp calls the backend makes: one context of ``parallel`` sequences, each with its own KV cache."""

    def __init__(self, model_path: str, cfg: LlamaCppConfig, seed: int) -> None:
        import llama_cpp
        from llama_cpp import Llama, _internals

        self.llama_cpp = llama_cpp
        # Llama loads the model (and initialises the library); its own one-sequence context stays unused.
        self.llama = Llama(model_path=model_path, n_ctx=256, n_threads=cfg.n_threads, n_threads_batch=cfg.n_threads,
                           n_gpu_layers=cfg.n_gpu_layers, seed=seed, verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = cfg.parallel * cfg.n_ctx  # split evenly: n_ctx per sequence
        params.n_batch = params.n_ubatch = self.n_batch = 512
        params.n_seq_max, params.kv_unified = cfg.parallel, False  # one KV cache per sequence
        # one thread count for every pass: llama.cpp reads a batch of several tokens (a prompt, or one token of each
        # running sequence) with n_threads_batch, which would otherwise default to every core
        params.n_threads = params.n_threads_batch = self.llama.n_threads
        self.ctx = _internals.LlamaContext(model=self.llama._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=cfg.parallel, verbose=False)
        self.n_ctx_per_sequence = cfg.n_ctx
        self.n_vocab = self.llama.n_vocab()
        self.length = [0] * cfg.parallel  # tokens in each sequence's cache

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def piece(self, token: int) -> bytes:
        return self.llama.detokenize([token])

    def is_end(self, token: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    def logits(self, row: int) -> np.ndarray:
        """The logits of batch row ``row`` of the last decode (a view on llama.cpp's buffer)."""
        return np.ctypeslib.as_array(self.ctx.get_logits_ith(row), shape=(self.n_vocab,))

    def prefill(self, seq: int, tokens: list[int]) -> np.ndarray:
        """Empty sequence ``seq``'s cache and read ``tokens`` into it; the last token's logits.

        The whole prompt is read, even the part it shares with the sequence's previous prompt: reusing
        that part's cache changes the arithmetic of the rest (other batch shapes), and with it some
        answers, which would then depend on which prompt came before.
        """
        self.ctx.kv_cache_seq_rm(seq, 0, -1)
        raw = self.batch.batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            for j, token in enumerate(chunk):
                raw.token[j], raw.pos[j], raw.seq_id[j][0], raw.n_seq_id[j], raw.logits[j] = \
                    token, start + j, seq, 1, start + j == len(tokens) - 1
            raw.n_tokens = len(chunk)
            self.ctx.decode(self.batch)
        self.length[seq] = len(tokens)
        return self.logits(raw.n_tokens - 1)

    def step(self, feeds: list[tuple[int, int]]) -> list[np.ndarray]:
        """One decoding step: token ``token`` appended to sequence ``seq`` for each ``(seq, token)``; their logits."""
        raw = self.batch.batch
        for j, (seq, token) in enumerate(feeds):
            raw.token[j], raw.pos[j], raw.seq_id[j][0], raw.n_seq_id[j], raw.logits[j] = \
                token, self.length[seq], seq, 1, True
            self.length[seq] += 1
        raw.n_tokens = len(feeds)
        self.ctx.decode(self.batch)
        return [self.logits(j) for j in range(len(feeds))]


@dataclass
class Running:
    """One prompt being answered in a sequence."""

    index: int
    prompt: list[int]
    rng: np.random.Generator | None
    new: list[int] = field(default_factory=list)
    text: bytes = b""


def choose_token(logits: np.ndarray, gen: GenerationConfig, seen: list[int], rng: np.random.Generator | None) -> int:
    """The next token: greedy, or sampled (temperature, then nucleus ``top_p``); repetition penalty as transformers applies it."""
    if gen.repetition_penalty != 1.0:
        logits = logits.copy()
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        logits[ids] = np.where(logits[ids] > 0, logits[ids] / gen.repetition_penalty, logits[ids] * gen.repetition_penalty)
    if not gen.do_sample:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / gen.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    kept = order[: int(np.searchsorted(np.cumsum(probs[order]), gen.top_p)) + 1]
    return int(rng.choice(kept, p=probs[kept] / probs[kept].sum()))


class LlamaCppBackend:
    """The ``LLMBackend`` interface over llama.cpp; the model loads on the first generation."""

    def __init__(self, llm: LLMConfig) -> None:
        self.llm = llm
        self.gen = llm.generation
        self.path, self.gguf = resolve_llm(llm.model, llm.gguf_file)
        if not self.gguf:
            raise ConfigError("llm.backend 'llama_cpp' reads a GGUF file: set llm.gguf_file (the file inside llm.model)")
        self.model_id = f"{llm.model}|{self.gguf}"
        self.max_new_tokens = token_cap(llm.generation, llm.n_descriptions)
        self.stop_after_items = llm.n_descriptions
        self.settings = {"backend": "llama_cpp", "weights": llm.llama_cpp.weights, **llm.generation.model_dump(),
                         "max_new_tokens": self.max_new_tokens, "stop_after_items": self.stop_after_items}
        self.timer = GenerationTimer()

    @cached_property
    def tokenizer(self):
        """The transformers tokenizer of the same GGUF: only for the chat template, shared with the transformers backend."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, gguf_file=self.gguf, trust_remote_code=self.llm.trust_remote_code)

    @cached_property
    def model(self) -> LlamaCppContext:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as err:
            raise RuntimeError("llm.backend 'llama_cpp' needs the package llama-cpp-python "
                               "(pip install -e '.[llama-cpp]'; it compiles llama.cpp)") from err
        cfg = self.llm.llama_cpp
        path = reencoded_gguf(Path(self.path) / self.gguf, cfg.weights, model_cache_dir(cfg.model_cache))
        return LlamaCppContext(str(path), cfg, self.gen.seed)

    def accept(self, run: Running, token: int) -> bool:
        """Append ``token`` to the answer; whether the answer is finished (end token, cap, or a complete list)."""
        if self.model.is_end(token):
            return True
        run.new.append(token)
        piece = self.model.piece(token)
        run.text += piece
        if len(run.new) >= self.max_new_tokens:
            return True
        return bool(self.stop_after_items) and b"\n" in piece and \
            count_complete_items(run.text.decode("utf-8", errors="replace")) >= self.stop_after_items

    def next_token(self, run: Running, logits: np.ndarray) -> int:
        return choose_token(logits, self.gen, run.prompt + run.new, run.rng)

    def start(self, seq: int, index: int, tokens: list[int]) -> tuple[Running, bool]:
        """Prefill prompt ``index`` into sequence ``seq`` and choose its first token; whether it is already finished."""
        started = time.perf_counter()
        rng = np.random.default_rng(self.gen.seed) if self.gen.do_sample else None
        run = Running(index, tokens, rng)
        finished = self.accept(run, self.next_token(run, self.model.prefill(seq, tokens)))
        self.timer.add_prefill(len(tokens), time.perf_counter() - started)
        return run, finished

    def finish(self, run: Running) -> tuple[int, Answer]:
        self.timer.add_answer(len(run.new))
        return run.index, Answer(run.text.decode("utf-8", errors="replace").strip(), len(run.new))

    def answers(self, prompts: list[str]) -> Iterator[tuple[int, Answer]]:
        """``(prompt index, Answer)`` as each answer finishes (continuous batching over ``parallel`` sequences)."""
        context = self.model
        queue = deque(enumerate(prompts))
        free = list(range(self.llm.llama_cpp.parallel))[::-1]
        running: dict[int, Running] = {}
        while queue or running:
            while queue and free:
                index, prompt = queue.popleft()
                tokens = context.tokenize(chat_text(self.tokenizer, prompt))
                if len(tokens) + self.max_new_tokens > context.n_ctx_per_sequence:
                    yield index, Answer("", 0, error=f"prompt of {len(tokens)} tokens + {self.max_new_tokens} new exceeds "
                                                     f"llm.llama_cpp.n_ctx = {context.n_ctx_per_sequence}")
                    continue
                seq = free.pop()
                run, finished = self.start(seq, index, tokens)
                if finished:
                    free.append(seq)
                    yield self.finish(run)
                else:
                    running[seq] = run
            if not running:
                continue
            started = time.perf_counter()
            rows = context.step([(seq, run.new[-1]) for seq, run in running.items()])
            done = []
            for (seq, run), logits in zip(list(running.items()), rows):
                if self.accept(run, self.next_token(run, logits)):
                    done.append(seq)
            self.timer.add_decode_step(time.perf_counter() - started)
            for seq in done:
                free.append(seq)
                yield self.finish(running.pop(seq))

    def generate(self, prompts: list[str]) -> list[Answer]:
        """The answers of ``prompts``, in their order."""
        answers = dict(self.answers(prompts))
        return [answers[i] for i in range(len(prompts))]

    def stream(self, prompts: list[str], batch_size: int) -> Iterator[list[tuple[int, Answer]]]:
        """Groups of ``batch_size`` answers in the order they finish (each saved by the caller before the next group)."""
        group: list[tuple[int, Answer]] = []
        for item in self.answers(prompts):
            group.append(item)
            if len(group) == batch_size:
                yield group
                group = []
        if group:
            yield group

    def run_stats(self) -> dict:
        """Prompt and answer tokens, and seconds of prefill vs decoding (no padding, no finished answer computed)."""
        return {"llm_timing": self.timer.stats()}
