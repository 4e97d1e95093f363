"""Model stages: per-domain pretrained sequence encoders, then the LGCD conditional diffusion model.

Training runs in a work folder under ``datasets/<name>/cache/`` that keeps its per-epoch checkpoints,
so a crashed run resumes; the finished model is then published into the stage folder atomically.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_pipeline.metadata import image_metadata, stats_metadata
from lgcd_pipeline.stage import cache_dir, sequence_inputs, stage_asset, stage_path


def _publish(work: Path, out_dir: Path) -> None:
    """Copy the finished files (not the checkpoints folder) of a training run into the stage folder."""
    from lgcd_core.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        for path in work.iterdir():
            if path.is_file():
                shutil.copy2(path, tmp / path.name)


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, "pretrained_encoders", deps=["sequences", "item_text_embeddings"], group="model", kinds={"pytorch", "safetensors"},
        gpu=True,
        description="Per domain: SASRec-style ID and text sequence encoders fused by a linear layer (eq. 1-2), "
        "pre-trained with full-softmax next-item cross-entropy (eq. 3), early-stopped on valid.",
    )
    def pretrained_encoders(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.model.pretrain import pretrain_encoders

        items, sequences, eval_cases, vectors = sequence_inputs(cfg)
        work = cache_dir(cfg, "pretrained_encoders_run")
        stats = pretrain_encoders(cfg, items, sequences, eval_cases, vectors, work, resolve_device(cfg.device),
                                  log=context.log.info)
        _publish(work, out_dir)
        metadata = stats_metadata(stats)
        if (out_dir / "loss_curve.png").exists():
            metadata["loss_curve"] = image_metadata(out_dir / "loss_curve.png", "pre-training loss")
        return dg.MaterializeResult(metadata=metadata)

    @stage_asset(
        cfg, "lgcd_model", deps=["pretrained_encoders", "pseudo_overlap_sequences", "sequences", "item_text_embeddings"],
        group="model", kinds={"pytorch", "safetensors"}, gpu=True,
        description="The conditional diffusion preference generator with guesser, λ-start reverse process and MoE "
        "fusion, trained with cyclic overlap batches in both directions (eq. 7-27).",
    )
    def lgcd_model(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.io import read_parquet
        from lgcd_core.model.train_lgcd import train_lgcd

        items, sequences, eval_cases, vectors = sequence_inputs(cfg)
        pseudo = read_parquet(stage_path(cfg, "pseudo_overlap_sequences", "pseudo_overlap_sequences.parquet"))
        work = cache_dir(cfg, "lgcd_model_run")
        stats = train_lgcd(cfg, items, sequences, eval_cases, pseudo, vectors, cfg.stage_dir("pretrained_encoders"),
                           work, resolve_device(cfg.device), log=context.log.info)
        _publish(work, out_dir)
        metadata = stats_metadata(stats)
        if (out_dir / "loss_curve.png").exists():
            metadata["loss_curve"] = image_metadata(out_dir / "loss_curve.png", "LGCD training loss")
        return dg.MaterializeResult(metadata=metadata)

    return [pretrained_encoders, lgcd_model]
