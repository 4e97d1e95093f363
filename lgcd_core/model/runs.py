"""The trained models a dataset's YAML asks for, and the folder each one is stored in.

``lgcd_model`` trains every LGCD run: the full model and each Table 3 variant, for every seed of
``evaluation.seeds``. The default model (``lgcd`` with seed ``lgcd.training.seed``) sits at the top of its stage
folder, where a reader of one model looks; every other run in ``<model>_seed<k>/``. ``baselines``
trains every listed SASRec baseline for every seed, in ``<model>_seed<k>/``. ``evaluation`` reads them
from the same folders and trains nothing.
"""

from __future__ import annotations

from pathlib import Path

from lgcd_core.config import VARIANT_SWITCHES, DatasetConfig, LGCDConfig

LGCD = "lgcd"


def lgcd_runs(cfg: DatasetConfig, seed: int) -> dict[str, LGCDConfig]:
    """Model name -> LGCD config of every LGCD model of ``seed`` (the full model, then the variants)."""
    runs = {LGCD: cfg.lgcd.with_updates({"training.seed": seed})}
    for variant in cfg.evaluation.lgcd_variants:
        runs[f"lgcd_{variant}"] = cfg.lgcd.with_updates({"training.seed": seed, VARIANT_SWITCHES[variant]: False})
    return runs


def lgcd_run_dir(cfg: DatasetConfig, root: Path, name: str, seed: int) -> Path:
    """Where LGCD model ``name`` of ``seed`` lives under ``root`` (the stage folder or its work folder)."""
    return root if (name, seed) == (LGCD, cfg.lgcd.training.seed) else run_dir(root, name, seed)


def run_dir(root: Path, name: str, seed: int) -> Path:
    return root / f"{name}_seed{seed}"


def all_lgcd_runs(cfg: DatasetConfig) -> list[tuple[str, int, LGCDConfig]]:
    """(name, seed, config) of every run ``lgcd_model`` trains: the default model first."""
    runs = [(LGCD, cfg.lgcd.training.seed, cfg.lgcd)]
    for seed in cfg.evaluation.seeds:
        runs += [(name, seed, lc) for name, lc in lgcd_runs(cfg, seed).items() if (name, seed) != (LGCD, cfg.lgcd.training.seed)]
    return runs
