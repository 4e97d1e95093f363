"""The language stages end to end with the real offline models: SmolLM2-135M, all-MiniLM-L6-v2, FAISS."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.config import DatasetConfig
from lgcd_core.language.grounding import ground_pseudo_texts
from lgcd_core.language.pseudo_overlap import build_pseudo_overlap
from lgcd_core.language.pseudo_text import generate_pseudo_texts
from lgcd_core.language.text_encoder import encode_items

FOOD = ["Organic green tea, 100 bags", "Dark chocolate bar 85% cacao", "Italian espresso coffee beans",
        "Basmati rice 5 lb", "Garam masala spice blend", "Maple syrup grade A"]
KITCHEN = ["Cast iron skillet", "Electric tea kettle", "Burr coffee grinder", "Rice cooker", "Chef knife",
           "Bamboo cutting board", "Espresso machine", "Spice rack organizer"]


@pytest.mark.slow
def test_language_stages_with_real_models(tmp_path):
    rows = [("A", t) for t in FOOD] + [("B", t) for t in KITCHEN]
    items = pa.Table.from_pylist([{"item_idx": i + 1, "item_id": f"i{i + 1}", "domain": d, "title": t, "text": t}
                                  for i, (d, t) in enumerate(rows)])
    sequences = pa.Table.from_pylist([
        {"user_idx": 1, "user_id": "u1", "user_type": "A-only", "items": [1, 2]},
        {"user_idx": 2, "user_id": "u2", "user_type": "A-only", "items": [3, 6]},
        {"user_idx": 3, "user_id": "u3", "user_type": "B-only", "items": [9, 13]},
        {"user_idx": 4, "user_id": "u4", "user_type": "overlap", "items": [4, 10]},
    ])
    cfg = DatasetConfig.model_validate({
        "name": "t", "source": {"format": "synthetic", "path": "x"}, "domains": {"A": "Grocery", "B": "Kitchen"},
        "text_encoder": {"batch_size": 8, "max_seq_length": 32},
        "llm": {"batch_size": 4, "n_descriptions": 3, "generation": {"max_new_tokens": 24}},
        "grounding": {"n_k": 3},
    })
    embeddings, emb_stats = encode_items(items, cfg.text_encoder, "cpu", tmp_path / "emb")
    assert embeddings.shape == (len(rows) + 1, 384) and emb_stats["encoded"] == len(rows)

    logs: list[str] = []
    pseudo, stats = generate_pseudo_texts(cfg, items, sequences, tmp_path / "llm", "cpu", log=logs.append)
    assert pseudo.column("user_idx").to_pylist() == [1, 2, 3]
    assert stats["generated"] == 3 and stats["tokens_generated"] > 0 and stats["tokens_per_s"] > 0
    assert all(a.strip() for a in pseudo.column("answer").to_pylist())  # the model did answer
    assert "Kitchen" in pseudo.column("prompt")[0].as_py() and "Organic green tea" in pseudo.column("prompt")[0].as_py()
    for row in pseudo.to_pylist():
        assert row["usable"] == bool(row["descriptions"])

    again, stats2 = generate_pseudo_texts(cfg, items, sequences, tmp_path / "llm", "cpu", log=logs.append)
    assert stats2["generated"] == 0 and stats2["cached"] == 3 and again.equals(pseudo)

    grounded, g_stats = ground_pseudo_texts(pseudo, items, cfg, "cpu", item_embeddings=embeddings, sequences=sequences)
    assert grounded.num_rows == 3 and g_stats["fallback_users"] == stats["unusable"]
    domains = np.asarray(items.column("domain").to_pylist())
    for row in grounded.to_pylist():
        assert len(row["items"]) == 3 == len(set(row["items"]))
        assert set(domains[np.asarray(row["items"]) - 1]) == {row["target_domain"]}
        assert all(-1.0 <= s <= 1.0 + 1e-5 for s in row["scores"])

    pseudo_overlap, po_stats = build_pseudo_overlap(sequences, grounded, cfg.pseudo_overlap)
    assert po_stats["users"] == 3 and po_stats["avg_inserted"] == 3
    assert all(len(r["items"]) == len(r["is_pseudo"]) for r in pseudo_overlap.to_pylist())
