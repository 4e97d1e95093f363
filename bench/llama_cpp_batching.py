"""How much llama.cpp gains from decoding several sequences per batch, on this CPU (issue 14 point 1).

How much decoding several sequences per step gains is a property of llama.cpp's CPU kernels, measured
here apart from the ``llama_cpp`` backend (whose ``llm.llama_cpp.parallel`` uses it): the packaged
SmolLM2 GGUF, one prompt in the chat template, B copies of it in B sequences of one context (one KV
cache per sequence), greedy, ``--steps`` decoding steps; tokens/s of decoding as a ratio to B = 1 in
the same run. The stage's own figures, prefill included, are in ``bench.llm_throughput``. Needs the
``llama-cpp`` extra. Writes bench/results/llama_cpp_batching.md.

    python -m bench.llama_cpp_batching [--batch-sizes 1,4,8,16,32] [--steps 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/llama_cpp_batching.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import publish  # noqa: E402
from lgcd_core.language.llm_backends import resolve_llm  # noqa: E402

PROMPT = "List ten kitchen items that a coffee lover would buy, one per line."


def decode_rate(llm, batch_size: int, steps: int, threads: int) -> tuple[float, bool]:
    """Decoding tokens/s with ``batch_size`` sequences per step, and whether every sequence wrote the same answer."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = batch_size * 512, 512, 512
    params.n_seq_max, params.kv_unified = batch_size, False  # one KV cache per sequence
    params.n_threads = params.n_threads_batch = threads
    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=batch_size, verbose=False)
    text = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n".encode()
    prompt = llm.tokenize(text, add_bos=False, special=True)

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
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from llama_cpp import Llama

    path, gguf = resolve_llm("default", None)
    llm = Llama(model_path=os.path.join(path, gguf), n_ctx=512, n_threads=args.threads, verbose=False)
    rows, base = [], None
    for size in (int(b) for b in args.batch_sizes.split(",")):
        rate, same = decode_rate(llm, size, args.steps, args.threads)
        base = base or rate
        rows.append(f"| {size} | {rate:.0f} | {rate / base:.2f} | {'yes' if same else 'no'} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    publish("\n".join([
        "# llama.cpp decoding: sequences per batch vs tokens/s (packaged SmolLM2-135M GGUF, greedy)",
        "",
        f"`python -m bench.llama_cpp_batching --batch-sizes {args.batch_sizes} --steps {args.steps} "
        f"--threads {args.threads}`; load average at the end {load}.",
        "",
        "| sequences per batch | decoded tokens/s | vs 1 | same answer in every sequence |",
        "|---:|---:|---:|---|",
        *rows,
        "",
    ]), "llama_cpp_batching.md")


if __name__ == "__main__":
    main()
