"""Amazon review dumps (2014, 2018, 2023) -> canonical interaction and item tables.

Layouts (plain or gzip, detected from the file's first bytes):
- 2014: reviews are JSON lines (reviewerID, asin, unixReviewTime in seconds); metadata lines are
  Python literals (``{'asin': ..., 'title': ..., 'brand': ..., 'categories': [[...], ...]}``),
  parsed with :func:`ast.literal_eval` (never ``eval``), JSON accepted as a fallback.
- 2018: JSON lines for both; metadata has asin, title, brand and a ``category`` list.
- 2023: JSON lines; reviews have user_id, parent_asin and ``timestamp`` in milliseconds; metadata
  has parent_asin, title, store (used as the brand) and a ``categories`` list. Reviews join
  metadata on parent_asin.

Files are streamed, never loaded whole. JSON files go through DuckDB: each line is read as one
text value (``read_csv`` with a control-character delimiter, so blank lines keep their line
number), numbered, validated with ``json_valid`` and reduced to the few fields we keep. DuckDB's
own ``read_json`` errors skip blank lines when they count lines; reading lines ourselves gives
exact line numbers for every error. The 2014 literal metadata is parsed line by line in Python
into Arrow record batches of ``BATCH_ROWS`` rows.

Decisions:
- Duplicate (user, item) reviews within a domain keep the earliest one (smallest timestamp, then
  the earliest line); the number removed is reported in the stats.
- Metadata lines repeating an item id: the first line wins.
- Reviews whose item has no metadata: ``missing_metadata='error'`` raises a DataError naming the
  first such review line; ``'drop'`` drops them and reports the count per domain in the stats
  (``dropped_missing_metadata``).
- Item text = title, brand and categories (joined with `` > ``). An item without a title gets the
  placeholder title ``"<domain name> item <item_id>"`` and ``has_title = False``.
"""

from __future__ import annotations

import ast
import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.config import AmazonFiles
from lgcd_core.io import DataError

BATCH_ROWS = 50_000
MAX_LINE_BYTES = 16 * 1024 * 1024  # longest accepted line; DuckDB reads in buffers of twice that
DOMAINS = ("A", "B")


@dataclass(frozen=True)
class Layout:
    """Field names of one dump version."""

    user: str
    item: str
    time: str
    time_divisor: int  # timestamp units per second
    meta_item: str
    meta_brand: str
    meta_categories: str
    literal_meta: bool


LAYOUTS: dict[int, Layout] = {
    2014: Layout("reviewerID", "asin", "unixReviewTime", 1, "asin", "brand", "categories", True),
    2018: Layout("reviewerID", "asin", "unixReviewTime", 1, "asin", "brand", "category", False),
    2023: Layout("user_id", "parent_asin", "timestamp", 1000, "parent_asin", "store", "categories", False),
}


