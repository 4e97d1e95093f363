"""Helpers for tests that run the real Dagster pipeline on the tiny dataset."""

from __future__ import annotations

import dagster as dg

from lgcd_core.config import discover_datasets
from lgcd_pipeline.definitions import build_definitions

DATA_STAGES = ("raw_interactions", "raw_items", "filtered_interactions", "sequences")
LANGUAGE_STAGES = ("item_text_embeddings", "pseudo_texts", "grounded_items", "pseudo_overlap_sequences")
MODEL_STAGES = ("pretrained_encoders", "lgcd_model", "baselines")


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
