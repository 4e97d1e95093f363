"""The ``grounded_items`` stage: map pseudo texts to real target-domain items (paper eq. 5-6).

Each description is embedded with the text encoder of ``item_text_embeddings`` and searched in an
exact inner-product FAISS index (``IndexFlatIP``; vectors are L2-normalised, so this is cosine) over
the target domain's items. A user's n_K items are merged from their descriptions' ranked lists by
``grounding.merge``:

- ``round_robin`` (default): rank 1 of every description (in answer order), then rank 2, ...,
  skipping items already taken, until n_K. Every description contributes, so one verbose
  description cannot fill the whole list.
- ``max_score``: pool all lists, score an item by its best cosine over descriptions, keep the top n_K.
- ``mean_query``: the paper read literally: one query, the normalised mean of the description
  vectors, and its top n_K.

The reported score of an item is always its best cosine over the user's queries.

Users whose answer is unusable follow ``grounding.unusable``: ``source_history`` (default) grounds
the user's own recent source items (their vectors stand in for descriptions, same merge rule) and
sets ``fallback=True``; ``drop`` leaves them out of the pseudo users. Both counts are in the stats.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pyarrow as pa

from lgcd_core.config import DatasetConfig
from lgcd_core.device import resolve_device
from lgcd_core.language.text_encoder import encode_texts

SCHEMA = pa.schema([
    ("user_idx", pa.int32()),
    ("target_domain", pa.string()),
    ("items", pa.list_(pa.int32())),
    ("scores", pa.list_(pa.float32())),
    ("fallback", pa.bool_()),
])


# --------------------------------------------------------------------------------------------
# FAISS and merging
# --------------------------------------------------------------------------------------------


def build_index(vectors: np.ndarray, device: str):  # -> faiss.Index
    """Exact inner-product index; on all GPUs when faiss has GPUs and the device is not CPU."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if device != "cpu" and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def merge_round_robin(ids: np.ndarray, scores: np.ndarray, n_k: int) -> tuple[list[int], list[float]]:
    """``ids``/``scores``: ``(n_queries, k)`` ranked lists -> up to n_K distinct items, rank by rank."""
    best = _best_scores(ids, scores)
    out: list[int] = []
    for rank in range(ids.shape[1]):
        for item in ids[:, rank]:
            if item >= 0 and item not in out:
                out.append(int(item))
                if len(out) == n_k:
                    return out, [best[i] for i in out]
    return out, [best[i] for i in out]


def merge_max_score(ids: np.ndarray, scores: np.ndarray, n_k: int) -> tuple[list[int], list[float]]:
    """Best cosine per item over all queries, top n_K (ties: smaller item index first)."""
    best = _best_scores(ids, scores)
    top = sorted(best, key=lambda i: (-best[i], i))[:n_k]
    return top, [best[i] for i in top]


def _best_scores(ids: np.ndarray, scores: np.ndarray) -> dict[int, float]:
    best: dict[int, float] = {}
    for item, score in zip(ids.ravel().tolist(), scores.ravel().tolist()):
        if item >= 0 and score > best.get(item, -np.inf):
            best[item] = score
    return best


