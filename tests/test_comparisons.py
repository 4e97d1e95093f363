"""Paired comparisons with bootstrap intervals over cases, pooled over seeds."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.evaluation.comparisons import (
    bootstrap_interval,
    comparisons_markdown,
    paired_comparisons,
    resample_weights,
    verdict,
)
from lgcd_core.protocol.ranking import RANKS_SCHEMA


def ranks_table(ranks: dict[tuple[str, int], list[int]], target_domain: str = "B") -> pa.Table:
    """Per-case ranks of (model, seed) on cases 0..n-1 of one split/setting/protocol."""
    rows = [{"model": m, "seed": s, "split": "valid", "setting": "inter_domain", "protocol": "sampled999",
             "target_domain": target_domain, "case_id": c, "rank": r}
            for (m, s), values in ranks.items() for c, r in enumerate(values)]
    return pa.Table.from_pylist(rows, schema=RANKS_SCHEMA)


def row(table: pa.Table, baseline: str, metric: str, k: int) -> dict:
    (found,) = [r for r in table.to_pylist() if (r["baseline"], r["metric"], r["k"]) == (baseline, metric, k)]
    return found


def test_difference_is_the_mean_of_per_case_metric_differences() -> None:
    table = paired_comparisons(ranks_table({("lgcd", 0): [1, 3, 20], ("sasrec", 0): [2, 3, 1]}), "lgcd")
    hr10 = row(table, "sasrec", "HR", 10)
    assert hr10["diff"] == pytest.approx((0 + 0 - 1) / 3)
    ndcg10 = row(table, "sasrec", "NDCG", 10)
    expected = ((1 - 1 / math.log2(3)) + 0 + (0 - 1)) / 3
    assert ndcg10["diff"] == pytest.approx(expected)
    assert ndcg10["n_cases"] == 3 and ndcg10["seeds"] == [0]
    assert ndcg10["ci_low"] <= ndcg10["diff"] <= ndcg10["ci_high"]


def test_seeds_are_pooled_per_case_over_the_seeds_both_models_have() -> None:
    table = paired_comparisons(ranks_table({
        ("lgcd", 0): [1, 1], ("lgcd", 1): [20, 1], ("lgcd", 2): [1, 1],
        ("popularity", 0): [20, 20],
    }), "lgcd")
    hr = row(table, "popularity", "HR", 10)
    assert hr["seeds"] == [0]  # only seed 0 is paired
    assert hr["diff"] == pytest.approx(1.0)


def test_identical_models_show_no_measurable_difference() -> None:
    ranks = list(np.random.default_rng(0).integers(1, 50, 100))
    table = paired_comparisons(ranks_table({(m, s): ranks for m in ("lgcd", "twin") for s in range(3)}), "lgcd")
    r = row(table, "twin", "NDCG", 10)
    assert (r["diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
    assert verdict(r["diff"], r["ci_low"], r["ci_high"], len(r["seeds"])) == "no measurable difference"


def test_a_consistent_win_has_an_interval_above_zero_and_a_coin_flip_does_not() -> None:
    rng = np.random.default_rng(1)
    better = {("lgcd", s): list(rng.integers(1, 4, 300)) for s in range(3)}
    worse = {("sasrec", s): list(rng.integers(5, 30, 300)) for s in range(3)}
    noisy = {("coin", s): list(rng.choice([1, 30], 300)) for s in range(3)}
    table = paired_comparisons(ranks_table({**better, **worse, **noisy}), "lgcd")
    win = row(table, "sasrec", "HR", 1)
    assert win["ci_low"] > 0 and verdict(win["diff"], win["ci_low"], win["ci_high"], 3) == "better"
    lose_to_self = paired_comparisons(ranks_table({**noisy, ("twin", 0): list(rng.choice([1, 30], 300)),
                                                   ("twin", 1): list(rng.choice([1, 30], 300)),
                                                   ("twin", 2): list(rng.choice([1, 30], 300))}), "coin")
    flip = row(lose_to_self, "twin", "HR", 10)
    assert flip["ci_low"] < 0 < flip["ci_high"]


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    diffs = np.random.default_rng(2).normal(0.1, 1.0, size=(400, 1))
    low, high = bootstrap_interval(diffs, resample_weights(len(diffs), 4000, seed=0))
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert float(high[0] - low[0]) == pytest.approx(2 * half, rel=0.1)
    assert float((high[0] + low[0]) / 2) == pytest.approx(float(diffs.mean()), abs=0.02)


def test_fewer_than_three_seeds_make_no_claim_and_the_table_says_so() -> None:
    table = paired_comparisons(ranks_table({("lgcd", 0): [1] * 50, ("sasrec", 0): [40] * 50}), "lgcd")
    text = comparisons_markdown(table, "valid", "inter_domain", "sampled999", domains={"B": "Kitchen"})
    assert "Kitchen" in text and "no claim (fewer than 3 seeds)" in text
