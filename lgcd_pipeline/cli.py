"""The `lgcd` command: re-run only what is stale, and print a dataset's results.

    lgcd sync [--dataset NAME] [--dry-run]   materialize stale/missing assets and their downstream, once each
                                             (first releasing runs whose process was killed; lgcd_pipeline.runs)
    lgcd status [--dataset NAME]             Dagster's own status of every asset, and why
    lgcd summary --dataset NAME              stage figures and the results table of the last run
    lgcd recommend --dataset NAME --user ID [-k N] [--json]
                                             a user's history and their stored recommendations
    lgcd users --dataset NAME [--limit N]    user ids that have recommendations, by type
    lgcd export --dataset NAME --out DIR     the default LGCD model as a folder a service loads without Dagster
                                             (lgcd_core.serving.exported.load)

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
    if dataset is None:  # every dataset: skip, one line each, those whose source data is not on this machine
        for name, reason in _absent_sources().items():
            print(f"lgcd sync: skipping dataset {name}: {reason}", file=sys.stderr)
            scope = {key for key in scope if key.path[0] != name}
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
    # INFO, not Dagster's default DEBUG: a line per stage event would bury the stages' own progress lines
    quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    result = dg.materialize(defs.assets, selection=plan.keys, instance=instance, raise_on_error=False, run_config=quiet)
    print(f"lgcd sync: run {result.run_id} {'succeeded' if result.success else 'FAILED'}", file=sys.stderr)
    return 0 if result.success else 1


def _absent_sources() -> dict[str, str]:
    """Dataset name -> why its source data is not here, for every dataset whose source folder is missing."""
    from lgcd_core.config import discover_datasets

    absent = {}
    for cfg in discover_datasets():
        folder = cfg.source_dir()
        if cfg.source.format != "synthetic" and not folder.is_dir():
            fix = f"set source.path in its YAML{f' or ${cfg.source.path_env}' if cfg.source.path_env else ''}"
            absent[cfg.name] = f"its source folder {folder} is missing ({fix})"
    return absent


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
    """The report's preamble and its headline table: the split the UI shows too (test when the data has it,
    else valid), sampled negatives, inter_domain, with LGCD's paired comparisons."""
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.io import DataError, recover
    from lgcd_core.stages import EVALUATION

    cfg = load_dataset_config(dataset_path(dataset))
    evaluation = EVALUATION.path(cfg)
    recover(evaluation.parent)  # a run killed while swapping the folder leaves the previous one aside
    report = evaluation / EVALUATION.report
    if not report.exists():
        print(f"(no results yet: {report} is missing; materialize {cfg.name}/evaluation)")
        return 1
    try:
        sections = report.read_text().split("\n## ")
    except UnicodeDecodeError:
        raise DataError(f"{report}: not UTF-8 text; re-materialize {cfg.name}/evaluation") from None
    print(sections[0].rstrip())
    splits = [s.split(" · ")[0] for s in sections[1:]]
    split = "test" if "test" in splits else "valid"
    headline = [s for s in sections[1:] if s.startswith(f"{split} · sampled999 · inter_domain")]
    if headline:
        print("\n## " + headline[0].rstrip())
    print(f"\nFull report (every split, protocol and setting): {report}")
    return 0


def _titles(items, ids: list[int]) -> list[dict]:
    picked = items.take([i - 1 for i in ids]).to_pylist()
    return [{"item_id": r["item_id"], "title": r["title"], "domain": r["domain"]} for r in picked]


