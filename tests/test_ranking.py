import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from lgcd_core.protocol.candidates import draw_candidates
from lgcd_core.protocol.ranking import METRICS_SCHEMA, evaluate_scorers
from lgcd_core.protocol.settings import filter_histories, item_domains

N_A, N_B = 10, 20
ITEMS = pa.table({"item_idx": pa.array(range(1, N_A + N_B + 1), pa.int32()), "domain": ["A"] * N_A + ["B"] * N_B})
CASES = pa.table({
    "case_id": pa.array([0, 1, 2, 3, 4], pa.int32()),
    "split": ["valid", "valid", "valid", "valid", "test"],
    "user_idx": pa.array([0, 1, 2, 3, 4], pa.int32()),
    "history": pa.array([[1, 11, 2], [12, 13], [3, 4, 14], [5], [6, 15]], pa.list_(pa.int32())),
    "target": pa.array([15, 3, 20, 7, 16], pa.int32()),
    "target_domain": ["B", "A", "B", "A", "B"],
})


def _candidates(n: int = 5) -> dict[str, pa.Table]:
    return {s: draw_candidates(CASES, ITEMS, s, n, seed=1) for s in ("valid", "test")}


def lowest_id_first(histories: list[list[int]], domain: str) -> torch.Tensor:
    return -torch.arange(N_A + N_B + 1, dtype=torch.float32).expand(len(histories), -1)


def history_scorer(histories: list[list[int]], domain: str) -> torch.Tensor:
    """Deterministic scores that depend on the history (one row per case)."""
    table = torch.sin(torch.arange(N_A + N_B + 1, dtype=torch.float32) * 1.7)
    return torch.stack([table * (1 + sum(h)) + 0.01 * len(h) for h in histories])


def test_settings_filter_histories():
    domains = item_domains(ITEMS)
    targets = np.asarray(CASES.column("target_domain").to_pylist())
    history = CASES.column("history")
    assert filter_histories(history, targets, domains, "inter_domain") == [[1, 2], [12, 13], [3, 4], [], [6]]
    assert filter_histories(history, targets, domains, "mixed_history") == history.to_pylist()


def test_known_ranks_from_a_fake_scorer():
    candidates = _candidates()
    table = evaluate_scorers({"low": lowest_id_first}, CASES, candidates, ITEMS, ks=(1, 5, 10))
    assert table.schema.equals(METRICS_SCHEMA)
    rows = table.to_pylist()
    valid_negs = dict(zip(candidates["valid"].column("case_id").to_pylist(),
                          candidates["valid"].column("negatives").to_pylist()))
    # case 1 (target 3, domain A) and case 3 (target 7): rank = 1 + #negatives with a lower id
    ranks_a = [1 + sum(n < t for n in valid_negs[c]) for c, t in ((1, 3), (3, 7))]
    expected = np.mean([1 / math.log2(r + 1) if r <= 5 else 0 for r in ranks_a])
    got = [r for r in rows if r["split"] == "valid" and r["target_domain"] == "A" and r["protocol"] == "sampled999"
           and r["metric"] == "NDCG" and r["k"] == 5]
    assert {r["setting"] for r in got} == {"inter_domain", "mixed_history"}
    assert all(r["value"] == pytest.approx(expected) and r["n_cases"] == 2 for r in got)
    # full ranking in domain A: targets 3 and 7 have ranks 3 and 7 (items 1.. are ahead)
    full = {(r["metric"], r["k"]): r["value"] for r in rows if r["split"] == "valid" and r["target_domain"] == "A"
            and r["protocol"] == "full" and r["setting"] == "inter_domain"}
    assert full[("HR", 1)] == 0 and full[("HR", 5)] == 0.5 and full[("HR", 10)] == 1.0
    assert full[("NDCG", 10)] == pytest.approx((1 / math.log2(4) + 1 / math.log2(8)) / 2)


def test_each_setting_passes_its_history_and_empty_ones_are_allowed():
    seen = []

    def recorder(histories, domain):
        seen.extend(histories)
        return lowest_id_first(histories, domain)

    evaluate_scorers({"r": recorder}, CASES, {"valid": _candidates()["valid"]}, ITEMS, settings=("inter_domain",))
    assert sorted(map(tuple, seen)) == sorted([(1, 2), (12, 13), (3, 4), ()])


def test_metrics_do_not_depend_on_batch_size():
    tables = [evaluate_scorers({"h": history_scorer}, CASES, _candidates(), ITEMS, batch_size=b) for b in (1, 2, 512)]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_every_case_needs_candidates():
    partial = _candidates()["valid"].slice(0, 2)
    with pytest.raises(ValueError, match="no candidates"):
        evaluate_scorers({"low": lowest_id_first}, CASES, {"valid": partial}, ITEMS)


