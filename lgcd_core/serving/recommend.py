"""The ``recommendations`` stage: the top K target-domain items of every user the model is for.

Who gets recommendations, and from what:
- every single-domain user of the training data (``user_type`` A-only / B-only): the OTHER domain,
  from their whole (source-domain) sequence;
- every overlap user of the training data (``user_type`` overlap): both domains, each from their whole
  sequence: the other domain's items condition the model, and with ``recommendations.read_target_history``
  the target domain's own items are read too;
- every held-out user (one evaluation case each): the case's target domain, from the case's whole
  history. LGCD reads its source-domain items and, with ``recommendations.read_target_history``, its
  target-domain items too (``LGCDModel.user_vectors``), as the evaluation's ``mixed_history`` setting
  does with ``evaluation.lgcd_reads_target_history``; without, the source items only, as in
  ``inter_domain``. Either way a held-out user's list is the evaluation's full-ranking order of the
  target domain's items under the matching setting.
Items the user already has (the target-domain items of their history) are never recommended.

Held-out users have no row in ``sequences.parquet``, and ``eval_cases.parquet`` carries their
``user_idx`` only: their ``user_id`` is read from ``filtered_interactions``, whose users the sequences
stage numbered in order of first appearance (:func:`user_ids_by_idx`, checked against the training users).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.io import DataError
from lgcd_core.model.batches import DOMAINS, other
from lgcd_core.protocol.settings import item_domains

Log = Callable[[str], None]
HELD_OUT = "held_out"

SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("user_idx", pa.int32()),
    ("user_type", pa.string()),         # 'A-only', 'B-only', 'overlap' (training users) or 'held_out' (an evaluation case)
    ("case_id", pa.int32()),            # the evaluation case of a held-out user; null for training users
    ("target_domain", pa.string()),
    ("rank", pa.int32()),               # 1 = best
    ("item_idx", pa.int32()),
    ("item_id", pa.string()),
    ("title", pa.string()),
    ("score", pa.float32()),            # h_user · e_item (eq. 25)
])


@dataclass
class Users:
    """The users to recommend to, one row each."""

    user_id: np.ndarray  # str
    user_idx: np.ndarray  # int
    user_type: np.ndarray  # str
    case_id: np.ndarray  # int, -1 for training users
    target_domain: np.ndarray  # 'A' / 'B'
    history: list[list[int]]  # the user's items, both domains (the model reads what its settings allow)
    exclude: list[list[int]]  # what is never recommended (the target-domain items the user has)

    def __len__(self) -> int:
        return len(self.user_id)


def user_ids_by_idx(interaction_user_ids: pa.ChunkedArray | pa.Array, sequences: pa.Table) -> np.ndarray:
    """``user_id`` of every ``user_idx``: the users of filtered_interactions in order of first appearance.

    :class:`DataError` if that numbering does not give the training users their ids (the sequences
    stage is older or newer than the interactions).
    """
    ids = pc.unique(interaction_user_ids).to_numpy(zero_copy_only=False).astype(object)
    idx = sequences.column("user_idx").to_numpy()
    known = sequences.column("user_id").to_numpy(zero_copy_only=False)
    if len(idx) and (idx.max() >= len(ids) or (ids[idx] != known).any()):
        raise DataError("filtered_interactions and sequences number users differently; re-materialize sequences")
    return ids


def serving_users(items: pa.Table, sequences: pa.Table, eval_cases: pa.Table, user_ids: np.ndarray) -> Users:
    """Single-domain training users (towards the other domain), overlap users (towards each domain), then
    held-out cases (towards their target)."""
    domains = item_domains(items)
    single = sequences.filter(pc.is_in(sequences["user_type"], pa.array(["A-only", "B-only"])))
    types = np.asarray(single.column("user_type").to_pylist(), dtype=object)
    seqs = single.column("items").to_pylist()
    overlap = sequences.filter(pc.equal(sequences["user_type"], "overlap"))
    both = [(row, target) for row in overlap.select(["user_id", "user_idx", "items"]).to_pylist() for target in DOMAINS]
    case_targets = np.asarray(eval_cases.column("target_domain").to_pylist(), dtype=object)
    case_users = eval_cases.column("user_idx").to_numpy().astype(np.int64)
    if len(case_users) and case_users.max() >= len(user_ids):
        raise DataError("eval_cases.user_idx: a held-out user is not in filtered_interactions; re-materialize sequences")
    full = eval_cases.column("history").to_pylist()  # both domains: the model reads what its settings allow
    return Users(
        user_id=np.concatenate([single.column("user_id").to_numpy(zero_copy_only=False).astype(object),
                                np.asarray([r["user_id"] for r, _ in both], dtype=object), user_ids[case_users]]),
        user_idx=np.concatenate([single.column("user_idx").to_numpy(), [r["user_idx"] for r, _ in both],
                                 case_users]).astype(np.int64),
        user_type=np.concatenate([types, np.full(len(both), "overlap", dtype=object),
                                  np.full(len(case_users), HELD_OUT, dtype=object)]),
        case_id=np.concatenate([np.full(len(types) + len(both), -1), eval_cases.column("case_id").to_numpy()]).astype(np.int64),
        target_domain=np.concatenate([np.asarray([other(t[0]) for t in types], dtype=object),
                                      np.asarray([t for _, t in both], dtype=object), case_targets]),
        history=seqs + [r["items"] for r, _ in both] + full,
        exclude=[[i for i in h if domains[i] == other(t[0])] for h, t in zip(seqs, types)]
        + [[i for i in r["items"] if domains[i] == t] for r, t in both]
        + [[i for i in h if domains[i] == t] for h, t in zip(full, case_targets)],
    )


def recommend_users(recommender, users: Users, k: int, log: Log = print) -> tuple[np.ndarray, np.ndarray, dict]:
    """(item_idx (n, k), scores (n, k), stats) of every user, scored per target domain in batches."""
    ids = np.zeros((len(users), k), dtype=np.int64)
    scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    per_domain = {}
    started = time.perf_counter()
    for domain in DOMAINS:
        rows = np.flatnonzero(users.target_domain == domain)
        if not len(rows):
            continue
        search = "faiss" if recommender.uses_faiss(domain) else "exact"
        log(f"recommending {len(rows)} users {k} items of domain {domain} ({len(recommender.global_ids[domain])} "
            f"items, {search} search)")
        t0 = time.perf_counter()
        got_ids, got_scores = recommender.top_k([users.history[r] for r in rows], domain, k,
                                                [users.exclude[r] for r in rows])
        ids[rows, :got_ids.shape[1]] = got_ids
        scores[rows, :got_scores.shape[1]] = got_scores
        seconds = time.perf_counter() - t0
        per_domain[domain] = {"users": len(rows), "items": len(recommender.global_ids[domain]), "search": search,
                              "seconds": round(seconds, 3), "users_per_s": round(len(rows) / max(seconds, 1e-9), 1)}
    seconds = time.perf_counter() - started
    stats = {"users": len(users), "seconds": round(seconds, 3),
             "users_per_s": round(len(users) / max(seconds, 1e-9), 1), "per_domain": per_domain}
    return ids, scores, stats


def recommendations_table(users: Users, ids: np.ndarray, scores: np.ndarray, items: pa.Table) -> pa.Table:
    """The long table (one row per user and rank, :data:`SCHEMA`); slots with no item are dropped."""
    n, k = ids.shape
    keep = (ids > 0).ravel()
    user = np.repeat(np.arange(n), k)[keep]
    flat = ids.ravel()[keep]
    case = users.case_id[user]
    picked = items.take(pa.array(flat - 1)) if len(flat) else items.slice(0, 0)
    columns = {
        "user_id": pa.array(users.user_id[user].tolist(), pa.string()),
        "user_idx": pa.array(users.user_idx[user], pa.int32()),
        "user_type": pa.array(users.user_type[user].tolist(), pa.string()),
        "case_id": pa.array(case, pa.int32(), mask=case < 0),
        "target_domain": pa.array(users.target_domain[user].tolist(), pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1), n)[keep], pa.int32()),
        "item_idx": pa.array(flat, pa.int32()),
        "item_id": picked.column("item_id"),
        "title": picked.column("title"),
        "score": pa.array(scores.ravel()[keep], pa.float32()),
    }
    return pa.table(columns, schema=SCHEMA)


def check_recommendations(users: Users, ids: np.ndarray, scores: np.ndarray, items: pa.Table) -> dict[str, tuple[bool, dict]]:
    """The stage's asset checks: target domain only, no item the user has, full and ordered lists."""
    domains = item_domains(items)
    real = ids > 0
    wrong_domain = int((real & (domains[ids] != users.target_domain[:, None].astype("<U1"))).sum())
    had = sum(len(set(row[row > 0].tolist()) & set(e)) for row, e in zip(ids, users.exclude))
    sizes = np.array([int((domains == d).sum()) for d in users.target_domain], dtype=np.int64)
    expected = np.minimum(ids.shape[1], sizes - np.array([len(set(e)) for e in users.exclude], dtype=np.int64))
    short = int((real.sum(1) != np.maximum(expected, 0)).sum())
    unordered = int((np.diff(np.where(real, scores, -np.inf), axis=1) > 0).any(1).sum())
    return {
        "target_domain_only": (wrong_domain == 0, {"items_outside_target_domain": wrong_domain}),
        "no_history_items": (had == 0, {"recommended_items_the_user_has": had}),
        "full_ordered_lists": (short == 0 and unordered == 0, {"users_short_of_k": short, "users_out_of_order": unordered}),
    }