def recommend(dataset: str, user: str, k: int | None, as_json: bool) -> int:
    """A user's history (per domain) and their top items, read from the stored `recommendations` asset."""
    import json

    import pyarrow as pa

    from lgcd_core.config import ConfigError, dataset_path, load_dataset_config
    from lgcd_core.data.contracts import check_items
    from lgcd_core.io import DataError, read_parquet, recover
    from lgcd_core.protocol.settings import item_domains
    from lgcd_core.stages import RECOMMENDATIONS, SEQUENCES

    if k is not None and k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")
    cfg = load_dataset_config(dataset_path(dataset))
    path = RECOMMENDATIONS.table.path(cfg)
    recover(path.parent.parent)
    if not path.exists():
        raise DataError(f"{path} is missing; materialize {cfg.name}/recommendations first (lgcd sync --dataset {cfg.name})")
    rows = read_parquet(path, filters=[("user_id", "=", user)]).sort_by([("target_domain", "ascending"), ("rank", "ascending")]).to_pylist()
    if not rows:
        raise DataError(f"no user {user!r} in {cfg.name}'s recommendations ({path}); "
                        f"`lgcd users --dataset {cfg.name}` lists the user ids by type")
    first = rows[0]
    items = read_parquet(SEQUENCES.items.path(cfg), columns=["item_idx", "item_id", "domain", "title"])
    check_items(pa.Table.from_pylist(rows), "item_idx", item_domains(items), path, domain_column="target_domain")
    if first["case_id"] is None:
        table = read_parquet(SEQUENCES.sequences.path(cfg), filters=[("user_idx", "=", first["user_idx"])])
        history = table.column("items")[0].as_py()
    else:
        table = read_parquet(SEQUENCES.eval_cases.path(cfg), filters=[("case_id", "=", first["case_id"])])
        history = table.column("history")[0].as_py()
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    targets = sorted({r["target_domain"] for r in rows})
    by_target = {t: [r for r in rows if r["target_domain"] == t] for t in targets}
    reads_target = cfg.recommendations.read_target_history
    held = first["case_id"] is not None
    if as_json:
        print(json.dumps({"kind": "user", "dataset": cfg.name, "user_id": user, "user_type": first["user_type"],
                          "case_id": first["case_id"], "target_domains": targets,
                          "stored_k": len(by_target[targets[0]])}))
        for position, item in enumerate(_titles(items, history), 1):
            print(json.dumps({"kind": "history", "position": position, **item}))
        for target in targets:
            for row in by_target[target][:k] if k else by_target[target]:
                print(json.dumps({"kind": "recommendation", "rank": row["rank"], "item_id": row["item_id"],
                                  "title": row["title"], "score": row["score"], "domain": target}))
        return 0
    kind = f"held-out user, {table.column('split')[0].as_py()} case {first['case_id']}" if held else first["user_type"]
    print(f"{cfg.name}: user {user} ({kind}), {len(history)} items in their history")
    titles = _titles(items, history)
    for domain in ("A", "B"):
        mine = [t for t in titles if t["domain"] == domain]
        print(f"\n  {names[domain]} ({domain}): " + (f"{len(mine)} items, oldest first" if mine else "none"))
        for t in mine:
            print(f"    {t['title']}  [{t['item_id']}]")
    for target in targets:
        source = "B" if target == "A" else "A"
        shown = by_target[target][:k] if k else by_target[target]
        has_target = any(t["domain"] == target for t in titles)
        read = (f"scored from the {names[source]} items and the user's own {names[target]} items"
                if reads_target and has_target else f"scored from the {names[source]} items")
        note = f" (only {len(by_target[target])} stored: recommendations.k)" if k and k > len(by_target[target]) else ""
        print(f"\n  top {len(shown)} {names[target]} ({target}) items{note}, {read}; "
              f"the user's own {names[target]} items are never recommended:")
        for row in shown:
            print(f"    {row['rank']:3d}. {row['score']:8.4f}  {row['title']}  [{row['item_id']}]")
    return 0


def users(dataset: str, limit: int) -> int:
    """User ids that have recommendations, by type, with how many there are of each."""
    import pyarrow.compute as pc

    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.io import DataError, read_parquet, recover
    from lgcd_core.stages import RECOMMENDATIONS

    cfg = load_dataset_config(dataset_path(dataset))
    path = RECOMMENDATIONS.table.path(cfg)
    recover(path.parent.parent)
    if not path.exists():
        raise DataError(f"{path} is missing; materialize {cfg.name}/recommendations first (lgcd sync --dataset {cfg.name})")
    table = read_parquet(path, columns=["user_id", "user_type", "target_domain"])
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    described = {"A-only": f"{names['A']}-only users, recommended {names['B']} items",
                 "B-only": f"{names['B']}-only users, recommended {names['A']} items",
                 "overlap": "overlap users (training data), recommended items of both domains",
                 "held_out": "held-out users (valid/test cases), recommended their case's target domain"}
    for kind, text in described.items():
        ids = pc.unique(table.filter(pc.equal(table["user_type"], kind))["user_id"]).to_pylist()
        if not ids:
            continue
        print(f"{kind}: {len(ids)} {text}")
        print("  " + " ".join(ids[:limit]) + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else ""))
    print(f"\nlgcd recommend --dataset {cfg.name} --user ID shows one user's history and list")
    return 0


