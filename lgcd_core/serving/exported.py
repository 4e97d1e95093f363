"""A folder that scores new users without Dagster: ``lgcd export`` writes it, :func:`load` reads it.

Layout (``<out>/``)::

    config.json            format, dataset, domains, serving settings, the dataset YAML (as JSON)
    SHA256SUMS             the SHA-256 of every other file, config.json included (checked by load)
    items.parquet          item_idx, item_id, domain, title, vector: the item's scoring vector in its domain
    embeddings.npy         the frozen item text vectors the sequence encoders read (row = item_idx)
    lgcd.safetensors       the default LGCD model (lgcd_model stage) and its lgcd.json
    encoder_{A,B}.safetensors  the pretrained sequence encoders it is built on, with encoder_{A,B}.json

Usage, in a fresh process (only ``lgcd_core`` and its dependencies installed)::

    from lgcd_core.serving.exported import load
    rec = load("export/demo")
    rec.recommend(["B000123", "B000456"], target_domain="B", k=10)  # [(item_id, title, score), ...]

The model is rebuilt by the same code as the ``recommendations`` stage (:func:`lgcd_recommender`), and
scores with the stored item vectors, so an exported folder recommends what the stage does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.io import DataError, atomic_dir, read_parquet, sha256_file, write_json, write_parquet
from lgcd_core.model.batches import DOMAINS
from lgcd_core.serving.recommender import Recommender, lgcd_recommender
from lgcd_core.stages import ITEM_TEXT_EMBEDDINGS, LGCD_MODEL, PRETRAINED_ENCODERS, SEQUENCES

FORMAT = "lgcd-export/1"
CONFIG = "config.json"
CHECKSUMS = "SHA256SUMS"
ITEMS = "items.parquet"
EMBEDDINGS = "embeddings.npy"
MODEL_FILES = (str(LGCD_MODEL.weights), str(LGCD_MODEL.meta))
ENCODER_FILES = tuple(str(f.format(domain=d)) for d in DOMAINS for f in (PRETRAINED_ENCODERS.weights, PRETRAINED_ENCODERS.meta))


def _vector_column(item_vectors: dict[str, torch.Tensor], domains: np.ndarray) -> pa.Array:
    """One fixed-size float32 list per item (row order = item_idx 1..n): its vector in its own domain."""
    dim = next(iter(item_vectors.values())).shape[1]
    out = np.zeros((len(domains) - 1, dim), dtype=np.float32)
    for d in DOMAINS:
        out[np.flatnonzero(domains == d) - 1] = item_vectors[d].detach().float().cpu().numpy()
    return pa.FixedSizeListArray.from_arrays(pa.array(out.ravel(), pa.float32()), dim)


def _check_target(out: Path) -> None:
    """Refuse to replace a folder that is neither empty nor an earlier export."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_export(out))):
        raise DataError(f"{out}: exists and is not an earlier `lgcd export` folder; choose another --out")


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export(cfg, out: Path, device: str = "cpu") -> dict:
    """Write the export folder of dataset ``cfg``'s default LGCD model to ``out`` (atomically); returns config.json."""
    model_dir, encoders_dir = LGCD_MODEL.path(cfg), PRETRAINED_ENCODERS.path(cfg)
    sources = {**{name: model_dir / name for name in MODEL_FILES}, **{name: encoders_dir / name for name in ENCODER_FILES},
               EMBEDDINGS: ITEM_TEXT_EMBEDDINGS.vectors.path(cfg), "sequences/items.parquet": SEQUENCES.items.path(cfg)}
    missing = [p for p in sources.values() if not p.is_file()]
    if missing:
        raise DataError(f"export needs the trained default LGCD model and its inputs; {missing[0]} is missing "
                        f"(materialize {cfg.name}/lgcd_model first)")
    out = Path(out)
    _check_target(out)
    items = read_parquet(SEQUENCES.items.path(cfg))
    embeddings = np.load(sources[EMBEDDINGS])
    rec = lgcd_recommender(model_dir, encoders_dir, embeddings, items, device)
    table = items.select(["item_idx", "item_id", "domain", "title"]).append_column(
        "vector", _vector_column(rec.item_vectors, rec.domains))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        for name in (*MODEL_FILES, *ENCODER_FILES, EMBEDDINGS):
            shutil.copyfile(sources[name], tmp / name)
        write_parquet(table, tmp / ITEMS)
        config = {
            "format": FORMAT,
            "dataset": cfg.name,
            "domains": {"A": cfg.domains.A, "B": cfg.domains.B},
            "recommendations": cfg.recommendations.model_dump(mode="json"),
            "n_items": {d: int((rec.domains == d).sum()) for d in DOMAINS},
            "vector_dim": int(rec.item_vectors["A"].shape[1]),
            "dataset_config": cfg.model_dump(mode="json"),
        }
        write_json(config, tmp / CONFIG)
        sums = {name: sha256_file(tmp / name) for name in sorted((*MODEL_FILES, *ENCODER_FILES, EMBEDDINGS, ITEMS, CONFIG))}
        (tmp / CHECKSUMS).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return config


