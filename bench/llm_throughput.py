"""Throughput of the pseudo_texts transformers backend vs a bare ``model.generate`` loop.

Both paths use the same model object, the same prompts (the default A->B template filled with
invented grocery items), the same batch size and the same decoding settings. The stage path is
``TransformersBackend.stream`` on the prompts sorted by length, as the stage runs it; the bare loop
batches the prompts in their given order. Tokens are new tokens before the first end/pad token.
Each path runs twice per batch size, in A-B-B-A order, and the faster run of each is reported.

    python -m bench.llm_throughput [--device auto] [--batch-sizes 1,4,16] [--max-new-tokens 24]

Writes the table to bench/results/llm_throughput.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/llm_throughput.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lgcd_core.config import GenerationConfig, LLMConfig  # noqa: E402
from lgcd_core.device import resolve_device  # noqa: E402
from lgcd_core.language.llm_backends import TransformersBackend  # noqa: E402
from lgcd_core.language.prompts import load_template, render_prompt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "llm_throughput.md"
PRODUCTS = ["Organic green tea", "Dark chocolate bar", "Espresso beans", "Basmati rice", "Garam masala", "Maple syrup",
            "Rolled oats", "Almond butter", "Sea salt flakes", "Jasmine tea", "Coconut milk", "Red lentils",
            "Honey, raw and unfiltered", "Smoked paprika", "Extra virgin olive oil", "Sourdough crackers"]


def make_prompts(n: int) -> list[str]:
    """``n`` prompts of varied length (1 to 6 history items)."""
    template = load_template("default", "a_to_b")
    return [render_prompt(template, "Grocery", "Kitchen",
                          [PRODUCTS[(i + j) % len(PRODUCTS)] for j in range(1 + (i * 5) % 6)], 5) for i in range(n)]


def time_stage(backend: TransformersBackend, prompts: list[str], batch_size: int) -> tuple[int, float]:
    ordered = sorted(prompts, key=len)
    start = time.perf_counter()
    tokens = sum(a.n_tokens for group in backend.stream(ordered, batch_size) for _, a in group)
    return tokens, time.perf_counter() - start


def time_bare(backend: TransformersBackend, prompts: list[str], batch_size: int) -> tuple[int, float]:
    import torch

    tok, model = backend.tokenizer, backend.model
    kwargs = backend.generate_kwargs()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(backend.device)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        stop = (new == tok.pad_token_id) | (new == tok.eos_token_id)
        tokens += int(torch.where(stop.any(1), stop.int().argmax(1), torch.tensor(new.shape[1], device=new.device)).sum())
    return tokens, time.perf_counter() - start


def _secs(run: tuple[int, float]) -> float:
    return run[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    llm = LLMConfig(generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    backend = TransformersBackend(llm, device)
    backend.generate(make_prompts(1))  # warm-up
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        prompts = make_prompts(max(4, 2 * bs))
        runs = [time_stage(backend, prompts, bs), time_bare(backend, prompts, bs)]  # A B, then B A:
        runs += [time_bare(backend, prompts, bs), time_stage(backend, prompts, bs)]  # order effects cancel
        (s_tok, s_time), (b_tok, b_time) = min(runs[0], runs[3], key=_secs), min(runs[1], runs[2], key=_secs)
        rows.append((bs, len(prompts), s_tok / s_time, b_tok / b_time, (s_tok / s_time) / (b_tok / b_time), len(prompts) / s_time))
        print(f"batch {bs}: stage {s_tok / s_time:.1f} tok/s, bare {b_tok / b_time:.1f} tok/s", flush=True)
    lines = [
        "# LLM throughput: pseudo_texts transformers backend vs bare `model.generate`",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, device `{device}`, {platform.processor() or platform.machine()}, "
        f"model `{backend.model_id}`, greedy, max_new_tokens {args.max_new_tokens}, "
        "prompts = max(4, 2 x batch), best of two runs (A-B-B-A order).",
        "",
        "| batch | prompts | stage tokens/s | bare tokens/s | stage / bare | stage users/s |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {bs} | {n} | {s:.1f} | {b:.1f} | {r:.2f} | {u:.2f} |" for bs, n, s, b, r, u in rows],
        "",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
