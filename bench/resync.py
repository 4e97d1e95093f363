"""Benchmark: how much cheaper `lgcd sync` is than a full run, after no change and after a λ-only edit.

Runs `lgcd sync` three times on a copy of a dataset YAML (default: the demo) in a fresh data root and
Dagster instance: a full run (everything missing), a no-op sync, and a sync after changing the
diffusion λ (which must re-run only `lgcd_model` and `evaluation`). Prints a table of wall times and
their ratios to the full run, and writes it to bench/results/resync.md.

    python -m bench.resync [--dataset-yaml datasets/demo.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bench.common import isolated_workspace, publish

REPO_ROOT = Path(__file__).resolve().parent.parent


def _sync(env: dict, name: str, dry_run: bool = False) -> tuple[float, list[str]]:
    lgcd = Path(sys.executable).parent / "lgcd"
    cmd = [str(lgcd), "sync", "--dataset", name] + (["--dry-run"] if dry_run else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return elapsed, proc.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-yaml", type=Path, default=REPO_ROOT / "datasets" / "demo.yaml")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="lgcd-resync-"))
    name = args.dataset_yaml.stem
    config = yaml.safe_load(args.dataset_yaml.read_text())
    if config["source"]["format"] == "synthetic":
        config["source"]["path"] = str(work / "raw" / name)
    env = {**os.environ, **isolated_workspace(work, {name: config})}

    full, _ = _sync(env, name)
    _, planned_noop = _sync(env, name, dry_run=True)
    noop, _ = _sync(env, name)
    diffusion = config.setdefault("lgcd", {}).setdefault("diffusion", {})
    diffusion["lambda_B"] = round(1.0 - float(diffusion.get("lambda_B", 0.3)) / 2, 2)
    isolated_workspace(work, {name: config})
    _, planned = _sync(env, name, dry_run=True)
    lam, _ = _sync(env, name)

    rows = [("full run (everything missing)", full, "all stages"),
            ("no-op sync", noop, ", ".join(k.split("/", 1)[1] for k in planned_noop) or "nothing"),
            ("λ-only change", lam, ", ".join(k.split("/", 1)[1] for k in planned))]
    lines = [
        f"# `lgcd sync` cost against a full run ({name})",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs; wall time of the "
        "`lgcd sync` command, process start-up included.",
        "",
        "| sync | seconds | ratio to full run | stages run |",
        "|---|---:|---:|---|",
        *[f"| {label} | {sec:.1f} | {sec / full:.3f} | {what} |" for label, sec, what in rows],
    ]
    publish("\n".join(lines) + "\n", "resync.md")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
