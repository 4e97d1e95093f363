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

Checks (each a DataError naming the file and line):
- Text is UTF-8; a byte-order mark at the start of a file is dropped (DuckDB does the same).
- The declared version must match the file: a field the version needs (reviews: user, item and
  time; metadata: item and categories) absent from every line is an error that says which version
  the file looks like.
- Review timestamps are non-negative integers (a float without a fractional part is accepted);
  strings, nulls, fractions and negative values are errors. Ids, titles and brands are strings
  (numbers are accepted as their text); categories are a list of strings (2014 literals: a list
  of lists of strings).

Decisions:
- Duplicate (user, item) reviews within a domain keep the earliest one (smallest timestamp, then
  the earliest line); the number removed is reported in the stats.
- Metadata lines repeating an item id: the first line wins.
- Reviews whose item has no metadata: ``missing_metadata='error'`` raises a DataError naming the
  first such review line; ``'drop'`` drops them and reports the count per domain in the stats
  (``dropped_missing_metadata``); a domain left without any review is an error.
- Item text = title, brand and categories (joined with `` > ``). An item without a title gets the
  placeholder title ``"<domain name> item <item_id>"`` and ``has_title = False``.
"""

from __future__ import annotations

import ast
import codecs
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
MAX_SECONDS = 10**11  # review times beyond this (year 5138) are a unit mix-up


@dataclass(frozen=True)
class Layout:
    """Field names of one dump version."""

    version: int
    user: str
    item: str
    time: str
    time_divisor: int  # timestamp units per second
    meta_item: str
    meta_brand: str
    meta_categories: str
    literal_meta: bool

    def required(self, kind: str) -> tuple[str, ...]:
        """Fields that identify this version's ``kind`` ('reviews' or 'metadata') files."""
        return (self.user, self.item, self.time) if kind == "reviews" else (self.meta_item, self.meta_categories)


LAYOUTS: dict[int, Layout] = {
    2014: Layout(2014, "reviewerID", "asin", "unixReviewTime", 1, "asin", "brand", "categories", True),
    2018: Layout(2018, "reviewerID", "asin", "unixReviewTime", 1, "asin", "brand", "category", False),
    2023: Layout(2023, "user_id", "parent_asin", "timestamp", 1000, "parent_asin", "store", "categories", False),
}
JSON_SCALARS = "('VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE')"  # json_type values accepted where text is expected


# ---- file access -------------------------------------------------------------------------------


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based), without the file's UTF-8 byte-order mark.

    DataError naming the line on bytes that are not UTF-8, and on a truncated gzip stream.
    """
    opener = gzip.open if is_gzip(path) else open
    line_no = 0
    try:
        with opener(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                yield line_no, _decode_line(raw, path, line_no)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: truncated or corrupt gzip stream after line {line_no} ({exc}); "
            "re-download the file"
        ) from None


def _decode_line(raw: bytes, path: Path, line_no: int) -> str:
    """One line as text; the byte-order mark at the start of line 1 is dropped."""
    if line_no == 1 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}:1: starts with a UTF-16 byte-order mark; expected UTF-8 text (re-encode the file)")
    if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start}); expected UTF-8 text"
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


def _json_fields_table(
    con: duckdb.DuckDBPyConnection, path: Path, table: str, fields: dict[str, str], types: dict[str, str]
) -> None:
    """Create ``table`` (line_no, blank, valid, <fields>, <types>) from a JSON-lines file; errors name the line.

    ``fields`` maps a column name to a JSON path whose value is kept as text; ``types`` maps a column
    name to a JSON path whose ``json_type`` is kept (NULL where absent, 'NULL' for a JSON null). A
    path ending in ``[*]`` yields a list.
    """
    scalars = {name: p for name, p in fields.items() if not p.endswith("[*]")}
    others = {name: f"json_extract_string(line, '{p}')" for name, p in fields.items() if p.endswith("[*]")}
    others |= {name: f"json_type(line, '{p}')" for name, p in types.items()}
    paths = ", ".join(f"'{p}'" for p in scalars.values())
    cols = [f"f[{i + 1}] AS {name}" for i, name in enumerate(scalars)] + list(others)
    extra_exprs = "".join(f", CASE WHEN json_valid(line) THEN {expr} END AS {name}" for name, expr in others.items())
    sql = f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT row_number() OVER () AS line_no, blank, valid, {", ".join(cols)}
        FROM (
            SELECT line IS NULL OR trim(line) = '' AS blank,
                   coalesce(json_valid(line), false) AS valid,
                   CASE WHEN json_valid(line) THEN json_extract_string(line, [{paths}]) END AS f
                   {extra_exprs}
            FROM {_lines_source(path)}
        )
    """
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        raise _diagnose(path, exc) from None
    bad = con.execute(f"SELECT min(line_no) FROM {table} WHERE NOT blank AND NOT valid").fetchone()[0]
    if bad is not None:
        text = _line_text(path, bad)
        try:
            json.loads(text)
            detail = "rejected by DuckDB's JSON parser"
        except json.JSONDecodeError as err:
            detail = f"{err.msg}, column {err.colno}"
        raise DataError(
            f"{path}:{bad}: malformed JSON line ({detail}); expected one JSON object per line{_literal_hint(text)}"
        )