def verify_export(folder: Path) -> dict:
    """Check every file against SHA256SUMS and config.json's settings like a dataset YAML; returns config.json.

    DataError naming the file that changed, is missing or holds settings the schema refuses.
    """
    from pydantic import ValidationError

    from lgcd_core.config import DatasetConfig, RecommendationsConfig

    sums_path = folder / CHECKSUMS
    if not sums_path.is_file():
        raise DataError(f"{folder}: {CHECKSUMS} is missing (an export from an older version? export again, or "
                        "load(..., verify=False) to skip the checks)")
    expected = dict(reversed(line.split("  ", 1)) for line in sums_path.read_text().splitlines() if line.strip())
    for name in (*MODEL_FILES, *ENCODER_FILES, EMBEDDINGS, ITEMS, CONFIG):
        path = folder / name
        if name not in expected or not path.is_file():
            raise DataError(f"{path}: missing from the export or from its {CHECKSUMS}")
        if sha256_file(path) != expected[name]:
            raise DataError(f"{path}: changed since the export (SHA-256 differs from {CHECKSUMS}); export again")
    config = json.loads((folder / CONFIG).read_text())
    try:
        DatasetConfig.model_validate(config["dataset_config"])
        RecommendationsConfig.model_validate(config["recommendations"])
    except (KeyError, ValidationError) as exc:
        raise DataError(f"{folder / CONFIG}: settings the schema refuses: {exc}") from None
    return config


def load(folder: str | Path, device: str = "cpu", verify: bool = True, **settings) -> Recommender:
    """The :class:`Recommender` of an exported folder; ``.recommend(history_item_ids, target_domain, k)``.

    ``settings`` override the exported ``faiss_above`` / ``batch_size``. By default every file is
    checked against SHA256SUMS (config.json included) and config.json's settings are validated like a
    dataset YAML (:func:`verify_export`); ``verify=False`` skips both checks (and so serves whatever the
    folder now holds).
    """
    folder = Path(folder)
    if not _is_export(folder):
        raise DataError(f"{folder}: not an `lgcd export` folder ({CONFIG} with format {FORMAT!r} missing)")
    config = verify_export(folder) if verify else json.loads((folder / CONFIG).read_text())
    table = read_parquet(folder / ITEMS)
    items = table.drop_columns(["vector"])
    vectors = table.column("vector").combine_chunks()
    flat = vectors.flatten().to_numpy().reshape(len(vectors), -1)
    domains = np.asarray(items.column("domain").to_pylist())  # rows in item_idx order (the Recommender checks)
    item_vectors = {d: torch.from_numpy(flat[domains == d].copy()) for d in DOMAINS}
    options = {k: config["recommendations"][k] for k in ("faiss_above", "batch_size", "read_target_history")
               if k in config["recommendations"]} | settings
    return lgcd_recommender(folder, folder, np.load(folder / EMBEDDINGS), items, device, item_vectors=item_vectors, **options)
