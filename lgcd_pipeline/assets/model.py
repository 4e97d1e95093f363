"""Model stages: every training of the pipeline happens here, never in evaluation.

- ``pretrained_encoders``: per-domain ID + text sequence encoders (eq. 1-3).
- ``lgcd_model``: the LGCD model, for every seed of ``evaluation.seeds`` and every Table 3 variant
  the YAML lists (the default model at the top of the stage folder, the others in ``<model>_seed<k>/``).
- ``baselines``: the listed SASRec baselines, per seed.

Training runs in a work folder under ``datasets/<name>/cache/<stage>_run/`` that keeps the per-epoch
checkpoints of each run, so a crashed materialization resumes where it stopped; the finished models
are then published into the stage folder atomically and the work folder is removed. Pre-training and
LGCD training run on ``train_processes`` data-parallel processes (:mod:`lgcd_core.model.launch`: in the
step's process for 1, ``accelerate launch`` for more).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_core.stages import BASELINES, LGCD_MODEL, PRETRAINED_ENCODERS, PSEUDO_OVERLAP_SEQUENCES, SEQUENCES
from lgcd_pipeline.metadata import image_metadata, stats_metadata
from lgcd_pipeline.stage import sequence_inputs, stage_asset, work_dir


def _publish(work: Path, out_dir: Path, runs: list[Path] = ()) -> None:
    """Publish a finished work folder into the stage folder, then remove it.

    Only what this configuration asks for is published: the work folder's own files and the run folders
    ``runs`` (checkpoints left out). A folder left in the work folder by an earlier, failed or since
    removed configuration (another seed, a dropped variant) is not.
    """
    from lgcd_core.io import atomic_dir

    skip = shutil.ignore_patterns("checkpoint*.pt")
    with atomic_dir(out_dir) as tmp:
        for path in work.iterdir():
            if path.is_file() and not skip(str(work), [path.name]):
                shutil.copy2(path, tmp / path.name)
        for run in runs:
            if run != work:
                shutil.copytree(run, tmp / run.relative_to(work), ignore=skip)
    shutil.rmtree(work)


def _result(stats: dict, loss_curve: Path | None = None, title: str = "") -> dg.MaterializeResult:
    metadata = stats_metadata(stats)
    if loss_curve is not None and loss_curve.exists():
        metadata["loss_curve"] = image_metadata(loss_curve, title)
    return dg.MaterializeResult(metadata=metadata)


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, PRETRAINED_ENCODERS, kinds={"pytorch", "safetensors"}, gpu=True,
        description="Per domain: SASRec-style ID and text sequence encoders fused by a linear layer (eq. 1-2), "
        "pre-trained with full-softmax next-item cross-entropy (eq. 3), early-stopped on valid.",
    )
    def pretrained_encoders(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.model.batches import Inputs
        from lgcd_core.model.launch import train
        from lgcd_core.model.pretrain import pretrain_encoders

        work = work_dir(cfg, PRETRAINED_ENCODERS)
        stats = train(pretrain_encoders, cfg, Inputs(*sequence_inputs(cfg)), work, resolve_device(cfg.device),
                      log=context.log.info)
        _publish(work, out_dir)
        return _result(stats, out_dir / PRETRAINED_ENCODERS.loss_curve, "pre-training loss")

    @stage_asset(
        cfg, LGCD_MODEL, kinds={"pytorch", "safetensors"}, gpu=True,
        description="The conditional diffusion preference generator with guesser, λ-start reverse process and MoE "
        "fusion, trained with cyclic overlap batches in both directions (eq. 7-27); one model per seed of "
        "evaluation.seeds and per Table 3 variant the YAML lists.",
    )
    def lgcd_model(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.data.contracts import check_items
        from lgcd_core.device import resolve_device
        from lgcd_core.io import read_parquet
        from lgcd_core.model.batches import Inputs
        from lgcd_core.model.launch import train
        from lgcd_core.model.runs import all_lgcd_runs, lgcd_run_dir
        from lgcd_core.model.train_lgcd import LOSS_CURVE, train_lgcd_runs
        from lgcd_core.protocol.settings import item_domains

        pseudo = read_parquet(PSEUDO_OVERLAP_SEQUENCES.table.path(cfg))
        inputs = Inputs(*sequence_inputs(cfg), pseudo_overlap=pseudo)
        check_items(pseudo, "items", item_domains(inputs.items), PSEUDO_OVERLAP_SEQUENCES.table.path(cfg),
                    domain_column="target_domain", only="is_pseudo")  # inserted items lie in the row's target domain
        work = work_dir(cfg, LGCD_MODEL)
        stats = train(train_lgcd_runs, cfg, inputs, work,
                      resolve_device(cfg.device), context.log.info, encoders_dir=PRETRAINED_ENCODERS.path(cfg))
        _publish(work, out_dir, [lgcd_run_dir(cfg, work, name, seed) for name, seed, _ in all_lgcd_runs(cfg)])
        return _result({"runs": sorted(stats), **stats}, out_dir / LOSS_CURVE, "LGCD loss and valid NDCG@10")

    @stage_asset(
        cfg, BASELINES, kinds={"pytorch", "safetensors"}, gpu=True,
        description="The SASRec baselines listed in evaluation.baselines (single-domain: one model per domain; mixed: "
        "one over all items; sasrec_*: evaluation.sasrec, softmax; sasrec_bce_*: evaluation.sasrec_bce, the public "
        "SASRec's BCE recipe), per seed of evaluation.seeds, early-stopped on valid NDCG@10 against the same stored "
        "valid candidates the evaluation draws.",
    )
    def baselines(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.io import read_parquet, write_parquet
        from lgcd_core.model.batches import Inputs
        from lgcd_core.model.runs import run_dir
        from lgcd_core.model.train_sasrec import LOSS_CURVE, train_baselines
        from lgcd_core.protocol.candidates import draw_candidates

        inputs = Inputs(*(read_parquet(f.path(cfg)) for f in (SEQUENCES.items, SEQUENCES.sequences, SEQUENCES.eval_cases)))
        ev = cfg.evaluation
        work = work_dir(cfg, BASELINES)
        work.mkdir(parents=True, exist_ok=True)
        valid = draw_candidates(inputs.eval_cases, inputs.items, "valid", ev.n_negatives, ev.candidate_seed)
        write_parquet(valid, work / BASELINES.candidates.format(split="valid"))
        stats = train_baselines(cfg, inputs, valid, work, resolve_device(cfg.device), log=context.log.info)
        _publish(work, out_dir, [run_dir(work, name, seed) for seed in ev.seeds for name in ev.sasrec_baselines])
        return _result({"runs": sorted(stats), **stats}, out_dir / LOSS_CURVE, "baselines' loss and valid NDCG@10")

    return [pretrained_encoders, lgcd_model, baselines]