def _literal_hint(text: str) -> str:
    """A hint when a line that is not JSON is a Python literal dict, as Amazon 2014 metadata is."""
    try:
        is_literal = isinstance(ast.literal_eval(text.strip()), dict)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        is_literal = False
    return "; the line is a Python literal, as in Amazon 2014 metadata (source.amazon_version: 2014)" if is_literal else ""


def _require(
    con: duckdb.DuckDBPyConnection, path: Path, table: str, checks: dict[str, str], show: str | None = None
) -> None:
    """DataError at the first valid line where a check (a SQL condition for a bad value) holds.

    ``show`` is a SQL expression for the offending value, quoted in the message.
    """
    for what, condition in checks.items():
        row = con.execute(
            f"SELECT line_no, {show or 'NULL'} FROM {table} WHERE valid AND ({condition}) ORDER BY line_no LIMIT 1"
        ).fetchone()
        if row is not None:
            got = f" (got {row[1]})" if show else ""
            raise DataError(f"{path}:{row[0]}: {what}{got}")


def _require_layout(
    con: duckdb.DuckDBPyConnection, path: Path, table: str, layout: Layout, kind: str, present: dict[str, str]
) -> None:
    """DataError if a field ``layout`` needs is absent from every line, saying which version the file looks like.

    ``present`` maps each required field to a SQL condition that holds on the lines that have it.
    """
    conditions = ", ".join(f"count(*) FILTER (WHERE valid AND ({c}))" for c in present.values())
    n_valid, *counts = con.execute(f"SELECT count(*) FILTER (WHERE valid), {conditions} FROM {table}").fetchone()
    if n_valid == 0:
        raise DataError(f"{path}: no {kind} found; expected Amazon {layout.version} {kind} with fields {list(present)}")
    absent = [field for field, n in zip(present, counts) if n == 0]
    if absent:
        first = con.execute(f"SELECT min(line_no) FROM {table} WHERE valid").fetchone()[0]
        raise DataError(
            f"{path}: no line has field(s) {absent}, which Amazon {layout.version} {kind} have "
            f"(source.amazon_version: {layout.version}); {_looks_like(path, first, layout, kind)}"
        )


def _looks_like(path: Path, line_no: int, layout: Layout, kind: str) -> str:
    """What line ``line_no`` looks like: its fields, and the other versions whose fields it has."""
    keys = set(parse_literal(_line_text(path, line_no), path, line_no))
    guesses = [str(v) for v, other in LAYOUTS.items() if v != layout.version and set(other.required(kind)) <= keys]
    described = f"line {line_no} has fields {sorted(keys)[:12]}"
    if not guesses:
        return described
    return f"{described}: it looks like Amazon {' or '.join(guesses)} {kind}; set source.amazon_version accordingly"


# ---- reviews -----------------------------------------------------------------------------------


def _load_reviews(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, domain: str) -> dict:
    """Create table ``reviews`` (deduplicated, canonical columns + line_no); return its stats."""
    user, item, time = f"$.{layout.user}", f"$.{layout.item}", f"$.{layout.time}"
    _json_fields_table(
        con, path, "review_lines", {"user_id": user, "item_id": item, "ts": time},
        {"user_type": user, "item_type": item, "ts_type": time},
    )  # fmt: skip
    _require_layout(
        con, path, "review_lines", layout, "reviews",
        {layout.user: "user_id IS NOT NULL", layout.item: "item_id IS NOT NULL", layout.time: "ts_type <> 'NULL'"},
    )  # fmt: skip
    _require(
        con,
        path,
        "review_lines",
        {
            f"field '{layout.user}' missing or empty": "user_id IS NULL OR user_id = ''",
            f"field '{layout.item}' missing or empty": "item_id IS NULL OR item_id = ''",
            f"field '{layout.user}' must be a string": f"user_type NOT IN {JSON_SCALARS}",
            f"field '{layout.item}' must be a string": f"item_type NOT IN {JSON_SCALARS}",
        },
    )
    _require_timestamps(con, path, layout)
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
    return {"reviews": n_lines, "duplicates_removed": n_lines - n_kept}


