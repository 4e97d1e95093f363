"""A run killed with SIGKILL keeps its pool slot until lgcd_pipeline.runs releases it."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
from conftest import REPO_ROOT

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
