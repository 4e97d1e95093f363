"""Serving stage: top-K target-domain items of every single-domain and held-out user, from the default LGCD model.

It reads the trained model, never the evaluation, so changing an evaluation setting does not re-run it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_core.stages import FILTERED_INTERACTIONS, LGCD_MODEL, PRETRAINED_ENCODERS, RECOMMENDATIONS
from lgcd_pipeline.metadata import stats_metadata, table_metadata
from lgcd_pipeline.stage import sequence_inputs, stage_asset

CHECKS = [
    ("target_domain_only", "Every recommended item is in the user's target domain."),
    ("no_history_items", "No user is recommended an item of their own history."),
    ("full_ordered_lists", "Every user gets recommendations.k items (fewer only if the domain has fewer left), best first."),
]


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, RECOMMENDATIONS, kinds={"pytorch", "faiss", "parquet"}, gpu=True, checks=CHECKS,
        description="The top recommendations.k target-domain items, with scores, of every single-domain training user "
        "(towards the other domain) and every held-out user (towards the case's target domain, from its source-domain "
        "items as the evaluation's inter_domain setting reads them), excluding the items the user has; scored by the "
        "default LGCD model (h_user · e_item), exactly or through FAISS above recommendations.faiss_above items.",
    )
    def recommendations(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        import pyarrow.parquet as pq

        from lgcd_core.device import resolve_device
        from lgcd_core.io import atomic_dir
        from lgcd_core.serving.recommend import run_recommendations

        items, sequences, eval_cases, embeddings = sequence_inputs(cfg)
        user_ids = pq.read_table(FILTERED_INTERACTIONS.table.path(cfg), columns=["user_id"]).column("user_id")
        with atomic_dir(out_dir) as tmp:
            stats = run_recommendations(cfg, items, sequences, eval_cases, embeddings, user_ids, LGCD_MODEL.path(cfg),
                                        PRETRAINED_ENCODERS.path(cfg), tmp / RECOMMENDATIONS.table,
                                        resolve_device(cfg.device), log=context.log.info)
        metadata = table_metadata(stats.pop("table"), out_dir / RECOMMENDATIONS.table)
        metadata["sample"] = dg.MetadataValue.md(stats.pop("sample"))
        checks = stats.pop("checks")
        metadata.update(stats_metadata(stats))
        return dg.MaterializeResult(metadata=metadata, check_results=[
            dg.AssetCheckResult(check_name=name, passed=ok, metadata=stats_metadata(detail))
            for name, (ok, detail) in checks.items()])

    return [recommendations]