# ---- file access -------------------------------------------------------------------------------


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based); DataError on a truncated gzip or bad UTF-8."""
    opener = gzip.open if is_gzip(path) else open
    line_no = 0
    try:
        with opener(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                try:
                    yield line_no, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: not valid UTF-8 ({exc.reason})") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: truncated or corrupt gzip stream after line {line_no} ({exc}); "
            "re-download the file"
        ) from None


def _diagnose(path: Path, exc: Exception) -> DataError:
    """Explain a DuckDB read failure: find the offending line ourselves, else quote DuckDB."""
    for line_no, text in iter_lines(path):
        if text.strip():
            try:
                json.loads(text)
            except json.JSONDecodeError as err:
                return DataError(f"{path}:{line_no}: malformed JSON ({err.msg}, column {err.colno})")
    return DataError(f"{path}: could not be read as JSON lines: {exc}")


def _line_text(path: Path, line_no: int) -> str:
    for _, text in itertools.islice(iter_lines(path), line_no - 1, line_no):
        return text
    return ""


def _sql_str(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _lines_source(path: Path) -> str:
    """A DuckDB table function yielding one VARCHAR ``line`` per line of ``path`` (NULL if blank)."""
    compression = "gzip" if is_gzip(path) else "none"
    return (
        f"read_csv({_sql_str(str(path))}, columns={{'line': 'VARCHAR'}}, delim='\x01', quote='', escape='', "
        f"header=false, auto_detect=false, strict_mode=false, "
        f"max_line_size={MAX_LINE_BYTES}, buffer_size={2 * MAX_LINE_BYTES}, "
        f"compression='{compression}')"
    )


def _json_fields_table(con: duckdb.DuckDBPyConnection, path: Path, table: str, fields: dict[str, str]) -> None:
    """Create ``table`` (line_no, valid, <fields>) from a JSON-lines file; errors name the line.

    ``fields`` maps a column name to a JSON path; a path ending in ``[*]`` yields a list.
    """
    scalars = {name: p for name, p in fields.items() if not p.endswith("[*]")}
    lists = {name: p for name, p in fields.items() if p.endswith("[*]")}
    paths = ", ".join(f"'{p}'" for p in scalars.values())
    cols = [f"f[{i + 1}] AS {name}" for i, name in enumerate(scalars)] + list(lists)
    list_exprs = "".join(
        f", CASE WHEN json_valid(line) THEN json_extract_string(line, '{p}') END AS {name}"
        for name, p in lists.items()
    )
    sql = f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT row_number() OVER () AS line_no, blank, valid, {", ".join(cols)}
        FROM (
            SELECT line IS NULL OR trim(line) = '' AS blank,
                   coalesce(json_valid(line), false) AS valid,
                   CASE WHEN json_valid(line) THEN json_extract_string(line, [{paths}]) END AS f
                   {list_exprs}
            FROM {_lines_source(path)}
        )
    """
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        raise _diagnose(path, exc) from None
    bad = con.execute(f"SELECT min(line_no) FROM {table} WHERE NOT blank AND NOT valid").fetchone()[0]
    if bad is not None:
        try:
            json.loads(_line_text(path, bad))
            detail = "rejected by DuckDB's JSON parser"
        except json.JSONDecodeError as err:
            detail = f"{err.msg}, column {err.colno}"
        raise DataError(f"{path}:{bad}: malformed JSON line ({detail}); expected one JSON object per line")


def _require(con: duckdb.DuckDBPyConnection, path: Path, table: str, checks: dict[str, str]) -> None:
    """DataError at the first valid line where a check (a SQL condition for a bad value) holds."""
    for what, condition in checks.items():
        row = con.execute(f"SELECT min(line_no) FROM {table} WHERE valid AND ({condition})").fetchone()
        if row[0] is not None:
            raise DataError(f"{path}:{row[0]}: {what}")


# ---- reviews -----------------------------------------------------------------------------------


