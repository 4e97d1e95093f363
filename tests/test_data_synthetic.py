"""Synthetic demo generator: determinism, regeneration on spec change, format, and taste signal."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from lgcd_core.config import DatasetConfig, SplitConfig, SyntheticSpec
from lgcd_core.data.kcore import apply_filters
from lgcd_core.data.readers import read_interactions, read_items
from lgcd_core.data.sequences import build_sequences
from lgcd_core.data.synthetic import FILES, ensure_generated, load_truth

SMALL = SyntheticSpec(n_items_a=60, n_items_b=80, n_overlap_users=60, n_a_only_users=30, n_b_only_users=30)


def test_deterministic_and_regenerated_only_when_spec_changes(tmp_path: Path) -> None:
    assert ensure_generated(SMALL, tmp_path / "one")
    assert not ensure_generated(SMALL, tmp_path / "one")
    assert ensure_generated(SMALL, tmp_path / "two")
    for name in ("reviews_A.json.gz", "meta_B.json.gz", "truth.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert ensure_generated(SMALL.model_copy(update={"seed": 8}), tmp_path / "one")
    assert (tmp_path / "one" / "truth.json").read_bytes() != (tmp_path / "two" / "truth.json").read_bytes()
    (tmp_path / "two" / "meta_A.json.gz").unlink()
    assert ensure_generated(SMALL, tmp_path / "two")


def test_files_are_amazon_2018_format_with_taste_words(tmp_path: Path) -> None:
    ensure_generated(SMALL, tmp_path)
    truth = load_truth(tmp_path)
    meta = [json.loads(line) for line in gzip.open(tmp_path / FILES["B"].meta, "rt")]
    assert set(meta[0]) >= {"asin", "title", "brand", "category"} and isinstance(meta[0]["category"], list)
    tea = [m["title"].lower() for m in meta if truth["taste_words"][truth["item_taste"][m["asin"]]] == "tea"]
    assert tea and all(any(w in t for w in ("tea", "kettle", "matcha")) for t in tea)
    reviews = [json.loads(line) for line in gzip.open(tmp_path / FILES["A"].reviews, "rt")]
    assert set(reviews[0]) >= {"reviewerID", "asin", "unixReviewTime"}
    by_user: dict[str, list[int]] = {}
    for r in reviews:
        by_user.setdefault(r["reviewerID"], []).append(r["unixReviewTime"])
    assert all(times == sorted(times) for times in by_user.values())
    assert set(truth["user_taste"]) >= set(by_user) and len(truth["taste_words"]) == SMALL.n_tastes


def test_demo_pipeline_has_user_types_and_cross_domain_signal(tmp_path: Path) -> None:
    """A held-out user's source-domain history predicts the target's taste far above chance."""
    cfg = DatasetConfig.model_validate(
        {"name": "demo", "source": {"format": "synthetic", "path": str(tmp_path), "synthetic": SMALL.model_dump()},
         "domains": {"A": "Grocery", "B": "Kitchen"}, "filter": {"k_core": 3}}
    )  # fmt: skip
    interactions = read_interactions(cfg)
    items = read_items(cfg, interactions)
    split = SplitConfig(valid_ratio=0.3, test_ratio=0.3)
    data = build_sequences(apply_filters(interactions, items, cfg.filter), items, split)
    assert set(data.sequences["user_type"].to_pylist()) == {"overlap", "A-only", "B-only"}
    truth = load_truth(tmp_path)
    taste = {row["item_idx"]: truth["item_taste"][row["item_id"]] for row in data.items.to_pylist()}
    domain = dict(zip(data.items["item_idx"].to_pylist(), data.items["domain"].to_pylist()))
    hits = []
    for case in data.eval_cases.to_pylist():
        source = [taste[i] for i in case["history"] if domain[i] != case["target_domain"]]
        hits.append(Counter(source).most_common(1)[0][0] == taste[case["target"]])
    assert len(hits) >= 20
    assert sum(hits) / len(hits) >= 0.6  # chance is 1 / n_tastes


def test_load_truth_missing_names_the_stage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="raw_interactions"):
        load_truth(tmp_path)
