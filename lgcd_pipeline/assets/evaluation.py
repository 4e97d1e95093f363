"""Evaluation stage: LGCD, baselines and ablation variants on the same stored candidates."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_pipeline.metadata import image_metadata, stats_metadata, table_metadata
from lgcd_pipeline.stage import cache_dir, sequence_inputs, stage_asset, stage_path


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, "evaluation", deps=["lgcd_model", "pretrained_encoders", "pseudo_overlap_sequences", "sequences", "item_text_embeddings"],
        group="evaluation", kinds={"pytorch", "parquet"}, gpu=True,
        description="HR and NDCG at 1, 5, 10 for LGCD and every baseline and variant on 999 stored negatives per "
        "case (ties against the model) and on full ranking, in the inter_domain and mixed_history settings.",
    )
    def evaluation(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.evaluation.run import run_evaluation
        from lgcd_core.io import atomic_dir, read_parquet

        items, sequences, eval_cases, vectors = sequence_inputs(cfg)
        pseudo = read_parquet(stage_path(cfg, "pseudo_overlap_sequences", "pseudo_overlap_sequences.parquet"))
        with atomic_dir(out_dir) as tmp:
            stats = run_evaluation(cfg, items, sequences, eval_cases, pseudo, vectors, cfg.stage_dir("pretrained_encoders"),
                                   cfg.stage_dir("lgcd_model"), tmp, resolve_device(cfg.device), log=context.log.info,
                                   baseline_cache=cache_dir(cfg, "baselines"))
        metrics = read_parquet(out_dir / "metrics.parquet")
        metadata = table_metadata(metrics, out_dir / "metrics.parquet")
        metadata["report"] = dg.MetadataValue.path(str(out_dir / "report.md"))
        metadata["results"] = dg.MetadataValue.md(stats["markdown"])
        metadata["chart"] = image_metadata(out_dir / "metrics.png", "metrics")
        # the stats' paths point into the temporary folder the stage wrote before publishing it
        metadata.update(stats_metadata({k: v for k, v in stats.items() if k not in {"markdown", "png", "report", "metrics"}}))
        return dg.MaterializeResult(metadata=metadata)

    return [evaluation]
