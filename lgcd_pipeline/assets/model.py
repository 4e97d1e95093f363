"""Model stages: every training of the pipeline happens here, never in evaluation.

- ``pretrained_encoders``: per-domain ID + text sequence encoders (eq. 1-3).
- ``lgcd_model``: the LGCD model, for every seed of ``evaluation.seeds`` and every Table 3 variant
  the YAML lists (the default model at the top of the stage folder, the others in ``<model>_seed<k>/``).
- ``baselines``: the listed SASRec baselines, per seed.

Training runs in a work folder under ``datasets/<name>/cache/<stage>_run/`` that keeps the per-epoch
checkpoints of each run, so a crashed materialization resumes where it stopped; the finished models
are then published into the stage folder atomically and the work folder is removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_pipeline.metadata import image_metadata, stats_metadata
from lgcd_pipeline.stage import cache_dir, sequence_inputs, stage_asset, stage_path


def _publish(work: Path, out_dir: Path) -> None:
    """Copy a finished work folder, checkpoints left out, into the stage folder; then remove it."""
    from lgcd_core.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        shutil.copytree(work, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint*.pt"))
    shutil.rmtree(work)


def _result(stats: dict, out_dir: Path, title: str) -> dg.MaterializeResult:
    metadata = stats_metadata(stats)
    if (out_dir / "loss_curve.png").exists():
        metadata["loss_curve"] = image_metadata(out_dir / "loss_curve.png", title)
    return dg.MaterializeResult(metadata=metadata)


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, "pretrained_encoders", deps=["sequences", "item_text_embeddings"], group="model", kinds={"pytorch", "safetensors"},
        gpu=True,
        description="Per domain: SASRec-style ID and text sequence encoders fused by a linear layer (eq. 1-2), "
        "pre-trained with full-softmax next-item cross-entropy (eq. 3), early-stopped on valid.",
    )
    def pretrained_encoders(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.model.batches import Inputs
        from lgcd_core.model.pretrain import pretrain_encoders

        work = cache_dir(cfg, "pretrained_encoders_run")
        stats = pretrain_encoders(cfg, Inputs(*sequence_inputs(cfg)), work, resolve_device(cfg.device), log=context.log.info)
        _publish(work, out_dir)
        return _result(stats, out_dir, "pre-training loss")

    @stage_asset(
        cfg, "lgcd_model", deps=["pretrained_encoders", "pseudo_overlap_sequences", "sequences", "item_text_embeddings"],
        group="model", kinds={"pytorch", "safetensors"}, gpu=True,
        description="The conditional diffusion preference generator with guesser, λ-start reverse process and MoE "
        "fusion, trained with cyclic overlap batches in both directions (eq. 7-27); one model per seed of "
        "evaluation.seeds and per Table 3 variant the YAML lists.",
    )
    def lgcd_model(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.io import read_parquet
        from lgcd_core.model.batches import Inputs
        from lgcd_core.model.train_lgcd import train_lgcd_runs

        pseudo = read_parquet(stage_path(cfg, "pseudo_overlap_sequences", "pseudo_overlap_sequences.parquet"))
        work = cache_dir(cfg, "lgcd_model_run")
        stats = train_lgcd_runs(cfg, Inputs(*sequence_inputs(cfg), pseudo_overlap=pseudo), cfg.stage_dir("pretrained_encoders"),
                                work, resolve_device(cfg.device), log=context.log.info)
        _publish(work, out_dir)
        return _result({"runs": sorted(stats), **stats}, out_dir, "LGCD training loss")

    @stage_asset(
        cfg, "baselines", deps=["sequences"], group="model", kinds={"pytorch", "safetensors"}, gpu=True,
        description="The SASRec baselines listed in evaluation.baselines (single-domain: one model per domain; mixed: "
        "one over all items), per seed of evaluation.seeds, early-stopped on valid NDCG@10 against the same stored "
        "valid candidates the evaluation draws.",
    )
    def baselines(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.evaluation.candidates import draw_candidates
        from lgcd_core.io import read_parquet, write_parquet
        from lgcd_core.model.batches import Inputs
        from lgcd_core.model.train_sasrec import train_baselines

        tables = ("items.parquet", "sequences.parquet", "eval_cases.parquet")
        inputs = Inputs(*(read_parquet(stage_path(cfg, "sequences", name)) for name in tables))
        ev = cfg.evaluation
        work = cache_dir(cfg, "baselines_run")
        work.mkdir(parents=True, exist_ok=True)
        valid = draw_candidates(inputs.eval_cases, inputs.items, "valid", ev.n_negatives, ev.candidate_seed)
        write_parquet(valid, work / "candidates_valid.parquet")
        stats = train_baselines(cfg, inputs, valid, work, resolve_device(cfg.device), log=context.log.info)
        _publish(work, out_dir)
        return dg.MaterializeResult(metadata=stats_metadata({"runs": sorted(stats), **stats}))

    return [pretrained_encoders, lgcd_model, baselines]