def _cell(titles: list[str]) -> str:
    return "; ".join(t.replace("|", "/").replace("\n", " ") for t in titles) or "—"


def sample_markdown(users: Users, ids: np.ndarray, scores: np.ndarray, items: pa.Table, domain_names: dict[str, str],
                    n: int = 10, seed: int = 0, shown: int = 5) -> str:
    """A Markdown table of ``n`` seeded users: their newest source titles and their top recommended titles."""
    if n == 0 or len(users) == 0:
        return ""
    titles = np.asarray([""] + items.column("title").to_pylist(), dtype=object)
    domains = item_domains(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(users), size=min(n, len(users)), replace=False))
    lines = [f"| user | type | history (newest {shown}, source domain) | top {shown} recommended (score) |",
             "|---|---|---|---|"]
    for u in chosen:
        target = str(users.target_domain[u])
        source = [titles[i] for i in users.history[u] if domains[i] != target][-shown:][::-1]
        recs = [f"{titles[i]} ({s:.2f})" for i, s in zip(ids[u][:shown], scores[u][:shown]) if i > 0]
        kind = users.user_type[u] if users.case_id[u] < 0 else f"held-out (case {users.case_id[u]})"
        lines.append(f"| {users.user_id[u]} | {kind}, → {domain_names[target]} | {_cell(source)} | {_cell(recs)} |")
    return "\n".join(lines)


