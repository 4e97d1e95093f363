"""The one place that turns a (dataset, stage) pair into a Dagster asset.

Every asset of every dataset is made by :func:`stage_asset`, so keys, groups, code versions, pools
and descriptions follow one rule: key ``<dataset>/<stage>``, dependencies on sibling stages of the
same dataset, files under ``datasets/<dataset>/<stage>/`` (never passed through an IO manager).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_pipeline.versions import code_version

GPU_POOL = "gpu"


def stage_key(cfg: DatasetConfig, stage: str) -> dg.AssetKey:
    return dg.AssetKey([cfg.name, stage])


def stage_asset(
    cfg: DatasetConfig,
    stage: str,
    *,
    deps: Sequence[str],
    group: str,
    kinds: set[str],
    description: str,
    gpu: bool = False,
    checks: Sequence[tuple[str, str]] = (),
) -> Callable[[Callable[..., dg.MaterializeResult]], dg.AssetsDefinition]:
    """Decorator: ``fn(context, cfg, out_dir)`` becomes the asset ``<cfg.name>/<stage>``.

    ``checks`` are ``(name, description)`` pairs of asset checks the body reports in its result.
    """
    key = stage_key(cfg, stage)

    def wrap(fn: Callable[..., dg.MaterializeResult]) -> dg.AssetsDefinition:
        @dg.asset(
            key=key,
            deps=[stage_key(cfg, d) for d in deps],
            group_name=f"{cfg.name}/{group}",  # nested group: the UI draws one box (one pipeline) per dataset
            kinds=kinds,
            description=f"{description}\n\nDataset `{cfg.name}` ({cfg.domains.A} / {cfg.domains.B}).",
            code_version=code_version(cfg, stage),
            pool=GPU_POOL if gpu else None,
            check_specs=[dg.AssetCheckSpec(name, asset=key, description=desc) for name, desc in checks],
            metadata={"dataset": cfg.name, "stage": stage, "config": dg.MetadataValue.json(cfg.stage_config(stage))},
        )
        def _asset(context) -> dg.MaterializeResult:
            from lgcd_core.io import recover

            out_dir: Path = cfg.stage_dir(stage)
            recover(out_dir.parent)  # the stage folders a killed run left swapped out or half-written
            return fn(context, cfg, out_dir)

        return _asset

    return wrap


def stage_path(cfg: DatasetConfig, stage: str, filename: str) -> Path:
    """A file written by an upstream stage."""
    return cfg.stage_dir(stage) / filename


def sequence_inputs(cfg: DatasetConfig):
    """What the model and evaluation stages read: items, sequences, eval cases, item text vectors."""
    import numpy as np

    from lgcd_core.io import read_parquet

    return (
        read_parquet(stage_path(cfg, "sequences", "items.parquet")),
        read_parquet(stage_path(cfg, "sequences", "sequences.parquet")),
        read_parquet(stage_path(cfg, "sequences", "eval_cases.parquet")),
        np.load(stage_path(cfg, "item_text_embeddings", "embeddings.npy")),
    )


def cache_dir(cfg: DatasetConfig, name: str) -> Path:
    """Caches that must survive re-materialization live beside the stage folders."""
    return cfg.stage_dir("cache", name)
