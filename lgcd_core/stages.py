"""The stages of the LGCD graph and the files each one writes, declared once.

Every stage is one :class:`Stage`, in graph order: its name (the asset key ``<dataset>/<name>`` and the
folder ``<data root>/<dataset>/<name>/``), its group, the stages it reads, the parts of the dataset
YAML that configure it (what its code version hashes, see ``DatasetConfig.stage_config``) and its
files. Everything else reads them from here: the Dagster assets (key, group, deps), ``config``, the
writers and readers of every file, and the tests, which check that the built graph and the files a
run leaves match this module.

A file is an :class:`Output`: a ``str`` holding its name, so a writer joins it to the temporary folder
it publishes (``tmp / SEQUENCES.items``), that also knows its stage, so a reader finds it
(``SEQUENCES.items.path(cfg)``). A name with ``{fields}`` is a pattern, one file per value
(``PRETRAINED_ENCODERS.weights.format(domain="A")``). Models trained once per seed or variant keep the
same file names inside ``<model>_seed<k>/`` (:mod:`lgcd_core.model.runs`).

Cheap to import (standard library only; no dagster, no torch, no pydantic): ``config`` imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

Group = Literal["data", "language", "model", "evaluation", "serving"]
GROUPS: tuple[Group, ...] = ("data", "language", "model", "evaluation", "serving")
CACHE = "cache"  # the folder beside the stage folders for caches and training work folders; no stage has this name


class HasStageDir(Protocol):
    """What :meth:`Output.path` needs of a dataset config (``DatasetConfig``; not imported: config imports us)."""

    def stage_dir(self, stage: str, *parts: str) -> Path: ...


class Output(str):
    """The name of a file a stage writes into its folder; knows the stage (``.stage``)."""

    stage: str

    def __new__(cls, name: str, stage: str) -> Output:
        self = super().__new__(cls, name)
        self.stage = stage
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # copy and pickle keep the stage
        return str(self), self.stage

    def path(self, cfg: HasStageDir, **fields: object) -> Path:
        """``<data root>/<dataset>/<stage>/<name>``, the pattern's ``{fields}`` filled in."""
        return cfg.stage_dir(self.stage) / (self.format(**fields) if fields else self)

    def glob(self) -> str:
        """The pattern with each ``{field}`` as ``*``: what a folder search matches."""
        return re.sub(r"\{[^{}]*\}", "*", self)


class Stage:
    """One asset of the per-dataset graph; each keyword of ``files`` becomes an :class:`Output` attribute."""

    def __init__(self, name: str, group: Group, deps: tuple[Stage, ...], config_keys: tuple[str, ...], /, **files: str):
        if group not in GROUPS:
            raise ValueError(f"stage {name!r}: group {group!r} is not one of {GROUPS}")
        clash = set(files) & {"name", "group", "deps", "config_keys", "files", "path"}
        if clash:
            raise ValueError(f"stage {name!r}: file names {sorted(clash)} clash with Stage attributes")
        self.name = name
        self.group = group
        self.deps = deps
        self.config_keys = config_keys  # sections (`llm`) and dotted fields (`evaluation.seeds`) of the YAML
        self.files = {attr: Output(filename, name) for attr, filename in files.items()}
        for attr, output in self.files.items():
            setattr(self, attr, output)

    def __repr__(self) -> str:
        return f"Stage({self.name!r})"

    def path(self, cfg: HasStageDir) -> Path:
        """The stage folder: ``<data root>/<dataset>/<stage>``."""
        return cfg.stage_dir(self.name)


# ---- data --------------------------------------------------------------------------------------
RAW_INTERACTIONS = Stage(
    "raw_interactions", "data", (), ("source", "domains"),
    table="interactions.parquet",
)
RAW_ITEMS = Stage(
    "raw_items", "data", (RAW_INTERACTIONS,), ("source", "domains"),
    table="items.parquet",
)
FILTERED_INTERACTIONS = Stage(
    "filtered_interactions", "data", (RAW_INTERACTIONS, RAW_ITEMS), ("filter",),
    table="interactions.parquet",
)
SEQUENCES = Stage(
    "sequences", "data", (FILTERED_INTERACTIONS, RAW_ITEMS), ("split",),
    items="items.parquet",              # the item index
    sequences="sequences.parquet",      # training sequences
    eval_cases="eval_cases.parquet",
)

