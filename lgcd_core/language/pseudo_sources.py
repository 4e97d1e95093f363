"""Who the pseudo-overlap users are, and the LLM-free sources of their target items.

``pseudo_overlap.source`` picks where a single-domain user's n_K target items come from:

- ``llm`` (the paper, eq. 4-6): an LLM answer (``pseudo_texts``) grounded by FAISS (``grounding``);
- ``text`` (LLM-free): the user's own recent source items stand in for the LLM's descriptions and are
  grounded by the same encoder and FAISS search (``grounding.ground_pseudo_texts``);
- ``collaborative`` (LLM-free; **our extension, not the paper's**): the target items most often bought
  together with the user's recent source items by overlap users in the training sequences (this module).

Every source serves the same users: all single-domain users, or the seeded sample of
``pseudo_overlap.max_users`` (:func:`select_users`), and reads the same input of each user, their last
``llm.history_items`` source items (:func:`source_histories`), so sources compare at equal coverage.

Collaborative scores. ``S`` is the binary overlap-user x item matrix of the training sequences (an
item bought twice by one user counts once; held-out valid/test users are not in them). For a source
domain s and target domain t, ``C = S_sᵀ · S_t``: ``C[i, j]`` = how many overlap users bought both
source item i and target item j. A user's score vector is the sum of the rows of C for their distinct
recent source items; their n_K items are the top scores, ties (zeros included) broken by the item's
popularity among overlap users (column sums of ``S_t``), then by the smaller item index. A user whose
items no overlap user bought gets the most popular target items (counted in ``no_cooccurrence_users``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SINGLE_DOMAIN = {"A-only": ("A", "B"), "B-only": ("B", "A")}  # user type -> (source, target) domains

SOURCE_LABELS = {
    "llm": "llm: LLM answers grounded to target items by text-encoder cosine, FAISS (the paper, eq. 4-6)",
    "text": "text: the user's own recent source items grounded by text-encoder cosine, FAISS (LLM-free)",
    "collaborative": "collaborative: target items most often bought with the user's recent source items by "
                     "overlap users in training data (LLM-free; our extension, not the paper's)",
}


def select_users(sequences: pa.Table, max_users: int | None, seed: int) -> list[dict]:
    """Single-domain users (rows of ``sequences``), all of them or a seeded sample of ``max_users``."""
    rows = [r for r in sequences.select(["user_idx", "user_type", "items"]).to_pylist() if r["user_type"] in SINGLE_DOMAIN]
    if max_users is not None and max_users < len(rows):
        chosen = np.random.default_rng(seed).choice(len(rows), size=max_users, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    return rows


def source_histories(users: list[dict], domains: np.ndarray, history_items: int) -> dict[int, list[int]]:
    """user_idx -> the single-domain user's last ``history_items`` items of their own (source) domain."""
    out = {}
    for row in users:
        if row["user_type"] in SINGLE_DOMAIN:
            source = SINGLE_DOMAIN[row["user_type"]][0]
            out[row["user_idx"]] = [i for i in row["items"] if domains[i - 1] == source][-history_items:]
    return out


def overlap_matrix(sequences: pa.Table, n_items: int):  # -> scipy.sparse.csr_matrix
    """Binary (overlap users, n_items + 1) matrix of the training sequences; column = item_idx."""
    from scipy import sparse

    seqs = [r["items"] for r in sequences.select(["user_type", "items"]).to_pylist() if r["user_type"] == "overlap"]
    rows = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    cols = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=len(rows))
    s = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(seqs), n_items + 1))
    s.data[:] = 1.0  # duplicates were summed: binary
    return s


def cooccurrence(overlap: object, source_idx: np.ndarray, target_idx: np.ndarray):  # -> scipy.sparse.csr_matrix
    """``C = S_sᵀ · S_t``: (n_source, n_target) counts of overlap users who bought both items."""
    return (overlap[:, source_idx].T @ overlap[:, target_idx]).tocsr()


