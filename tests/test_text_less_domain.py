"""A domain without item text is a first-class case (issue 26 point 1): nothing embeds its placeholder titles,
the ID encoder stands in for the text encoder (fusion, x0 of eq. 7), text-based pseudo users towards or from
it are left out and said so, and the whole pipeline runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from conftest import TINY_YAML, write_dataset_yaml

from lgcd_core.data.sequences import text_domains
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec


def test_text_domains_reads_titles_and_the_switch():
    items = pa.table({"domain": ["A", "A", "B", "B"], "has_title": [True, False, False, False]})
    assert text_domains(items) == {"A": True, "B": False}
    assert text_domains(items, ["A"]) == {"A": False, "B": False}


def test_an_encoder_without_text_is_the_id_encoder_and_its_fusion():
    torch.manual_seed(0)
    enc = DomainEncoder(EncoderSpec("B", 6, 4, d=8, n_layers=1, n_heads=2, max_len=5, dropout=0.0, has_text=False),
                        np.zeros((7, 4), dtype=np.float32)).eval()
    assert not hasattr(enc, "text_encoder") and not any("text" in k for k in enc.state_dict())
    items = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(enc.encode_text(items), enc.encode_id(items))  # x0 (eq. 7) reads the ID encoder
        assert torch.allclose(enc(items), enc.fusion(enc.encode_id(items)))
        assert torch.allclose(enc.item_fusion(), enc.fusion(enc.id_emb.weight))
        assert torch.allclose(enc.fuse_id_only(enc.encode_id(items)), enc(items))


def _folder(root: Path, n_users: int = 150) -> Path:
    """Books with titles, movies without: the items file leaves every movie's title empty."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    items = ["item,domain,title"] + [f"b{i},A,Book {i} about {'space' if i % 2 else 'cooking'}" for i in range(24)] \
        + [f"m{i},B," for i in range(24)]
    (root / "items.csv").write_text("\n".join(items) + "\n")
    rows = ["user,item,timestamp,domain"]
    for u in range(n_users):
        kinds = ("AB", "BA")[(u // 3) % 2] if u % 3 == 0 else ("A" if u % 3 == 1 else "B")  # overlap users end in either
        for t in range(7):
            d = kinds[t % len(kinds)]
            rows.append(f"u{u},{'b' if d == 'A' else 'm'}{2 * int(rng.integers(0, 12)) + u % 2},{1000 + t},{d}")
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_dataset_with_a_text_less_domain_runs_end_to_end(tmp_path, monkeypatch):
    from lgcd_core.config import discover_datasets
    from lgcd_pipeline.definitions import build_definitions

    content = {**TINY_YAML, "source": {"format": "interactions", "path": str(_folder(tmp_path / "raw"))},
               "domains": {"A": "Books", "B": "Movies"}, "filter": {"k_core": 2},
               "evaluation": {**TINY_YAML["evaluation"], "baselines": ["sasrec_mixed", "popularity", "lgcd_wo_diffusion"]}}
    write_dataset_yaml(tmp_path / "datasets", "tiny", content)
    for name, value in (("LGCD_DATASETS_DIR", tmp_path / "datasets"), ("LGCD_DATA_ROOT", tmp_path / "data")):
        monkeypatch.setenv(name, str(value))
    defs = build_definitions(discover_datasets())
    result = dg.materialize(defs.assets, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = {e.asset_key.path[1]: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}
    data = tmp_path / "data" / "tiny"
    items = pq.read_table(data / "sequences" / "items.parquet")
    vectors = np.load(data / "item_text_embeddings" / "embeddings.npy")
    movies = np.asarray(items.column("item_idx").to_pylist())[np.asarray(items.column("domain").to_pylist()) == "B"]
    assert not vectors[movies].any() and vectors[1:][np.asarray(items.column("domain").to_pylist()) == "A"].any()
    assert meta["item_text_embeddings"]["domains_without_text"] == ["B"]
    assert meta["pretrained_encoders"]["B"]["has_text"] is False and meta["pretrained_encoders"]["A"]["has_text"] is True
    spec = json.loads((data / "pretrained_encoders" / "encoder_B.json").read_text())["spec"]
    assert spec["has_text"] is False
    left_out = meta["pseudo_texts"]["left_out_without_text"]
    assert set(left_out) <= {"A->B", "B->A"} and all(v["domains_without_text"] == ["B"] for v in left_out.values())
    assert pq.read_table(data / "evaluation" / "metrics.parquet").num_rows > 0
    assert pq.read_table(data / "recommendations" / "recommendations.parquet").num_rows > 0
