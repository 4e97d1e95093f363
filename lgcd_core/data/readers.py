"""Read a dataset's source into the canonical ``raw_interactions`` / ``raw_items`` tables.

Dispatches on ``cfg.source.format`` (amazon, llmcdsr, interactions, synthetic). Reading statistics (duplicates
removed, interactions dropped for missing metadata, missing LLMCDSR files, items without a title)
travel with the table as JSON in its schema metadata (key ``lgcd_stats``, kept when the table is
written to Parquet); read them with :func:`table_stats`.

Both tables must cover both domains: a domain without training interactions (rows with no
``split_hint`` or 'train') or without items is a DataError naming the source and the likely cause.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.config import DatasetConfig, SyntheticSpec
from lgcd_core.data import amazon, llmcdsr, synthetic
from lgcd_core.data import interactions as plain_files
from lgcd_core.io import DataError, printable
from lgcd_core.stages import RAW_INTERACTIONS, RAW_ITEMS

INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("timestamp", pa.int64()),
        ("split_hint", pa.string()),
        ("origin", pa.string()),
    ]
)
# has_title: False where the title is a placeholder. source_index: the source's 0-based global
# item id when the source fixes the item index (LLMCDSR), else null.
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("categories", pa.string()),
        ("text", pa.string()),
        ("has_title", pa.bool_()),
        ("source_index", pa.int32()),
    ]
)
STATS_KEY = b"lgcd_stats"


def with_stats(table: pa.Table, stats: dict) -> pa.Table:
    """``table`` with ``stats`` attached as JSON schema metadata."""
    return table.replace_schema_metadata({STATS_KEY: json.dumps(stats, sort_keys=True).encode()})


def table_stats(table: pa.Table) -> dict:
    """The stats attached by the reader or filter that produced ``table`` ({} if none)."""
    raw = (table.schema.metadata or {}).get(STATS_KEY)
    return json.loads(raw) if raw else {}


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Select and cast ``table`` to ``schema``; DataError naming missing columns."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(f"{what}: missing columns {missing}; expected {schema.names}")
    return table.select(schema.names).cast(schema)


def source_folder(cfg: DatasetConfig) -> Path:
    """The existing source folder, or FileNotFoundError saying which YAML field/env var to fix."""
    folder = cfg.source_dir()
    if not folder.is_dir():
        fix = "YAML field 'source.path'"
        if cfg.source.path_env:
            fix += f" or environment variable {cfg.source.path_env}"
        raise FileNotFoundError(f"{folder}: source folder of dataset {cfg.name!r} not found; set the {fix}")
    return folder


def _synthetic_folder(cfg: DatasetConfig) -> Path:
    folder = cfg.source_dir()
    synthetic.ensure_generated(cfg.source.synthetic or SyntheticSpec(), folder)
    return folder


def read_interactions(cfg: DatasetConfig) -> pa.Table:
    """The ``raw_interactions`` table of ``cfg`` (schema in docs/data_contracts.md), stats attached."""
    source = cfg.source
    if source.format == "llmcdsr":
        table, stats = llmcdsr.read_interactions(source_folder(cfg))
    elif source.format == "interactions":
        table, stats = plain_files.read_interactions(source_folder(cfg), cfg.domains.model_dump())
    elif source.format == "synthetic":
        table, stats = amazon.read_interactions(_synthetic_folder(cfg), 2018, synthetic.FILES, source.missing_metadata)
    else:
        table, stats = amazon.read_interactions(
            source_folder(cfg), source.amazon_version, source.files, source.missing_metadata
        )
    table = conform(table, INTERACTIONS_SCHEMA, RAW_INTERACTIONS.name)
    training = pc.or_kleene(pc.is_null(table["split_hint"]), pc.equal(table["split_hint"], "train"))
    _require_domains(table.filter(training), RAW_INTERACTIONS.name, "training interactions", cfg)
    return with_stats(table, stats)


def read_items(cfg: DatasetConfig, interactions: pa.Table) -> pa.Table:
    """The ``raw_items`` table: items of ``interactions`` (LLMCDSR: every indexed item), stats attached."""
    source = cfg.source
    names = cfg.domains.model_dump()
    if source.format == "llmcdsr":
        table, stats = llmcdsr.read_items(source_folder(cfg), names)
    elif source.format == "interactions":
        table, stats = plain_files.read_items(source_folder(cfg), names)
    elif source.format == "synthetic":
        table, stats = amazon.read_items(_synthetic_folder(cfg), 2018, synthetic.FILES, interactions, names)
    else:
        table, stats = amazon.read_items(source_folder(cfg), source.amazon_version, source.files, interactions, names)
    table = conform(table, ITEMS_SCHEMA, RAW_ITEMS.name)
    _require_domains(table, RAW_ITEMS.name, "items", cfg)
    return with_stats(printable_columns(table, ("title", "brand", "categories", "text")), stats)


def printable_columns(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """``table`` with each of ``columns`` as one line of printable text (control characters dropped, nulls kept)."""
    for name in columns:
        values = [None if v is None else printable(v) for v in table.column(name).to_pylist()]
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table


def _require_domains(table: pa.Table, stage: str, what: str, cfg: DatasetConfig) -> None:
    """DataError if ``table`` has no row of domain A or B."""
    present = set(pc.unique(table["domain"]).to_pylist())
    for domain in ("A", "B"):
        if domain not in present:
            name = getattr(cfg.domains, domain)
            raise DataError(
                f"{stage}: domain {domain} ({name}) has no {what} in {cfg.source_dir()} "
                f"(source.format: {cfg.source.format}); {_source_hint(cfg, domain)}"
            )


def _source_hint(cfg: DatasetConfig, domain: str) -> str:
    return {
        "llmcdsr": f"num.txt, item_set_{domain}.pkl and the train files must hold domain-{domain} items",
        "amazon": f"check the files of source.files.{domain}",
        "interactions": f"the interactions and items files need rows of domain {domain}",
        "synthetic": "check source.synthetic",
    }[cfg.source.format]