def export(dataset: str, out: str) -> int:
    """Write the default LGCD model, item table with vectors and config to ``out`` (lgcd_core.serving.exported)."""
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.serving.exported import export as export_folder

    cfg = load_dataset_config(dataset_path(dataset))
    config = export_folder(cfg, Path(out))
    n = config["n_items"]
    print(f"lgcd export: {out}: {cfg.name}'s default LGCD model, {n['A']} + {n['B']} items with "
          f"{config['vector_dim']}-d vectors; load it with lgcd_core.serving.exported.load({str(out)!r})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `lgcd` command line (what the README's commands are checked against)."""
    parser = argparse.ArgumentParser(prog="lgcd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sync = sub.add_parser("sync", help="materialize stale or missing assets and everything downstream of them")
    p_sync.add_argument("--dataset", help="limit to one dataset (its YAML file name)")
    p_sync.add_argument("--dry-run", action="store_true", help="print the asset keys that would run, one per line")
    p_status = sub.add_parser("status", help="Dagster's stale status of each asset")
    p_status.add_argument("--dataset")
    p_summary = sub.add_parser("summary", help="print a dataset's results")
    p_summary.add_argument("--dataset", required=True)
    p_rec = sub.add_parser("recommend", help="a user's history and stored recommendations (the recommendations asset)")
    p_rec.add_argument("--dataset", required=True)
    p_rec.add_argument("--user", required=True, help="the user_id (single-domain training user or held-out user)")
    p_rec.add_argument("-k", type=int, help="show this many items (default: every stored one, recommendations.k)")
    p_rec.add_argument("--json", action="store_true", help="one JSON object per line: user, history items, recommendations")
    p_users = sub.add_parser("users", help="user ids that have recommendations, by type")
    p_users.add_argument("--dataset", required=True)
    p_users.add_argument("--limit", type=int, default=10, help="ids shown per type (default 10)")
    p_export = sub.add_parser("export", help="write the default LGCD model as a folder a service loads without Dagster")
    p_export.add_argument("--dataset", required=True)
    p_export.add_argument("--out", required=True, help="the folder to write (replaced if it is an earlier export)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lgcd_core.config import ConfigError
    from lgcd_core.io import DataError

    try:
        if args.command == "sync":
            return sync(args.dataset, args.dry_run)
        if args.command == "status":
            return status(args.dataset)
        if args.command == "recommend":
            return recommend(args.dataset, args.user, args.k, args.json)
        if args.command == "export":
            return export(args.dataset, args.out)
        if args.command == "users":
            return users(args.dataset, args.limit)
        return summary(args.dataset)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print("lgcd: " + _one_line(str(exc)), file=sys.stderr)
        return 2
    except Exception as exc:  # a file problem (full disk, read-only folder, bad bytes, truncated weights) or a bug
        if args.debug:
            raise
        print(f"lgcd: {_explain(exc)} (lgcd --debug {args.command} ... shows the traceback)", file=sys.stderr)
        return 2 if isinstance(exc, OSError | UnicodeError) else 1


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _explain(exc: Exception) -> str:
    """One line saying what went wrong, with the file where the error names one, and what to do."""
    import errno

    if isinstance(exc, OSError) and exc.errno is not None:
        where = f"{exc.filename}: " if exc.filename else ""
        fix = {errno.ENOSPC: "the disk is full; free space or set LGCD_DATA_ROOT to another disk",
               errno.EROFS: "the folder is read-only; choose a writable one",
               errno.EACCES: "permission denied; choose a folder you can write to",
               errno.ENOENT: "no such file or folder"}.get(exc.errno, exc.strerror or "")
        return f"{where}{fix}"
    if isinstance(exc, UnicodeError):
        return f"text that is not valid UTF-8 ({_one_line(str(exc))}); check the file or argument it came from"
    message = _one_line(str(exc))
    if "No space left" in message or "enforce fail at inline_container" in message:
        return f"writing a file failed, most likely a full disk ({message[:200]}); free space and run again"
    return f"{type(exc).__name__}: {message[:500]}"


if __name__ == "__main__":
    sys.exit(main())
