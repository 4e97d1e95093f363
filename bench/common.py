"""Shared by the benchmarks: an isolated pipeline workspace, and publishing a results table."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def isolated_workspace(work: Path, configs: dict[str, dict]) -> dict[str, str]:
    """Under ``work``: a datasets folder holding these YAMLs, a fresh data root and Dagster instance.

    Returns the environment variables that point the pipeline (and `lgcd`) at them.
    """
    (work / "datasets").mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        (work / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return {"LGCD_DATASETS_DIR": str(work / "datasets"), "LGCD_DATA_ROOT": str(work / "data"),
            "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def publish(text: str, name: str) -> Path:
    """Print a results table and write it to ``bench/results/<name>``."""
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(text)
    return path


def set_field(config: dict, path: str, value) -> None:
    """Set ``section.field`` (any depth) of a YAML dict, creating missing sections."""
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def apply_assignment(config: dict, assignment: str) -> str:
    """Apply one ``section.field=value`` (value parsed as YAML); returns it as a deviation line."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise SystemExit(f"--set {assignment!r}: expected section.field=value")
    value = yaml.safe_load(raw)
    set_field(config, path, value)
    return f"{path} = {value!r} (override)"


def lgcd_overrides(assignments: list[str]) -> dict:
    """``--set lgcd.section.field=value`` assignments as dotted LGCDConfig fields (``{'section.field': value}``)."""
    overrides: dict = {}
    for assignment in assignments:
        holder: dict = {}
        apply_assignment(holder, assignment)
        lgcd = holder.get("lgcd")
        if not isinstance(lgcd, dict):
            raise SystemExit(f"--set {assignment!r}: only lgcd.* fields apply to the rows")
        overrides.update(_flatten(lgcd))
    return overrides


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def metric_per_seed(ranks, metric: str = "NDCG", k: int = 10, **equal) -> list[float]:
    """Per-seed mean of ``metric@k`` (``HR`` or ``NDCG``), in seed order, over the rows of a per-case rank table
    (the columns of the evaluation stage's ``ranks.parquet``) whose columns equal ``equal``, e.g.
    ``model="lgcd", target_domain="A"``."""
    import pyarrow.compute as pc
    import torch

    from lgcd_core.protocol.metrics import hit_rate, ndcg

    for column, value in equal.items():
        ranks = ranks.filter(pc.equal(ranks[column], value))
    per_case = hit_rate if metric == "HR" else ndcg
    out = []
    for seed in sorted(set(ranks.column("seed").to_pylist())):
        r = ranks.filter(pc.equal(ranks["seed"], seed)).column("rank").to_numpy()
        out.append(float(per_case(torch.from_numpy(r), k).mean()))
    return out


def sync_stages(times_path: Path) -> dict[str, float]:
    """Materialize every missing or stale stage of the workspace the environment points at.

    One run per stage, in topological order; each stage's wall time is added to ``times_path`` (JSON)
    as soon as it finishes, so a resumed run keeps the times of earlier invocations.
    """
    import dagster as dg

    from lgcd_core.config import discover_datasets
    from lgcd_pipeline.definitions import build_definitions
    from lgcd_pipeline.runs import release_orphaned_runs
    from lgcd_pipeline.staleness import plan_sync

    defs = build_definitions(discover_datasets())
    instance = dg.DagsterInstance.get()
    for run_id in release_orphaned_runs(instance):  # a killed earlier invocation would block the gpu pool
        print(f"released run {run_id}: its process was killed", flush=True)
    seconds = json.loads(times_path.read_text()) if times_path.exists() else {}
    plan = plan_sync(instance, defs.resolve_asset_graph())
    for key in plan.keys:
        started = time.perf_counter()
        print(f"== {key.to_user_string()} ({plan.reasons[key]})", flush=True)
        dg.materialize(defs.assets, selection=[key], instance=instance)
        seconds[key.path[1]] = time.perf_counter() - started
        times_path.write_text(json.dumps(seconds, indent=1))
    return seconds


def mean_std(values: list[float]) -> str:
    """'0.2713' for one seed, '0.2713 ± 0.0042' (sample std over seeds, as report.md) for several, '–' for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
