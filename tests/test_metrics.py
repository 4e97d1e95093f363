import math

import pytest
import torch

from lgcd_core.protocol.metrics import full_ranks, hit_rate, ndcg, sampled_ranks


def test_sampled_rank_counts_ties_against_the_model():
    target = torch.tensor([1.0, 1.0, 5.0])
    negatives = torch.tensor([[0.0, 0.5, 0.9], [1.0, 1.0, 0.0], [6.0, 7.0, 5.0]])
    assert sampled_ranks(target, negatives).tolist() == [1, 3, 4]


def test_all_tied_scores_give_the_worst_rank():
    assert sampled_ranks(torch.zeros(2), torch.zeros(2, 999)).tolist() == [1000, 1000]


def test_hr_and_ndcg_on_hand_computed_ranks():
    ranks = torch.tensor([1, 2, 5, 10, 11])
    assert hit_rate(ranks, 1).tolist() == [1, 0, 0, 0, 0]
    assert hit_rate(ranks, 5).tolist() == [1, 1, 1, 0, 0]
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 1, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(11), 0.0]
    assert ndcg(ranks, 10).tolist() == pytest.approx(expected)
    assert ndcg(ranks, 5).tolist() == pytest.approx(expected[:3] + [0.0, 0.0])
    assert ndcg(ranks, 1).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_full_rank_skips_target_and_non_competitors():
    # items 0 (padding) .. 5; competitors are items 1, 2, 3 (the target's domain)
    scores = torch.tensor([[9.0, 1.0, 2.0, 2.0, 9.0, 9.0], [9.0, 3.0, 2.0, 1.0, 9.0, 9.0]])
    competitors = torch.tensor([False, True, True, True, False, False])
    ranks = full_ranks(scores, torch.tensor([2, 1]), competitors)
    assert ranks.tolist() == [2, 1]  # item 3 ties with item 2 and counts against it


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        sampled_ranks(torch.tensor([float("nan")]), torch.zeros(1, 3))
