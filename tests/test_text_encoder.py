"""Item text embeddings with the offline all-MiniLM-L6-v2 (paper eq. 1, 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.config import TextEncoderConfig
from lgcd_core.language.text_encoder import encode_items, encode_texts, resolve_text_encoder

CFG = TextEncoderConfig(batch_size=2, max_seq_length=32)


def items_table(texts: list[str]) -> pa.Table:
    return pa.Table.from_pylist([{"item_idx": i + 1, "item_id": f"x{i}", "domain": "A", "title": t, "text": t}
                                 for i, t in enumerate(texts)])


def test_default_resolves_to_the_packaged_model_folder():
    folder = Path(resolve_text_encoder("default"))
    assert (folder / "modules.json").is_file()
    assert resolve_text_encoder("jinaai/jina-embeddings-v2-base-en") == "jinaai/jina-embeddings-v2-base-en"


def test_vectors_are_normalised_and_do_not_depend_on_batch_size():
    texts = ["cast iron skillet", "green tea bags", "chef knife", "dark chocolate", "frying pan"]
    small = encode_texts(texts, CFG, "cpu")
    big = encode_texts(texts, CFG.model_copy(update={"batch_size": 64}), "cpu")
    assert small.shape == (5, 384) and small.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(small, big, atol=1e-5)
    sims = small @ small.T
    assert sims[0, 4] > sims[0, 1]  # skillet is closer to frying pan than to tea
    assert encode_texts([], CFG, "cpu").shape == (0, 384)


def test_encode_items_aligns_rows_and_caches_by_text(tmp_path):
    texts = ["cast iron skillet", "green tea bags", "cast iron skillet"]
    vectors, stats = encode_items(items_table(texts), CFG, "cpu", tmp_path)
    assert vectors.shape == (4, 384) and not vectors[0].any()
    np.testing.assert_allclose(vectors[1], vectors[3])
    assert stats["encoded"] == 2 and stats["cached"] == 0 and stats["items"] == 3 and stats["dim"] == 384
    assert stats["items_per_s"] > 0 and stats["model"] == "default"

    again, stats2 = encode_items(items_table(texts), CFG, "cpu", tmp_path)
    assert stats2["encoded"] == 0 and stats2["cached"] == 3
    np.testing.assert_array_equal(again, vectors)

    _, stats3 = encode_items(items_table(texts + ["wooden spoon"]), CFG, "cpu", tmp_path)
    assert stats3["encoded"] == 1 and stats3["cached"] == 3

    _, stats4 = encode_items(items_table(texts), CFG.model_copy(update={"max_seq_length": 16}), "cpu", tmp_path)
    assert stats4["encoded"] == 2  # other settings, other vectors


def test_items_must_be_aligned_with_item_idx(tmp_path):
    bad = items_table(["a", "b"]).set_column(0, "item_idx", pa.array([2, 3]))
    with pytest.raises(ValueError, match="item_idx"):
        encode_items(bad, CFG, "cpu", tmp_path)
