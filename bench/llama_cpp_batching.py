"""llama.cpp's CPU kernels by weight encoding: prompt tokens/s, and decoding tokens/s by sequences per step.

What ``llm.llama_cpp.weights`` and ``llm.llama_cpp.parallel`` buy, measured apart from the backend: the
packaged SmolLM2 GGUF as it is and re-encoded by :func:`reencoded_gguf` (``--weights``); for each, the
best of 3 reads of a ~250-token prompt in the chat template (prefill tokens/s), then B copies of a short
prompt in B sequences of one context (one KV cache per sequence), greedy, ``--steps`` decoding steps
(tokens/s, and its ratio to B = 1 with the same weights, in the same run). Every sequence is busy all
along, so these are the rates continuous batching reaches in a long stage, without its fill and drain.
The stage's own figures are in ``bench.llm_throughput``. Needs the ``llama-cpp`` extra. Writes
bench/results/llama_cpp_batching.md.

    python -m bench.llama_cpp_batching [--weights as_is,bf16,f16] [--batch-sizes 1,16,32,64] [--steps 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/llama_cpp_batching.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import publish  # noqa: E402
from lgcd_core.config import LlamaCppConfig  # noqa: E402
from lgcd_core.language.llama_cpp_backend import LlamaCppContext, model_cache_dir, reencoded_gguf  # noqa: E402
from lgcd_core.language.llm_base import resolve_llm  # noqa: E402

PROMPT = "List ten kitchen items that a coffee lover would buy, one per line."
LONG_PROMPT = "A shopper bought, oldest first:\n" + "\n".join(
    f"{i}. Organic whole bean coffee, dark roast, 12 ounce bag, fair trade certified" for i in range(1, 13))


def chat_text(text: str) -> str:
    """``text`` as a user turn of SmolLM2's chat template, the assistant's turn opened."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def open_context(model_path: Path, n_sequences: int, threads: int) -> LlamaCppContext:
    """The backend's own context: ``n_sequences`` sequences with their own KV caches, every pass on ``threads``."""
    return LlamaCppContext(str(model_path), LlamaCppConfig(parallel=n_sequences, n_ctx=512, n_threads=threads), seed=0)


def prefill_rate(model_path: Path, threads: int) -> tuple[float, int]:
    """Prompt tokens/s reading LONG_PROMPT (best of 3), and its length in tokens."""
    context = open_context(model_path, 1, threads)
    prompt = context.tokenize(chat_text(LONG_PROMPT))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        context.prefill(0, prompt)
        best = min(best, time.perf_counter() - start)
    return len(prompt) / best, len(prompt)


def decode_rate(model_path: Path, batch_size: int, steps: int, threads: int) -> tuple[float, bool]:
    """Decoding tokens/s with ``batch_size`` sequences per step, and whether every sequence wrote the same answer."""
    context = open_context(model_path, batch_size, threads)
    prompt = context.tokenize(chat_text(PROMPT))
    answers = [[int(context.prefill(seq, prompt).argmax())] for seq in range(batch_size)]
    start = time.perf_counter()
    for _ in range(steps):
        rows = context.step([(seq, answer[-1]) for seq, answer in enumerate(answers)])
        for answer, logits in zip(answers, rows):
            answer.append(int(logits.argmax()))
    seconds = time.perf_counter() - start
    return batch_size * steps / seconds, len({tuple(a) for a in answers}) == 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="as_is,bf16,f16")
    parser.add_argument("--batch-sizes", default="1,16,32,64")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    path, gguf = resolve_llm("default", None)
    rows, prefill_rows = [], []
    for weights in args.weights.split(","):
        model = reencoded_gguf(Path(path) / gguf, weights, model_cache_dir(None))
        rate, n_tokens = prefill_rate(model, args.threads)
        prefill_rows.append(f"| {weights} | {n_tokens} | {rate:.0f} |")
        base = None
        for size in (int(b) for b in args.batch_sizes.split(",")):
            rate, same = decode_rate(model, size, args.steps, args.threads)
            base = base or rate
            rows.append(f"| {weights} | {size} | {rate:.0f} | {rate / base:.2f} | {'yes' if same else 'no'} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    publish("\n".join([
        "# llama.cpp kernels by weight encoding: prompt and decoding tokens/s (packaged SmolLM2-135M GGUF, greedy)",
        "",
        f"`python -m bench.llama_cpp_batching --weights {args.weights} --batch-sizes {args.batch_sizes} "
        f"--steps {args.steps} --threads {args.threads}`; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; load average at the end {load}.",
        "",
        "| weights | prompt tokens | prompt tokens/s (prefill) |",
        "|---|---:|---:|",
        *prefill_rows,
        "",
        "| weights | sequences per step | decoded tokens/s | vs 1 sequence | same answer in every sequence |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
    ]), "llama_cpp_batching.md")


if __name__ == "__main__":
    main()
