"""The stage registry: one declaration per stage, in graph order, with the public file names of the design."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
from conftest import TINY_YAML

from lgcd_core import stages
from lgcd_core.config import STAGE_CONFIG_KEYS, DatasetConfig
from lgcd_pipeline import versions


def test_stages_are_unique_in_graph_order_and_apart_from_the_cache() -> None:
    assert len(set(stages.NAMES)) == len(stages.STAGES)
    for i, stage in enumerate(stages.STAGES):
        assert all(stages.NAMES.index(d.name) < i for d in stage.deps), stage  # upstream first
        assert stages.stage(stage.name) is stage
        assert all(output.stage == stage.name for output in stage.files.values())
        assert len(set(stage.files.values())) == len(stage.files), stage
    assert stages.CACHE not in stages.NAMES
    assert [s.group for s in stages.STAGES] == sorted((s.group for s in stages.STAGES), key=stages.GROUPS.index)
    with pytest.raises(KeyError, match="raw_items"):
        stages.stage("recommendation")


def test_public_file_names_are_those_of_the_design() -> None:
    """docs/data_contracts.md names these files; users' scripts read them."""
    public = {
        stages.SEQUENCES.items: "sequences/items.parquet",
        stages.SEQUENCES.sequences: "sequences/sequences.parquet",
        stages.SEQUENCES.eval_cases: "sequences/eval_cases.parquet",
        stages.PSEUDO_TEXTS.table: "pseudo_texts/pseudo_texts.parquet",
        stages.GROUNDED_ITEMS.table: "grounded_items/grounded_items.parquet",
        stages.EVALUATION.metrics: "evaluation/metrics.parquet",
        stages.EVALUATION.comparisons: "evaluation/comparisons.parquet",
        stages.EVALUATION.report: "evaluation/report.md",
    }
    for output, path in public.items():
        assert f"{output.stage}/{output}" == path


def test_each_stage_is_configured_by_the_keys_it_declares() -> None:
    assert STAGE_CONFIG_KEYS == {s.name: s.config_keys for s in stages.STAGES}
    cfg = DatasetConfig.model_validate({"name": "tiny", **TINY_YAML})
    for stage in stages.STAGES:
        assert set(cfg.stage_config(stage.name)) == set(stage.config_keys)  # every key resolves in the config


def test_an_output_is_its_file_name_and_finds_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGCD_DATA_ROOT", str(tmp_path))
    cfg = DatasetConfig.model_validate({"name": "tiny", **TINY_YAML})
    items = stages.SEQUENCES.items
    assert items == "items.parquet" and tmp_path / items == tmp_path / "items.parquet"
    assert items.path(cfg) == tmp_path / "tiny" / "sequences" / "items.parquet"
    assert stages.SEQUENCES.path(cfg) == tmp_path / "tiny" / "sequences"
    weights = stages.PRETRAINED_ENCODERS.weights
    assert weights.path(cfg, domain="B") == tmp_path / "tiny" / "pretrained_encoders" / "encoder_B.safetensors"
    assert weights.glob() == "encoder_*.safetensors" and items.glob() == "items.parquet"
    copy = pickle.loads(pickle.dumps(items))
    assert copy == items and copy.stage == "sequences"
    # the same file name in two stages: the stage tells them apart
    assert stages.RAW_ITEMS.table == items and stages.RAW_ITEMS.table.path(cfg) != items.path(cfg)


def test_a_file_name_may_not_hide_a_stage_attribute() -> None:
    with pytest.raises(ValueError, match="clash"):
        stages.Stage("x", "data", (), (), deps="deps.json")
    with pytest.raises(ValueError, match="group"):
        stages.Stage("x", "training", (), ())


@pytest.mark.parametrize(("source", "stage"), [
    ("stage_asset(cfg, stages.RAW_ITEMS, kinds=set())", "raw_items"),
    ("stage_asset(cfg, EVALUATION, kinds=set())", "evaluation"),
    ("dg.asset(key='x')", None),
])
def test_code_versions_find_the_stage_of_a_decorator(source: str, stage: str | None) -> None:
    assert versions._stage_of(ast.parse(source, mode="eval").body) == stage


@pytest.mark.parametrize("source", ["stage_asset(cfg, 'raw_items')", "stage_asset(cfg, stages.NAMES)", "stage_asset(cfg)"])
def test_code_versions_refuse_a_stage_that_is_not_a_registry_entry(source: str) -> None:
    with pytest.raises(ValueError, match="lgcd_core.stages"):
        versions._stage_of(ast.parse(source, mode="eval").body)
