"""How much does each LLM-free pseudo source know about a user's next target-domain item? (no LLM, no training)

    python -m bench.pseudo_source_signal [--dataset demo] [--split valid] [--materialize]

Needs `<dataset>/sequences` and `<dataset>/item_text_embeddings` (``--materialize`` builds them, and
the data stages before them, in the current data root: set LGCD_DATA_ROOT to a temporary folder).
For every case of the split (the target itself is never read), the case's source-domain items (the
domain opposite the target), last ``llm.history_items`` of them as every pseudo source reads, give:

- *candidate scores* on the evaluation's own candidates (the target and ``evaluation.n_negatives``
  negatives, same seed; rank = 1 + #negatives scoring >= the target, ties against the signal):
  `text_mean` cosine to the normalised mean vector of the source items; `text_max` best cosine over
  them; `collaborative` the co-purchase count sum of `pseudo_sources` (C = S_srcᵀ S_tgt over training
  overlap users), raw, and `+popularity` with the stage's tie-break; `popularity` alone (overlap users'
  purchases of the item), a non-personal reference; chance HR@10 = 10 / (n_negatives + 1);
- *grounded hits*: the share of cases whose target is among the n_K items the real stage code gives
  (`grounding.ground_source_items` for `text`, `pseudo_sources.ground_collaborative`), over the
  whole target domain.

Prints a table and writes bench/results/pseudo_source_signal_<dataset>.md.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from bench.common import publish

SIGNALS = ("text_mean", "text_max", "collaborative", "collaborative+popularity", "popularity")


def materialize_inputs(dataset: str) -> None:
    """The data stages and item_text_embeddings of ``dataset``, into the current data root."""
    import dagster as dg

    from lgcd_core import stages
    from lgcd_core.config import discover_datasets
    from lgcd_pipeline.definitions import build_definitions

    defs = build_definitions([c for c in discover_datasets() if c.name == dataset])
    names = [s.name for s in stages.in_group("data")] + [stages.ITEM_TEXT_EMBEDDINGS.name]
    result = dg.materialize(defs.assets, selection=[dg.AssetKey([dataset, n]) for n in names],
                            instance=dg.DagsterInstance.ephemeral())
    if not result.success:
        raise SystemExit(f"materializing {names} of {dataset} failed")


def case_sources(cases: list[dict], domains: np.ndarray, history_items: int) -> list[list[int]]:
    """Each case's last ``history_items`` items of its source domain (the one opposite the target)."""
    out = []
    for case in cases:
        source = "A" if case["target_domain"] == "B" else "B"
        out.append([i for i in case["history"] if domains[i - 1] == source][-history_items:])
    return out


def candidate_scores(cases: list[dict], sources: list[list[int]], negatives: np.ndarray, vectors: np.ndarray,
                     items: pa.Table, sequences: pa.Table) -> dict[str, np.ndarray]:
    """signal -> (n_cases, 1 + n_negatives) scores, column 0 the target."""
    from lgcd_core.language.pseudo_sources import cooccurrence, overlap_matrix

    domains = np.asarray(items.column("domain").to_pylist())
    overlap = overlap_matrix(sequences, len(domains))
    popularity = np.asarray(overlap.sum(axis=0)).ravel()  # by item_idx
    local = {d: np.zeros(len(domains) + 1, dtype=np.int64) for d in ("A", "B")}
    idx = {d: np.flatnonzero(domains == d) + 1 for d in ("A", "B")}
    for d in ("A", "B"):
        local[d][idx[d]] = np.arange(len(idx[d]))
    c = {(s, t): cooccurrence(overlap, idx[s], idx[t]) for s, t in (("A", "B"), ("B", "A"))}
    out = {name: np.zeros(negatives.shape, dtype=np.float64) for name in SIGNALS}
    for row, (case, src) in enumerate(zip(cases, sources)):
        t = case["target_domain"]
        s = "A" if t == "B" else "B"
        cand = negatives[row]
        out["popularity"][row] = popularity[cand]
        if not src:
            continue  # no source item: every candidate ties, the target ranks last
        v = vectors[src]
        cos = vectors[cand] @ v.T  # (candidates, source items)
        mean = v.mean(axis=0)
        out["text_mean"][row] = vectors[cand] @ (mean / max(np.linalg.norm(mean), 1e-12))
        out["text_max"][row] = cos.max(axis=1)
        counts = np.asarray(c[(s, t)][np.unique(local[s][src])].sum(axis=0)).ravel()[local[t][cand]]
        out["collaborative"][row] = counts
        out["collaborative+popularity"][row] = counts * (popularity.max() + 1) + popularity[cand]  # the stage's order
    return out


def rank_metrics(scores: np.ndarray) -> tuple[float, float]:
    """HR@10 and NDCG@10 of column 0 among the others, ties against the target."""
    import torch

    from lgcd_core.protocol.metrics import hit_rate, ndcg, sampled_ranks

    t = torch.from_numpy(scores)
    ranks = sampled_ranks(t[:, 0], t[:, 1:])
    return float(hit_rate(ranks, 10).mean()), float(ndcg(ranks, 10).mean())


