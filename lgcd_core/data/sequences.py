"""The ``sequences`` stage: item index, per-user training sequences, evaluation cases, checks.

Item index (``item_idx`` int32, 0 = padding): when the source fixes it (every raw item has a
``source_index``, as LLMCDSR does) ``item_idx = source_index + 1`` over all source items;
otherwise the items of the interactions, A first then B, each sorted by ``item_id``.

Each user's interactions are ordered by timestamp, ties kept in input (file) order.

Evaluation cases:
- rows with a ``split_hint`` (LLMCDSR): 'train' users give training sequences, each 'valid'/'test'
  user gives one case, the last item being the target and the rest the history;
- otherwise overlap users are held out by user: the eligible ones (at least ``min_history`` items of
  the other domain before their last item) are shuffled with ``split.seed`` (sorted by user_id
  first, so the draw does not depend on row order) and the first ``round(valid_ratio * #overlap)``
  go to valid, the next ``round(test_ratio * #overlap)`` to test (fewer if not enough are eligible;
  ineligible users stay in training). A held-out user's target is their last item, the history
  everything before it, and they get no training sequence.

User types come from the training interactions (overlap / A-only / B-only); ``user_idx`` numbers
users in order of first appearance in the interactions.

:func:`require_every_domain` (run by the stage) refuses a result where a domain has no items, no
training item, or no evaluation case in a split that should have some (a split of the source's
split hints, or one with a ratio above 0), naming the domain and the setting that likely caused it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.config import SplitConfig
from lgcd_core.data.kcore import codes, subject_rows
from lgcd_core.io import DataError

ITEMS_SCHEMA = pa.schema(
    [("item_idx", pa.int32()), ("item_id", pa.string()), ("domain", pa.string()), ("title", pa.string()),
     ("text", pa.string()), ("has_title", pa.bool_())]
)  # fmt: skip
SEQUENCES_SCHEMA = pa.schema(
    [("user_idx", pa.int32()), ("user_id", pa.string()), ("user_type", pa.string()), ("items", pa.list_(pa.int32()))]
)
EVAL_SCHEMA = pa.schema(
    [("case_id", pa.int32()), ("split", pa.string()), ("user_idx", pa.int32()), ("history", pa.list_(pa.int32())),
     ("target", pa.int32()), ("target_domain", pa.string())]
)  # fmt: skip
SPLITS = ("valid", "test")
DOMAINS = ("A", "B")


@dataclass
class SequenceData:
    items: pa.Table
    sequences: pa.Table
    eval_cases: pa.Table


@dataclass
class _Users:
    """Interactions grouped by user: rows sorted by (user, time, input order)."""

    item: np.ndarray  # item_idx per sorted row
    is_b: np.ndarray  # domain B per sorted row
    start: np.ndarray  # first sorted row of each user (len n_users + 1, last = n_rows)
    ids: np.ndarray  # user_id per user
    hint: np.ndarray  # split_hint of each user's first row (None for raw data)

    def count_b(self) -> np.ndarray:
        return np.add.reduceat(self.is_b.astype(np.int64), self.start[:-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.start)


# ---- item index --------------------------------------------------------------------------------


def item_index(items: pa.Table, interactions: pa.Table) -> pa.Table:
    """The ``items.parquet`` table (row i has ``item_idx == i + 1``)."""
    if items.num_rows and items["source_index"].null_count == 0:
        table = items.append_column("item_idx", pc.add(items["source_index"].cast(pa.int32()), 1)).sort_by("item_idx")
        idx, domain = table["item_idx"].to_numpy(), table["domain"].to_numpy(zero_copy_only=False)
        if not np.array_equal(idx, np.arange(1, len(idx) + 1)) or (np.diff((domain == "B").astype(int)) < 0).any():
            raise DataError(
                "raw_items.source_index: expected the source's global ids 0..n-1 without gaps, "
                "A items before B items; re-materialize raw_items"
            )
    else:
        used = interactions.select(["item_id", "domain"]).group_by(["item_id", "domain"]).aggregate([])
        table = items.join(used, keys=["item_id", "domain"], join_type="inner").sort_by(
            [("domain", "ascending"), ("item_id", "ascending")]
        )
        table = table.append_column("item_idx", pa.array(np.arange(1, table.num_rows + 1, dtype=np.int32)))
    return table.select(ITEMS_SCHEMA.names).cast(ITEMS_SCHEMA)


# ---- grouping ----------------------------------------------------------------------------------


def _group(interactions: pa.Table, index: pa.Table) -> _Users:
    if interactions.num_rows == 0:
        raise DataError("filtered_interactions: no rows; nothing to build sequences from")
    rows = interactions.append_column("_row", pa.array(np.arange(interactions.num_rows)))
    joined = rows.join(index.select(["item_id", "domain", "item_idx"]), keys=["item_id", "domain"], join_type="left outer")
    missing = joined.filter(pc.is_null(joined["item_idx"]))
    if missing.num_rows:
        row = missing.slice(0, 1).to_pylist()[0]
        raise DataError(f"{row['origin']}: item {row['item_id']!r} (domain {row['domain']}) is not in the item index")
    joined = joined.sort_by("_row")
    user = codes(joined["user_id"])
    order = np.lexsort((joined["_row"].to_numpy(), joined["timestamp"].to_numpy(), user))
    user_sorted = user[order]
    start = np.concatenate([[0], np.flatnonzero(np.diff(user_sorted)) + 1, [len(order)]]).astype(np.int64)
    hints = joined["split_hint"].to_numpy(zero_copy_only=False)[order]
    first = start[:-1]
    if (hints != np.repeat(hints[first], np.diff(start))).any():
        raise DataError("raw_interactions.split_hint: a user has rows of more than one split")
    return _Users(
        item=joined["item_idx"].to_numpy()[order].astype(np.int32),
        is_b=joined["domain"].to_numpy(zero_copy_only=False)[order] == "B",
        start=start,
        ids=joined["user_id"].to_numpy(zero_copy_only=False)[order][first],
        hint=hints[first],
    )


# ---- held-out users ----------------------------------------------------------------------------


def hold_out(users: _Users, split: SplitConfig) -> np.ndarray:
    """Split of each user: 'train', 'valid' or 'test' (raw data, overlap users held out by user)."""
    n_b = users.count_b()
    n_a = users.lengths() - n_b
    last_is_b = users.is_b[users.start[1:] - 1]
    overlap = (n_a > 0) & (n_b > 0)
    eligible = overlap & (np.where(last_is_b, n_a, n_b) >= split.min_history)
    candidates = np.flatnonzero(eligible)
    candidates = candidates[np.argsort(users.ids[candidates], kind="stable")]
    candidates = np.random.default_rng(split.seed).permutation(candidates)
    n_valid = min(int(round(split.valid_ratio * overlap.sum())), len(candidates))
    n_test = min(int(round(split.test_ratio * overlap.sum())), len(candidates) - n_valid)
    result = np.full(len(n_a), "train", dtype=object)
    result[candidates[:n_valid]] = "valid"
    result[candidates[n_valid : n_valid + n_test]] = "test"
    return result


def _user_splits(users: _Users, split: SplitConfig) -> np.ndarray:
    has_hint = np.array([h is not None for h in users.hint])
    if has_hint.all():
        unknown = set(users.hint) - {"train", *SPLITS}
        if unknown:
            raise DataError(f"raw_interactions.split_hint: unexpected values {sorted(unknown)}; expected train/valid/test")
        return users.hint.astype(object)
    if has_hint.any():
        raise DataError("raw_interactions.split_hint: set on some rows only; expected all rows or none")
    return hold_out(users, split)


# ---- tables ------------------------------------------------------------------------------------


def _lists(users: _Users, chosen: np.ndarray, drop_last: bool) -> pa.Array:
    """list<int32> of the chosen users' items (without their last item if ``drop_last``)."""
    starts, ends = users.start[:-1][chosen], users.start[1:][chosen] - int(drop_last)
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    take = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(users.item[take], pa.int32()))


