"""`lgcd status` / `lgcd sync` tell the truth about files (issue 24 point 2): a stage whose output folder is gone
is MISSING, one whose file was deleted or edited is STALE, naming the file; sync re-runs it and its downstream."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
from pipeline_helpers import DATA_STAGES, materialize, tiny_defs

from lgcd_pipeline.stage import FILES_CHECK
from lgcd_pipeline.staleness import direct_status, plan_sync


def _status(stage: str) -> tuple[str, list[str]]:
    with dg.DagsterInstance.get() as instance:
        state, causes = direct_status(instance, tiny_defs().resolve_asset_graph(), dg.AssetKey(["tiny", stage]))
    return state.name, causes


def _planned() -> dict[str, str]:
    scope = {dg.AssetKey(["tiny", s]) for s in DATA_STAGES}
    with dg.DagsterInstance.get() as instance:
        plan = plan_sync(instance, tiny_defs().resolve_asset_graph(), scope)
    return {k.path[1]: plan.reasons[k] for k in plan.keys}


def test_status_and_sync_read_the_files(tiny_env: Path) -> None:
    with dg.DagsterInstance.get() as instance:
        materialize(DATA_STAGES, instance)
    data = tiny_env / "data" / "tiny"
    assert _status("sequences") == ("FRESH", []) and _planned() == {}

    edited = data / "sequences" / "eval_cases.parquet"  # an output edited by hand: same size, other bytes
    raw = bytearray(edited.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    edited.write_bytes(bytes(raw))
    state, causes = _status("sequences")
    assert state == "STALE" and causes == [f"{edited} changed since it was written"]
    assert list(_planned()) == ["sequences"]  # the data stages in scope; downstream ones would follow

    (data / "filtered_interactions" / "interactions.parquet").unlink()  # one output deleted
    state, causes = _status("filtered_interactions")
    assert state == "STALE" and causes == [f"{data / 'filtered_interactions' / 'interactions.parquet'} is missing"]

    with dg.DagsterInstance.get() as instance:  # the UI's "Execute checks" runs this check: the same verdict
        checks = {c.check_key.asset_key.path[1]: c for c in tiny_defs().asset_checks if c.check_key.name == FILES_CHECK}
        verdicts = {s: checks[s](dg.build_asset_check_context(instance=instance)) for s in ("sequences", "raw_items")}
    assert not verdicts["sequences"].passed and verdicts["raw_items"].passed
    assert str(edited) in str(verdicts["sequences"].metadata["changes"].value)

    shutil.rmtree(tiny_env / "data")  # the data root emptied under a warm instance
    assert _status("raw_interactions")[0] == "MISSING"
    assert list(_planned()) == list(DATA_STAGES)
    lgcd = Path(sys.executable).parent / "lgcd"
    status = subprocess.run([str(lgcd), "status", "--dataset", "tiny"], capture_output=True, text=True, timeout=120)
    line = next(line for line in status.stdout.splitlines() if line.startswith("tiny/raw_interactions"))
    assert "MISSING" in line and "is missing" in line

    with dg.DagsterInstance.get() as instance:  # what lgcd sync does with the plan: rebuild them
        materialize(list(_planned()), instance)
    assert _status("sequences") == ("FRESH", []) and (data / "sequences" / "eval_cases.parquet").exists()
