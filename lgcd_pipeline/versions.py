"""Code versions: what a stage's Dagster `code_version` is made of.

A stage's code version hashes (1) the source files of the `lgcd_core` modules that implement it and
(2) the part of the dataset YAML that configures it (`DatasetConfig.stage_hash`). Dagster derives
each materialization's data version from the code version and the data versions of its inputs, so
editing a stage's code or its YAML section makes that stage stale, and the new data version it gets
when re-materialized makes its downstream stale in turn. Nothing upstream is touched.

Only files are read (never imported), so loading the definitions stays cheap.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from lgcd_core.config import DatasetConfig

CORE = Path(__file__).resolve().parent.parent / "lgcd_core"

# The lgcd_core modules whose source defines each stage's output.
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "raw_interactions": ("data/readers.py", "data/amazon.py", "data/llmcdsr.py", "data/safe_pickle.py", "data/synthetic.py"),
    "raw_items": ("data/readers.py", "data/amazon.py", "data/llmcdsr.py", "data/safe_pickle.py"),
    "filtered_interactions": ("data/kcore.py",),
    "sequences": ("data/sequences.py",),
    "item_text_embeddings": ("language/text_encoder.py",),
    "pseudo_texts": ("language/pseudo_text.py", "language/prompts.py", "language/parsing.py", "language/llm_backends.py", "templates/a_to_b.txt", "templates/b_to_a.txt"),
    "grounded_items": ("language/grounding.py", "language/text_encoder.py"),
    "pseudo_overlap_sequences": ("language/pseudo_overlap.py",),
    "pretrained_encoders": ("model/sasrec.py", "model/encoders.py", "model/batches.py", "model/pretrain.py"),
    "lgcd_model": ("model/sasrec.py", "model/encoders.py", "model/batches.py", "model/diffusion.py", "model/lgcd.py", "model/sampler.py", "model/scoring.py", "model/train_lgcd.py"),
    "evaluation": ("evaluation/metrics.py", "evaluation/candidates.py", "evaluation/settings.py", "evaluation/evaluate.py", "evaluation/baselines.py", "evaluation/run.py", "model/scoring.py"),
}

STAGES: tuple[str, ...] = tuple(STAGE_MODULES)


@cache
def _source_hash(stage: str) -> str:
    digest = hashlib.sha256()
    for rel in STAGE_MODULES[stage]:
        path = CORE / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()[:10]


def _referenced_files_hash(cfg: DatasetConfig, stage: str) -> str:
    """Content of files the YAML points at (custom prompt templates): editing one is a config change."""
    if stage != "pseudo_texts":
        return ""
    from lgcd_core.language.prompts import template_path

    digest = hashlib.sha256()
    for name, direction in ((cfg.llm.template_a_to_b, "a_to_b"), (cfg.llm.template_b_to_a, "b_to_a")):
        path = template_path(name, direction)
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return "-" + digest.hexdigest()[:8]


def code_version(cfg: DatasetConfig, stage: str) -> str:
    """`<code hash>-<config hash>`: changes when the stage's code or its YAML section changes.

    For `pseudo_texts` the content of the prompt templates is part of the version too, so editing a
    template file in place is seen like editing the YAML.
    """
    return f"{_source_hash(stage)}-{cfg.stage_hash(stage)}{_referenced_files_hash(cfg, stage)}"
