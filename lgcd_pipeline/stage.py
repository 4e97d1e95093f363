"""The one place that turns a (dataset, stage) pair into a Dagster asset.

Every asset of every dataset is made by :func:`stage_asset` from its entry in :mod:`lgcd_core.stages`,
so keys, groups, dependencies, code versions, pools and descriptions follow one rule: key
``<dataset>/<stage>``, group and dependencies (sibling stages of the same dataset) as the registry
declares them, files under ``datasets/<dataset>/<stage>/`` (never passed through an IO manager).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from lgcd_core import stages
from lgcd_core.config import DatasetConfig
from lgcd_core.stages import Stage
from lgcd_pipeline.versions import code_version

GPU_POOL = "gpu"
MANIFEST = "output_files"  # metadata entry: {file: [size, sha256]} of the stage folder as the stage wrote it


def gpu_pool_applies() -> bool:
    """Whether the GPU stages queue on the ``gpu`` pool: on a machine with an NVIDIA GPU, or when forced.

    ``LGCD_GPU_POOL=1`` / ``0`` forces it on / off. On a machine without a GPU the pool would only
    serialise CPU stages, print "Step blocked by limit for pool gpu", and leave a slot held by a run
    whose process was killed; so it is not applied there. Read without importing torch (the driver's
    device list), so loading the definitions stays fast.
    """
    forced = os.environ.get("LGCD_GPU_POOL", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def stage_key(cfg: DatasetConfig, stage: Stage) -> dg.AssetKey:
    return dg.AssetKey([cfg.name, stage.name])


def stage_asset(
    cfg: DatasetConfig,
    stage: Stage,
    *,
    kinds: set[str],
    description: str,
    gpu: bool = False,
    checks: Sequence[tuple[str, str]] = (),
) -> Callable[[Callable[..., dg.MaterializeResult]], dg.AssetsDefinition]:
    """Decorator: ``fn(context, cfg, out_dir)`` becomes the asset ``<cfg.name>/<stage.name>``.

    Its group and dependencies are the registry's (``stage.group``, ``stage.deps``); ``checks`` are
    ``(name, description)`` pairs of asset checks the body reports in its result.
    """
    key = stage_key(cfg, stage)

    def wrap(fn: Callable[..., dg.MaterializeResult]) -> dg.AssetsDefinition:
        @dg.asset(
            key=key,
            deps=[stage_key(cfg, d) for d in stage.deps],
            group_name=f"{cfg.name}/{stage.group}",  # nested group: the UI draws one box (one pipeline) per dataset
            kinds=kinds,
            description=f"{description}\n\nDataset `{cfg.name}` ({cfg.domains.A} / {cfg.domains.B}).",
            code_version=code_version(cfg, stage.name),
            pool=GPU_POOL if gpu and gpu_pool_applies() else None,
            check_specs=[dg.AssetCheckSpec(name, asset=key, description=desc) for name, desc in checks],
            metadata={"dataset": cfg.name, "stage": stage.name, "config": dg.MetadataValue.json(cfg.stage_config(stage.name))},
        )
        def _asset(context) -> dg.MaterializeResult:
            from lgcd_core.io import folder_manifest, recover

            out_dir: Path = stage.path(cfg)
            recover(out_dir.parent)  # the stage folders a killed run left swapped out or half-written
            result = fn(context, cfg, out_dir)
            # what the stage wrote, so `lgcd status` / `lgcd sync` can tell a deleted or edited output (staleness.py)
            manifest = dg.MetadataValue.json(folder_manifest(out_dir))
            return result._replace(metadata={**(result.metadata or {}), MANIFEST: manifest})

        return _asset

    return wrap


FILES_CHECK = "output_files_unchanged"


def files_check(cfg: DatasetConfig, stage: Stage) -> dg.AssetChecksDefinition:
    """An asset check the UI runs without re-materializing ("Execute checks"): does the stage folder still hold
    what its last materialization wrote (the ``output_files`` manifest)? It fails naming what is missing or
    changed; ``lgcd status`` and ``lgcd sync`` read the same manifest (lgcd_pipeline.staleness)."""
    key = stage_key(cfg, stage)

    @dg.asset_check(asset=key, name=FILES_CHECK, description="The stage folder holds what its last materialization wrote.")
    def _check(context) -> dg.AssetCheckResult:
        from lgcd_pipeline.staleness import file_status

        found = file_status(context.instance, key)
        return dg.AssetCheckResult(passed=found is None,
                                   metadata={"changes": dg.MetadataValue.json(found[1] if found else [])})

    return _check


def sequence_inputs(cfg: DatasetConfig):
    """What the model and evaluation stages read: items, sequences, eval cases, item text vectors."""
    import numpy as np

    from lgcd_core.data.contracts import check_sequence_tables
    from lgcd_core.io import read_parquet

    seq = stages.SEQUENCES
    tables = read_parquet(seq.items.path(cfg)), read_parquet(seq.sequences.path(cfg)), read_parquet(seq.eval_cases.path(cfg))
    check_sequence_tables(*tables, seq.items.path(cfg).parent)
    return (*tables, np.load(stages.ITEM_TEXT_EMBEDDINGS.vectors.path(cfg)))


def cache_dir(cfg: DatasetConfig, name: str) -> Path:
    """Caches that must survive re-materialization live beside the stage folders."""
    return cfg.stage_dir(stages.CACHE, name)


def work_dir(cfg: DatasetConfig, stage: Stage) -> Path:
    """Where a training stage trains (checkpoints included) before publishing: ``cache/<stage>_run``."""
    return cache_dir(cfg, f"{stage.name}_run")
