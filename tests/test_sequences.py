"""Sequences stage: item index, time order, user types, held-out splits, and each invariant check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.config import SplitConfig
from lgcd_core.data.sequences import (
    SequenceData,
    build_sequences,
    check_ids_in_index,
    check_no_empty_sequence,
    check_targets_not_in_training,
    require_every_domain,
    sequence_stats,
)
from lgcd_core.io import DataError


def raw_items(keys: list[tuple[str, str]], source_index: list[int] | None = None) -> pa.Table:
    return pa.table(
        {
            "item_id": [k[0] for k in keys],
            "domain": [k[1] for k in keys],
            "title": [k[0] for k in keys],
            "brand": pa.nulls(len(keys), pa.string()),
            "categories": pa.nulls(len(keys), pa.string()),
            "text": [k[0] for k in keys],
            "has_title": [True] * len(keys),
            "source_index": pa.array(source_index or [None] * len(keys), pa.int32()),
        }
    )


def table(rows: list[tuple], hints: list[str] | None = None) -> pa.Table:
    """Rows of (user, item, domain, timestamp)."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "domain": [r[2] for r in rows],
            "timestamp": pa.array([r[3] for r in rows], pa.int64()),
            "split_hint": pa.array(hints or [None] * len(rows), pa.string()),
            "origin": [f"f:{n + 1}" for n in range(len(rows))],
        }
    )


