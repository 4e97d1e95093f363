"""Evaluation stage: LGCD, baselines and ablation variants scored on the same stored candidates; trains nothing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_core.stages import BASELINES, EVALUATION, LGCD_MODEL, PRETRAINED_ENCODERS
from lgcd_pipeline.metadata import image_metadata, stats_metadata, table_metadata
from lgcd_pipeline.stage import sequence_inputs, stage_asset


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, EVALUATION, kinds={"pytorch", "parquet"}, gpu=True,
        description=f"HR and NDCG at 1, 5, 10 for LGCD and every baseline and variant on {cfg.evaluation.n_negatives} "
        "stored negatives per case (ties against the model) and on full ranking, in the inter_domain and mixed_history settings. "
        "Scores the trained models of lgcd_model and baselines; trains nothing.",
    )
    def evaluation(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.evaluation.run import run_evaluation
        from lgcd_core.io import atomic_dir, read_parquet
        from lgcd_core.model.batches import Inputs

        with atomic_dir(out_dir) as tmp:
            stats = run_evaluation(cfg, Inputs(*sequence_inputs(cfg)), PRETRAINED_ENCODERS.path(cfg),
                                   LGCD_MODEL.path(cfg), BASELINES.path(cfg), tmp,
                                   resolve_device(cfg.device), log=context.log.info)
        metrics = read_parquet(out_dir / EVALUATION.metrics)
        metadata = table_metadata(metrics, out_dir / EVALUATION.metrics)
        metadata["report"] = dg.MetadataValue.path(str(out_dir / EVALUATION.report))
        metadata["results"] = dg.MetadataValue.md(stats["markdown"])
        for name, value in stats["headline"].items():  # numbers, so Dagster's plots chart them across runs
            metadata[name] = dg.MetadataValue.float(value)
        metadata["chart"] = image_metadata(out_dir / EVALUATION.chart, "metrics")
        # the stats' paths point into the temporary folder the stage wrote before publishing it
        metadata.update(stats_metadata({k: v for k, v in stats.items() if k not in {"markdown", "png", "report", "metrics", "headline"}}))
        return dg.MaterializeResult(metadata=metadata)

    return [evaluation]
