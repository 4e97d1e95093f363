"""The LLM-free `collaborative` source through the real Dagster language stages on the tiny dataset."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import yaml
from pipeline_helpers import DATA_STAGES, LANGUAGE_STAGES, materialize


def _metadata(instance: dg.DagsterInstance, stage: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(["tiny", stage]))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_collaborative_source_through_the_language_stages(tiny_env: Path) -> None:
    path = tiny_env / "datasets" / "tiny.yaml"
    content = yaml.safe_load(path.read_text())
    content["pseudo_overlap"] = {"source": "collaborative", "max_users": None}  # every single-domain user
    path.write_text(yaml.safe_dump(content))
    instance = dg.DagsterInstance.get()
    assert materialize([*DATA_STAGES, *LANGUAGE_STAGES], instance).success

    data = tiny_env / "data" / "tiny"
    sequences = pq.read_table(data / "sequences" / "sequences.parquet")
    items = pq.read_table(data / "sequences" / "items.parquet")
    single = {r["user_idx"]: r["user_type"] for r in sequences.to_pylist() if r["user_type"] != "overlap"}
    assert pq.read_table(data / "pseudo_texts" / "pseudo_texts.parquet").num_rows == 0  # no LLM ran
    texts = _metadata(instance, "pseudo_texts")
    assert texts["source"] == "collaborative" and texts["n_users"] == 0

    grounded = pq.read_table(data / "grounded_items" / "grounded_items.parquet")
    assert sorted(grounded.column("user_idx").to_pylist()) == sorted(single)  # full coverage
    assert set(grounded.column("source").to_pylist()) == {"collaborative"}
    domains = np.asarray(items.column("domain").to_pylist())
    for row in grounded.to_pylist():
        assert len(row["items"]) == 3 == len(set(row["items"]))  # n_K of the tiny YAML
        assert set(domains[np.asarray(row["items"]) - 1]) == {row["target_domain"]} != {single[row["user_idx"]][0]}
        assert row["scores"] == sorted(row["scores"], reverse=True)
    meta = _metadata(instance, "grounded_items")
    assert meta["source"] == "collaborative" and "our extension" in meta["source_label"]
    assert meta["users"] == len(single) and meta["n_single_domain_users"] == len(single)

    pseudo = pq.read_table(data / "pseudo_overlap_sequences" / "pseudo_overlap_sequences.parquet")
    assert pseudo.num_rows == len(single) and _metadata(instance, "pseudo_overlap_sequences")["source"] == "collaborative"
    assert all(sum(r["is_pseudo"]) == 3 for r in pseudo.to_pylist())