def top_items(scores: np.ndarray, popularity: np.ndarray, n_k: int) -> np.ndarray:
    """Per row of ``scores`` (users, n_target), the positions of its top ``n_k`` columns.

    Order: score, then ``popularity``, then the smaller position (a total order, so the result does
    not depend on how ties fall).
    """
    n = scores.shape[1]
    k = min(n_k, n)
    pop_rank = np.empty(n, dtype=np.float64)  # 0 = least popular; ties by position, smaller first
    pop_rank[np.lexsort((-np.arange(n), popularity))] = np.arange(n)
    key = scores.astype(np.float64) * n + pop_rank[None, :]  # exact: counts times n stay far below 2**53
    part = np.argpartition(-key, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(key), 1))
    order = np.argsort(-np.take_along_axis(key, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def ground_collaborative(users: list[dict], items: pa.Table, sequences: pa.Table, n_k: int, history_items: int,
                         block: int = 1 << 23) -> tuple[list[dict], dict]:
    """Grounded rows (``user_idx``, ``target_domain``, ``items``, ``scores`` = co-occurrence counts) and stats.

    Users are scored in chunks of at most ``block`` dense (user, target item) scores.
    """
    from scipy import sparse

    domains = np.asarray(items.column("domain").to_pylist())
    users = [u for u in users if u["user_type"] in SINGLE_DOMAIN]
    overlap = overlap_matrix(sequences, len(domains))
    histories = source_histories(users, domains, history_items)
    out, no_signal, signal_items = [], 0, []
    for source, target in SINGLE_DOMAIN.values():
        group = [u for u in users if SINGLE_DOMAIN[u["user_type"]][0] == source and histories.get(u["user_idx"])]
        source_idx, target_idx = np.flatnonzero(domains == source) + 1, np.flatnonzero(domains == target) + 1
        if not group or len(target_idx) == 0:
            continue
        c = cooccurrence(overlap, source_idx, target_idx)
        popularity = np.asarray(overlap[:, target_idx].sum(axis=0)).ravel()
        local = np.zeros(len(domains) + 1, dtype=np.int64)
        local[source_idx] = np.arange(len(source_idx))
        chunk = max(1, block // len(target_idx))
        for start in range(0, len(group), chunk):
            part = group[start:start + chunk]
            cols = [np.unique(local[histories[u["user_idx"]]]) for u in part]
            rows = np.repeat(np.arange(len(part)), [len(x) for x in cols])
            u_matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(cols))), shape=(len(part), len(source_idx)))
            scores = (u_matrix @ c).toarray()  # (users, n_target): sum of C's rows for each user's items
            top = top_items(scores, popularity, n_k)
            for user, row, picked in zip(part, scores, top):
                positive = int((row > 0).sum())
                no_signal += positive == 0
                signal_items.append(min(positive, n_k))
                out.append({"user_idx": user["user_idx"], "target_domain": target,
                            "items": [int(target_idx[p]) for p in picked], "scores": [float(row[p]) for p in picked]})
    stats = {
        "overlap_users": overlap.shape[0], "no_cooccurrence_users": int(no_signal),
        "dropped_users": len(users) - len(out),  # no source item in their history
        "avg_cooccurring_items": round(float(np.mean(signal_items)), 3) if signal_items else 0.0,
    }
    return out, stats


def needs_text(users: list[dict], has_text: dict[str, bool]) -> tuple[list[dict], dict]:
    """The users a text-based source (``llm``, ``text``) can serve: both their domains have item text.

    A prompt cannot describe items without titles, and a description cannot be grounded to items
    without text; the ``collaborative`` source needs neither. Returns the users kept and, per direction
    left out, how many users it concerns and why (for the stage's metadata).
    """
    kept, left_out = [], {}
    for user in users:
        source, target = SINGLE_DOMAIN[user["user_type"]]
        missing = [d for d in (source, target) if not has_text[d]]
        if missing:
            entry = left_out.setdefault(f"{source}->{target}", {"users": 0, "domains_without_text": missing})
            entry["users"] += 1
        else:
            kept.append(user)
    return kept, left_out
