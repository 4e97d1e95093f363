"""Dagster metadata helpers: row counts, schemas, figures."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa


def table_metadata(table: pa.Table, path: Path, prefix: str = "") -> dict[str, dg.MetadataValue]:
    """Row count, column schema and path of one written table."""
    columns = [dg.TableColumn(f.name, str(f.type)) for f in table.schema]
    label = f"{prefix}_" if prefix else ""
    meta: dict[str, dg.MetadataValue] = {
        f"{label}path": dg.MetadataValue.path(str(path)),
        f"{label}rows": dg.MetadataValue.int(table.num_rows),
    }
    if not prefix:
        meta["dagster/row_count"] = dg.MetadataValue.int(table.num_rows)
        meta["dagster/column_schema"] = dg.MetadataValue.table_schema(dg.TableSchema(columns))
    else:
        meta[f"{label}schema"] = dg.MetadataValue.table_schema(dg.TableSchema(columns))
    return meta


def stats_metadata(stats: dict) -> dict[str, dg.MetadataValue]:
    """Flat numbers and strings as typed metadata; anything nested as JSON."""
    out: dict[str, dg.MetadataValue] = {}
    for name, value in stats.items():
        if isinstance(value, bool):
            out[name] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[name] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[name] = dg.MetadataValue.float(value)
        elif isinstance(value, str):
            out[name] = dg.MetadataValue.text(value)
        elif value is not None:
            out[name] = dg.MetadataValue.json(value)
    return out


def image_metadata(png: Path, title: str) -> dg.MetadataValue:
    """An inline PNG shown in the asset's metadata panel."""
    import base64

    data = base64.b64encode(png.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")
