"""Pseudo-overlap sequences: grounded items inserted at seeded random positions (Ŝ_i^A)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.config import PseudoOverlapConfig
from lgcd_core.language.pseudo_overlap import build_pseudo_overlap, insert_items


def test_insert_keeps_both_orders_and_flags_the_pseudo_positions():
    source, pseudo = [1, 2, 3, 4, 5], [91, 92, 93]
    for seed in range(20):
        merged, flags = insert_items(source, pseudo, np.random.default_rng(seed))
        assert len(merged) == 8 and sum(flags) == 3
        assert [x for x, f in zip(merged, flags) if not f] == source
        assert [x for x, f in zip(merged, flags) if f] == pseudo


def test_insert_positions_are_random_but_seeded():
    runs = {tuple(insert_items(list(range(10)), [99, 98], np.random.default_rng(s))[1]) for s in range(30)}
    assert len(runs) > 10  # positions vary with the seed, including before the first item
    assert any(r[0] for r in runs) and any(r[-1] for r in runs)
    a = insert_items([1, 2, 3], [9], np.random.default_rng(5))
    assert a == insert_items([1, 2, 3], [9], np.random.default_rng(5))
    assert insert_items([1, 2], [], np.random.default_rng(0)) == ([1, 2], [False, False])


def tables() -> tuple[pa.Table, pa.Table]:
    seqs = pa.Table.from_pylist([
        {"user_idx": 1, "user_id": "u1", "user_type": "A-only", "items": [1, 2, 3]},
        {"user_idx": 2, "user_id": "u2", "user_type": "B-only", "items": [20, 21]},
        {"user_idx": 3, "user_id": "u3", "user_type": "overlap", "items": [1, 20]},
    ])
    grounded = pa.Table.from_pylist([
        {"user_idx": 1, "target_domain": "B", "items": [22, 23], "scores": [0.9, 0.8], "fallback": False},
        {"user_idx": 2, "target_domain": "A", "items": [4, 5, 6], "scores": [0.7, 0.6, 0.5], "fallback": True},
    ])
    return seqs, grounded


def test_build_pseudo_overlap_table_and_stats():
    seqs, grounded = tables()
    table, stats = build_pseudo_overlap(seqs, grounded, PseudoOverlapConfig(seed=3))
    assert table.column_names == ["user_idx", "user_type", "source_domain", "target_domain", "items", "is_pseudo"]
    assert table.schema.field("items").type == pa.list_(pa.int32())
    rows = table.to_pylist()
    assert [(r["user_idx"], r["user_type"], r["source_domain"], r["target_domain"]) for r in rows] == [
        (1, "A-only", "A", "B"), (2, "B-only", "B", "A")]
    for r, src, ins in zip(rows, ([1, 2, 3], [20, 21]), ([22, 23], [4, 5, 6])):
        assert [x for x, f in zip(r["items"], r["is_pseudo"]) if not f] == src
        assert [x for x, f in zip(r["items"], r["is_pseudo"]) if f] == ins
    assert stats == {"users": 2, "avg_inserted": 2.5, "avg_length": 5.0, "avg_source_length": 2.5}


def test_a_users_sequence_depends_on_seed_and_user_not_on_other_users():
    seqs, grounded = tables()
    full, _ = build_pseudo_overlap(seqs, grounded, PseudoOverlapConfig(seed=3))
    alone, _ = build_pseudo_overlap(seqs, grounded.slice(1, 1), PseudoOverlapConfig(seed=3))
    assert alone.to_pylist()[0] == full.to_pylist()[1]
    seeds = {tuple(build_pseudo_overlap(seqs, grounded, PseudoOverlapConfig(seed=s))[0].column("is_pseudo").to_pylist()[1])
             for s in range(10)}
    assert len(seeds) > 1


def test_unknown_user_is_an_error():
    seqs, grounded = tables()
    with pytest.raises(ValueError, match="user_idx 2"):
        build_pseudo_overlap(seqs.slice(0, 1), grounded, PseudoOverlapConfig())
