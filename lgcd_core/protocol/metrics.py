"""Ranks and ranking metrics, with ties counted against the model.

rank = 1 + #(competitors whose score is >= the target's score); HR@K = [rank <= K];
NDCG@K = 1 / log2(rank + 1) if rank <= K else 0. A score that is NaN is an error, never a silent
win or loss.
"""

from __future__ import annotations

import torch


def reject_nan(values: torch.Tensor, what: str = "a scorer returned NaN scores") -> None:
    """Raise if ``values`` hold a NaN: every ranking (evaluation or serving) refuses one."""
    if torch.isnan(values).any():
        raise ValueError(f"{what}; ranks would be meaningless")


def sampled_ranks(target_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Rank of each target among its negatives: (n,), (n, m) -> (n,) int64 in 1..m+1."""
    reject_nan(target_scores)
    reject_nan(negative_scores)
    return 1 + (negative_scores >= target_scores.unsqueeze(1)).sum(dim=1)


def full_ranks(scores: torch.Tensor, targets: torch.Tensor, competitors: torch.Tensor) -> torch.Tensor:
    """Rank of each target among every competitor item except itself.

    ``scores``: (n, V) over all item indices; ``targets``: (n,) item indices; ``competitors``:
    (V,) bool, the items a target is ranked against (its domain; the target itself is skipped).
    """
    reject_nan(scores)
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets]
    beats = (scores >= target_scores.unsqueeze(1)) & competitors.unsqueeze(0)
    beats[rows, targets] = False
    return 1 + beats.sum(dim=1)


def hit_rate(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """HR@k per case (float64)."""
    return (ranks <= k).to(torch.float64)


def ndcg(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k per case with one relevant item (float64)."""
    gain = 1.0 / torch.log2(ranks.to(torch.float64) + 1.0)
    return torch.where(ranks <= k, gain, torch.zeros_like(gain))


METRICS = {"HR": hit_rate, "NDCG": ndcg}
