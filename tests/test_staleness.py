"""Staleness: editing one YAML section marks that stage and its downstream stale, nothing upstream."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml
from pipeline_helpers import DATA_STAGES, keys, materialize, tiny_defs

from lgcd_pipeline.staleness import direct_status, plan_sync


def _edit_yaml(tiny_env: Path, section: str, values: dict) -> None:
    path = tiny_env / "datasets" / "tiny.yaml"
    content = yaml.safe_load(path.read_text())
    content[section] = {**content.get(section, {}), **values}
    path.write_text(yaml.safe_dump(content))


def test_changing_k_core_marks_filtered_and_downstream_stale(tiny_env: Path) -> None:
    instance = dg.DagsterInstance.get()
    assert materialize(DATA_STAGES, instance).success
    graph = tiny_defs().resolve_asset_graph()
    assert plan_sync(instance, graph, set(keys("tiny", DATA_STAGES))).keys == []

    _edit_yaml(tiny_env, "filter", {"k_core": 3})
    graph = tiny_defs().resolve_asset_graph()
    status, causes = direct_status(instance, graph, dg.AssetKey(["tiny", "filtered_interactions"]))
    assert status.name == "STALE" and any("new code version" in c for c in causes)
    for upstream in ("raw_interactions", "raw_items"):
        assert direct_status(instance, graph, dg.AssetKey(["tiny", upstream]))[0].name == "FRESH"

    plan = plan_sync(instance, graph, set(keys("tiny", DATA_STAGES)))
    assert [k.to_user_string() for k in plan.keys] == ["tiny/filtered_interactions", "tiny/sequences"]

    # once re-materialized, Dagster itself sees sequences stale through the new data version
    assert materialize(["filtered_interactions"], instance).success
    status, causes = direct_status(instance, tiny_defs().resolve_asset_graph(), dg.AssetKey(["tiny", "sequences"]))
    assert status.name == "STALE" and any("dependency data version" in c for c in causes)
