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

import numpy as np  # noqa: E402

from bench.common import publish  # noqa: E402
from lgcd_core.language.llama_cpp_backend import model_cache_dir, reencoded_gguf  # noqa: E402
from lgcd_core.language.llm_backends import resolve_llm  # noqa: E402

PROMPT = "List ten kitchen items that a coffee lover would buy, one per line."
LONG_PROMPT = "A shopper bought, oldest first:\n" + "\n".join(
    f"{i}. Organic whole bean coffee, dark roast, 12 ounce bag, fair trade certified" for i in range(1, 13))


def context(llm, n_sequences: int, threads: int):  # -> (LlamaContext, LlamaBatch)
    """A context of ``n_sequences`` sequences with their own KV caches, every pass on ``threads`` threads."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = n_sequences * 512, 512, 512
    params.n_seq_max, params.kv_unified = n_sequences, False
    params.n_threads = params.n_threads_batch = threads
    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    return ctx, _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=n_sequences, verbose=False)


def chat_tokens(llm, text: str) -> list[int]:
    return llm.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n".encode(), add_bos=False, special=True)


def prefill_rate(llm, threads: int) -> tuple[float, int]:
    """Prompt tokens/s reading LONG_PROMPT (best of 3), and its length in tokens."""
    ctx, batch = context(llm, 1, threads)
    prompt = chat_tokens(llm, LONG_PROMPT)
    best = float("inf")
    for _ in range(3):
        ctx.kv_cache_clear()
        batch.reset()
        batch.add_sequence(prompt, 0, False)
        start = time.perf_counter()
        ctx.decode(batch)
        best = min(best, time.perf_counter() - start)
    ctx.close()
    return len(prompt) / best, len(prompt)


def decode_rate(llm, batch_size: int, steps: int, threads: int) -> tuple[float, bool]:
    """Decoding tokens/s with ``batch_size`` sequences per step, and whether every sequence wrote the same answer."""
    ctx, batch = context(llm, batch_size, threads)
    prompt = chat_tokens(llm, PROMPT)

    def argmax(row: int) -> int:
        return int(np.ctypeslib.as_array(ctx.get_logits_ith(row), shape=(llm.n_vocab(),)).argmax())

    answers = []
    for seq in range(batch_size):  # prefill, one sequence at a time
        batch.reset()
        batch.add_sequence(prompt, seq, False)
        ctx.decode(batch)
        answers.append([argmax(len(prompt) - 1)])
    start = time.perf_counter()
    for step in range(steps):
        raw = batch.batch
        for seq in range(batch_size):
            raw.token[seq], raw.pos[seq], raw.seq_id[seq][0] = answers[seq][-1], len(prompt) + step, seq
            raw.n_seq_id[seq], raw.logits[seq] = 1, True
        raw.n_tokens = batch_size
        ctx.decode(batch)
        for seq in range(batch_size):
            answers[seq].append(argmax(seq))
    seconds = time.perf_counter() - start
    ctx.close()
    return batch_size * steps / seconds, len({tuple(a) for a in answers}) == 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="as_is,bf16,f16")
    parser.add_argument("--batch-sizes", default="1,16,32,64")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from llama_cpp import Llama

    path, gguf = resolve_llm("default", None)
    rows, prefill_rows = [], []
    for weights in args.weights.split(","):
        model = reencoded_gguf(Path(path) / gguf, weights, model_cache_dir(None))
        llm = Llama(model_path=str(model), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        rate, n_tokens = prefill_rate(llm, args.threads)
        prefill_rows.append(f"| {weights} | {n_tokens} | {rate:.0f} |")
        base = None
        for size in (int(b) for b in args.batch_sizes.split(",")):
            rate, same = decode_rate(llm, size, args.steps, args.threads)
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
