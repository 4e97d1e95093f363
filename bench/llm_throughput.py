"""Cost per user of the pseudo_texts LLM stage on real users, and the transformers backend vs a bare ``model.generate``.

**Cost per user, by LLM settings** (``--dataset``): the same seeded sample of valid users' source
histories as ``bench.grounding_signal`` (single-domain pseudo users; targets never read) goes through
the real stage code (``generate_pseudo_texts``, fresh answer cache) once per ``--variant``, a list of
``section.field=value`` YAML overrides; the first variant is the reference ('before') and every
other row is also given as a ratio to it, measured in the same run. Per user: seconds, prompt tokens
(without padding, and as computed with padding), answer tokens, seconds of prefill (the prompt's
forward pass) vs decoding (the rest of ``generate``); then the grounding signal of the answers
(co-purchase lift, title-word lift, share of unusable answers; see ``bench.grounding_signal``).
Model loading (and int8 quantisation) is outside the timing. Writes bench/results/llm_throughput.md.

    python -m bench.llm_throughput --dataset food_kitchen --users 100 \\
        --variant "before: llm.quantize=none" --variant "int8: llm.quantize=int8"

**Stage vs bare loop** (no ``--dataset``): both paths use the same model object, the same prompts (the default A->B template filled with
invented grocery items), the same batch size and the same decoding settings. The stage path is
``TransformersBackend.stream`` on the prompts sorted by length, as the stage runs it; the bare loop
batches the prompts in their given order. Tokens are new tokens before the first end/pad token.
Each path runs twice per batch size, in A-B-B-A order, and the faster run of each is reported.

    python -m bench.llm_throughput [--device auto] [--batch-sizes 1,4,16] [--max-new-tokens 24]

Writes the table to bench/results/llm_throughput_stage_vs_bare.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/llm_throughput.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import publish  # noqa: E402
from lgcd_core.config import GenerationConfig, LLMConfig  # noqa: E402
from lgcd_core.device import resolve_device  # noqa: E402
from lgcd_core.language.llm_backends import TransformersBackend  # noqa: E402
from lgcd_core.language.prompts import load_template, render_prompt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "llm_throughput_stage_vs_bare.md"
FULL_STAGE_USERS = 43_663  # single-domain users of Food-Kitchen: the cost of a full LLM stage is given for them
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


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"name: a.b=1 c.d=x"`` -> ``("name", ["a.b=1", "c.d=x"])``."""
    name, sep, assignments = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--variant {text!r}: expected 'name: section.field=value ...'")
    return name.strip(), assignments.split()


def variant_config(raw: dict, assignments: list[str]):  # -> DatasetConfig
    """The dataset YAML ``raw`` with the overrides applied, the LLM source on, no user cap."""
    import copy

    from bench.common import apply_assignment
    from lgcd_core.config import DatasetConfig

    config = copy.deepcopy(raw)
    for assignment in ["pseudo_overlap.source=llm", "pseudo_overlap.max_users=null", *assignments]:
        apply_assignment(config, assignment)
    return DatasetConfig.model_validate(config)


def measure_variant(cfg, sample: dict, device: str) -> dict:
    """One pass of the stage over the sample with a fresh cache: per-user cost, tokens, time split and signal."""
    from bench.grounding_signal import signal_figures
    from lgcd_core.language.pseudo_text import generate_pseudo_texts, make_backend

    backend = make_backend(cfg.llm.resolved(cfg.grounding.n_k), device)
    backend.tokenizer, backend.model  # noqa: B018 -- load (and quantise) outside the timing
    with tempfile.TemporaryDirectory(prefix="llm_throughput_") as cache:
        pseudo, stats = generate_pseudo_texts(cfg, sample["items"], sample["users"], Path(cache), device,
                                              log=lambda _: None, backend=backend)
    n, timing = stats["n_users"], stats["llm_timing"]
    signal = signal_figures(cfg, pseudo, sample["items"], sample["training"], sample["users"], sample["real_targets"],
                            sample["vectors"], device, sample["seed"])
    return {"s_per_user": stats["generation_s"] / n, "prompt_tokens": timing["prompt_tokens"] / n,
            "padded_prompt_tokens": timing["padded_prompt_tokens"] / n, "answer_tokens": timing["answer_tokens"] / n,
            "decode_slots": timing["decode_slots"] / n,
            "prefill_s": timing["prefill_s"] / n, "decode_s": timing["decode_s"] / n,
            "unusable": stats["unusable_share"], "cut": stats["cut_share"], **signal, "load": os.getloadavg()[0]}