# ---- language ----------------------------------------------------------------------------------
ITEM_TEXT_EMBEDDINGS = Stage(
    "item_text_embeddings", "language", (SEQUENCES,), ("text_encoder",),
    vectors="embeddings.npy",
    meta="meta.json",
)
# The pseudo-user sample and source configure the three pseudo stages; `pseudo_texts` asks for
# grounding.n_k items when llm.n_descriptions is null, and writes an empty table unless the source is llm.
_PSEUDO_USERS = ("pseudo_overlap.source", "pseudo_overlap.max_users", "pseudo_overlap.sample_seed")
PSEUDO_TEXTS = Stage(
    "pseudo_texts", "language", (SEQUENCES,), ("llm", "grounding.n_k", "text_encoder.without_text", *_PSEUDO_USERS),
    table="pseudo_texts.parquet",
)
GROUNDED_ITEMS = Stage(
    "grounded_items", "language", (PSEUDO_TEXTS, ITEM_TEXT_EMBEDDINGS, SEQUENCES),
    ("grounding", "llm.history_items", *_PSEUDO_USERS),
    table="grounded_items.parquet",
)
PSEUDO_OVERLAP_SEQUENCES = Stage(
    "pseudo_overlap_sequences", "language", (GROUNDED_ITEMS, SEQUENCES), ("pseudo_overlap",),
    table="pseudo_overlap_sequences.parquet",
)

# ---- model -------------------------------------------------------------------------------------
PRETRAINED_ENCODERS = Stage(
    "pretrained_encoders", "model", (SEQUENCES, ITEM_TEXT_EMBEDDINGS), ("pretrain", "text_encoder.without_text"),
    weights="encoder_{domain}.safetensors",
    meta="encoder_{domain}.json",
    history="history.json",
    loss_curve="loss_curve.png",
)
LGCD_MODEL = Stage(
    "lgcd_model", "model", (PRETRAINED_ENCODERS, PSEUDO_OVERLAP_SEQUENCES, SEQUENCES, ITEM_TEXT_EMBEDDINGS),
    ("lgcd", "evaluation.seeds", "evaluation.lgcd_variants"),
    weights="lgcd.safetensors",         # at the top for the default model, in <model>_seed<k>/ for the others
    meta="lgcd.json",
    history="history.json",
)
BASELINES = Stage(
    "baselines", "model", (SEQUENCES,),
    ("evaluation.seeds", "evaluation.sasrec_baselines", "evaluation.sasrec", "evaluation.sasrec_bce",
     "evaluation.n_negatives", "evaluation.candidate_seed"),
    weights="{group}.safetensors",      # in <model>_seed<k>/: A and B (single-domain) or mixed
    meta="sasrec.json",
    candidates="candidates_{split}.parquet",  # valid only: the negatives model selection used
)

# ---- evaluation --------------------------------------------------------------------------------
EVALUATION = Stage(
    "evaluation", "evaluation", (LGCD_MODEL, BASELINES, PRETRAINED_ENCODERS, SEQUENCES, ITEM_TEXT_EMBEDDINGS),
    ("evaluation",),
    candidates="candidates_{split}.parquet",
    ranks="ranks.parquet",
    metrics="metrics.parquet",
    comparisons="comparisons.parquet",
    report="report.md",
    chart="metrics.png",
)

# ---- serving -----------------------------------------------------------------------------------
# Reads the trained default model, never the evaluation: an evaluation setting does not re-run it.
# filtered_interactions gives held-out users their user_id (eval_cases carries user_idx only).
RECOMMENDATIONS = Stage(
    "recommendations", "serving", (LGCD_MODEL, PRETRAINED_ENCODERS, SEQUENCES, ITEM_TEXT_EMBEDDINGS, FILTERED_INTERACTIONS),
    ("recommendations",),
    table="recommendations.parquet",
)

STAGES: tuple[Stage, ...] = (
    RAW_INTERACTIONS, RAW_ITEMS, FILTERED_INTERACTIONS, SEQUENCES,
    ITEM_TEXT_EMBEDDINGS, PSEUDO_TEXTS, GROUNDED_ITEMS, PSEUDO_OVERLAP_SEQUENCES,
    PRETRAINED_ENCODERS, LGCD_MODEL, BASELINES,
    EVALUATION,
    RECOMMENDATIONS,
)
NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def stage(name: str) -> Stage:
    """The stage called ``name``; KeyError naming the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(NAMES)}") from None


def in_group(group: Group) -> tuple[Stage, ...]:
    return tuple(s for s in STAGES if s.group == group)


def outputs() -> Iterator[Output]:
    """Every file of every stage, in graph order."""
    for s in STAGES:
        yield from s.files.values()
