"""The ``filtered_interactions`` stage: time window, then k-core per domain.

k-core is computed per domain on the bipartite user-item graph of that domain: a user keeps their
domain-A interactions only if they have at least k of them, independently of their B history, and
an item needs k interactions from users that survive. Removal is iterated to a fixed point, which
gives the maximal k-core (the largest subset where every remaining user and item has >= k
interactions in each domain it appears in). A user with 10 A and 2 B interactions at k=5 keeps
the A ones and becomes A-only.

Evaluation rows (``split_hint`` 'valid'/'test', i.e. LLMCDSR's fixed evaluation lines) are never
removed and do not count toward degrees: the evaluation set is the source's, not ours. Raw Amazon
and synthetic rows have no split_hint, so every row is subject to k-core; their held-out users are
chosen later, among the k-core survivors (see :mod:`lgcd_core.data.sequences`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.config import FilterConfig
from lgcd_core.data.readers import with_stats
from lgcd_core.io import DataError

EVAL_SPLITS = ("valid", "test")
DOMAINS = ("A", "B")


def codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer code of each value, numbered in order of first appearance."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.dictionary_encode(column).indices.to_numpy(zero_copy_only=False)


def subject_rows(interactions: pa.Table) -> np.ndarray:
    """Boolean mask of rows k-core may count and remove (all but valid/test evaluation rows)."""
    hints = interactions["split_hint"].to_numpy(zero_copy_only=False)
    return ~np.isin(hints, EVAL_SPLITS)


def _core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the rows of one domain's maximal k-core (users and items as int codes)."""
    alive = np.ones(len(users), dtype=bool)
    while True:
        user_deg = np.bincount(users[alive], minlength=users.max(initial=0) + 1)
        item_deg = np.bincount(items[alive], minlength=items.max(initial=0) + 1)
        survive = alive & (user_deg[users] >= k) & (item_deg[items] >= k)
        if np.array_equal(survive, alive):
            return alive
        alive = survive


def k_core(interactions: pa.Table, k: int) -> pa.Table:
    """Rows of the maximal per-domain k-core, in input order (evaluation rows kept as they are)."""
    users, items = codes(interactions["user_id"]), codes(interactions["item_id"])
    domains = interactions["domain"].to_numpy(zero_copy_only=False)
    subject = subject_rows(interactions)
    keep = ~subject
    for domain in np.unique(domains):
        rows = np.flatnonzero(subject & (domains == domain))
        keep[rows] = _core(users[rows], items[rows], k)
    return interactions.filter(pa.array(keep))


def time_window(interactions: pa.Table, days: int) -> pa.Table:
    """Rows within ``days`` days of the latest timestamp of the whole table."""
    if pc.any(pc.is_valid(interactions["split_hint"])).as_py():
        raise DataError(
            "filter.time_window_days: this source's timestamps are positions in a sequence (LLMCDSR), "
            "not times; set time_window_days to null"
        )
    latest = pc.max(interactions["timestamp"]).as_py()
    return interactions.filter(pc.greater_equal(interactions["timestamp"], latest - days * 86_400))


def training_counts(interactions: pa.Table) -> dict[str, int]:
    """Number of non-evaluation rows per domain."""
    domains = interactions["domain"].to_numpy(zero_copy_only=False)[subject_rows(interactions)]
    names, counts = np.unique(domains, return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def _check_not_emptied(before: dict[str, int], after: dict[str, int], step: str, fix: str) -> None:
    for domain, n in before.items():
        if n and not after.get(domain):
            raise DataError(f"{step} left domain {domain} without training interactions ({n} before); {fix}")


def _check_both_domains(counts: dict[str, int]) -> None:
    for domain in DOMAINS:
        if not counts.get(domain):
            raise DataError(
                f"filtered_interactions: raw_interactions has no training interactions in domain {domain}; "
                "fix the source and re-materialize raw_interactions"
            )


def _check_items_known(interactions: pa.Table, items: pa.Table) -> None:
    unknown = interactions.select(["item_id", "domain", "origin"]).join(
        items.select(["item_id", "domain"]), keys=["item_id", "domain"], join_type="left anti"
    )
    if unknown.num_rows:
        row = unknown.slice(0, 1).to_pylist()[0]
        raise DataError(
            f"{row['origin']}: item {row['item_id']!r} (domain {row['domain']}) is not in raw_items "
            f"({unknown.num_rows} interactions affected); re-materialize raw_items"
        )


def apply_filters(interactions: pa.Table, items: pa.Table, cfg: FilterConfig) -> pa.Table:
    """Time window then k-core; DataError if a domain is (or gets) empty. Per-step row counts attached as stats."""
    _check_items_known(interactions, items)
    stats = {"input": training_counts(interactions)}
    _check_both_domains(stats["input"])
    table = interactions
    if cfg.time_window_days is not None:
        table = time_window(table, cfg.time_window_days)
        stats["time_window"] = training_counts(table)
        step = f"filter.time_window_days = {cfg.time_window_days}"
        _check_not_emptied(stats["input"], stats["time_window"], step, "widen it")
    if cfg.k_core is not None:
        before = training_counts(table)
        table = k_core(table, cfg.k_core)
        stats["k_core"] = training_counts(table)
        _check_not_emptied(before, stats["k_core"], f"filter.k_core = {cfg.k_core}", "lower filter.k_core")
    return with_stats(table, stats)
