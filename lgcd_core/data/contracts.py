"""Item ids checked against the item index, where a stage reads a table another stage (or a person) wrote.

Every table holding item ids (sequences, evaluation cases, grounded items, pseudo-overlap sequences,
candidates, recommendations) is checked when it is read: each id must be an item of the index
(``1..n_items``) and, where the table says which domain an item belongs to, an item of that domain. A
violation is one :class:`DataError` naming the file, the column and the first bad row; nothing is
written after it. ``docs/data_contracts.md`` lists the checks per table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.io import DataError
from lgcd_core.protocol.settings import item_domains


def check_items(table: pa.Table, column: str, domains: np.ndarray, path: Path | str,
                domain: str | None = None, domain_column: str | None = None, only: str | None = None) -> None:
    """DataError unless every id of ``column`` (int or list<int>) is an item, of ``domain`` or of the row's ``domain_column``.

    ``only``: a list<bool> column of the same shape as ``column``; only ids where it is true must be in the
    row's domain (pseudo-overlap rows: the inserted items), the others only need to exist.
    """
    if table.num_rows == 0:
        return
    values = table.column(column)
    is_list = pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
    flat = pc.list_flatten(values) if is_list else values
    if flat.null_count:
        row = _row_of(table, column, is_list, int(np.flatnonzero(pc.is_null(flat).to_numpy(zero_copy_only=False))[0]))
        raise DataError(f"{path}: column {column!r}, row {row}: a missing item id")
    ids = flat.to_numpy(zero_copy_only=False).astype(np.int64)
    bad = np.flatnonzero((ids < 1) | (ids >= len(domains)))
    if len(bad):
        first = int(bad[0])
        raise DataError(f"{path}: column {column!r}, row {_row_of(table, column, is_list, first)}: item id {ids[first]} "
                        f"is not in the item index (1..{len(domains) - 1})")
    if domain is None and domain_column is None:
        return
    if domain_column is not None:
        row_domain = table.column(domain_column).to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False) if is_list else np.ones(table.num_rows, int)
        expected = np.repeat(row_domain, lengths)
    else:
        expected = np.full(len(ids), domain, dtype=object)
    wrong = domains[ids] != expected
    if only is not None:
        wrong &= pc.list_flatten(table.column(only)).to_numpy(zero_copy_only=False).astype(bool)
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{path}: column {column!r}, row {_row_of(table, column, is_list, first)}: item id {ids[first]} "
                        f"is in domain {domains[ids[first]]}, the row claims domain {expected[first]}")


def _row_of(table: pa.Table, column: str, is_list: bool, flat_index: int) -> int:
    """The row (0-based) holding the ``flat_index``-th value of a column."""
    if not is_list:
        return flat_index
    ends = np.cumsum(pc.list_value_length(table.column(column)).fill_null(0).to_numpy(zero_copy_only=False))
    return int(np.searchsorted(ends, flat_index, side="right"))


def check_sequence_tables(items: pa.Table, sequences: pa.Table, eval_cases: pa.Table, folder: Path | str) -> None:
    """The ``sequences`` stage's tables: every id an item; an evaluation target in its case's target domain."""
    domains = item_domains(items)
    folder = Path(folder)
    check_items(sequences, "items", domains, folder / "sequences.parquet")
    check_items(eval_cases, "history", domains, folder / "eval_cases.parquet")
    check_items(eval_cases, "target", domains, folder / "eval_cases.parquet", domain_column="target_domain")
