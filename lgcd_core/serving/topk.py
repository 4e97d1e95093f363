"""Top-K search over one domain's item vectors, with excluded items, exact or through FAISS.

Scores are inner products ``u · e`` of user vectors ``u`` (n, d) and item vectors ``e`` (m, d); an
item's column is its row in the domain's vector table (items in ``item_idx`` order). Both searches
return the same list: the K best columns by score, ties broken by the lower column (= the lower
``item_idx``), excluded columns never returned, ``-inf`` (column -1) where fewer than K items remain.

- :func:`exact_top_k`: every score (one matrix product), then :func:`ordered_top_k`.
- :func:`faiss_top_k`: an exact inner-product FAISS index proposes the best ``K + #excluded``
  columns of each user; they are re-scored exactly with torch and ordered by the same rule. Being a
  flat (exact) index, the candidates contain the exact top K; the gain is that no (n, m) score matrix
  is materialised and sorted. (An approximate index would plug in at :func:`build_index`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lgcd_core.protocol.metrics import reject_nan


def exclusion_matrix(exclude: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """(n, w) int64 columns to exclude per row, padded with -1 (w = the longest row; 0 if none)."""
    width = max((len(e) for e in exclude), default=0)
    out = np.full((n, width), -1, dtype=np.int64)
    for i, cols in enumerate(exclude):  # the one Python loop over users: the padding
        out[i, :len(cols)] = cols
    return torch.from_numpy(out)


def _mask(scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """``scores`` (n, m) with ``-inf`` at the excluded columns (n, w; -1 = none)."""
    if excluded.numel() == 0:
        return scores
    excluded = excluded.to(scores.device)
    rows = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(excluded)
    keep = excluded >= 0
    out = scores.clone()
    out[rows[keep], excluded[keep]] = float("-inf")
    return out


def ordered_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of each row, by score, ties to the lower column: (values, columns), each (n, k).

    ``torch.topk`` alone leaves the order of equal scores unspecified; here the k found are reordered
    by (score desc, column asc), and a row whose k-th score is tied with a column left out is fully
    sorted (stable), so the result is the same on every device and batch.
    """
    reject_nan(scores, "scores contain NaN")
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return scores.new_zeros(n, 0), torch.zeros(n, 0, dtype=torch.long, device=scores.device)
    values, cols = torch.topk(scores, k, dim=1)
    cols, by_col = cols.sort(dim=1)
    values = values.gather(1, by_col)
    values, order = values.sort(dim=1, descending=True, stable=True)
    cols = cols.gather(1, order)
    tied = (scores >= values[:, -1:]).sum(1) > k
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        v, c = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], cols[rows] = v[:, :k], c[:, :k]
    return values, torch.where(torch.isinf(values) & (values < 0), -1, cols)


def exact_top_k(users: torch.Tensor, items: torch.Tensor, k: int,
                excluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` columns of ``users @ items.T`` without the excluded ones: (values, columns)."""
    reject_nan(users, "user vectors contain NaN")
    return ordered_top_k(_mask(users @ items.T, excluded), k)


def build_index(items: torch.Tensor):  # -> faiss.IndexFlatIP
    """An exact inner-product FAISS index over the item vectors (CPU)."""
    import faiss

    vectors = np.ascontiguousarray(items.detach().float().cpu().numpy())
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def faiss_top_k(users: torch.Tensor, items: torch.Tensor, index, k: int,
                excluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result as :func:`exact_top_k`, the candidates coming from ``index`` (built on ``items``)."""
    reject_nan(users, "user vectors contain NaN")
    n, m = users.shape[0], items.shape[0]
    per_row = int((excluded >= 0).sum(1).max()) if excluded.numel() else 0
    fetch = min(m, k + per_row)
    if fetch == 0 or n == 0:
        return ordered_top_k(users.new_zeros(n, 0), k)
    _, found = index.search(np.ascontiguousarray(users.detach().float().cpu().numpy()), fetch)
    cand = torch.from_numpy(found).to(items.device)  # (n, fetch); -1 where FAISS had fewer
    cand, _ = cand.sort(dim=1)  # column order, so that the stable sort below breaks ties by column
    rows = cand.clamp(min=0)
    scores = torch.bmm(items[rows], users.to(items.device).unsqueeze(-1)).squeeze(-1)  # exact re-score
    drop = cand < 0
    if excluded.numel():
        drop |= (cand[:, :, None] == excluded.to(cand.device)[:, None, :]).any(-1)
    scores = scores.masked_fill(drop, float("-inf"))
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    values, cols = values[:, :k], cand.gather(1, order)[:, :k]  # min(k, m) columns, as exact_top_k
    return values, torch.where(torch.isinf(values) & (values < 0), -1, cols)
