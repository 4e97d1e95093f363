import pyarrow as pa
import pytest
import torch

from lgcd_core.config import BaselineSASRecConfig
from lgcd_core.evaluation.baselines import cached_train_sasrec, popularity_scorer, train_sasrec
from lgcd_core.evaluation.candidates import draw_candidates
from lgcd_core.evaluation.evaluate import evaluate_scorers

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
TINY = BaselineSASRecConfig(d=8, n_layers=1, max_len=6, max_epochs=3, batch_size=8, patience=2, train_negatives=None)


CANDIDATES = {"valid": draw_candidates(CASES, ITEMS, "valid", 6, seed=0)}


def _metrics(mode: str, cfg: BaselineSASRecConfig = TINY) -> pa.Table:
    torch.set_num_threads(1)
    scorer = train_sasrec(ITEMS, SEQUENCES, CASES, mode, cfg, "cpu", seed=5, log=lambda _: None,
                          valid_candidates=CANDIDATES["valid"])
    return evaluate_scorers({mode: scorer}, CASES, CANDIDATES, ITEMS)


def test_same_seed_gives_the_same_metrics_twice():
    for mode in ("single", "mixed"):
        assert _metrics(mode).equals(_metrics(mode))


def test_sampled_softmax_and_full_ranking_selection_are_reproducible():
    cfg = TINY.model_copy(update={"train_negatives": 5, "selection_protocol": "full"})
    assert _metrics("mixed", cfg).equals(_metrics("mixed", cfg))


def test_single_domain_model_scores_an_empty_history_by_item_bias():
    scorer = train_sasrec(ITEMS, SEQUENCES, CASES, "single", TINY, "cpu", seed=0, log=lambda _: None,
                          valid_candidates=CANDIDATES["valid"])
    scores = scorer([[], [1, 2]], "B")  # [1, 2] are A items: the B model sees an empty history too
    assert torch.isfinite(scores[:, N_A + 1:]).all()
    assert torch.isinf(scores[:, 1:N_A + 1]).all()
    assert torch.equal(scores[0], scores[1])
    assert torch.allclose(scores[0, N_A + 1:], scorer.models["B"].item_bias[N_A + 1:])
    assert scorer.log and {"epoch", "valid_ndcg10"} <= set(scorer.log[0])


def test_sampled_selection_needs_the_valid_candidates():
    with pytest.raises(ValueError, match="valid_candidates"):
        train_sasrec(ITEMS, SEQUENCES, CASES, "mixed", TINY, "cpu", seed=0, log=lambda _: None)


def test_popularity_counts_training_occurrences():
    seqs = pa.table({"items": pa.array([[1, 2, 2], [2, 13]], pa.list_(pa.int32()))})
    scores = popularity_scorer(ITEMS, seqs)([[1], []], "A")
    assert scores.shape == (2, N_A + N_B + 1)
    assert scores[0, 2] == 3 and scores[1, 1] == 1 and scores[0, 13] == 1 and scores[0, 3] == 0


def _cached(cache, cfg=TINY, sequences=SEQUENCES, log=None):
    torch.set_num_threads(1)
    return cached_train_sasrec(cache, ITEMS, sequences, CASES, "single", cfg, "cpu", seed=5,
                               log=log if log is not None else (lambda _: None), valid_candidates=CANDIDATES["valid"])


def test_cached_baseline_is_reused_only_for_identical_inputs(tmp_path):
    trained, hit = _cached(tmp_path)
    assert not hit and len(list(tmp_path.glob("sasrec_single_seed5_*.pt"))) == 1
    lines = []
    reused, hit = _cached(tmp_path, log=lines.append)
    assert hit and not any("epoch" in line for line in lines)  # loaded, not trained
    assert reused.log == trained.log
    histories = [[1, 14, 3], [], [13, 2]]
    for domain in ("A", "B"):
        assert torch.equal(reused(histories, domain), trained(histories, domain))
    assert evaluate_scorers({"m": reused}, CASES, CANDIDATES, ITEMS).equals(
        evaluate_scorers({"m": trained}, CASES, CANDIDATES, ITEMS))
    # another config or other training sequences is another key: trained afresh
    assert not _cached(tmp_path, cfg=TINY.model_copy(update={"lr": 1e-2}))[1]
    shorter = SEQUENCES.slice(0, 20)
    assert not _cached(tmp_path, sequences=shorter)[1]
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_no_cache_folder_means_always_training():
    assert not _cached(None)[1]