def _user_types(users: _Users, chosen: np.ndarray) -> np.ndarray:
    n_b = users.count_b()[chosen]
    n_a = users.lengths()[chosen] - n_b
    return np.where((n_a > 0) & (n_b > 0), "overlap", np.where(n_a > 0, "A-only", "B-only"))


def build_sequences(interactions: pa.Table, items: pa.Table, split: SplitConfig) -> SequenceData:
    """Item index, training sequences and evaluation cases (see the module docstring)."""
    index = item_index(items, interactions)
    users = _group(interactions, index)
    splits = _user_splits(users, split)
    train = np.flatnonzero(splits == "train")
    sequences = pa.table(
        [pa.array(train, pa.int32()), pa.array(users.ids[train], pa.string()),
         pa.array(_user_types(users, train), pa.string()), _lists(users, train, drop_last=False)],
        schema=SEQUENCES_SCHEMA,
    )  # fmt: skip
    held = np.concatenate([np.flatnonzero(splits == s) for s in SPLITS]).astype(np.int64)
    last = users.start[1:][held] - 1
    eval_cases = pa.table(
        [pa.array(np.arange(len(held)), pa.int32()), pa.array(splits[held].astype(str), pa.string()),
         pa.array(held, pa.int32()), _lists(users, held, drop_last=True), pa.array(users.item[last], pa.int32()),
         pa.array(np.where(users.is_b[last], "B", "A"), pa.string())],
        schema=EVAL_SCHEMA,
    )  # fmt: skip
    return SequenceData(items=index, sequences=sequences, eval_cases=eval_cases)


