"""Runs left behind as STARTED by a process that no longer exists.

A run whose process is killed with SIGKILL (or dies with its machine) never reports an end, so it
keeps its claim on a concurrency pool. The GPU stages share the pool ``gpu`` with one slot, and every
later run of one of them would wait forever ("Step blocked by limit for pool gpu"). Runs started in
process (`lgcd sync`, `dagster asset materialize`, the benches) have no daemon watching them; this
module is that watch: a STARTED run whose last recorded process id is not alive on this machine is
marked failed and its pool slots are freed.

It assumes the instance is local to this machine (the repository's sqlite `dagster_home/`): a run
launched from another host that shares the instance would look dead here.
"""

from __future__ import annotations

import os

import dagster as dg

ACTIVE = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process id of the last event the run recorded, if any."""
    for entry in reversed(instance.all_logs(run_id)):
        if entry.dagster_event is not None and entry.dagster_event.pid is not None:
            return entry.dagster_event.pid
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def orphaned_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Active runs whose process is gone."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE)))
    return [r for r in runs if (pid := run_pid(instance, r.run_id)) is not None and not pid_alive(pid)]


def release_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every orphaned run failed and free its pool slots; returns their run ids."""
    released = []
    for run in orphaned_runs(instance):
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        instance.report_run_failed(run, message="its process no longer exists (released by lgcd)")
        released.append(run.run_id)
    return released
