"""The Dagster definitions: one graph per dataset, cheap to import, every asset documented."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
from conftest import TINY_YAML

from lgcd_core import stages
from lgcd_core.config import DatasetConfig
from lgcd_pipeline.definitions import build_definitions, defs

STAGES = stages.NAMES


def test_importing_definitions_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, lgcd_pipeline.definitions\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_graph_per_dataset_with_prefixed_keys() -> None:
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    for name in ("demo", "food_kitchen", "movie_book", "amazon_movies_books"):
        assert {f"{name}/{stage}" for stage in STAGES} <= keys


def test_every_asset_has_description_group_kinds_and_code_version() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        dataset, _, kind = node.group_name.partition("/")  # nested groups: one box per dataset in the UI
        assert dataset == key.path[0] and kind in stages.GROUPS, key
        assert node.kinds, key
        assert node.code_version, key


def test_dependencies_stay_within_a_dataset() -> None:
    cfg = DatasetConfig.model_validate({"name": "tiny", **TINY_YAML})
    graph = build_definitions([cfg]).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert all(parent.path[0] == "tiny" for parent in graph.get(key).parent_keys)
    evaluation = graph.get(next(k for k in graph.get_all_asset_keys() if k.path[1] == "evaluation"))
    assert len(graph.get_ancestor_asset_keys(evaluation.key)) == len(STAGES) - 2  # all but itself and recommendations
    recommendations = graph.get(dg.AssetKey(["tiny", "recommendations"]))
    ancestors = {key.path[1] for key in graph.get_ancestor_asset_keys(recommendations.key)}
    assert "lgcd_model" in ancestors and not ancestors & {"evaluation", "baselines"}  # serving never waits for scores


def test_the_graph_is_the_registry() -> None:
    """Every stage of `lgcd_core.stages` is one asset per dataset with exactly the registry's deps and group."""
    cfg = DatasetConfig.model_validate({"name": "tiny", **TINY_YAML})
    graph = build_definitions([cfg]).resolve_asset_graph()
    assert {key.path[1] for key in graph.get_all_asset_keys()} == set(STAGES)
    for stage in stages.STAGES:
        node = graph.get(dg.AssetKey(["tiny", stage.name]))
        assert {parent.path[1] for parent in node.parent_keys} == {d.name for d in stage.deps}, stage
        assert node.group_name == f"tiny/{stage.group}", stage
        assert node.metadata["stage"] == stage.name


def test_a_stage_publishes_only_the_runs_its_configuration_asks_for(tmp_path):
    """A folder an earlier, failed configuration left in the work folder is not published (issue 24 point 8)."""
    from lgcd_pipeline.assets.model import _publish

    work, out = tmp_path / "work", tmp_path / "stage"
    for rel in ("lgcd.json", "checkpoint.pt", "lgcd_seed1/lgcd.json", "lgcd_seed1/checkpoint.pt",
                "lgcd_seed18446744073709551616/lgcd.json"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(rel)
    (out / "lgcd_seed7").mkdir(parents=True)  # a run of an earlier configuration, already published
    _publish(work, out, [work, work / "lgcd_seed1"])
    published = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert published == ["lgcd.json", "lgcd_seed1/lgcd.json"] and not work.exists()
