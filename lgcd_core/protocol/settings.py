"""The two evaluation settings: what part of a case's history a model may read.

- ``inter_domain``: only the items outside the target's domain (the source-domain items); the
  user is treated as having no target-domain history.
- ``mixed_history``: the whole mixed history before the target.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from lgcd_core.io import DataError

Setting = Literal["inter_domain", "mixed_history"]
SETTINGS: tuple[Setting, ...] = ("inter_domain", "mixed_history")


def item_domains(items: pa.Table) -> np.ndarray:
    """Domain of every item index: (n_items + 1,) array of 'A'/'B', '' for padding row 0."""
    idx = items.column("item_idx").to_numpy()
    if not np.array_equal(idx, np.arange(1, len(idx) + 1)):
        raise DataError("items table: item_idx must be 1..n_items in row order")
    return np.concatenate([[""], items.column("domain").to_numpy(zero_copy_only=False)]).astype("<U1")


def filter_histories(
    histories: pa.Array | pa.ChunkedArray, target_domains: np.ndarray, domains: np.ndarray, setting: Setting
) -> list[list[int]]:
    """The part of each history that ``setting`` lets a model read, order preserved."""
    if isinstance(histories, pa.ChunkedArray):
        histories = histories.combine_chunks()
    if setting == "mixed_history":
        return histories.to_pylist()
    if setting != "inter_domain":
        raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")
    flat = histories.flatten().to_numpy()
    offsets = histories.offsets.to_numpy()
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths)), lengths)
    keep = domains[flat] != np.asarray(target_domains)[row]
    kept_offsets = np.concatenate([[0], np.cumsum(np.bincount(row[keep], minlength=len(lengths)))])
    kept = flat[keep].tolist()
    return [kept[a:b] for a, b in zip(kept_offsets[:-1], kept_offsets[1:])]
