"""What needs re-materializing, built on Dagster's own stale-status resolver.

Dagster marks an asset STALE when its own code version or an input's data version changed since its
last materialization, and MISSING when it was never materialized. That status is not transitive:
right after a YAML edit only the edited stage is STALE, while its downstream still looks FRESH
until the stage is re-materialized. :func:`plan_sync` closes the set under "downstream of", which is
what a user means by "re-run what this change invalidates".

Dagster's versions say nothing about the files themselves: a stage folder deleted, moved or edited by hand
after its materialization still looks FRESH to it. Every stage records what it wrote (``output_files``,
:data:`lgcd_pipeline.stage.MANIFEST`); :func:`file_status` compares the folder with it, and a missing folder
counts as MISSING, a missing or changed file as STALE, in ``lgcd status`` and ``lgcd sync`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime


@dataclass
class SyncPlan:
    """Assets to re-materialize, in topological order, with the reason for each."""

    keys: list[dg.AssetKey] = field(default_factory=list)
    reasons: dict[dg.AssetKey, str] = field(default_factory=dict)


def stale_resolver(instance: dg.DagsterInstance, asset_graph: AssetGraph) -> CachingStaleStatusResolver:
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def file_status(instance: dg.DagsterInstance, key: dg.AssetKey) -> tuple[StaleStatus, list[str]] | None:
    """MISSING or STALE with the files named when the asset's folder is not what its last materialization wrote."""
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.io import manifest_changes
    from lgcd_pipeline.stage import MANIFEST

    event = instance.get_latest_materialization_event(key)
    entry = event.asset_materialization.metadata.get(MANIFEST) if event and event.asset_materialization else None
    if entry is None:
        return None
    folder = load_dataset_config(dataset_path(key.path[0])).stage_dir(key.path[1])
    changes = manifest_changes(folder, entry.value)
    if not changes:
        return None
    return (StaleStatus.MISSING if not folder.is_dir() else StaleStatus.STALE), changes[:3] + (
        [f"and {len(changes) - 3} more"] if len(changes) > 3 else [])


def direct_status(instance: dg.DagsterInstance, asset_graph: AssetGraph, key: dg.AssetKey) -> tuple[StaleStatus, list[str]]:
    """The (non-transitive) status of one asset and its causes in words: Dagster's, or the files' when they differ."""
    resolver = stale_resolver(instance, asset_graph)
    status = resolver.get_status(key)
    if status != StaleStatus.MISSING and (files := file_status(instance, key)) is not None:
        return files
    causes = [f"{c.asset_key.to_user_string()} {c.reason}" for c in resolver.get_stale_causes(key)]
    return status, causes


def plan_sync(instance: dg.DagsterInstance, asset_graph: AssetGraph, scope: set[dg.AssetKey] | None = None) -> SyncPlan:
    """Stale or missing assets in ``scope`` (default: all) and everything downstream of them."""
    resolver = stale_resolver(instance, asset_graph)
    scope = scope if scope is not None else set(asset_graph.get_all_asset_keys())
    plan = SyncPlan()
    for key in asset_graph.toposorted_asset_keys:
        if key not in scope:
            continue
        status = resolver.get_status(key)
        stale_parents = sorted(p.to_user_string() for p in asset_graph.get(key).parent_keys if p in plan.reasons)
        files = file_status(instance, key) if status != StaleStatus.MISSING else None
        if status == StaleStatus.MISSING:
            plan.reasons[key] = "never materialized"
        elif files is not None:
            plan.reasons[key] = "; ".join(files[1])
        elif status == StaleStatus.STALE:
            causes = [f"{c.asset_key.to_user_string()} {c.reason}" for c in resolver.get_stale_root_causes(key)]
            plan.reasons[key] = "; ".join(sorted(set(causes))) or "stale"
        elif stale_parents:
            plan.reasons[key] = "downstream of " + ", ".join(stale_parents)
        else:
            continue
        plan.keys.append(key)
    return plan
