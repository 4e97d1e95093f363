"""The `lgcd` command: re-run only what is stale, and print a dataset's results.

    lgcd sync [--dataset NAME] [--dry-run]   materialize stale/missing assets and their downstream, once each
                                             (first releasing runs whose process was killed; lgcd_pipeline.runs)
    lgcd status [--dataset NAME]             Dagster's own status of every asset, and why
    lgcd summary --dataset NAME              stage figures and the results table of the last run

The Dagster instance is the repository's `dagster_home/` unless DAGSTER_HOME is set. A broken dataset
YAML, an unknown dataset or missing input is reported on one line, `lgcd: <message>`, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _instance_and_defs():
    from lgcd_core.config import ConfigError, discover_datasets

    configs = discover_datasets()  # before Dagster loads them: a bad YAML is one ConfigError naming it
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home")))
    if not home.is_dir():
        raise ConfigError(f"DAGSTER_HOME {home} is not a folder; create it or point DAGSTER_HOME at one")
    import dagster as dg

    from lgcd_pipeline.definitions import build_definitions

    return dg.DagsterInstance.get(), build_definitions(configs)


def _scope(graph, dataset: str | None) -> set:
    from lgcd_core.config import ConfigError, datasets_dir

    keys = set(graph.get_all_asset_keys())
    if dataset is None:
        return keys
    scoped = {k for k in keys if k.path[0] == dataset}
    if not scoped:
        names = ", ".join(sorted({k.path[0] for k in keys})) or "none"
        raise ConfigError(f"no dataset {dataset!r} in {datasets_dir()}; known datasets: {names}")
    return scoped


def sync(dataset: str | None, dry_run: bool) -> int:
    import dagster as dg

    from lgcd_pipeline.runs import orphaned_runs, release_orphaned_runs
    from lgcd_pipeline.staleness import plan_sync

    instance, defs = _instance_and_defs()
    graph = defs.resolve_asset_graph()
    scope = _scope(graph, dataset)  # an unknown dataset fails before anything is touched
    if dry_run:
        for run in orphaned_runs(instance):
            print(f"lgcd sync: run {run.run_id} was left running by a dead process; a real sync releases it",
                  file=sys.stderr)
    else:
        for run_id in release_orphaned_runs(instance):
            print(f"lgcd sync: run {run_id} was left running by a dead process: marked failed, pool slots freed",
                  file=sys.stderr)
    plan = plan_sync(instance, graph, scope)
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
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.io import recover
    from lgcd_core.stages import EVALUATION

    cfg = load_dataset_config(dataset_path(dataset))
    evaluation = EVALUATION.path(cfg)
    recover(evaluation.parent)  # a run killed while swapping the folder leaves the previous one aside
    report = evaluation / EVALUATION.report
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
    from lgcd_core.config import ConfigError
    from lgcd_core.io import DataError

    try:
        if args.command == "sync":
            return sync(args.dataset, args.dry_run)
        if args.command == "status":
            return status(args.dataset)
        return summary(args.dataset)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print("lgcd: " + " ".join(line.strip() for line in str(exc).splitlines()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
