"""Helpers for tests that run the real Dagster pipeline on the tiny dataset."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from lgcd_core import stages
from lgcd_core.config import discover_datasets
from lgcd_pipeline.definitions import build_definitions

DATA_STAGES = tuple(s.name for s in stages.in_group("data"))
LANGUAGE_STAGES = tuple(s.name for s in stages.in_group("language"))
MODEL_STAGES = tuple(s.name for s in stages.in_group("model"))


def tiny_defs() -> dg.Definitions:
    """Definitions for the datasets in $LGCD_DATASETS_DIR (re-read each call, as a reload would)."""
    return build_definitions(discover_datasets())


def keys(dataset: str, stages) -> list[dg.AssetKey]:
    return [dg.AssetKey([dataset, stage]) for stage in stages]


def materialize(stages, instance: dg.DagsterInstance, dataset: str = "tiny", raise_on_error: bool = True):
    defs = tiny_defs()
    return dg.materialize(defs.assets, selection=keys(dataset, stages), instance=instance, raise_on_error=raise_on_error)


def materialized_keys(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """Asset keys materialized by one run, read from the instance's event log."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records}


def missing_outputs(dataset_dir: Path, names: Iterable[str]) -> list[str]:
    """The files the registry declares for stages ``names`` that a run left nowhere in their folders.

    A pattern (``candidates_{split}.parquet``) needs one match; a file of a model trained per seed or
    variant may sit in a ``<model>_seed<k>/`` folder of the stage.
    """
    return [f"{output.stage}/{output}" for name in names for output in stages.stage(name).files.values()
            if not any((dataset_dir / output.stage).rglob(output.glob()))]
