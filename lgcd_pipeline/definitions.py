"""Dagster definitions: one copy of the LGCD asset graph per `datasets/<name>.yaml`.

Loading this module reads the YAML files and the stage source files (for code versions) only; it
never imports torch, transformers or faiss, so the UI and the CLI start fast.
"""

from __future__ import annotations

import dagster as dg

from lgcd_core.config import DatasetConfig, discover_datasets
from lgcd_pipeline.assets import data, evaluation, language, model, serving


def dataset_assets(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    """Every stage of one dataset, keyed `<name>/<stage>`."""
    return [*data.build(cfg), *language.build(cfg), *model.build(cfg), *evaluation.build(cfg), *serving.build(cfg)]


def build_definitions(configs: list[DatasetConfig]) -> dg.Definitions:
    """Every dataset's graph; a run (UI, ``dagster asset materialize``) executes its steps with the multiprocess
    executor, so two datasets' graphs materialize at once while the ``gpu`` pool (``dagster_home/dagster.yaml``)
    lets one GPU stage run at a time."""
    from lgcd_core.stages import STAGES
    from lgcd_pipeline.stage import files_check

    return dg.Definitions(assets=[asset for cfg in configs for asset in dataset_assets(cfg)],
                          asset_checks=[files_check(cfg, stage) for cfg in configs for stage in STAGES],
                          executor=dg.multiprocess_executor)


defs = build_definitions(discover_datasets())
