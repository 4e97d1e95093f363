"""A run killed with SIGKILL: on a machine without a GPU the pipeline's stages hold no pool, so the next
`dagster asset materialize` runs at once; where the pool applies, a dead run keeps its slot until
lgcd_pipeline.runs (or the daemon's run monitoring) releases it."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest
from conftest import REPO_ROOT, TINY_YAML, write_dataset_yaml

from lgcd_pipeline.runs import orphaned_runs, release_orphaned_runs

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dagster as dg

    marker, mode = Path(sys.argv[1]), sys.argv[2]

    @dg.asset(pool="gpu")
    def on_the_gpu_pool() -> None:
        marker.write_text("started")
        if mode == "hang":
            time.sleep(600)

    dg.materialize([on_the_gpu_pool], instance=dg.DagsterInstance.get())
    print("done")
""")


def _start(tmp_path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    return subprocess.Popen([sys.executable, str(tmp_path / "job.py"), str(tmp_path / f"marker_{mode}"), mode],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_stops_blocking_the_gpu_pool_once_released(tmp_path):
    (tmp_path / "home").mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", tmp_path / "home" / "dagster.yaml")  # gpu pool: 1 slot
    (tmp_path / "job.py").write_text(SCRIPT)
    hung = _start(tmp_path, "hang")
    deadline = time.time() + 120
    while not (tmp_path / "marker_hang").exists():
        assert time.time() < deadline and hung.poll() is None, hung.stdout.read() if hung.poll() is not None else "timeout"
        time.sleep(0.2)
    hung.send_signal(signal.SIGKILL)
    hung.wait()

    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    [orphan] = orphaned_runs(instance)
    blocked = _start(tmp_path, "quick")  # waits on the slot the dead run still holds
    time.sleep(8)
    assert blocked.poll() is None and not (tmp_path / "marker_quick").exists()

    assert release_orphaned_runs(instance) == [orphan.run_id]
    assert blocked.wait(timeout=120) == 0, blocked.stdout.read()
    assert (tmp_path / "marker_quick").exists()
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    assert orphaned_runs(instance) == []


def _step_started(home, step: str) -> bool:
    if not (home / "history").exists():
        return False
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return any(entry.dagster_event is not None and entry.dagster_event.step_key == step
                   and entry.dagster_event.event_type == dg.DagsterEventType.STEP_START
                   for run in instance.get_runs() for entry in instance.all_logs(run.run_id))


def test_sigkill_during_a_real_materialization_then_materialize_again_succeeds(tmp_path):
    """kill -9 while a GPU stage of the real pipeline runs, then `dagster asset materialize` of it: it finishes."""
    from lgcd_pipeline.stage import gpu_pool_applies

    if gpu_pool_applies():
        pytest.skip("this machine applies the gpu pool: a dead run's slot is released by lgcd sync or the daemon")
    datasets, home = tmp_path / "datasets", tmp_path / "home"
    write_dataset_yaml(datasets, "tiny", {**TINY_YAML, "source": {**TINY_YAML["source"], "path": str(tmp_path / "raw")}})
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "LGCD_DATASETS_DIR": str(datasets), "LGCD_DATA_ROOT": str(tmp_path / "data"), "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "lgcd_pipeline.definitions",
               "--select", "*tiny/item_text_embeddings"]
    first = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 240
    while not _step_started(home, "tiny__item_text_embeddings"):
        assert time.time() < deadline and first.poll() is None, "the first run never reached item_text_embeddings"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the run's process and its step processes, as kill -9 of a terminal's job
    first.wait()
    again = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "blocked by limit for pool" not in again.stderr
    assert (tmp_path / "data" / "tiny" / "item_text_embeddings").is_dir()