CFG = {"name": "toy", "source": {"format": "synthetic", "path": "x"}, "domains": {"A": "Food", "B": "Kitchen"},
       "lgcd": {"training": {"seed": 0}},
       "evaluation": {"n_negatives": 5, "seeds": [0, 1], "variants": ["wo_guesser"],
                      "baselines": ["sasrec_mixed", "popularity", "pretrained_encoder", "lgcd_wo_diffusion"]}}


def _run(tmp_path, monkeypatch, plant: bool = True):
    """run_evaluation with fake model loaders; every checkpoint it needs is planted as an empty file."""
    import sys
    import types

    from lgcd_core.config import DatasetConfig
    from lgcd_core.evaluation.run import needed_files, run_evaluation
    from lgcd_core.model.batches import Inputs

    loaded = []
    scoring = types.ModuleType("lgcd_core.model.scoring")
    scoring.load_lgcd_scorer = lambda model_dir, *a, **k: loaded.append(model_dir) or history_scorer
    scoring.load_encoder_scorer = lambda *a, **k: lowest_id_first
    scoring.popularity_scorer = lambda *a, **k: lowest_id_first
    monkeypatch.setitem(sys.modules, "lgcd_core.model.scoring", scoring)
    monkeypatch.setattr("lgcd_core.model.sasrec_baseline.load_sasrec_scorer",
                        lambda run_dir, *a: loaded.append(run_dir) or history_scorer)
    cfg = DatasetConfig.model_validate(CFG)
    dirs = tmp_path / "enc", tmp_path / "model", tmp_path / "baselines"
    if plant:
        for path in (p for paths in needed_files(cfg, *dirs).values() for p in paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    seqs = pa.table({"user_idx": pa.array([9], pa.int32()), "items": pa.array([[1, 2, 11]], pa.list_(pa.int32()))})
    inputs = Inputs(ITEMS, seqs, CASES, np.zeros((N_A + N_B + 1, 4), np.float32))
    stats = run_evaluation(cfg, inputs, *dirs, tmp_path / "out", "cpu", log=lambda _: None)
    return stats, loaded


def test_run_evaluation_scores_every_stored_model_and_trains_nothing(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    stats, loaded = _run(tmp_path, monkeypatch)
    metrics = pq.read_table(tmp_path / "out" / "metrics.parquet")
    assert set(metrics.column("model").to_pylist()) == {
        "lgcd", "lgcd_wo_guesser", "lgcd_wo_diffusion", "sasrec_mixed", "pretrained_encoder", "popularity"}
    assert set(metrics.column("seed").to_pylist()) == {0, 1}
    # the default model (seed lgcd.training.seed = 0) is the stage folder itself; every other run has its own folder
    assert sorted(str(p.relative_to(tmp_path)) for p in loaded) == sorted([
        "model", "model/lgcd_wo_guesser_seed0", "model/lgcd_wo_diffusion_seed0",
        "model/lgcd_seed1", "model/lgcd_wo_guesser_seed1", "model/lgcd_wo_diffusion_seed1",
        "baselines/sasrec_mixed_seed0", "baselines/sasrec_mixed_seed1"])
    for name in ("candidates_valid.parquet", "candidates_test.parquet", "report.md", "metrics.png"):
        assert (tmp_path / "out" / name).exists()
    assert "| lgcd |" in stats["markdown"] and stats["n_cases"] == {"valid": 4, "test": 1}


def test_a_missing_checkpoint_is_an_error_naming_it_and_its_stage(tmp_path, monkeypatch):
    from lgcd_core.io import DataError

    with pytest.raises(DataError, match=r"missing \(first: .*encoder_A\.json\); materialize toy/pretrained_encoders, "
                                        r"toy/lgcd_model, toy/baselines first"):
        _run(tmp_path, monkeypatch, plant=False)
    assert not (tmp_path / "out").exists()


def test_evaluation_stage_runs_no_training_code():
    from lgcd_pipeline.versions import stage_modules

    training = {"lgcd_core.model.training", "lgcd_core.model.train_lgcd", "lgcd_core.model.train_sasrec",
                "lgcd_core.model.pretrain"}
    assert not training & set(stage_modules("evaluation"))
    for stage in ("pretrained_encoders", "lgcd_model", "baselines"):
        assert "lgcd_core.model.training" in stage_modules(stage), stage