def run_recommendations(cfg, items: pa.Table, sequences: pa.Table, eval_cases: pa.Table, embeddings: np.ndarray,
                        interaction_user_ids: pa.ChunkedArray, model_dir: Path, encoders_dir: Path, out_path: Path,
                        device: str, log: Log = print) -> dict:
    """The whole stage: the default LGCD model's top ``recommendations.k`` for every user, written to ``out_path``.

    Returns the stats for metadata, with the asset checks (``checks``), the sample table (``sample``)
    and the written table (``table``).
    """
    from lgcd_core.io import write_parquet
    from lgcd_core.serving.recommender import lgcd_recommender
    from lgcd_core.stages import LGCD_MODEL, PRETRAINED_ENCODERS

    rc = cfg.recommendations
    needed = [model_dir / LGCD_MODEL.weights, model_dir / LGCD_MODEL.meta,
              *(encoders_dir / f.format(domain=d) for d in DOMAINS for f in (PRETRAINED_ENCODERS.weights, PRETRAINED_ENCODERS.meta))]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise DataError(f"recommendations read the trained default LGCD model, and {missing[0]} is missing; "
                        f"materialize {cfg.name}/lgcd_model first")
    users = serving_users(items, sequences, eval_cases, user_ids_by_idx(interaction_user_ids, sequences))
    recommender = lgcd_recommender(model_dir, encoders_dir, embeddings, items, device,
                                   read_target_history=rc.read_target_history, faiss_above=rc.faiss_above,
                                   batch_size=rc.batch_size)
    ids, scores, stats = recommend_users(recommender, users, rc.k, log)
    table = recommendations_table(users, ids, scores, items)
    write_parquet(table, out_path)
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    counts = {t: int((users.user_type == t).sum()) for t in ("A-only", "B-only", "overlap", HELD_OUT)}
    return {**stats, "k": rc.k, "users_by_type": counts, "device": recommender.device,
            "checks": check_recommendations(users, ids, scores, items),
            "sample": sample_markdown(users, ids, scores, items, names, rc.sample_users, rc.sample_seed),
            "table": table}
