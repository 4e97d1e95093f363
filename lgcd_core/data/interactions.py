"""The plain ``interactions`` source: one interactions file and one items file, CSV or Parquet.

A folder (``source.path``) holding exactly one of ``interactions.csv`` / ``interactions.parquet`` and one
of ``items.csv`` / ``items.parquet``:

- interactions: ``user``, ``item``, ``timestamp`` (an integer: Unix seconds or any increasing count), and
  ``domain``;
- items: ``item``, ``domain``, ``title``, and optionally ``text`` (what the text encoder reads; the title
  when absent or empty).

``domain`` is ``A`` / ``B`` or the YAML's domain names (``domains.A`` / ``domains.B``). Ids are read as
text. This is RecBole's atomic-file idea (``.inter`` + ``.item``) with one domain column instead of one
dataset per domain: RecBole's ``user_id:token``, ``item_id:token``, ``timestamp:float`` columns map to
``user``, ``item``, ``timestamp``. Contracts as for the other readers: a missing column, an empty or null
value, an unknown domain, an item listed twice in a domain, an interaction with an item the items file
lacks, a non-integer timestamp and undecodable bytes are each one :class:`DataError` naming the file, the
row (1-based, the header is row 0 in a CSV) and the field. Exact duplicate interaction rows are removed
and counted (``duplicates_removed``), as the Amazon reader does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.io import DataError

INTERACTION_COLUMNS = ("user", "item", "timestamp", "domain")
ITEM_COLUMNS = ("item", "domain", "title")


def find_file(folder: Path, stem: str) -> Path:
    """The one ``<stem>.csv`` or ``<stem>.parquet`` of ``folder``."""
    found = [folder / f"{stem}{ext}" for ext in (".csv", ".parquet") if (folder / f"{stem}{ext}").is_file()]
    if len(found) != 1:
        what = "neither" if not found else "both"
        raise DataError(f"{folder}: expected one of {stem}.csv or {stem}.parquet, found {what}")
    return found[0]


def read_table(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> pa.Table:
    """``path`` (CSV or Parquet) with ``columns`` (and ``optional`` ones where present) as text."""
    try:
        if path.suffix == ".csv":
            import csv as csv_text

            from pyarrow import csv

            with path.open(encoding="utf-8", newline="") as f:  # the header, to read every column as text
                names = next(csv_text.reader([f.readline()]), [])
            table = csv.read_csv(path, convert_options=csv.ConvertOptions(
                column_types={c: pa.string() for c in names}, strings_can_be_null=False))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # undecodable bytes, a truncated file, a bad quote
        raise DataError(f"{path}: cannot be read as {path.suffix[1:].upper()}: {' '.join(str(exc).split())[:300]}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {list(columns)} (and optionally {list(optional)})")
    keep = [*columns, *(c for c in optional if c in table.column_names)]
    return pa.table({c: pc.cast(table[c], pa.string()) for c in keep})


def _first_row(mask: np.ndarray) -> int:
    """1-based data row of the first True (CSV: the line after the header is row 1)."""
    return int(np.flatnonzero(mask)[0]) + 1


def _required(table: pa.Table, path: Path, columns: tuple[str, ...]) -> None:
    for c in columns:
        values = table[c]
        empty = pc.or_(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(values.fill_null("")), "")).to_numpy(
            zero_copy_only=False)
        if empty.any():
            raise DataError(f"{path}: row {_first_row(empty)}, field {c!r}: empty")


def _domains(table: pa.Table, path: Path, names: dict[str, str]) -> np.ndarray:
    """The ``domain`` column as 'A'/'B' (the YAML's names accepted too)."""
    lookup = {"A": "A", "B": "B", names["A"]: "A", names["B"]: "B"}
    raw = np.asarray(table["domain"].to_pylist(), dtype=object)
    mapped = np.asarray([lookup.get(v.strip()) for v in raw], dtype=object)
    bad = mapped == None  # noqa: E711 (elementwise)
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"{path}: row {row}, field 'domain': {raw[row - 1]!r} is neither A/B nor "
                        f"{names['A']!r}/{names['B']!r}")
    return mapped


