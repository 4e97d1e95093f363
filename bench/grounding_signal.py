"""Does LLM grounding carry signal on real data? Measured on valid users' source histories only.

    python -m bench.grounding_signal [--dataset food_kitchen] [--users 100] [--seed 0]

Needs `<dataset>/sequences` and `<dataset>/item_text_embeddings` materialized. For a seeded sample of
valid cases, the user's *source-domain* history items (the domain opposite the case's target; the
target itself is never read) are turned into a pseudo user and sent through the real stage code:
prompt → LLM (the YAML's, offline SmolLM2 by default) → parsing → FAISS grounding to n_K items.
The grounded items are then compared with the user's *other* real target-domain items (those in the
history before the target) and with the training data:

- `title_word`: share of grounded items whose title shares a content word with one of the user's
  real target-domain history items; chance = the same for uniformly random target-domain items;
- `copurchase`: share of grounded items co-purchased (same training overlap sequence) with one of the
  user's source items; chance likewise (`lgcd_core.language.grounding.category_overlap_rate`).

Prints a table and writes bench/results/grounding_signal_<dataset>.md.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from bench.common import publish


def pseudo_users_from_valid(items: pa.Table, eval_cases: pa.Table, n: int, seed: int) -> tuple[pa.Table, dict[int, list[int]]]:
    """A sequences-shaped table of single-domain users built from valid histories' source items."""
    domains = np.asarray(items.column("domain").to_pylist())
    cases = [c for c in eval_cases.to_pylist() if c["split"] == "valid"]
    chosen = sorted(np.random.default_rng(seed).choice(len(cases), size=min(n, len(cases)), replace=False))
    rows, real_targets = [], {}
    for offset, i in enumerate(chosen):
        case = cases[i]
        target = case["target_domain"]
        source = "A" if target == "B" else "B"
        src = [x for x in case["history"] if domains[x - 1] == source]
        tgt = [x for x in case["history"] if domains[x - 1] == target]
        if not src or not tgt:
            continue
        user_idx = 10_000_000 + offset
        rows.append({"user_idx": user_idx, "user_id": f"valid:{case['case_id']}", "user_type": f"{source}-only", "items": src})
        real_targets[user_idx] = tgt
    table = pa.Table.from_pylist(rows, schema=pa.schema([("user_idx", pa.int32()), ("user_id", pa.string()),
                                                        ("user_type", pa.string()), ("items", pa.list_(pa.int32()))]))
    return table, real_targets


def title_word_rates(grounded: pa.Table, items: pa.Table, real_targets: dict[int, list[int]], seed: int) -> tuple[float, float]:
    """Share of grounded items sharing a title word with the user's real target items, and chance."""
    from lgcd_core.language.grounding import title_words

    words = [title_words(t) for t in items.column("title").to_pylist()]
    domains = np.asarray(items.column("domain").to_pylist())
    rng = np.random.default_rng(seed)
    ours, chance = [], []
    for row in grounded.to_pylist():
        vocab = set().union(*(words[i - 1] for i in real_targets[row["user_idx"]]))
        pool = np.flatnonzero(domains == row["target_domain"]) + 1
        random_items = rng.choice(pool, size=len(row["items"]), replace=False)
        ours.append(np.mean([bool(words[i - 1] & vocab) for i in row["items"]]))
        chance.append(np.mean([bool(words[i - 1] & vocab) for i in random_items]))
    return float(np.mean(ours)), float(np.mean(chance))


def signal_figures(cfg, pseudo: pa.Table, items: pa.Table, training: pa.Table, users: pa.Table,
                   real_targets: dict[int, list[int]], vectors: np.ndarray, device: str, seed: int) -> dict:
    """Ground the answers of ``pseudo`` and measure both signals (ours and chance) on ``users``.

    Shared with ``bench.llm_throughput``, which compares the signal of several LLM settings.
    """
    from lgcd_core.language.grounding import category_overlap_rate, ground_pseudo_texts

    grounded, _ = ground_pseudo_texts(pseudo, items, cfg, device, item_embeddings=vectors, sequences=users)
    ours, chance = title_word_rates(grounded, items, real_targets, seed)
    both = pa.concat_tables([training.select(users.column_names).cast(users.schema), users])
    co = category_overlap_rate(grounded, items, both)
    return {"title_word": ours, "title_word_chance": chance, "copurchase": co["copurchase_rate"],
            "copurchase_chance": co["copurchase_rate_chance"],
            "copurchase_lift": co["copurchase_rate"] / max(co["copurchase_rate_chance"], 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="food_kitchen")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pyarrow.parquet as pq

    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.device import resolve_device
    from lgcd_core.language.pseudo_text import generate_pseudo_texts

    cfg = load_dataset_config(dataset_path(args.dataset))
    cfg = cfg.model_copy(update={"pseudo_overlap": cfg.pseudo_overlap.model_copy(update={"max_users": None, "source": "llm"})})
    seq_dir = cfg.stage_dir("sequences")
    items = pq.read_table(seq_dir / "items.parquet")
    training = pq.read_table(seq_dir / "sequences.parquet")
    users, real_targets = pseudo_users_from_valid(items, pq.read_table(seq_dir / "eval_cases.parquet"), args.users, args.seed)
    vectors = np.load(cfg.stage_dir("item_text_embeddings") / "embeddings.npy")
    device = resolve_device(cfg.device)
    cache = cfg.stage_dir("cache") / "llm_signal_bench"
    pseudo, gen_stats = generate_pseudo_texts(cfg, items, users, cache, device)
    fig = signal_figures(cfg, pseudo, items, training, users, real_targets, vectors, device, args.seed)
    lines = [
        f"# Grounding signal on {args.dataset} (valid users' source histories; targets never read)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; LLM `{gen_stats['model']}`, {len(users)} users, "
        f"n_K = {cfg.grounding.n_k}, {gen_stats['n_descriptions']} descriptions asked, answers cut by the "
        f"{gen_stats['max_new_tokens']}-token cap {gen_stats['cut_share']:.1%}, unusable answers "
        f"{gen_stats['unusable_share']:.1%} (grounded from the source history instead).",
        "",
        "| measure | grounded items | random target-domain items | lift |",
        "|---|---:|---:|---:|",
        f"| shares a title word with the user's real target-domain items | {fig['title_word']:.3f} | "
        f"{fig['title_word_chance']:.3f} | {fig['title_word'] / fig['title_word_chance']:.2f} |",
        f"| co-purchased with a source item in training data | {fig['copurchase']:.3f} | {fig['copurchase_chance']:.3f} | "
        f"{fig['copurchase_lift']:.2f} |",
    ]
    publish("\n".join(lines) + "\n", f"grounding_signal_{args.dataset}.md")


if __name__ == "__main__":
    main()