# ---- stats and checks --------------------------------------------------------------------------


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    values, counts = np.unique(column.to_numpy(zero_copy_only=False).astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def sequence_stats(data: SequenceData) -> dict:
    """Users per type, items per domain, interactions, average length, eval cases per split x domain."""
    lengths = pc.list_value_length(data.sequences["items"]).to_numpy(zero_copy_only=False)
    cases = data.eval_cases
    return {
        "users": {t: _value_counts(data.sequences["user_type"]).get(t, 0) for t in ("overlap", "A-only", "B-only")},
        "items": {d: _value_counts(data.items["domain"]).get(d, 0) for d in DOMAINS},
        "interactions": int(lengths.sum()),
        "avg_length": float(lengths.mean()) if len(lengths) else 0.0,
        "eval_cases": {
            s: {d: _value_counts(cases.filter(pc.equal(cases["split"], s))["target_domain"]).get(d, 0) for d in DOMAINS}
            for s in SPLITS
        },
    }


def require_every_domain(data: SequenceData, interactions: pa.Table, split: SplitConfig) -> None:
    """DataError if a domain has no items, no training item or no evaluation case of an expected split."""
    stats = sequence_stats(data)
    _require_training(data, stats, split)
    hints = set(pc.unique(interactions["split_hint"]).to_pylist())
    hinted = hints != {None}
    expected = [s for s in SPLITS if (s in hints if hinted else getattr(split, f"{s}_ratio") > 0)]
    if not expected:
        cause = "the source has no valid/test lines" if hinted else "split.valid_ratio and split.test_ratio are both 0"
        raise DataError(f"sequences: no evaluation cases; {cause}")
    for s in expected:
        for domain in DOMAINS:
            if not stats["eval_cases"][s][domain]:
                n_cases = sum(stats["eval_cases"][s].values())
                raise DataError(
                    f"sequences: no {s} evaluation case has a domain-{domain} target ({n_cases} {s} cases); "
                    + _missing_cases_hint(data, split, s, domain, hinted)
                )


def _require_training(data: SequenceData, stats: dict, split: SplitConfig) -> None:
    domains = data.items["domain"].to_numpy(zero_copy_only=False)
    trained = set(domains[pc.list_flatten(data.sequences["items"]).to_numpy() - 1])
    for domain in DOMAINS:
        if not stats["items"][domain]:
            raise DataError(f"sequences: the item index has no domain-{domain} items; check raw_items and the filter")
        if domain not in trained:
            raise DataError(
                f"sequences: no training sequence has a domain-{domain} item ({data.eval_cases.num_rows} users held "
                f"out for evaluation); lower split.valid_ratio ({split.valid_ratio}) or split.test_ratio ({split.test_ratio})"
            )


def _missing_cases_hint(data: SequenceData, split: SplitConfig, s: str, domain: str, hinted: bool) -> str:
    if hinted:
        return f"the source's {s} lines have no domain-{domain} item as their last id"
    n_trained = int(pc.sum(pc.equal(data.sequences["user_type"], "overlap")).as_py() or 0)
    n_overlap = n_trained + data.eval_cases.num_rows  # held-out users are overlap users
    return (
        f"{n_overlap} overlap users after filtering (split.{s}_ratio = {getattr(split, f'{s}_ratio')}, "
        f"split.min_history = {split.min_history}); raise split.{s}_ratio or lower filter.k_core / split.min_history"
    )


def check_kcore(interactions: pa.Table, k: int | None) -> tuple[bool, dict]:
    """Every (non-evaluation) user and item has >= k interactions in each domain it appears in."""
    if k is None:
        return True, {"k": None, "skipped": "filter.k_core is null"}
    table = interactions.filter(pa.array(subject_rows(interactions)))
    details: dict = {"k": k}
    for domain in DOMAINS:
        part = table.filter(pc.equal(table["domain"], domain))
        for key in ("user_id", "item_id"):
            counts = part.group_by(key).aggregate([([], "count_all")])
            low = counts.filter(pc.less(counts["count_all"], k))
            details[f"{domain}_{key}_below_k"] = low.num_rows
            if low.num_rows:
                details.setdefault("examples", []).append(f"{domain} {key} {low[key][0]} has {low['count_all'][0]}")
    return all(v == 0 for key, v in details.items() if key.endswith("_below_k")), details


def check_no_empty_sequence(data: SequenceData) -> tuple[bool, dict]:
    """No training sequence and no evaluation history is empty."""
    empty_seq = int(pc.sum(pc.equal(pc.list_value_length(data.sequences["items"]), 0)).as_py() or 0)
    empty_hist = int(pc.sum(pc.equal(pc.list_value_length(data.eval_cases["history"]), 0)).as_py() or 0)
    return empty_seq == 0 and empty_hist == 0, {"empty_sequences": empty_seq, "empty_histories": empty_hist}


def check_ids_in_index(data: SequenceData) -> tuple[bool, dict]:
    """Index rows are 1..n with A before B; every id used is in 1..n; target domains match the index."""
    idx = data.items["item_idx"].to_numpy()
    domains = data.items["domain"].to_numpy(zero_copy_only=False)
    n = len(idx)
    used = np.concatenate(
        [pc.list_flatten(data.sequences["items"]).to_numpy(), pc.list_flatten(data.eval_cases["history"]).to_numpy(),
         data.eval_cases["target"].to_numpy()]
    )  # fmt: skip
    targets = data.eval_cases["target"].to_numpy()
    target_domains = data.eval_cases["target_domain"].to_numpy(zero_copy_only=False)
    in_range = (targets >= 1) & (targets <= n)
    wrong_domain = int((domains[targets[in_range] - 1] != target_domains[in_range]).sum())
    details = {
        "n_items": n,
        "index_dense": bool(np.array_equal(idx, np.arange(1, n + 1))),
        "a_before_b": bool((np.diff((domains == "B").astype(int)) >= 0).all()),
        "out_of_range_ids": int(((used < 1) | (used > n)).sum()),
        "wrong_target_domain": wrong_domain,
    }
    ok = details["index_dense"] and details["a_before_b"] and not details["out_of_range_ids"] and not wrong_domain
    return ok, details


def check_targets_not_in_training(data: SequenceData) -> tuple[bool, dict]:
    """Held-out users have no training sequence, and each has exactly one evaluation case."""
    held = data.eval_cases["user_idx"].to_numpy()
    leaked = np.intersect1d(held, data.sequences["user_idx"].to_numpy())
    repeated = len(held) - len(np.unique(held))
    details = {"held_out_users_in_training": len(leaked), "users_with_several_cases": repeated}
    if len(leaked):
        details["examples"] = leaked[:5].tolist()
    return len(leaked) == 0 and repeated == 0, details


def text_domains(items: pa.Table, without_text: list[str] = ()) -> dict[str, bool]:
    """Whether each domain has item text: some item of it has a real title, and the YAML does not switch it off.

    A domain without text (LLMCDSR Movie-Book's books: upstream lost their titles) is a first-class case:
    no stage embeds its placeholder titles, and the ID encoder stands in for the text encoder.
    """
    domains = np.asarray(items.column("domain").to_pylist())
    if "has_title" not in items.column_names:  # a table that does not track titles (e.g. built in memory): all have text
        return {d: d not in without_text for d in ("A", "B")}
    titled = np.asarray(items.column("has_title").to_pylist(), dtype=bool)
    return {d: bool(titled[domains == d].any()) and d not in without_text for d in ("A", "B")}
