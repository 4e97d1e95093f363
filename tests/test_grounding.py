"""Grounding pseudo texts to real target items with FAISS (paper eq. 5-6), and the quality signals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.config import DatasetConfig
from lgcd_core.language.grounding import (
    build_index,
    category_overlap_rate,
    ground_pseudo_texts,
    ground_queries,
    merge_max_score,
    merge_round_robin,
    taste_match_rate,
    title_words,
)
from lgcd_core.language.pseudo_text import SCHEMA as PSEUDO_SCHEMA
from lgcd_core.language.text_encoder import encode_texts

FOOD = ["Organic green tea bags", "Dark chocolate bar", "Espresso coffee beans", "Basmati rice"]
KITCHEN = ["Cast iron skillet 12 inch", "Electric tea kettle", "Burr coffee grinder", "Rice cooker 6 cup",
           "Chef knife stainless steel", "Bamboo cutting board"]


def items_table() -> pa.Table:
    rows = [("A", t) for t in FOOD] + [("B", t) for t in KITCHEN]
    return pa.Table.from_pylist([{"item_idx": i + 1, "item_id": f"i{i + 1}", "domain": d, "title": t, "text": t}
                                 for i, (d, t) in enumerate(rows)])


def sequences_table() -> pa.Table:
    return pa.Table.from_pylist([
        {"user_idx": 1, "user_id": "u1", "user_type": "A-only", "items": [1, 3]},
        {"user_idx": 2, "user_id": "u2", "user_type": "A-only", "items": [4]},
        {"user_idx": 3, "user_id": "u3", "user_type": "B-only", "items": [5, 9]},
        {"user_idx": 4, "user_id": "u4", "user_type": "overlap", "items": [1, 6, 3, 7]},
        {"user_idx": 5, "user_id": "u5", "user_type": "overlap", "items": [4, 8]},
    ])


def pseudo_table() -> pa.Table:
    rows = [
        (1, "A", "B", ["electric kettle for tea", "coffee grinder"], True),
        (2, "A", "B", [], False),
        (3, "B", "A", ["green tea"], True),
    ]
    return pa.Table.from_pylist([{"user_idx": u, "source_domain": s, "target_domain": t, "prompt": "p", "answer": "a",
                                  "descriptions": d, "usable": ok, "cache_key": str(u)} for u, s, t, d, ok in rows],
                                schema=PSEUDO_SCHEMA)


def config(**grounding) -> DatasetConfig:
    return DatasetConfig.model_validate({"name": "t", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Food", "B": "Kitchen"},
                                         "text_encoder": {"batch_size": 4, "max_seq_length": 32},
                                         "grounding": {"n_k": 2, **grounding}})


def test_round_robin_takes_each_description_in_turn_without_duplicates():
    ids = np.array([[5, 6, 7], [5, 8, 9]])
    scores = np.array([[0.9, 0.8, 0.7], [0.95, 0.5, 0.4]], dtype=np.float32)
    items, best = merge_round_robin(ids, scores, 3)
    assert items == [5, 6, 8] and best == pytest.approx([0.95, 0.8, 0.5])
    assert merge_max_score(ids, scores, 3) == ([5, 6, 7], pytest.approx([0.95, 0.8, 0.7]))
    assert merge_round_robin(np.array([[1, -1]]), np.array([[0.3, -1.0]]), 5) == ([1], pytest.approx([0.3]))


def test_exact_index_and_mean_query():
    vectors = np.eye(4, dtype=np.float32)
    index = build_index(vectors, "cpu")
    queries = np.array([[0.9, 0.1, 0, 0], [0, 0, 0.8, 0.6]], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert ground_queries(index, queries, 2, None, "round_robin")[0] == [0, 2]
    assert ground_queries(index, queries, 4, 1, "round_robin")[0] == [0, 2]  # only rank 1 of each asked
    three = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0.8, 0.6]], dtype=np.float32)
    assert ground_queries(index, three, 1, None, "mean_query")[0] == [2]  # mean (.33, 0, .6, .2)
    assert ground_queries(index, three, 1, None, "round_robin")[0] == [0]
    assert len(ground_queries(index, queries, 10, None, "max_score")[0]) == 4  # k capped at the index size


def test_grounding_finds_the_matching_real_items_and_falls_back_for_unusable_users():
    items = items_table()
    table, stats = ground_pseudo_texts(pseudo_table(), items, config(), "cpu", sequences=sequences_table())
    assert table.column_names == ["user_idx", "target_domain", "items", "scores", "fallback"]
    rows = {r["user_idx"]: r for r in table.to_pylist()}
    assert rows[1]["items"] == [6, 7] and rows[1]["target_domain"] == "B" and not rows[1]["fallback"]
    assert rows[3]["items"][0] == 1 and all(i <= 4 for i in rows[3]["items"])  # tea, in the food domain
    assert rows[2]["fallback"] and rows[2]["items"][0] == 8  # basmati rice -> rice cooker
    assert all(len(r["items"]) == 2 == len(set(r["items"])) for r in rows.values())
    assert stats["users"] == 3 and stats["fallback_users"] == 1 and stats["unusable_users"] == 1 and stats["dropped_users"] == 0
    assert stats["faiss_device"] == "cpu"


def test_unusable_users_can_be_dropped_and_fallback_needs_sequences():
    items = items_table()
    table, stats = ground_pseudo_texts(pseudo_table(), items, config(unusable="drop"), "cpu")
    assert table.column("user_idx").to_pylist() == [1, 3] and stats["dropped_users"] == 1
    with pytest.raises(ValueError, match="sequences"):
        ground_pseudo_texts(pseudo_table(), items, config(), "cpu")


def test_precomputed_item_embeddings_give_the_same_result():
    items, cfg = items_table(), config()
    vectors = np.vstack([np.zeros((1, 384), np.float32), encode_texts(items.column("text").to_pylist(), cfg.text_encoder, "cpu")])
    a, _ = ground_pseudo_texts(pseudo_table(), items, cfg, "cpu", sequences=sequences_table())
    b, _ = ground_pseudo_texts(pseudo_table(), items, cfg, "cpu", sequences=sequences_table(), item_embeddings=vectors)
    assert a.column("items").to_pylist() == b.column("items").to_pylist()
    with pytest.raises(ValueError, match="rows"):
        ground_pseudo_texts(pseudo_table(), items, cfg, "cpu", sequences=sequences_table(), item_embeddings=vectors[1:])


def grounded(rows: list[tuple[int, str, list[int]]]) -> pa.Table:
    return pa.Table.from_pylist([{"user_idx": u, "target_domain": d, "items": i, "scores": [0.5] * len(i), "fallback": False}
                                 for u, d, i in rows])


def test_taste_match_rate_against_chance():
    truth = {"user_taste": {"u1": 0, "u2": 1}, "item_taste": {f"i{i}": (0 if i in (5, 6, 7) else 1) for i in range(1, 11)}}
    out = taste_match_rate(grounded([(1, "B", [5, 6, 8]), (2, "B", [8, 9]), (3, "A", [1])]), items_table(), sequences_table(), truth)
    assert out["users"] == 2 and out["items"] == 5  # u3 has no known taste
    assert out["match_rate"] == pytest.approx(4 / 5)
    assert out["chance_rate"] == pytest.approx((3 / 6 + 3 / 6) / 2)
    assert out["lift"] == pytest.approx(1.6)


def test_category_overlap_rate_uses_overlap_copurchases():
    assert title_words("The Electric Tea-Kettle, 2 pack") == {"electric", "tea", "kettle"}
    out = category_overlap_rate(grounded([(1, "B", [6, 7]), (2, "B", [5, 10]), (3, "A", [2])]), items_table(), sequences_table())
    # u1 (items 1, 3) co-purchased 6, 7 -> both hit; u2 (item 4) co-purchased 8 "Rice cooker 6 cup": no hit
    assert out["users"] == 2 and out["users_without_counterparts"] == 1
    assert out["copurchase_rate"] == pytest.approx(0.5)
    assert out["copurchase_rate_chance"] == pytest.approx((2 / 6 + 1 / 6) / 2)
    assert 0 <= out["title_word_rate_chance"] <= 1
