"""The `lgcd` command: re-run only what is stale, and print a dataset's results.

    lgcd sync [--dataset NAME] [--dry-run]   materialize stale/missing assets and their downstream, once each
                                             (first releasing runs whose process was killed; lgcd_pipeline.runs)
    lgcd status [--dataset NAME]             Dagster's own status of every asset, and why
    lgcd summary --dataset NAME              stage figures and the results table of the last run

The Dagster instance is the repository's `dagster_home/` unless DAGSTER_HOME is set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _instance_and_defs():
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    import dagster as dg

    from lgcd_core.config import discover_datasets
    from lgcd_pipeline.definitions import build_definitions

    return dg.DagsterInstance.get(), build_definitions(discover_datasets())


def _scope(graph, dataset: str | None) -> set:
    keys = set(graph.get_all_asset_keys())
    if dataset is None:
        return keys
    scoped = {k for k in keys if k.path[0] == dataset}
    if not scoped:
        names = sorted({k.path[0] for k in keys})
        raise SystemExit(f"lgcd: no dataset {dataset!r}; known datasets: {', '.join(names)}")
    return scoped


def sync(dataset: str | None, dry_run: bool) -> int:
    import dagster as dg

    from lgcd_pipeline.runs import orphaned_runs, release_orphaned_runs
    from lgcd_pipeline.staleness import plan_sync

    instance, defs = _instance_and_defs()
    if dry_run:
        for run in orphaned_runs(instance):
            print(f"lgcd sync: run {run.run_id} was left running by a dead process; a real sync releases it",
                  file=sys.stderr)
    else:
        for run_id in release_orphaned_runs(instance):
            print(f"lgcd sync: run {run_id} was left running by a dead process: marked failed, pool slots freed",
                  file=sys.stderr)
    graph = defs.resolve_asset_graph()
    plan = plan_sync(instance, graph, _scope(graph, dataset))
    if dry_run:
        for key in plan.keys:
            print(key.to_user_string())
        return 0
    if not plan.keys:
        print("lgcd sync: everything is up to date", file=sys.stderr)
        return 0
    for key in plan.keys:
        print(f"lgcd sync: {key.to_user_string()}: {plan.reasons[key]}", file=sys.stderr)
    result = dg.materialize(defs.assets, selection=plan.keys, instance=instance, raise_on_error=False)
    print(f"lgcd sync: run {result.run_id} {'succeeded' if result.success else 'FAILED'}", file=sys.stderr)
    return 0 if result.success else 1


def status(dataset: str | None) -> int:
    from lgcd_pipeline.staleness import direct_status

    instance, defs = _instance_and_defs()
    graph = defs.resolve_asset_graph()
    scope = _scope(graph, dataset)
    for key in graph.toposorted_asset_keys:
        if key in scope:
            state, causes = direct_status(instance, graph, key)
            print(f"{key.to_user_string():45s} {state.name:8s} {'; '.join(causes)}")
    return 0


def summary(dataset: str) -> int:
    """The report's preamble and its primary table (first split, sampled negatives, inter_domain)."""
    from lgcd_core.config import DATASETS_DIR, load_dataset_config

    cfg = load_dataset_config(DATASETS_DIR / f"{dataset}.yaml")
    report = cfg.stage_dir("evaluation") / "report.md"
    if not report.exists():
        print(f"(no results yet: {report} is missing; materialize {cfg.name}/evaluation)")
        return 1
    sections = report.read_text().split("\n## ")
    print(sections[0].rstrip())
    if len(sections) > 1:
        print("\n## " + sections[1].rstrip())
    print(f"\nFull report (every split, protocol and setting): {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lgcd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sync = sub.add_parser("sync", help="materialize stale or missing assets and everything downstream of them")
    p_sync.add_argument("--dataset", help="limit to one dataset (its YAML file name)")
    p_sync.add_argument("--dry-run", action="store_true", help="print the asset keys that would run, one per line")
    p_status = sub.add_parser("status", help="Dagster's stale status of each asset")
    p_status.add_argument("--dataset")
    p_summary = sub.add_parser("summary", help="print a dataset's results")
    p_summary.add_argument("--dataset", required=True)
    args = parser.parse_args(argv)
    if args.command == "sync":
        return sync(args.dataset, args.dry_run)
    if args.command == "status":
        return status(args.dataset)
    return summary(args.dataset)


if __name__ == "__main__":
    sys.exit(main())