def _require_timestamps(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout) -> None:
    """Every review time is a non-negative integer (a JSON number without a fractional part)."""
    unit = "milliseconds" if layout.time_divisor == 1000 else "seconds"
    expected = f"expected a non-negative integer ({unit} since 1970)"
    number = "TRY_CAST(ts AS DOUBLE)"
    _require(
        con,
        path,
        "review_lines",
        {
            f"field '{layout.time}' missing or null; {expected}": "ts_type IS NULL OR ts_type = 'NULL'",
            f"field '{layout.time}' is not a number; {expected}": "ts_type NOT IN ('BIGINT', 'UBIGINT', 'DOUBLE')",
            f"field '{layout.time}' has a fractional part; {expected}": f"{number} <> floor({number})",
            f"field '{layout.time}' is negative or too large; {expected}":
                f"{number} < 0 OR TRY_CAST({number} AS BIGINT) IS NULL OR TRY_CAST(ts AS BIGINT) IS NULL",
            f"field '{layout.time}' is after the year 5000 in {unit}; {expected} (milliseconds in a seconds field?)":
                f"{number} / {layout.time_divisor} >= {MAX_SECONDS}",
        },
        show="coalesce('JSON ' || ts_type || ' ' || ts, 'no value')",
    )  # fmt: skip


# ---- metadata ----------------------------------------------------------------------------------


def _load_meta(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout) -> None:
    """Create table ``meta`` (item_id, title, brand, categories), first line per item wins."""
    if layout.literal_meta:
        _load_literal_meta(con, path, layout)
    else:
        _load_json_meta(con, path, layout)
    _require_layout(
        con, path, "meta_rows", layout, "metadata",
        {layout.meta_item: "item_id IS NOT NULL", layout.meta_categories: "has_categories"},
    )  # fmt: skip
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


def _load_json_meta(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout) -> None:
    """Create table ``meta_rows`` (the columns of ``META_SCHEMA``) from a JSON-lines metadata file."""
    item, brand, cats = f"$.{layout.meta_item}", f"$.{layout.meta_brand}", f"$.{layout.meta_categories}"
    _json_fields_table(
        con, path, "meta_lines", {"item_id": item, "title": "$.title", "brand": brand, "cats": f"{cats}[*]"},
        {"item_type": item, "title_type": "$.title", "brand_type": brand, "cats_type": cats, "cat_types": f"{cats}[*]"},
    )  # fmt: skip
    not_text = "IN ('OBJECT', 'ARRAY', 'BOOLEAN')"
    _require(
        con,
        path,
        "meta_lines",
        {
            f"field '{layout.meta_item}' must be a string": f"item_type {not_text}",
            "field 'title' must be a string, not a JSON object, array or boolean": f"title_type {not_text}",
            f"field '{layout.meta_brand}' must be a string, not a JSON object, array or boolean": f"brand_type {not_text}",
            f"field '{layout.meta_categories}' must be a list of strings":
                "cats_type NOT IN ('ARRAY', 'NULL') OR len([t for t in cat_types if t <> 'VARCHAR']) > 0",
        },
    )  # fmt: skip
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE meta_rows AS
        SELECT line_no, valid, item_id, title, brand,
               array_to_string([trim(c) for c in cats if trim(c) <> ''], ' > ') AS categories,
               coalesce(cats_type <> 'NULL', false) AS has_categories
        FROM meta_lines
        """
    )


META_SCHEMA = pa.schema(
    [("line_no", pa.int64()), ("valid", pa.bool_()), ("item_id", pa.string()), ("title", pa.string()),
     ("brand", pa.string()), ("categories", pa.string()), ("has_categories", pa.bool_())]
)  # fmt: skip


def _load_literal_meta(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE meta_rows (line_no BIGINT, valid BOOLEAN, item_id VARCHAR, "
        "title VARCHAR, brand VARCHAR, categories VARCHAR, has_categories BOOLEAN)"
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
        for column, field in (("item_id", layout.meta_item), ("title", "title"), ("brand", layout.meta_brand)):
            columns[column].append(_literal_text(record, field, path, line_no))
        names = _literal_categories(record, layout.meta_categories, path, line_no)
        columns["categories"].append(" > ".join(dict.fromkeys(names)) or None)
        columns["has_categories"].append(record.get(layout.meta_categories) is not None)
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


def _literal_text(record: dict, field: str, path: Path, line_no: int) -> str | None:
    """A text field of a literal record: a string (a number as its text) or None; DataError otherwise."""
    value = record.get(field)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{path}:{line_no}: field {field!r} is a {type(value).__name__}, expected a string")


def _literal_categories(record: dict, field: str, path: Path, line_no: int) -> list[str]:
    """The non-empty category names of a list of lists of strings (or a list of strings), in order."""
    value = record.get(field)
    if value is None:
        return []
    rows = [[x] if isinstance(x, str) else x for x in value] if isinstance(value, (list, tuple)) else None
    if rows is None or not all(isinstance(row, (list, tuple)) and all(isinstance(x, str) for x in row) for row in rows):
        raise DataError(
            f"{path}:{line_no}: field {field!r} must be a list of lists of strings (or a list of strings), "
            f"got {value!r:.80}"
        )
    return [x.strip() for row in rows for x in row if x.strip()]


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
            if not con.execute("SELECT 1 FROM reviews LIMIT 1").fetchall():
                raise DataError(
                    f"{reviews_path}:{line_no}: no review has an item with metadata in {meta_path} (first: item "
                    f"{item_id!r}); 'source.missing_metadata: drop' would leave domain {domain} without interactions"
                )
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