def read_items(folder: Path, names: dict[str, str]) -> tuple[pa.Table, dict]:
    """The items file as raw_items rows (brand and categories null), plus stats."""
    path = find_file(folder, "items")
    table = read_table(path, ITEM_COLUMNS, ("text",))
    _required(table, path, ("item", "domain"))
    domain = _domains(table, path, names)
    ids = np.asarray([v.strip() for v in table["item"].to_pylist()], dtype=object)
    keys = [f"{d}\x00{i}" for d, i in zip(domain, ids)]
    seen: dict[str, int] = {}
    for row, key in enumerate(keys, start=1):
        if key in seen:
            raise DataError(f"{path}: row {row}, field 'item': {ids[row - 1]!r} is listed twice in domain "
                            f"{domain[row - 1]} (first at row {seen[key]})")
        seen[key] = row
    titles = [(t or "").strip() for t in table["title"].to_pylist()]
    texts = [(t or "").strip() for t in table["text"].to_pylist()] if "text" in table.column_names else [""] * len(ids)
    has_title = [bool(t) for t in titles]
    rows = {"item_id": ids.tolist(), "domain": domain.tolist(),
            "title": [t or f"{names[d]} item {i}" for t, d, i in zip(titles, domain, ids)],
            "brand": [None] * len(ids), "categories": [None] * len(ids),
            "text": [x or t or f"{names[d]} item {i}" for x, t, d, i in zip(texts, titles, domain, ids)],
            "has_title": has_title, "source_index": [None] * len(ids)}
    stats = {"items": {d: int((domain == d).sum()) for d in ("A", "B")},
             "items_without_title": {d: int(sum(1 for h, x in zip(has_title, domain) if x == d and not h)) for d in ("A", "B")}}
    return pa.table(rows), stats


def read_interactions(folder: Path, names: dict[str, str]) -> tuple[pa.Table, dict]:
    """The interactions file as raw_interactions rows (split by the sequences stage), plus stats."""
    path = find_file(folder, "interactions")
    table = read_table(path, INTERACTION_COLUMNS)
    _required(table, path, INTERACTION_COLUMNS)
    domain = _domains(table, path, names)
    raw_ts = table["timestamp"].to_pylist()
    try:
        timestamps = np.asarray([int(v.strip()) for v in raw_ts], dtype=np.int64)
    except ValueError:
        row = next(i for i, v in enumerate(raw_ts, start=1) if not v.strip().lstrip("-").isdigit())
        raise DataError(f"{path}: row {row}, field 'timestamp': {raw_ts[row - 1]!r} is not an integer") from None
    items = read_items(folder, names)[0]
    known = {(d, i) for d, i in zip(items["domain"].to_pylist(), items["item_id"].to_pylist())}
    users = [v.strip() for v in table["user"].to_pylist()]
    item_ids = [v.strip() for v in table["item"].to_pylist()]
    for row, (d, i) in enumerate(zip(domain, item_ids), start=1):
        if (d, i) not in known:
            raise DataError(f"{path}: row {row}, field 'item': {i!r} (domain {d}) is not in {find_file(folder, 'items')}")
    out = pa.table({"user_id": users, "item_id": item_ids, "domain": domain.tolist(),
                    "timestamp": pa.array(timestamps, pa.int64()),
                    "split_hint": pa.nulls(len(users), pa.string()),
                    "origin": [f"{path.name}:{row}" for row in range(1, len(users) + 1)]})
    unique = out.group_by(["user_id", "item_id", "domain", "timestamp"]).aggregate([("origin", "min")])
    duplicates = out.num_rows - unique.num_rows
    if duplicates:
        out = unique.rename_columns(["user_id", "item_id", "domain", "timestamp", "origin"]).append_column(
            "split_hint", pa.nulls(unique.num_rows, pa.string()))
    return out, {"rows": table.num_rows, "duplicates_removed": duplicates}
