"""Data stages: raw_interactions → raw_items → filtered_interactions → sequences (thin wrappers)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_core.stages import FILTERED_INTERACTIONS, RAW_INTERACTIONS, RAW_ITEMS, SEQUENCES
from lgcd_pipeline.metadata import stats_metadata, table_metadata
from lgcd_pipeline.stage import stage_asset


def _domain_summary(interactions) -> dict:
    import duckdb

    rows = duckdb.sql(
        "SELECT domain, count(*) AS n, count(DISTINCT user_id) AS users, count(DISTINCT item_id) AS items "
        "FROM interactions GROUP BY domain ORDER BY domain"
    ).fetchall()
    summary = {"interactions": int(interactions.num_rows), "users": len(set(interactions["user_id"].to_pylist()))}
    for domain, n, users, items in rows:
        summary.update({f"interactions_{domain}": n, f"users_{domain}": users, f"items_{domain}": items})
    return summary


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, RAW_INTERACTIONS, kinds={"python", "duckdb", "parquet"},
        description=f"Interactions parsed from the `{cfg.source.format}` source into one canonical table "
        "(user_id, item_id, domain, timestamp, split_hint, origin).",
    )
    def raw_interactions(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.data.readers import read_interactions, table_stats
        from lgcd_core.io import atomic_dir, write_parquet

        context.log.info(f"reading {cfg.source.format} data from {cfg.source_dir()}")
        table = read_interactions(cfg)
        with atomic_dir(out_dir) as tmp:
            write_parquet(table, tmp / RAW_INTERACTIONS.table)
        return dg.MaterializeResult(
            metadata={
                **table_metadata(table, out_dir / RAW_INTERACTIONS.table),
                **stats_metadata(_domain_summary(table)),
                **stats_metadata(table_stats(table)),
            }
        )

    @stage_asset(
        cfg, RAW_ITEMS, kinds={"python", "parquet"},
        description="Item metadata (title, brand, categories) and the text each item is encoded from.",
    )
    def raw_items(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.data.readers import read_items, table_stats
        from lgcd_core.io import atomic_dir, read_parquet, write_parquet

        interactions = read_parquet(RAW_INTERACTIONS.table.path(cfg))
        table = read_items(cfg, interactions)
        with atomic_dir(out_dir) as tmp:
            write_parquet(table, tmp / RAW_ITEMS.table)
        per_domain = {f"items_{d}": int(sum(x == d for x in table["domain"].to_pylist())) for d in ("A", "B")}
        return dg.MaterializeResult(
            metadata={**table_metadata(table, out_dir / RAW_ITEMS.table), **stats_metadata({**per_domain, **table_stats(table)})}
        )

    @stage_asset(
        cfg, FILTERED_INTERACTIONS, kinds={"python", "parquet"},
        description="Time window, then iterative k-core per domain to a fixed point (paper: 10-core Movie-Book, "
        "5-core Food-Kitchen).",
        checks=[("k_core_holds", "Every remaining user and item has at least k interactions in its domain.")],
    )
    def filtered_interactions(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.data.kcore import apply_filters
        from lgcd_core.data.readers import table_stats
        from lgcd_core.data.sequences import check_kcore
        from lgcd_core.io import atomic_dir, read_parquet, write_parquet

        interactions = read_parquet(RAW_INTERACTIONS.table.path(cfg))
        items = read_parquet(RAW_ITEMS.table.path(cfg))
        table = apply_filters(interactions, items, cfg.filter)
        passed, detail = check_kcore(table, cfg.filter.k_core)
        with atomic_dir(out_dir) as tmp:
            write_parquet(table, tmp / FILTERED_INTERACTIONS.table)
        summary = _domain_summary(table)
        summary["removed_interactions"] = int(interactions.num_rows - table.num_rows)
        summary.update(table_stats(table))
        return dg.MaterializeResult(
            metadata={**table_metadata(table, out_dir / FILTERED_INTERACTIONS.table), **stats_metadata(summary)},
            check_results=[dg.AssetCheckResult(check_name="k_core_holds", passed=passed, metadata=stats_metadata(detail))],
        )

    @stage_asset(
        cfg, SEQUENCES, kinds={"python", "parquet"},
        description="Item index (0 = padding, A items first), time-ordered training sequences with user types "
        "(overlap / A-only / B-only) and held-out evaluation cases.",
        checks=[
            ("no_empty_sequence", "No training sequence and no evaluation history is empty."),
            ("ids_in_index", "Every item id in sequences and cases is in the item index."),
            ("targets_not_in_training", "No evaluation target appears in that user's training data."),
        ],
    )
    def sequences(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.data import sequences as seq
        from lgcd_core.io import atomic_dir, read_parquet, write_parquet

        interactions = read_parquet(FILTERED_INTERACTIONS.table.path(cfg))
        items = read_parquet(RAW_ITEMS.table.path(cfg))
        data = seq.build_sequences(interactions, items, cfg.split)
        seq.require_every_domain(data, interactions, cfg.split)
        checks = {
            "no_empty_sequence": seq.check_no_empty_sequence(data),
            "ids_in_index": seq.check_ids_in_index(data),
            "targets_not_in_training": seq.check_targets_not_in_training(data),
        }
        with atomic_dir(out_dir) as tmp:
            for table, filename in ((data.items, SEQUENCES.items), (data.sequences, SEQUENCES.sequences),
                                    (data.eval_cases, SEQUENCES.eval_cases)):
                write_parquet(table, tmp / filename)
        metadata = table_metadata(data.sequences, out_dir / SEQUENCES.sequences)
        metadata.update(table_metadata(data.items, out_dir / SEQUENCES.items, prefix="items"))
        metadata.update(table_metadata(data.eval_cases, out_dir / SEQUENCES.eval_cases, prefix="eval_cases"))
        metadata.update(stats_metadata(seq.sequence_stats(data)))
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(check_name=name, passed=ok, metadata=stats_metadata(detail))
                for name, (ok, detail) in checks.items()
            ],
        )

    return [raw_interactions, raw_items, filtered_interactions, sequences]
