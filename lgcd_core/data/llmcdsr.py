"""LLMCDSR processed cross-domain data (Food-Kitchen, Movie-Book) -> canonical tables.

Folder layout (see ``data/llmcdsr/SOURCE.md``): ``num.txt`` (item counts An, Bn),
``item_set_{A,B}.pkl`` ({ASIN: local index}), ``text_{A,B}.pkl`` ({ASIN: title}), sequence files
``train_A.txt``, ``train_B.txt``, ``train_overlap.txt``, ``valid.txt``, ``test.txt`` with lines
``<uid>\\t<id>,<id>,...`` of 0-based global ids (B items are ``An + local index``).

Mapping to the canonical tables:
- ``user_id = f"{file_stem}:{uid}"``: uids are per file (in the released data each file numbers
  its lines 1..n), so the same uid in two files is two users, never merged (a valid/test line is
  one evaluation case carrying its own history). A uid repeated within one file is an error naming
  both lines: it would merge two users, or two evaluation cases, into one.
- ``timestamp`` = 0-based position in the line, ``split_hint`` = 'train' for train files,
  'valid'/'test' for those, ``origin`` = ``<file>:<line>``.
- Items: every item of ``item_set_*`` (not only those in interactions) with ``source_index`` = its
  global id, so that the sequences stage can use ``item_idx = global id + 1``. Titles come from
  ``text_*.pkl``; an item without a title gets the placeholder ``"<domain name> item <ASIN>"`` as
  title and text, and ``has_title = False``.
- Missing optional files (movie-book has no ``train_B.txt`` nor ``text_B.pkl``; ``test.txt`` is
  withheld) are logged as warnings and listed in the stats under ``missing_files``.
Pickles are read with :mod:`lgcd_core.data.safe_pickle` (dict of str/int only). Text files must be
UTF-8 (errors name the line); a byte-order mark at the start of a file is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from lgcd_core.data.amazon import iter_lines
from lgcd_core.data.safe_pickle import load_str_dict
from lgcd_core.io import DataError

log = logging.getLogger(__name__)

SPLIT_FILES: dict[str, str] = {
    "train_A.txt": "train",
    "train_B.txt": "train",
    "train_overlap.txt": "train",
    "valid.txt": "valid",
    "test.txt": "test",
}
DOMAINS = ("A", "B")


def read_counts(folder: Path) -> tuple[int, int]:
    """(An, Bn) from ``num.txt``."""
    path = _required(folder, "num.txt")
    lines = [line.strip() for _, line in iter_lines(path) if line.strip()]
    if len(lines) != 2 or not all(_is_number(line) for line in lines):
        raise DataError(f"{path}: expected two lines with the item counts of A and B, got {lines[:3]!r}")
    return int(lines[0]), int(lines[1])


def read_item_ids(folder: Path, n_a: int, n_b: int) -> list[str]:
    """ASIN of every global id (A items 0..An-1, then B items An..An+Bn-1)."""
    counts = {"A": n_a, "B": n_b}
    ids: list[str] = []
    for domain in DOMAINS:
        path = _required(folder, f"item_set_{domain}.pkl")
        mapping = load_str_dict(path)
        by_local = sorted((index, asin) for asin, index in mapping.items() if isinstance(index, int))
        if [index for index, _ in by_local] != list(range(counts[domain])) or len(mapping) != counts[domain]:
            raise DataError(
                f"{path}: expected {{ASIN: local index}} with indices 0..{counts[domain] - 1} "
                f"(num.txt), got {len(mapping)} entries"
            )
        ids.extend(str(asin) for _, asin in by_local)
    return ids


def iter_sequences(path: Path, n_items: int, min_len: int = 1) -> Iterator[tuple[int, str, list[int]]]:
    """Yield ``(line_number, uid, global ids)`` for each non-blank line of a sequence file."""
    first_line: dict[str, int] = {}
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        uid, ids = _parse_sequence(line, path, line_no)
        if uid in first_line:
            raise DataError(
                f"{path}:{line_no}: user id {uid!r} already on line {first_line[uid]}; expected one line per "
                "user (the two lines would merge two users, or two evaluation cases, into one)"
            )
        first_line[uid] = line_no
        bad = [i for i in ids if not 0 <= i < n_items]
        if bad:
            raise DataError(f"{path}:{line_no}: item id {bad[0]} outside 0..{n_items - 1} (num.txt)")
        if len(ids) < min_len:
            raise DataError(f"{path}:{line_no}: expected at least {min_len} item ids, got {len(ids)}")
        yield line_no, uid, ids


def _parse_sequence(line: str, path: Path, line_no: int) -> tuple[str, list[int]]:
    """``(uid, ids)`` of one ``<uid>\\t<id>,<id>,...`` line; the uid must be non-empty and printable."""
    parts = line.rstrip("\r\n").split("\t")
    tokens = [token.strip() for token in parts[-1].split(",")]
    if len(parts) != 2 or not all(_is_number(token) for token in tokens):
        raise DataError(f"{path}:{line_no}: expected '<uid>\\t<id>,<id>,...', got {line[:80]!r}")
    uid, ids = parts[0].strip(), [int(token) for token in tokens]
    if not uid or not uid.isprintable():
        raise DataError(
            f"{path}:{line_no}: user id {uid!r} is empty or holds an invisible character (a byte-order mark "
            "inside the file?); expected a printable id"
        )
    return uid, ids


def read_interactions(folder: Path) -> tuple[pa.Table, dict]:
    """All sequence files as interaction rows, plus stats (line counts, missing files)."""
    n_a, n_b = read_counts(folder)
    item_ids = read_item_ids(folder, n_a, n_b)
    columns: dict[str, list] = {k: [] for k in ("user_id", "item_id", "domain", "timestamp", "split_hint", "origin")}
    stats: dict = {"lines": {}, "missing_files": []}
    for name, split in SPLIT_FILES.items():
        path = folder / name
        if not path.is_file():
            stats["missing_files"].append(name)
            log.warning("%s: missing; loading %s without it", path, folder)
            continue
        n_lines = 0
        min_len = 2 if split != "train" else 1
        for line_no, uid, ids in iter_sequences(path, n_a + n_b, min_len):
            n_lines += 1
            user = f"{path.stem}:{uid}"
            origin = f"{name}:{line_no}"
            for position, gid in enumerate(ids):
                columns["user_id"].append(user)
                columns["item_id"].append(item_ids[gid])
                columns["domain"].append("A" if gid < n_a else "B")
                columns["timestamp"].append(position)
                columns["split_hint"].append(split)
                columns["origin"].append(origin)
        stats["lines"][name] = n_lines
    if not any(stats["lines"].get(name) for name, split in SPLIT_FILES.items() if split == "train"):
        raise DataError(f"{folder}: no training sequences (expected train_A.txt, train_B.txt or train_overlap.txt)")
    stats["items"] = {"A": n_a, "B": n_b}
    return pa.table(columns), stats


def read_items(folder: Path, domain_names: dict[str, str]) -> tuple[pa.Table, dict]:
    """Every indexed item with its title (placeholder where missing), plus stats."""
    n_a, n_b = read_counts(folder)
    item_ids = read_item_ids(folder, n_a, n_b)
    stats: dict = {"missing_files": []}
    titles: dict[str, dict] = {}
    for domain in DOMAINS:
        path = folder / f"text_{domain}.pkl"
        if path.is_file():
            titles[domain] = load_str_dict(path)
        else:
            titles[domain] = {}
            stats["missing_files"].append(path.name)
            log.warning("%s: missing; every %s item gets a placeholder title", path, domain_names[domain])
    rows: dict[str, list] = {k: [] for k in ("item_id", "domain", "title", "text", "has_title", "source_index")}
    for gid, asin in enumerate(item_ids):
        domain = "A" if gid < n_a else "B"
        title = titles[domain].get(asin)
        has_title = isinstance(title, str) and bool(title.strip())
        text = title.strip() if has_title else f"{domain_names[domain]} item {asin}"
        rows["item_id"].append(asin)
        rows["domain"].append(domain)
        rows["title"].append(text)
        rows["text"].append(text)
        rows["has_title"].append(has_title)
        rows["source_index"].append(gid)
    table = pa.table(rows)
    table = table.append_column("brand", pa.nulls(len(item_ids), pa.string()))
    table = table.append_column("categories", pa.nulls(len(item_ids), pa.string()))
    for domain in DOMAINS:
        flags = [h for h, d in zip(rows["has_title"], rows["domain"]) if d == domain]
        stats[domain] = {"items": len(flags), "without_title": flags.count(False)}
    return table, stats


def _is_number(text: str) -> bool:
    """ASCII digits only (``int`` alone would also take '1_0', '+1' or non-ASCII digits)."""
    return text.isascii() and text.isdigit()


def _required(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: required LLMCDSR file missing")
    return path
