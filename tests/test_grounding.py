"""Grounding pseudo texts to real target items with FAISS (paper eq. 5-6), and the quality signals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.config import DatasetConfig
from lgcd_core.language.grounding import (
    build_index,
    category_overlap_rate,
    ground_many,
    ground_pseudo_texts,
    ground_pseudo_users,
    ground_queries,
    ground_source_items,
    merge_max_score,
    merge_round_robin,
    taste_match_rate,
    title_words,
)
from lgcd_core.language.pseudo_sources import ground_collaborative
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


def config(pseudo_overlap: dict | None = None, **grounding) -> DatasetConfig:
    return DatasetConfig.model_validate({"name": "t", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Food", "B": "Kitchen"},
                                         "text_encoder": {"batch_size": 4, "max_seq_length": 32},
                                         "grounding": {"n_k": 2, **grounding}, "pseudo_overlap": pseudo_overlap or {}})


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
    for merge in ("round_robin", "max_score", "mean_query"):  # one search for many users = one search each
        assert ground_many(index, [queries, three], 2, None, merge) == [ground_queries(index, q, 2, None, merge)
                                                                         for q in (queries, three)]


def test_grounding_finds_the_matching_real_items_and_falls_back_for_unusable_users():
    items = items_table()
    table, stats = ground_pseudo_texts(pseudo_table(), items, config(), "cpu", sequences=sequences_table())
    assert table.column_names == ["user_idx", "target_domain", "items", "scores", "fallback", "source"]
    assert set(table.column("source").to_pylist()) == {"llm"}
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


def test_text_source_is_the_unusable_answer_fallback_for_every_user():
    items, seqs = items_table(), sequences_table()
    fallback, _ = ground_pseudo_texts(pseudo_table(), items, config(), "cpu", sequences=seqs)
    fallback_row = {r["user_idx"]: r for r in fallback.to_pylist()}[2]
    assert fallback_row["fallback"]
    text, stats = ground_pseudo_users(PSEUDO_SCHEMA.empty_table(), items, seqs, config({"source": "text"}), "cpu")
    rows = {r["user_idx"]: r for r in text.to_pylist()}
    assert sorted(rows) == [1, 2, 3]  # every single-domain user, no LLM answer read
    assert rows[2]["items"] == fallback_row["items"] and rows[2]["scores"] == pytest.approx(fallback_row["scores"])
    assert rows[2]["source"] == "text" and not rows[2]["fallback"]
    assert stats["source"] == "text" and "LLM-free" in stats["source_label"] and stats["users"] == 3
    direct, _ = ground_source_items(seqs.to_pylist(), items, config(), "cpu")
    assert direct.select(["user_idx", "items"]).equals(text.select(["user_idx", "items"]))


def collaborative_case() -> tuple[pa.Table, pa.Table]:
    """Food items 1-3, Kitchen items 4-8; two overlap users with known co-purchases."""
    items = pa.Table.from_pylist([{"item_idx": i, "item_id": f"i{i}", "domain": "A" if i <= 3 else "B",
                                   "title": f"t{i}", "text": f"t{i}"} for i in range(1, 9)])
    seqs = pa.Table.from_pylist([
        {"user_idx": 1, "user_id": "o1", "user_type": "overlap", "items": [1, 4, 5, 5, 2]},  # 5 twice: counts once
        {"user_idx": 2, "user_id": "o2", "user_type": "overlap", "items": [1, 5, 6, 7]},
        {"user_idx": 3, "user_id": "a1", "user_type": "A-only", "items": [1]},  # C[1] = {4: 1, 5: 2, 6: 1, 7: 1}
        {"user_idx": 4, "user_id": "a2", "user_type": "A-only", "items": [2, 2]},  # C[2] = {4: 1, 5: 1}
        {"user_idx": 5, "user_id": "a3", "user_type": "A-only", "items": [3]},  # never co-purchased
        {"user_idx": 6, "user_id": "b1", "user_type": "B-only", "items": [6, 4]},  # C[:, 6] + C[:, 4] -> 1: 2, 2: 1
    ])
    return items, seqs


def test_collaborative_source_ranks_target_items_by_copurchase_counts():
    items, seqs = collaborative_case()
    table, stats = ground_pseudo_users(PSEUDO_SCHEMA.empty_table(), items, seqs, config({"source": "collaborative"}, n_k=3), "cpu")
    rows = {r["user_idx"]: r for r in table.to_pylist()}
    # popularity among overlap users: 5 -> 2; 4, 6, 7 -> 1; 8 -> 0. Ties go to the more popular item, then the smaller index.
    assert rows[3]["items"] == [5, 4, 6] and rows[3]["scores"] == [2.0, 1.0, 1.0]  # 4, 6, 7 tie at 1 (popularity 1 each)
    assert rows[4]["items"] == [5, 4, 6] and rows[4]["scores"] == [1.0, 1.0, 0.0]  # 4 and 5 tie at 1: 5 is more popular
    assert rows[6]["target_domain"] == "A" and rows[6]["items"] == [1, 2, 3] and rows[6]["scores"] == [2.0, 1.0, 0.0]
    assert rows[5]["scores"] == [0.0, 0.0, 0.0] and rows[5]["items"] == [5, 4, 6]  # no signal: most popular items
    assert set(table.column("source").to_pylist()) == {"collaborative"}
    assert stats["source"] == "collaborative" and "our extension" in stats["source_label"]
    assert stats["no_cooccurrence_users"] == 1 and stats["overlap_users"] == 2 and stats["users"] == 4
    users = [r for r in seqs.to_pylist() if r["user_type"] != "overlap"]
    one_at_a_time, _ = ground_collaborative(users, items, seqs, 3, 10, block=1)  # chunks of one user
    assert {r["user_idx"]: r["items"] for r in one_at_a_time} == {u: r["items"] for u, r in rows.items()}


def test_every_source_serves_the_same_seeded_sample_of_users():
    items, seqs = collaborative_case()
    picked = {}
    for source in ("text", "collaborative"):
        cfg = config({"source": source, "max_users": 2, "sample_seed": 5}, n_k=2)
        table, stats = ground_pseudo_users(PSEUDO_SCHEMA.empty_table(), items, seqs, cfg, "cpu")
        picked[source] = table.column("user_idx").to_pylist()
        assert stats["max_users"] == 2 and stats["n_single_domain_users"] == 4
    assert picked["text"] == picked["collaborative"] and len(picked["text"]) == 2
