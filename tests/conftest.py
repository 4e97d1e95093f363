"""Shared fixtures. Pipeline tests run on a tiny synthetic dataset in a temporary data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "llmcdsr"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_YAML = {
    "description": "tiny synthetic dataset for tests",
    "source": {
        "format": "synthetic",
        "path": "raw/tiny",
        "synthetic": {
            "seed": 3, "n_items_a": 40, "n_items_b": 50, "n_overlap_users": 40,
            "n_a_only_users": 25, "n_b_only_users": 25, "min_len": 4, "max_len": 8,
        },
    },
    "domains": {"A": "Grocery", "B": "Kitchen"},
    "filter": {"k_core": 2},
    "split": {"seed": 1, "valid_ratio": 0.2, "test_ratio": 0.2},
    "llm": {"batch_size": 4, "generation": {"max_new_tokens": 16}},
    "grounding": {"n_k": 3},
    "pseudo_overlap": {"max_users": 4},
    "pretrain": {"d": 16, "epochs": 2, "patience": 2, "batch_size": 32},
    "lgcd": {"diffusion": {"T": 10}, "training": {"epochs": 2, "patience": 2, "overlap_per_batch": 4, "batch_size": 16}},
    "evaluation": {"n_negatives": 20, "sasrec_bce": {"max_epochs": 3, "eval_every": 1}},
}


def write_dataset_yaml(directory: Path, name: str, content: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def tiny_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root and datasets folder holding `tiny.yaml`, wired through the environment.

    The synthetic source path is made absolute inside the temporary folder.
    """
    datasets = tmp_path / "datasets"
    content = {**TINY_YAML, "source": {**TINY_YAML["source"], "path": str(tmp_path / "raw" / "tiny")}}
    write_dataset_yaml(datasets, "tiny", content)
    monkeypatch.setenv("LGCD_DATASETS_DIR", str(datasets))
    monkeypatch.setenv("LGCD_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return tmp_path
