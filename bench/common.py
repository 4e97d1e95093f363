"""Shared by the benchmarks: an isolated pipeline workspace, and publishing a results table."""

from __future__ import annotations

import shutil
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