def load_sample(dataset: str, n_users: int, seed: int) -> tuple[dict, dict]:
    """The dataset's raw YAML and the seeded user sample of ``bench.grounding_signal`` with what grounding needs."""
    import numpy as np
    import pyarrow.parquet as pq
    import yaml

    from bench.grounding_signal import pseudo_users_from_valid
    from lgcd_core.config import dataset_path, load_dataset_config

    path = dataset_path(dataset)
    cfg = load_dataset_config(path)
    seq_dir = cfg.stage_dir("sequences")
    items = pq.read_table(seq_dir / "items.parquet")
    users, real_targets = pseudo_users_from_valid(items, pq.read_table(seq_dir / "eval_cases.parquet"), n_users, seed)
    sample = {"items": items, "training": pq.read_table(seq_dir / "sequences.parquet"), "users": users,
              "real_targets": real_targets, "vectors": np.load(cfg.stage_dir("item_text_embeddings") / "embeddings.npy"),
              "seed": seed}
    return {**yaml.safe_load(path.read_text()), "name": path.stem}, sample


def variant_rows(results: list[tuple[str, dict]]) -> list[str]:
    """Markdown rows: each variant's figures, with its cost per user and signal as ratios to the first."""
    ref = results[0][1]
    rows = []
    for name, r in results:
        rows.append(
            f"| {name} | {1 / r['s_per_user']:.3f} | {ref['s_per_user'] / r['s_per_user']:.2f} | {r['prompt_tokens']:.0f} | "
            f"{r['padded_prompt_tokens']:.0f} | {r['answer_tokens']:.0f} | "
            f"{r['decode_slots']:.0f} | {r['prefill_s']:.2f} / {r['decode_s']:.2f} | "
            f"{r['unusable']:.1%} | {r['cut']:.1%} | {r['copurchase_lift']:.2f} ({r['copurchase_lift'] / ref['copurchase_lift']:.2f}) | "
            f"{r['title_word'] / r['title_word_chance']:.2f} | {FULL_STAGE_USERS * r['s_per_user'] / 3600:.1f} | {r['load']:.1f} |")
    return rows


def env_prefix() -> str:
    """The environment variables that shaped this run (threads, where the dataset lives), as a command prefix."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LGCD_DATASETS_DIR", "LGCD_DATA_ROOT")
    return "".join(f"{name}={os.environ[name]} " for name in names if name in os.environ)


def run_variants(args: argparse.Namespace) -> None:
    """The ``--dataset`` mode: each variant over the same users, one table with ratios to the first."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw, sample = load_sample(args.dataset, args.users, args.seed)
    variants = [parse_variant(v) for v in args.variant] or [("yaml", [])]
    load_before = os.getloadavg()
    results = []
    for name, assignments in variants:
        results.append((name, measure_variant(variant_config(raw, assignments), sample, "cpu")))
        print(f"{name}: {results[-1]}", flush=True)
    lines = [
        f"# LLM stage cost per user on {args.dataset}, by LLM settings",
        "",
        f"Finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}), {len(sample['users'])} valid users' source histories (seed {args.seed}), "
        f"greedy; load average (1, 5, 15 min) at start {', '.join(f'{x:.1f}' for x in load_before)}.",
        "",
        f"Command: `{env_prefix()}python -m bench.llm_throughput {args.command}`",
        "",
        *[f"- **{name}**: {' '.join(a) or '(the YAML as is)'}" for name, a in variants],
        "",
        "| variant | users/s | speed-up | prompt tokens/user | padded prompt tokens/user | answer tokens/user | "
        "decode slots/user | prefill / decode s per user | unusable | cut | co-purchase lift (ratio) | title-word lift | "
        "full stage, h | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *variant_rows(results),
        "",
        f"Full stage: {FULL_STAGE_USERS:,} single-domain users x seconds per user, at this load and thread count. "
        "Load: 1-minute load average when the variant finished.",
        "",
    ]
    publish("\n".join(lines), args.out.name if args.out != RESULTS else "llm_throughput.md")


def run_stage_vs_bare(args: argparse.Namespace) -> None:
    """The mode without ``--dataset``: the stage's batching vs a bare ``model.generate`` loop, by batch size."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="measure the stage on this dataset's valid users, once per --variant")
    parser.add_argument("--users", type=int, default=100, help="--dataset: users of the seeded sample")
    parser.add_argument("--seed", type=int, default=0, help="--dataset: seed of the sample")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME: section.field=value ...'",
                        help="--dataset: LLM settings to measure (repeatable; the first is the reference)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file (--dataset: its name under bench/results, default llm_throughput.md)")
    args = parser.parse_args(argv)
    args.command = shlex.join(sys.argv[1:] if argv is None else argv)
    if args.dataset:
        run_variants(args)
    else:
        run_stage_vs_bare(args)


if __name__ == "__main__":
    main()
