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

``pseudo_overlap.source`` (:func:`ground_pseudo_users`): ``llm`` is the above; ``text`` takes that
fallback path for every user of the sample (no LLM); ``collaborative`` ranks target items by
co-purchase counts instead of cosine (``lgcd_core.language.pseudo_sources``; our extension). The
``source`` column and the stage metadata name the source of every row.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pyarrow as pa

from lgcd_core.config import DatasetConfig
from lgcd_core.device import resolve_device
from lgcd_core.language.pseudo_sources import SINGLE_DOMAIN, SOURCE_LABELS, ground_collaborative, needs_text, select_users, source_histories
from lgcd_core.language.text_encoder import encode_texts

SCHEMA = pa.schema([
    ("user_idx", pa.int32()),
    ("target_domain", pa.string()),
    ("items", pa.list_(pa.int32())),
    ("scores", pa.list_(pa.float32())),
    ("fallback", pa.bool_()),
    ("source", pa.string()),  # pseudo_overlap.source that grounded the row: llm | text | collaborative
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
    return ground_many(index, [queries], n_k, per_query_k, merge)[0]


def ground_many(index, queries: list[np.ndarray], n_k: int, per_query_k: int | None,
                merge: str) -> list[tuple[list[int], list[float]]]:
    """:func:`ground_queries` for many users at once: one FAISS search over all their queries (BLAS-fast)."""
    if merge == "mean_query":
        means = [q.mean(axis=0, keepdims=True) for q in queries]
        queries = [m / max(float(np.linalg.norm(m)), 1e-12) for m in means]
        per_query_k = n_k
    k = min(per_query_k or n_k, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(np.concatenate(queries), dtype=np.float32), k)
    merged = merge_round_robin if merge == "round_robin" else merge_max_score
    out, start = [], 0
    for q in queries:
        out.append(merged(ids[start:start + len(q)], scores[start:start + len(q)], n_k))
        start += len(q)
    return out


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


def ground_pseudo_texts(
    pseudo: pa.Table, items: pa.Table, cfg: DatasetConfig, device: str, *,
    item_embeddings: np.ndarray | None = None, sequences: pa.Table | None = None,
) -> tuple[pa.Table, dict]:
    """Top n_K real target items per LLM pseudo user. ``sequences`` is needed for ``unusable: source_history``."""
    g = cfg.grounding
    domains = np.asarray(items.column("domain").to_pylist())
    rows = pseudo.select(["user_idx", "target_domain", "descriptions", "usable"]).to_pylist()
    unusable = [r for r in rows if not r["usable"]]
    histories: dict[int, list[int]] = {}
    if unusable and g.unusable == "source_history":
        if sequences is None:
            raise ValueError("grounding.unusable = 'source_history' needs the sequences table (pass sequences=...)")
        users = sequences.select(["user_idx", "user_type", "items"]).to_pylist()
        histories = source_histories(users, domains, cfg.llm.history_items)
    out, counts = _ground_rows(rows, histories, items, cfg, device, item_embeddings)
    table = _table(out, "llm")
    stats = {"users": len(out), "input_users": len(rows), "unusable_users": len(unusable),
             "fallback_users": counts["fallback"], "dropped_users": counts["dropped"], "unusable_rule": g.unusable,
             **_summary(out, cfg, counts, device)}
    return table, stats


def ground_source_items(users: list[dict], items: pa.Table, cfg: DatasetConfig, device: str, *,
                        item_embeddings: np.ndarray | None = None) -> tuple[pa.Table, dict]:
    """The ``text`` source: each user's last ``llm.history_items`` source items are their queries.

    Exactly the path of an unusable LLM answer under ``grounding.unusable: source_history``, for every user.
    """
    domains = np.asarray(items.column("domain").to_pylist())
    histories = source_histories(users, domains, cfg.llm.history_items)
    rows = [{"user_idx": u["user_idx"], "target_domain": SINGLE_DOMAIN[u["user_type"]][1], "descriptions": [], "usable": False}
            for u in users if u["user_type"] in SINGLE_DOMAIN]
    out, counts = _ground_rows(rows, histories, items, cfg, device, item_embeddings)
    for row in out:
        row["fallback"] = False  # the source itself, not a fallback
    return _table(out, "text"), {"users": len(out), "input_users": len(rows), "dropped_users": counts["dropped"],
                                 **_summary(out, cfg, counts, device)}


def ground_pseudo_users(pseudo: pa.Table, items: pa.Table, sequences: pa.Table, cfg: DatasetConfig, device: str, *,
                        item_embeddings: np.ndarray | None = None) -> tuple[pa.Table, dict]:
    """The ``grounded_items`` stage: n_K target items per pseudo user from ``pseudo_overlap.source``.

    ``llm`` grounds the ``pseudo_texts`` answers; ``text`` and ``collaborative`` ignore them (the stage
    writes none) and serve the same seeded sample of single-domain users (see ``pseudo_sources``).
    """
    po = cfg.pseudo_overlap
    if po.source == "llm":
        table, stats = ground_pseudo_texts(pseudo, items, cfg, device, item_embeddings=item_embeddings, sequences=sequences)
    else:
        users = select_users(sequences, po.max_users, po.sample_seed)
        if po.source == "text":
            from lgcd_core.data.sequences import text_domains

            users, left_out = needs_text(users, text_domains(items, cfg.text_encoder.without_text))
            table, stats = ground_source_items(users, items, cfg, device, item_embeddings=item_embeddings)
            stats = {**stats, "left_out_without_text": left_out}
        else:
            out, stats = ground_collaborative(users, items, sequences, cfg.grounding.n_k, cfg.llm.history_items)
            for row in out:
                row["fallback"] = False
            table = _table(out, "collaborative")
            stats = {"users": len(out), "input_users": len(users), **stats, "n_k": cfg.grounding.n_k,
                     "avg_items": _avg_items(out), "mean_top_score": _mean_top(out)}
    n_single = sum(t in SINGLE_DOMAIN for t in sequences.column("user_type").to_pylist())
    return table, {"source": po.source, "source_label": SOURCE_LABELS[po.source], "max_users": po.max_users,
                   "sample_seed": po.sample_seed, "n_single_domain_users": n_single, **stats}


def _ground_rows(rows: list[dict], histories: dict[int, list[int]], items: pa.Table, cfg: DatasetConfig, device: str,
                 item_embeddings: np.ndarray | None, chunk: int = 2048) -> tuple[list[dict], dict]:
    """Ground each row: a usable one by its descriptions, another by its user's ``histories`` entry, else drop it.

    Users are searched ``chunk`` at a time, all their queries in one FAISS call.
    """
    g = cfg.grounding
    device = resolve_device(device)
    domains = np.asarray(items.column("domain").to_pylist())
    out, counts = [], {"fallback": 0, "dropped": 0, "queries": 0}
    for target in ("A", "B"):
        target_idx = np.flatnonzero(domains == target) + 1
        users = [r for r in rows if r["target_domain"] == target]
        if not users or len(target_idx) == 0:
            continue
        index = build_index(item_vectors(items, target_idx, cfg, device, item_embeddings), device)
        descriptions = [d for r in users if r["usable"] for d in r["descriptions"]]
        desc_vectors = iter(encode_texts(descriptions, cfg.text_encoder, device)) if descriptions else iter(())
        for start in range(0, len(users), chunk):
            kept, queries = [], []
            for r in users[start:start + chunk]:
                if r["usable"]:
                    queries.append(np.stack([next(desc_vectors) for _ in r["descriptions"]]))
                elif histories.get(r["user_idx"]):
                    queries.append(item_vectors(items, np.asarray(histories[r["user_idx"]]), cfg, device, item_embeddings))
                    counts["fallback"] += 1
                else:
                    counts["dropped"] += 1
                    continue
                kept.append(r)
                counts["queries"] += len(queries[-1])
            if not kept:
                continue
            for r, (positions, scores) in zip(kept, ground_many(index, queries, g.n_k, g.per_description_k, g.merge)):
                out.append({"user_idx": r["user_idx"], "target_domain": target,
                            "items": [int(target_idx[p]) for p in positions], "scores": scores,
                            "fallback": not r["usable"]})
    return out, counts


def _table(rows: list[dict], source: str) -> pa.Table:
    return pa.Table.from_pylist([{**r, "source": source} for r in sorted(rows, key=lambda r: r["user_idx"])], schema=SCHEMA)


def _avg_items(rows: list[dict]) -> float:
    return round(float(np.mean([len(r["items"]) for r in rows])), 3) if rows else 0.0


def _mean_top(rows: list[dict]) -> float | None:
    tops = [r["scores"][0] for r in rows if r["scores"]]
    return round(float(np.mean(tops)), 4) if tops else None


def _summary(rows: list[dict], cfg: DatasetConfig, counts: dict, device: str) -> dict:
    g = cfg.grounding
    return {"merge": g.merge, "n_k": g.n_k, "queries": counts["queries"], "avg_items": _avg_items(rows),
            "mean_top_score": _mean_top(rows), "faiss_device": _faiss_device(resolve_device(device))}


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