def grounded_hits(cfg, cases: list[dict], sources: list[list[int]], items: pa.Table, sequences: pa.Table,
                  vectors: np.ndarray, device: str) -> dict[str, dict[str, float]]:
    """source -> target domain -> share of cases whose target is among the stage's n_K items."""
    from lgcd_core.language.grounding import ground_source_items
    from lgcd_core.language.pseudo_sources import ground_collaborative

    users = [{"user_idx": 10_000_000 + i, "user_type": f"{'A' if c['target_domain'] == 'B' else 'B'}-only", "items": src}
             for i, (c, src) in enumerate(zip(cases, sources)) if src]
    target = {u["user_idx"]: cases[u["user_idx"] - 10_000_000]["target"] for u in users}
    n_k, h = cfg.grounding.n_k, cfg.llm.history_items
    text, _ = ground_source_items(users, items, cfg, device, item_embeddings=vectors)
    collab, _ = ground_collaborative(users, items, sequences, n_k, h)
    out = {}
    for name, rows in (("text", text.to_pylist()), ("collaborative", collab)):
        by_domain: dict[str, list[bool]] = {"A": [], "B": []}
        for r in rows:
            by_domain[r["target_domain"]].append(target[r["user_idx"]] in r["items"])
        n_cases = {d: sum(c["target_domain"] == d for c in cases) for d in ("A", "B")}
        out[name] = {d: sum(v) / max(n_cases[d], 1) for d, v in by_domain.items()}  # users without source items miss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--materialize", action="store_true", help="build sequences and item_text_embeddings first")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    if args.materialize:
        materialize_inputs(args.dataset)
    built = time.perf_counter() - start
    import pyarrow.parquet as pq

    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.protocol.candidates import draw_candidates, split_cases

    cfg = load_dataset_config(dataset_path(args.dataset))
    seq_dir = cfg.stage_dir("sequences")
    items = pq.read_table(seq_dir / "items.parquet")
    sequences = pq.read_table(seq_dir / "sequences.parquet")
    eval_cases = pq.read_table(seq_dir / "eval_cases.parquet")
    vectors = np.load(cfg.stage_dir("item_text_embeddings") / "embeddings.npy")
    ev = cfg.evaluation
    cases = split_cases(eval_cases, args.split).to_pylist()
    candidates = draw_candidates(eval_cases, items, args.split, ev.n_negatives, ev.candidate_seed)
    negatives = np.asarray(candidates.column("negatives").to_pylist(), dtype=np.int64)
    negatives = np.concatenate([np.asarray([c["target"] for c in cases])[:, None], negatives], axis=1)
    domains = np.asarray(items.column("domain").to_pylist())
    sources = case_sources(cases, domains, cfg.llm.history_items)
    scores = candidate_scores(cases, sources, negatives, vectors, items, sequences)
    hits = grounded_hits(cfg, cases, sources, items, sequences, vectors, "cpu")

    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    target_of = np.asarray([c["target_domain"] for c in cases])
    n = {d: int((target_of == d).sum()) for d in ("A", "B")}
    covered = {d: float(np.mean([bool(s) for s, c in zip(sources, cases) if c["target_domain"] == d])) for d in ("A", "B")}
    chance = 10 / negatives.shape[1]
    n_overlap = int((np.asarray(sequences.column("user_type").to_pylist()) == "overlap").sum())
    lines = [
        f"# Pseudo-source signal on {args.dataset} ({args.split}; targets never read)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {len(cases)} cases ({names['A']}-target {n['A']}, "
        f"{names['B']}-target {n['B']}); each case's last {cfg.llm.history_items} source-domain items "
        f"(cases with at least one: {names['A']} {covered['A']:.1%}, {names['B']} {covered['B']:.1%}); "
        f"text encoder `{cfg.text_encoder.model}`; co-purchases from {n_overlap} training overlap users; "
        f"inputs built in {built:.0f} s.",
        "",
        f"Candidate scores: the target among the evaluation's {negatives.shape[1] - 1} negatives (seed {ev.candidate_seed}), "
        f"ties against the signal; chance HR@10 = {chance:.3f}.",
        "",
        f"| signal | {names['A']} HR@10 | {names['A']} NDCG@10 | {names['B']} HR@10 | {names['B']} NDCG@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in SIGNALS:
        cells = []
        for d in ("A", "B"):
            hr, nd = rank_metrics(scores[name][target_of == d]) if n[d] else (float("nan"), float("nan"))
            cells += [f"{hr:.3f}", f"{nd:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Grounded hits: share of cases whose target is among the n_K = {cfg.grounding.n_k} items the stage gives "
        f"(whole target domain: {int((domains == 'A').sum())} {names['A']} / {int((domains == 'B').sum())} {names['B']} items).",
        "",
        f"| source | {names['A']} | {names['B']} |",
        "|---|---:|---:|",
        *(f"| {name} | {h['A']:.3f} | {h['B']:.3f} |" for name, h in hits.items()),
        "",
        f"Total time {time.perf_counter() - start:.0f} s.",
    ]
    publish("\n".join(lines) + "\n", f"pseudo_source_signal_{args.dataset}.md")


if __name__ == "__main__":
    main()