def population(n_overlap: int = 100, seed: int = 0) -> pa.Table:
    """Overlap users with 3 A then 2 B items, plus a few single-domain users."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_overlap):
        rows += [(f"o{u}", f"a{rng.integers(20)}", "A", t) for t in range(3)]
        rows += [(f"o{u}", f"b{rng.integers(20)}", "B", t) for t in range(3, 5)]
    rows += [("sa", "a1", "A", 0), ("sa", "a2", "A", 1), ("sb", "b1", "B", 0)]
    return table(rows)


def items_for(interactions: pa.Table) -> pa.Table:
    keys = sorted(set(zip(interactions["item_id"].to_pylist(), interactions["domain"].to_pylist())))
    return raw_items(keys)


def build(interactions: pa.Table, split: SplitConfig | None = None) -> SequenceData:
    return build_sequences(interactions, items_for(interactions), split or SplitConfig())


def test_index_orders_a_then_b_by_item_id_and_sequences_by_time() -> None:
    rows = [("u1", "b2", "B", 5), ("u1", "a9", "A", 1), ("u1", "a1", "A", 5), ("u2", "a1", "A", 0), ("u1", "b1", "B", 5)]
    data = build(table(rows), SplitConfig(valid_ratio=0.0, test_ratio=0.0))
    assert data.items["item_id"].to_pylist() == ["a1", "a9", "b1", "b2"]
    assert data.items["item_idx"].to_pylist() == [1, 2, 3, 4]
    seqs = data.sequences.to_pylist()
    assert seqs[0] == {"user_idx": 0, "user_id": "u1", "user_type": "overlap", "items": [2, 4, 1, 3]}  # ties: file order
    assert seqs[1]["user_type"] == "A-only" and seqs[1]["user_idx"] == 1
    assert data.eval_cases.num_rows == 0


def held_out(data: SequenceData) -> dict[str, set[tuple]]:
    """Held-out cases per split as (history, target) tuples, independent of user numbering."""
    out: dict[str, set[tuple]] = {"valid": set(), "test": set()}
    for case in data.eval_cases.to_pylist():
        out[case["split"]].add((tuple(case["history"]), case["target"]))
    return out


def test_split_by_user_is_deterministic_disjoint_and_follows_ratios() -> None:
    interactions = population()
    split = SplitConfig(seed=3, valid_ratio=0.2, test_ratio=0.1)
    one = build(interactions, split)
    assert build(interactions, split).eval_cases.equals(one.eval_cases)
    reversed_rows = build(interactions.take(np.arange(interactions.num_rows)[::-1]), split)
    assert held_out(reversed_rows) == held_out(one)  # the draw does not depend on row order
    assert held_out(build(interactions, split.model_copy(update={"seed": 4}))) != held_out(one)

    cases = one.eval_cases.to_pylist()
    assert sum(c["split"] == "valid" for c in cases) == 20 and sum(c["split"] == "test" for c in cases) == 10
    held = one.eval_cases["user_idx"].to_pylist()
    assert len(set(held)) == 30 and not set(held) & set(one.sequences["user_idx"].to_pylist())
    assert all(len(c["history"]) == 4 and c["target_domain"] == "B" for c in cases)
    stats = sequence_stats(one)
    assert stats["users"] == {"overlap": 70, "A-only": 1, "B-only": 1}
    assert stats["eval_cases"] == {"valid": {"A": 0, "B": 20}, "test": {"A": 0, "B": 10}}
    assert stats["interactions"] == 70 * 5 + 3
    assert all(check(one)[0] for check in (check_no_empty_sequence, check_ids_in_index, check_targets_not_in_training))


def test_held_out_users_need_min_history_in_the_other_domain() -> None:
    rows = [("x", "a1", "A", 0), ("x", "b1", "B", 1), ("x", "b2", "B", 2),  # 1 A item before a B target
            ("y", "b1", "B", 0), ("y", "a1", "A", 1), ("y", "a2", "A", 2), ("y", "b2", "B", 3)]  # fmt: skip
    split = SplitConfig(valid_ratio=0.5, test_ratio=0.4, min_history=2)
    data = build(table(rows), split)
    assert data.eval_cases.to_pylist() == [
        {"case_id": 0, "split": "valid", "user_idx": 1, "history": [3, 1, 2], "target": 4, "target_domain": "B"}
    ]
    assert data.sequences["user_id"].to_pylist() == ["x"]  # ineligible, kept in training


def test_llmcdsr_cases_come_from_split_hints_and_index_from_source() -> None:
    items = raw_items([("z", "A"), ("y", "A"), ("x", "B")], source_index=[0, 1, 2])
    rows = [("train:1", "z", "A", 0), ("train:1", "x", "B", 1), ("valid:1", "y", "A", 0), ("valid:1", "x", "B", 1),
            ("test:1", "x", "B", 0), ("test:1", "z", "A", 1)]  # fmt: skip
    data = build_sequences(table(rows, ["train", "train", "valid", "valid", "test", "test"]), items, SplitConfig())
    assert data.items["item_id"].to_pylist() == ["z", "y", "x"]
    assert [(c["split"], c["history"], c["target"], c["target_domain"]) for c in data.eval_cases.to_pylist()] == [
        ("valid", [2], 3, "B"), ("test", [3], 1, "A")
    ]  # fmt: skip
    assert data.sequences.to_pylist() == [{"user_idx": 0, "user_id": "train:1", "user_type": "overlap", "items": [1, 3]}]
    with pytest.raises(DataError, match="source_index"):
        build_sequences(table(rows[:2], ["train"] * 2), raw_items([("z", "A"), ("x", "B")], [0, 2]), SplitConfig())
    with pytest.raises(DataError, match="more than one split"):
        build_sequences(table(rows[:2], ["train", "valid"]), items, SplitConfig())
    with pytest.raises(DataError, match="some rows only"):
        build_sequences(table(rows[:4], ["train", "train", None, None]), items, SplitConfig())


def test_every_domain_needs_training_items_and_evaluation_targets() -> None:
    interactions = population(20)  # every overlap user ends on a B item
    split = SplitConfig(valid_ratio=0.2, test_ratio=0.2)
    with pytest.raises(DataError, match=r"no valid evaluation case has a domain-A target \(4 valid cases\); 20 overlap"):
        require_every_domain(build(interactions, split), interactions, split)
    no_split = SplitConfig(valid_ratio=0.0, test_ratio=0.0)
    with pytest.raises(DataError, match=r"no evaluation cases; split\.valid_ratio and split\.test_ratio are both 0"):
        require_every_domain(build(interactions, no_split), interactions, no_split)
    only_held_out_b = table([("u", "a1", "A", 0), ("u", "b1", "B", 1), ("v", "a1", "A", 0)])
    hold_one = SplitConfig(valid_ratio=0.6, test_ratio=0.0)
    with pytest.raises(DataError, match=r"no training sequence has a domain-B item \(1 users held out"):
        require_every_domain(build(only_held_out_b, hold_one), only_held_out_b, hold_one)


def test_unknown_item_is_an_error_naming_the_origin() -> None:
    interactions = table([("u", "a1", "A", 0), ("u", "a2", "A", 1)])
    with pytest.raises(DataError, match=r"f:2: item 'a2' \(domain A\) is not in the item index"):
        build_sequences(interactions, raw_items([("a1", "A")]), SplitConfig())


# ---- each invariant check can fail -------------------------------------------------------------


@pytest.fixture
def good() -> SequenceData:
    return build(population(20), SplitConfig(valid_ratio=0.2, test_ratio=0.2))


def _replace_column(t: pa.Table, name: str, values: list) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), t.schema.field(name), pa.array(values, t.schema.field(name).type))


def test_check_no_empty_sequence_fails(good: SequenceData) -> None:
    assert check_no_empty_sequence(good)[0]
    seqs = good.sequences["items"].to_pylist()
    broken = dataclasses.replace(good, sequences=_replace_column(good.sequences, "items", [[]] + seqs[1:]))
    ok, details = check_no_empty_sequence(broken)
    assert not ok and details["empty_sequences"] == 1
    hist = good.eval_cases["history"].to_pylist()
    broken = dataclasses.replace(good, eval_cases=_replace_column(good.eval_cases, "history", [[]] + hist[1:]))
    assert check_no_empty_sequence(broken) == (False, {"empty_sequences": 0, "empty_histories": 1})


def test_check_ids_in_index_fails(good: SequenceData) -> None:
    n = good.items.num_rows
    seqs = good.sequences["items"].to_pylist()
    broken = dataclasses.replace(good, sequences=_replace_column(good.sequences, "items", [[n + 1]] + seqs[1:]))
    ok, details = check_ids_in_index(broken)
    assert not ok and details["out_of_range_ids"] == 1
    domains = good.eval_cases["target_domain"].to_pylist()
    flipped = ["A" if d == "B" else "B" for d in domains[:1]] + domains[1:]
    broken = dataclasses.replace(good, eval_cases=_replace_column(good.eval_cases, "target_domain", flipped))
    ok, details = check_ids_in_index(broken)
    assert not ok and details["wrong_target_domain"] == 1
    broken = dataclasses.replace(good, items=good.items.take(list(range(n))[::-1]))
    ok, details = check_ids_in_index(broken)
    assert not ok and not details["index_dense"]


def test_check_targets_not_in_training_fails(good: SequenceData) -> None:
    assert check_targets_not_in_training(good)[0]
    trained = good.sequences["user_idx"].to_pylist()
    held = good.eval_cases["user_idx"].to_pylist()
    broken = dataclasses.replace(good, eval_cases=_replace_column(good.eval_cases, "user_idx", [trained[0]] + held[1:]))
    ok, details = check_targets_not_in_training(broken)
    assert not ok and details["held_out_users_in_training"] == 1