def _load_reviews(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, domain: str) -> dict:
    """Create table ``reviews`` (deduplicated, canonical columns + line_no); return its stats."""
    _json_fields_table(
        con, path, "review_lines", {"user_id": f"$.{layout.user}", "item_id": f"$.{layout.item}", "ts": f"$.{layout.time}"}
    )
    _require(
        con,
        path,
        "review_lines",
        {
            f"field '{layout.user}' missing or empty": "user_id IS NULL OR user_id = ''",
            f"field '{layout.item}' missing or empty": "item_id IS NULL OR item_id = ''",
            f"field '{layout.time}' missing or not an integer": "TRY_CAST(ts AS BIGINT) IS NULL",
        },
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE reviews AS
        SELECT user_id, item_id, '{domain}' AS domain,
               CAST(ts AS BIGINT) // {layout.time_divisor} AS timestamp,
               NULL::VARCHAR AS split_hint, {_sql_str(path.name + ":")} || line_no AS origin, line_no
        FROM review_lines WHERE valid
        QUALIFY row_number() OVER (PARTITION BY user_id, item_id ORDER BY CAST(ts AS BIGINT), line_no) = 1
        """
    )
    n_lines = con.execute("SELECT count(*) FROM review_lines WHERE valid").fetchone()[0]
    n_kept = con.execute("SELECT count(*) FROM reviews").fetchone()[0]
    if n_kept == 0:
        raise DataError(f"{path}: no reviews found; expected JSON lines with {layout.user}, {layout.item}, {layout.time}")
    return {"reviews": n_lines, "duplicates_removed": n_lines - n_kept}


# ---- metadata ----------------------------------------------------------------------------------


def _load_meta(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout) -> None:
    """Create table ``meta`` (item_id, title, brand, categories), first line per item wins."""
    if layout.literal_meta:
        _load_literal_meta(con, path, layout)
    else:
        _json_fields_table(
            con,
            path,
            "meta_lines",
            {
                "item_id": f"$.{layout.meta_item}",
                "title": "$.title",
                "brand": f"$.{layout.meta_brand}",
                "cats": f"$.{layout.meta_categories}[*]",
            },
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE meta_rows AS
            SELECT line_no, valid, item_id, title, brand,
                   array_to_string([trim(c) for c in cats if trim(c) <> ''], ' > ') AS categories
            FROM meta_lines
            """
        )
    _require(con, path, "meta_rows", {f"field '{layout.meta_item}' missing or empty": "item_id IS NULL OR item_id = ''"})
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE meta AS
        SELECT item_id, NULLIF(trim(title), '') AS title, NULLIF(trim(brand), '') AS brand,
               NULLIF(categories, '') AS categories
        FROM meta_rows WHERE valid
        QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY line_no) = 1
        """
    )


META_SCHEMA = pa.schema(
    [("line_no", pa.int64()), ("valid", pa.bool_()), ("item_id", pa.string()), ("title", pa.string()),
     ("brand", pa.string()), ("categories", pa.string())]
)  # fmt: skip


def _load_literal_meta(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE meta_rows (line_no BIGINT, valid BOOLEAN, item_id VARCHAR, "
        "title VARCHAR, brand VARCHAR, categories VARCHAR)"
    )
    for batch in literal_meta_batches(path, layout):
        con.register("meta_batch", batch)
        con.execute("INSERT INTO meta_rows SELECT * FROM meta_batch")
        con.unregister("meta_batch")


def literal_meta_batches(path: Path, layout: Layout) -> Iterator[pa.RecordBatch]:
    """Stream a Python-literal metadata file as record batches of ``META_SCHEMA``."""
    columns: dict[str, list] = {name: [] for name in META_SCHEMA.names}
    for line_no, text in iter_lines(path):
        if not text.strip():
            continue
        record = parse_literal(text, path, line_no)
        columns["line_no"].append(line_no)
        columns["valid"].append(True)
        columns["item_id"].append(_as_text(record.get(layout.meta_item)))
        columns["title"].append(_as_text(record.get("title")))
        columns["brand"].append(_as_text(record.get(layout.meta_brand)))
        columns["categories"].append(join_categories(record.get(layout.meta_categories)))
        if len(columns["line_no"]) == BATCH_ROWS:
            yield pa.RecordBatch.from_pydict(columns, schema=META_SCHEMA)
            columns = {name: [] for name in META_SCHEMA.names}
    if columns["line_no"]:
        yield pa.RecordBatch.from_pydict(columns, schema=META_SCHEMA)


def parse_literal(text: str, path: Path, line_no: int) -> dict:
    """One metadata line: a Python literal dict (``ast.literal_eval``), or JSON as a fallback."""
    try:
        record = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            raise DataError(
                f"{path}:{line_no}: not a Python literal dict ({type(exc).__name__}: {exc})"
            ) from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{line_no}: expected a dict literal, got {type(record).__name__}")
    return record


def _as_text(value: object) -> str | None:
    return None if value is None else str(value)


def join_categories(value: object) -> str | None:
    """Flatten a category list (or list of lists) into distinct names joined with `` > ``."""
    names: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop(0)
        if isinstance(item, (list, tuple)):
            stack[:0] = list(item)
        elif item is not None and str(item).strip() and str(item).strip() not in names:
            names.append(str(item).strip())
    return " > ".join(names) or None


# ---- public ------------------------------------------------------------------------------------


def _paths(source_dir: Path, files: dict[str, AmazonFiles], domain: str) -> tuple[Path, Path]:
    paths = []
    for kind in ("reviews", "meta"):
        path = source_dir / getattr(files[domain], kind)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found (YAML field 'source.files.{domain}.{kind}')")
        paths.append(path)
    return paths[0], paths[1]


def read_interactions(
    source_dir: Path, version: int, files: dict[str, AmazonFiles], missing_metadata: str
) -> tuple[pa.Table, dict]:
    """Interactions of both domains (A then B, file order) and per-domain reading stats."""
    layout = LAYOUTS[version]
    con = duckdb.connect()
    tables, stats = [], {}
    for domain in DOMAINS:
        reviews_path, meta_path = _paths(source_dir, files, domain)
        stats[domain] = _load_reviews(con, reviews_path, layout, domain)
        _load_meta(con, meta_path, layout)
        missing = con.execute(
            "SELECT line_no, item_id, count(*) OVER (), count(DISTINCT item_id) OVER () "
            "FROM reviews ANTI JOIN meta USING (item_id) ORDER BY line_no LIMIT 1"
        ).fetchone()
        n_missing = 0
        if missing is not None:
            line_no, item_id, n_missing, n_items = missing
            if missing_metadata == "error":
                raise DataError(
                    f"{reviews_path}:{line_no}: item {item_id!r} has no metadata in {meta_path} "
                    f"({n_missing} reviews of {n_items} items lack metadata); set "
                    "'source.missing_metadata: drop' to drop them"
                )
            con.execute("DELETE FROM reviews WHERE item_id NOT IN (SELECT item_id FROM meta)")
        stats[domain]["dropped_missing_metadata"] = n_missing
        table = con.sql(
            "SELECT user_id, item_id, domain, timestamp, split_hint, origin FROM reviews ORDER BY line_no"
        ).to_arrow_table()
        stats[domain]["interactions"] = table.num_rows
        tables.append(table)
    return pa.concat_tables(tables), stats


def read_items(
    source_dir: Path,
    version: int,
    files: dict[str, AmazonFiles],
    interactions: pa.Table,
    domain_names: dict[str, str],
) -> tuple[pa.Table, dict]:
    """Items of ``interactions`` with title, brand, categories and text; per-domain stats."""
    layout = LAYOUTS[version]
    con = duckdb.connect()
    con.register("interactions", interactions.select(["item_id", "domain"]))
    tables, stats = [], {}
    for domain in DOMAINS:
        _, meta_path = _paths(source_dir, files, domain)
        _load_meta(con, meta_path, layout)
        placeholder = _sql_str(domain_names[domain] + " item ")
        table = con.sql(
            f"""
            WITH wanted AS (SELECT DISTINCT item_id FROM interactions WHERE domain = '{domain}')
            SELECT w.item_id, '{domain}' AS domain,
                   coalesce(m.title, {placeholder} || w.item_id) AS title, m.brand, m.categories,
                   concat_ws('. ', coalesce(m.title, {placeholder} || w.item_id),
                             'Brand: ' || m.brand, 'Category: ' || m.categories) AS text,
                   m.title IS NOT NULL AS has_title, NULL::INTEGER AS source_index,
                   m.item_id IS NULL AS no_metadata
            FROM wanted w LEFT JOIN meta m USING (item_id)
            ORDER BY w.item_id
            """
        ).to_arrow_table()
        stats[domain] = {
            "items": table.num_rows,
            "without_title": table.num_rows - int(pc.sum(table["has_title"]).as_py() or 0),
            "without_metadata": int(pc.sum(table["no_metadata"]).as_py() or 0),
        }
        tables.append(table.drop_columns(["no_metadata"]))
    return pa.concat_tables(tables), stats
