"""k-core per domain (fixed point, idempotent, subset, maximal) and the filter stage."""

from __future__ import annotations

import itertools
from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgcd_core.config import FilterConfig
from lgcd_core.data.kcore import apply_filters, k_core
from lgcd_core.data.readers import table_stats
from lgcd_core.data.sequences import check_kcore
from lgcd_core.io import DataError


def interactions(rows: list[tuple], hints: list[str | None] | None = None) -> pa.Table:
    """Rows of (user, item, domain[, timestamp]); origin = row number, a unique row id."""
    return pa.table(
        {
            "user_id": [f"u{r[0]}" for r in rows],
            "item_id": [f"i{r[1]}" for r in rows],
            "domain": [r[2] for r in rows],
            "timestamp": pa.array([r[3] if len(r) > 3 else n for n, r in enumerate(rows)], pa.int64()),
            "split_hint": pa.array(hints or [None] * len(rows), pa.string()),
            "origin": [str(n) for n in range(len(rows))],
        }
    )


def items_of(table: pa.Table) -> pa.Table:
    return table.select(["item_id", "domain"]).group_by(["item_id", "domain"]).aggregate([])


def is_k_closed(rows: list[tuple], k: int) -> bool:
    """Every user and item of ``rows`` has >= k rows in each domain it appears in."""
    users = Counter((r[0], r[2]) for r in rows)
    items = Counter((r[1], r[2]) for r in rows)
    return all(c >= k for c in users.values()) and all(c >= k for c in items.values())


def brute_force_core(rows: list[tuple], k: int) -> set[int]:
    """Union of all row subsets that are k-closed: the maximal k-core, by exhaustion."""
    best: set[int] = set()
    for size in range(len(rows), 0, -1):
        for subset in itertools.combinations(range(len(rows)), size):
            if not set(subset) <= best and is_k_closed([rows[i] for i in subset], k):
                best |= set(subset)
    return best


row_lists = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.sampled_from("AB")), min_size=0, max_size=40
)
small_rows = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.sampled_from("AB")), max_size=11)


@settings(max_examples=60, deadline=None)
@given(rows=row_lists, k=st.integers(1, 4))
def test_k_core_is_a_subset_fixed_point_and_idempotent(rows: list[tuple], k: int) -> None:
    table = interactions(rows)
    core = k_core(table, k)
    kept = [rows[int(i)] for i in core["origin"].to_pylist()]
    assert core["origin"].to_pylist() == sorted(core["origin"].to_pylist(), key=int)  # subset, input order
    assert is_k_closed(kept, k)
    assert k_core(core, k)["origin"].to_pylist() == core["origin"].to_pylist()
    assert check_kcore(core, k)[0]


@settings(max_examples=40, deadline=None)
@given(rows=small_rows, k=st.integers(1, 3))
def test_k_core_is_maximal(rows: list[tuple], k: int) -> None:
    core = {int(i) for i in k_core(interactions(rows), k)["origin"].to_pylist()}
    assert core == brute_force_core(rows, k)


def test_user_degree_counts_within_each_domain() -> None:
    rows = [(0, i, "A") for i in range(3)] + [(1, i, "A") for i in range(3)] + [(0, 9, "B")]
    core = k_core(interactions(rows), 2)
    assert core["domain"].to_pylist() == ["A"] * 6  # u0 keeps A (3 >= 2) but loses its single B row


def test_evaluation_rows_are_neither_counted_nor_removed() -> None:
    rows = [(0, 0, "A"), (0, 1, "A"), (1, 0, "A"), (1, 1, "A"), (2, 5, "A"), (3, 0, "B")]
    hints = ["train"] * 4 + ["valid", "test"]
    core = k_core(interactions(rows, hints), 2)
    assert core["origin"].to_pylist() == ["0", "1", "2", "3", "4", "5"]
    table = interactions(rows + [(4, 0, "A")], hints + ["train"])
    assert k_core(table, 3)["origin"].to_pylist() == ["4", "5"]


def test_time_window_applies_before_k_core() -> None:
    day = 86_400
    old = [(0, 0, "A", 0), (1, 0, "A", 0), (2, 0, "A", 100 * day)]
    recent = [(u, i, d, 95 * day) for u in (0, 1) for i, d in ((1, "A"), (2, "A"), (5, "B"), (6, "B"))]
    table = interactions(old + recent)
    assert k_core(table, 2).num_rows == 10  # without the window, item i0 has 3 users
    out = apply_filters(table, items_of(table), FilterConfig(k_core=2, time_window_days=10))
    assert sorted(out["origin"].to_pylist(), key=int) == [str(n) for n in range(3, 11)]  # u2 then left alone
    assert table_stats(out) == {"input": {"A": 7, "B": 4}, "time_window": {"A": 5, "B": 4}, "k_core": {"A": 4, "B": 4}}


def test_domain_emptied_by_k_core_is_an_error() -> None:
    rows = [(u, i, "A") for u in range(3) for i in range(3)] + [(0, 0, "B"), (1, 1, "B")]
    table = interactions(rows)
    with pytest.raises(DataError, match=r"filter\.k_core = 3 left domain B without training interactions \(2 before\)"):
        apply_filters(table, items_of(table), FilterConfig(k_core=3))


def test_input_without_a_domain_is_an_error() -> None:
    table = interactions([(0, 0, "A"), (1, 0, "A"), (2, 1, "B")], ["train", "train", "valid"])
    with pytest.raises(DataError, match=r"raw_interactions has no training interactions in domain B"):
        apply_filters(table, items_of(table), FilterConfig(k_core=None))


def test_unknown_item_and_time_window_on_positions_are_errors() -> None:
    table = interactions([(0, 0, "A"), (0, 1, "B")])
    with pytest.raises(DataError, match=r"^1: item 'i1' \(domain B\) is not in raw_items"):
        apply_filters(table, items_of(table.slice(0, 1)), FilterConfig(k_core=None))
    positional = interactions([(0, 0, "A"), (0, 1, "B")], ["train", "train"])
    with pytest.raises(DataError, match="time_window_days"):
        apply_filters(positional, items_of(positional), FilterConfig(k_core=None, time_window_days=5))


def test_check_kcore_fails_on_unfiltered_data() -> None:
    table = interactions([(0, 0, "A"), (0, 1, "A"), (1, 0, "A")])
    ok, details = check_kcore(table, 2)
    assert not ok and details["A_user_id_below_k"] == 1 and details["A_item_id_below_k"] == 1
    assert check_kcore(table, None)[0]
