import json

import pyarrow as pa
import pytest
import torch

from lgcd_core.config import BaselineSASRecConfig
from lgcd_core.evaluation.candidates import draw_candidates
from lgcd_core.evaluation.evaluate import evaluate_scorers
from lgcd_core.evaluation.settings import item_domains
from lgcd_core.model.batches import Inputs
from lgcd_core.model.sasrec_baseline import load_sasrec_scorer
from lgcd_core.model.scoring import popularity_scorer
from lgcd_core.model.train_sasrec import train_sasrec
from lgcd_core.stages import BASELINES

N_A, N_B = 12, 15
ITEMS = pa.table({"item_idx": pa.array(range(1, N_A + N_B + 1), pa.int32()), "domain": ["A"] * N_A + ["B"] * N_B})
# Users walk A items 1, 2, 3, ... and B items 13, 14, 15, ... in step: the next item is predictable.
SEQS = [[1 + (s + j) % N_A if j % 2 == 0 else N_A + 1 + (s + j) % N_B for j in range(8)] for s in range(30)]
SEQUENCES = pa.table({"user_idx": pa.array(range(30), pa.int32()), "items": pa.array(SEQS, pa.list_(pa.int32()))})
CASES = pa.table({
    "case_id": pa.array(range(4), pa.int32()),
    "split": ["valid"] * 4,
    "user_idx": pa.array(range(30, 34), pa.int32()),
    "history": pa.array([[1, 14, 3], [5, 18, 7, 20], [2, 15], [4, 17, 6]], pa.list_(pa.int32())),
    "target": pa.array([16, 21, 3, 19], pa.int32()),
    "target_domain": ["B", "B", "A", "B"],
})
INPUTS = Inputs(ITEMS, SEQUENCES, CASES)
TINY = BaselineSASRecConfig(d=8, n_layers=1, max_len=6, max_epochs=3, batch_size=8, patience=2, train_negatives=None)
CANDIDATES = {"valid": draw_candidates(CASES, ITEMS, "valid", 6, seed=0)}


def _train(out, mode: str, cfg: BaselineSASRecConfig = TINY, seed: int = 5):
    torch.set_num_threads(1)
    train_sasrec(INPUTS, mode, cfg, seed, out, "cpu", CANDIDATES["valid"], log=lambda _: None)
    return load_sasrec_scorer(out, item_domains(ITEMS), "cpu")


def _metrics(out, mode: str, cfg: BaselineSASRecConfig = TINY) -> pa.Table:
    return evaluate_scorers({mode: _train(out, mode, cfg)}, CASES, CANDIDATES, ITEMS)


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_same_seed_gives_the_same_stored_model_and_metrics_twice(tmp_path, mode):
    assert _metrics(tmp_path / "a", mode).equals(_metrics(tmp_path / "b", mode))
    for name in ["A", "B"] if mode == "single" else ["mixed"]:
        weights = BASELINES.weights.format(group=name)
        assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()


def test_training_order_changes_nothing(tmp_path):
    """Each model seeds its own generators: training another model first does not move its weights."""
    first = _train(tmp_path / "first", "mixed")
    _train(tmp_path / "other", "single", seed=9)
    again = _train(tmp_path / "again", "mixed")
    for key, value in first.models["mixed"].state_dict().items():
        assert torch.equal(value, again.models["mixed"].state_dict()[key]), key


def test_sampled_softmax_and_full_ranking_selection_are_reproducible(tmp_path):
    cfg = TINY.model_copy(update={"train_negatives": 5, "selection_protocol": "full"})
    assert _metrics(tmp_path / "a", "mixed", cfg).equals(_metrics(tmp_path / "b", "mixed", cfg))


def test_single_domain_model_scores_an_empty_history_by_item_bias(tmp_path):
    scorer = _train(tmp_path, "single", seed=0)
    scores = scorer([[], [1, 2]], "B")  # [1, 2] are A items: the B model sees an empty history too
    assert torch.isfinite(scores[:, N_A + 1:]).all()
    assert torch.isinf(scores[:, 1:N_A + 1]).all()
    assert torch.equal(scores[0], scores[1])
    assert torch.allclose(scores[0, N_A + 1:], scorer.models["B"].item_bias[N_A + 1:])
    meta = json.loads((tmp_path / BASELINES.meta).read_text())
    assert meta["mode"] == "single" and meta["seed"] == 0 and set(meta["history"]) == {"A", "B"}
    assert {"epoch", "loss", "valid"} <= set(meta["history"]["A"]["epochs"][0])


def test_sampled_selection_needs_the_valid_candidates(tmp_path):
    with pytest.raises(ValueError, match="valid_candidates"):
        train_sasrec(INPUTS, "mixed", TINY, 0, tmp_path, "cpu", log=lambda _: None)


def test_popularity_counts_training_occurrences():
    seqs = pa.table({"items": pa.array([[1, 2, 2], [2, 13]], pa.list_(pa.int32()))})
    scores = popularity_scorer(ITEMS, seqs)([[1], []], "A")
    assert scores.shape == (2, N_A + N_B + 1)
    assert scores[0, 2] == 3 and scores[1, 1] == 1 and scores[0, 13] == 1 and scores[0, 3] == 0