def ground_queries(index, queries: np.ndarray, n_k: int, per_query_k: int | None, merge: str) -> tuple[list[int], list[float]]:
    """One user's queries ``(n, dim)`` -> positions (in the index) of their n_K grounded items and scores."""
    if merge == "mean_query":
        mean = queries.mean(axis=0, keepdims=True)
        queries = mean / max(float(np.linalg.norm(mean)), 1e-12)
        per_query_k = n_k
    k = min(per_query_k or n_k, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    merged = merge_round_robin if merge == "round_robin" else merge_max_score
    return merged(ids, scores, n_k)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def item_vectors(items: pa.Table, idx: np.ndarray, cfg: DatasetConfig, device: str, item_embeddings: np.ndarray | None) -> np.ndarray:
    """Vectors of items ``idx`` (global item_idx): rows of ``item_embeddings`` when given, else encoded."""
    if item_embeddings is not None:
        if item_embeddings.shape[0] != len(items) + 1:
            raise ValueError(f"item_embeddings has {item_embeddings.shape[0]} rows, expected n_items + 1 = {len(items) + 1}")
        return np.asarray(item_embeddings[idx], dtype=np.float32)
    texts = items.column("text").to_pylist()
    return encode_texts([texts[i - 1] or "" for i in idx], cfg.text_encoder, device)


def source_histories(sequences: pa.Table, domains: np.ndarray, history_items: int) -> dict[int, list[int]]:
    """user_idx -> the user's last ``history_items`` items of their own (source) domain."""
    out = {}
    for row in sequences.select(["user_idx", "user_type", "items"]).to_pylist():
        if row["user_type"] in ("A-only", "B-only"):
            source = row["user_type"][0]
            out[row["user_idx"]] = [i for i in row["items"] if domains[i - 1] == source][-history_items:]
    return out


def ground_pseudo_texts(
    pseudo: pa.Table, items: pa.Table, cfg: DatasetConfig, device: str, *,
    item_embeddings: np.ndarray | None = None, sequences: pa.Table | None = None,
) -> tuple[pa.Table, dict]:
    """Top n_K real target items per pseudo user. ``sequences`` is needed for ``unusable: source_history``."""
    g = cfg.grounding
    device = resolve_device(device)
    domains = np.asarray(items.column("domain").to_pylist())
    rows = pseudo.select(["user_idx", "target_domain", "descriptions", "usable"]).to_pylist()
    unusable = [r for r in rows if not r["usable"]]
    histories: dict[int, list[int]] = {}
    if unusable and g.unusable == "source_history":
        if sequences is None:
            raise ValueError("grounding.unusable = 'source_history' needs the sequences table (pass sequences=...)")
        histories = source_histories(sequences, domains, cfg.llm.history_items)
    out, n_fallback, n_dropped, n_queries = [], 0, 0, 0
    for target in ("A", "B"):
        target_idx = np.flatnonzero(domains == target) + 1
        users = [r for r in rows if r["target_domain"] == target]
        if not users or len(target_idx) == 0:
            continue
        index = build_index(item_vectors(items, target_idx, cfg, device, item_embeddings), device)
        descriptions = [d for r in users if r["usable"] for d in r["descriptions"]]
        desc_vectors = iter(encode_texts(descriptions, cfg.text_encoder, device))
        for r in users:
            if r["usable"]:
                queries = np.stack([next(desc_vectors) for _ in r["descriptions"]])
            elif histories.get(r["user_idx"]):
                queries = item_vectors(items, np.asarray(histories[r["user_idx"]]), cfg, device, item_embeddings)
                n_fallback += 1
            else:
                n_dropped += 1
                continue
            n_queries += len(queries)
            positions, scores = ground_queries(index, queries, g.n_k, g.per_description_k, g.merge)
            out.append({"user_idx": r["user_idx"], "target_domain": target,
                        "items": [int(target_idx[p]) for p in positions], "scores": scores,
                        "fallback": not r["usable"]})
    table = pa.Table.from_pylist(sorted(out, key=lambda r: r["user_idx"]), schema=SCHEMA)
    lengths = [len(r["items"]) for r in out]
    tops = [r["scores"][0] for r in out if r["scores"]]
    stats = {
        "users": len(out), "input_users": len(rows), "unusable_users": len(unusable),
        "fallback_users": n_fallback, "dropped_users": n_dropped, "unusable_rule": g.unusable, "merge": g.merge,
        "n_k": g.n_k, "queries": n_queries, "avg_items": round(float(np.mean(lengths)), 3) if lengths else 0.0,
        "mean_top_score": round(float(np.mean(tops)), 4) if tops else None, "faiss_device": _faiss_device(device),
    }
    return table, stats


def _faiss_device(device: str) -> str:
    import faiss

    return "gpu" if device != "cpu" and getattr(faiss, "get_num_gpus", lambda: 0)() > 0 else "cpu"


# --------------------------------------------------------------------------------------------
# Signals: are the grounded items any good?
# --------------------------------------------------------------------------------------------


def taste_match_rate(grounded: pa.Table, items: pa.Table, sequences: pa.Table, truth: dict) -> dict:
    """Share of grounded items whose latent taste equals their user's (synthetic data only).

    ``chance_rate``: for each user, the share of target-domain items with the user's taste (what
    uniformly random grounding would reach), averaged over users; ``lift`` = match / chance.
    """
    user_id = dict(zip(sequences.column("user_idx").to_pylist(), sequences.column("user_id").to_pylist()))
    item_taste = np.array([truth["item_taste"].get(i, -1) for i in items.column("item_id").to_pylist()])
    domains = np.asarray(items.column("domain").to_pylist())
    hits = total = 0
    chances = []
    for row in grounded.select(["user_idx", "target_domain", "items"]).to_pylist():
        taste = truth["user_taste"].get(user_id.get(row["user_idx"]))
        if taste is None or not row["items"]:
            continue
        hits += int(np.sum(item_taste[np.asarray(row["items"]) - 1] == taste))
        total += len(row["items"])
        chances.append(float(np.mean(item_taste[domains == row["target_domain"]] == taste)))
    match = hits / total if total else 0.0
    chance = float(np.mean(chances)) if chances else 0.0
    return {"match_rate": round(match, 4), "chance_rate": round(chance, 4),
            "lift": round(match / chance, 3) if chance else None, "users": len(chances), "items": total}


STOPWORDS = frozenset(
    "the and for with from this that your you our are was all new set pack count size inch inches oz ounce ounces "
    "lb lbs piece pieces black white red blue green by of in to on an or a x".split()
)


def title_words(title: str) -> frozenset[str]:
    """Lower-case alphabetic words of three letters or more, stopwords removed."""
    return frozenset(w for w in re.findall(r"[a-z]{3,}", (title or "").lower()) if w not in STOPWORDS)


def category_overlap_rate(grounded: pa.Table, items: pa.Table, sequences: pa.Table, chance_sample: int = 1000, seed: int = 0) -> dict:
    """Ground-truth-free signal for real data.

    The *counterparts* of a pseudo user are the target-domain items that appear in the same training
    overlap sequence as at least one of the user's source items (co-purchases). Reported:

    - ``copurchase_rate``: share of a user's grounded items that are counterparts;
    - ``title_word_rate``: share of a user's grounded items whose title shares a word (see
      :func:`title_words`) with some counterpart's title;
    - the same two shares for random target items (``*_chance``; a seeded sample of ``chance_sample``
      target items per domain).

    Every share is computed per user, then averaged over users.

    Users without counterparts are skipped and counted in ``users_without_counterparts``.
    """
    domains = np.asarray(items.column("domain").to_pylist())
    words = [title_words(t) for t in items.column("title").to_pylist()]
    seqs = sequences.select(["user_idx", "user_type", "items"]).to_pylist()
    counterparts: dict[int, set[int]] = defaultdict(set)  # source item -> co-purchased items of the other domain
    for row in seqs:
        if row["user_type"] == "overlap":
            for i in row["items"]:
                counterparts[i].update(j for j in row["items"] if domains[j - 1] != domains[i - 1])
    history = {r["user_idx"]: r["items"] for r in seqs}
    rng = np.random.default_rng(seed)
    sample = {}
    for d in ("A", "B"):
        pool = np.flatnonzero(domains == d) + 1
        sample[d] = rng.choice(pool, size=min(chance_sample, len(pool)), replace=False) if len(pool) else pool
    rates = defaultdict(list)
    skipped = 0
    for row in grounded.select(["user_idx", "target_domain", "items"]).to_pylist():
        cp = set().union(*(counterparts.get(i, set()) for i in history.get(row["user_idx"], [])))
        if not cp or not row["items"]:
            skipped += 1
            continue
        cp_words = frozenset().union(*(words[j - 1] for j in cp))
        for name, candidates in (("", row["items"]), ("_chance", sample[row["target_domain"]])):
            rates["copurchase_rate" + name].append(np.mean([j in cp for j in candidates]))
            rates["title_word_rate" + name].append(np.mean([bool(words[j - 1] & cp_words) for j in candidates]))
    out = {k: round(float(np.mean(v)), 4) for k, v in rates.items()}
    return {**out, "users": len(rates["copurchase_rate"]), "users_without_counterparts": skipped}
