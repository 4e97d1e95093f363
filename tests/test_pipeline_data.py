"""Real Dagster runs of the data stages on a tiny synthetic dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from pipeline_helpers import DATA_STAGES, materialize, missing_outputs

from lgcd_core.stages import RAW_INTERACTIONS, RAW_ITEMS, SEQUENCES


def test_data_stages_materialize_in_process(tiny_env: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(DATA_STAGES, instance)
    assert result.success
    assert missing_outputs(tiny_env / "data" / "tiny", DATA_STAGES) == []  # every file the registry declares
    root = tiny_env / "data" / "tiny" / SEQUENCES.name
    items = pq.read_table(root / SEQUENCES.items)
    assert items["item_idx"].to_pylist() == list(range(1, items.num_rows + 1))
    sequences = pq.read_table(root / SEQUENCES.sequences)
    assert set(sequences["user_type"].to_pylist()) == {"overlap", "A-only", "B-only"}
    assert pq.read_table(root / SEQUENCES.eval_cases).num_rows > 0
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {"k_core_holds", "no_empty_sequence", "ids_in_index", "targets_not_in_training"}
    assert all(c.passed for c in checks)
    metadata = result.asset_materializations_for_node("tiny__sequences")[0].metadata
    assert metadata["dagster/row_count"].value == sequences.num_rows


def test_missing_source_fails_at_first_asset_with_clear_error(tiny_env: Path, tmp_path: Path) -> None:
    from conftest import write_dataset_yaml

    write_dataset_yaml(tiny_env / "datasets", "absent",
                       {"source": {"format": "llmcdsr", "path": str(tmp_path / "nowhere")}, "domains": {"A": "a", "B": "b"}})
    result = materialize([RAW_INTERACTIONS.name], dg.DagsterInstance.ephemeral(), dataset="absent", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    assert "nowhere" in error.cause.message and "FileNotFoundError" in error.cause.cls_name
    assert not (tiny_env / "data" / "absent" / RAW_INTERACTIONS.name).exists()
    # the other dataset is unaffected
    assert materialize([RAW_INTERACTIONS.name], dg.DagsterInstance.ephemeral()).success


def test_dagster_cli_materializes_selected_assets(tiny_env: Path) -> None:
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "asset", "materialize", "-m", "lgcd_pipeline.definitions",
           "--select", "tiny/raw_interactions,tiny/raw_items"]
    proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tiny_env / "data" / "tiny" / RAW_ITEMS.name / RAW_ITEMS.table).exists()
    assert not (tiny_env / "data" / "tiny" / "filtered_interactions").exists()
