"""Stages in parallel: a run executes its steps with the multiprocess executor, and the `gpu` pool of
`dagster_home/dagster.yaml` admits one GPU stage at a time, whichever dataset's graph it belongs to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import REPO_ROOT, TINY_YAML, write_dataset_yaml

from lgcd_core.config import DatasetConfig
from lgcd_pipeline.definitions import build_definitions
from lgcd_pipeline.stage import FILES_CHECK, GPU_POOL

GPU_STAGES = {"item_text_embeddings", "pseudo_texts", "pretrained_encoders", "lgcd_model", "baselines", "evaluation", "recommendations"}


def _tiny(name: str) -> DatasetConfig:
    return DatasetConfig.model_validate({"name": name, **TINY_YAML})


def _instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return dg.DagsterInstance.from_config(str(home))


def test_runs_use_the_multiprocess_executor_and_the_gpu_stages_one_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("LGCD_GPU_POOL", "1")  # as on a machine with a GPU
    defs = build_definitions([_tiny("tiny_a"), _tiny("tiny_b")])
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == dg.multiprocess_executor.name
    pools = {a.key.path[1]: a.op.pool for a in defs.assets}
    assert {stage for stage, pool in pools.items() if pool == GPU_POOL} == GPU_STAGES
    assert set(pools.values()) == {GPU_POOL, None}
    with _instance(tmp_path / "home") as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # one GPU stage at a time
        assert instance.event_log_storage.supports_global_concurrency_limits
        assert instance.run_monitoring_enabled  # the daemon releases the slots of a dead run
    monkeypatch.setenv("LGCD_GPU_POOL", "0")  # as on a machine without a GPU: no stage waits on a pool
    assert {a.op.pool for a in build_definitions([_tiny("tiny_a")]).assets} == {None}


def _step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Step key -> (start, end) wall-clock times, from the run's event log."""
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = entry.timestamp
    return {key: (starts[key], ends[key]) for key in starts}


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.slow
def test_two_datasets_materialize_at_once_one_gpu_stage_at_a_time(tmp_path):
    """`dagster asset materialize` of two tiny datasets up to pre-training (a few minutes on 2 CPU cores)."""
    datasets = tmp_path / "datasets"
    for name in ("tiny_a", "tiny_b"):
        write_dataset_yaml(datasets, name, {**TINY_YAML, "source": {**TINY_YAML["source"], "path": str(tmp_path / "raw" / name)}})
    home = tmp_path / "home"
    env = {**os.environ, "LGCD_DATASETS_DIR": str(datasets), "LGCD_DATA_ROOT": str(tmp_path / "data"), "DAGSTER_HOME": str(home),
           "LGCD_GPU_POOL": "1"}
    with _instance(home):
        pass
    subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "lgcd_pipeline.definitions",
                    "--select", "*tiny_a/pretrained_encoders,*tiny_b/pretrained_encoders"], env=env, check=True, cwd=REPO_ROOT)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        steps = _step_spans(instance, run.run_id)
    spans = {key: span for key, span in steps.items() if not key.endswith(FILES_CHECK)}  # the stages, not their checks
    assert len(steps) == 2 * len(spans)  # every selected stage's files check ran too
    gpu = [span for key, span in spans.items() if key.split("__")[-1] in GPU_STAGES]
    assert len(spans) == 12 and len(gpu) == 4  # sequences' 4 stages + 2 GPU stages, per dataset
    assert not any(_overlap(a, b) for i, a in enumerate(gpu) for b in gpu[i + 1:])
    a_steps = [span for key, span in spans.items() if key.startswith("tiny_a")]
    b_steps = [span for key, span in spans.items() if key.startswith("tiny_b")]
    assert any(_overlap(a, b) for a in a_steps for b in b_steps)  # the two graphs ran at once
