import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from lgcd_core.config import BaselineSASRecConfig, PublicSASRecConfig
from lgcd_core.model.batches import Inputs
from lgcd_core.model.sasrec_baseline import SASRec, load_sasrec_scorer
from lgcd_core.model.scoring import popularity_scorer
from lgcd_core.model.train_sasrec import bce_loss, draw_negatives, train_sasrec, training_rows
from lgcd_core.protocol.candidates import draw_candidates
from lgcd_core.protocol.ranking import evaluate_scorers
from lgcd_core.protocol.settings import item_domains
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
TINY_BCE = PublicSASRecConfig(d=8, n_layers=1, max_len=6, max_epochs=3, batch_size=8, patience=2, eval_every=1)
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


def test_single_domain_model_scores_an_empty_history_by_a_learned_popularity(tmp_path):
    """An empty history reads an all-padding row: the final LayerNorm's bias b, so item i scores b · e_i + bias_i."""
    scorer = _train(tmp_path, "single", seed=0)
    scores = scorer([[], [1, 2]], "B")  # [1, 2] are A items: the B model sees an empty history too
    assert torch.isfinite(scores[:, N_A + 1:]).all()
    assert torch.isinf(scores[:, 1:N_A + 1]).all()
    assert torch.equal(scores[0], scores[1])
    model = scorer.models["B"]
    expected = model.item_emb.weight[N_A + 1:] @ model.encoder.ln_f.bias + model.item_bias[N_A + 1:]
    assert torch.allclose(scores[0, N_A + 1:], expected, atol=1e-5)
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


# ---- batch independence: right-aligned rows, in scoring and training --------------------------------


@pytest.mark.parametrize("mode, cfg", [("mixed", TINY), ("single", TINY), ("mixed", TINY_BCE)])
def test_a_history_scores_the_same_alone_and_next_to_a_longer_one(tmp_path, mode, cfg):
    """Positions count from the end of each row, so the width of the batch changes nothing.

    (With left-aligned rows a history's positions depended on the longest row of its batch.)
    """
    scorer = _train(tmp_path, mode, cfg)
    longer = [1, 14, 3, 16, 5, 18, 7, 20]  # longer than max_len: its last 6 items are read
    for short in ([1], [1, 14], [13, 2, 15], []):
        alone = scorer([short], "B")
        in_batch = scorer([short, longer], "B")[:1]
        reversed_batch = scorer([longer, short], "B")[1:]
        finite = torch.isfinite(alone)
        assert torch.equal(finite, torch.isfinite(in_batch))
        assert torch.allclose(alone[finite], in_batch[finite], atol=1e-5)
        assert torch.allclose(alone[finite], reversed_batch[finite], atol=1e-5)


@pytest.mark.parametrize("mode", ["single", "mixed"])
def test_metrics_do_not_depend_on_the_scoring_batch_size(tmp_path, mode):
    scorer = _train(tmp_path, mode, TINY.model_copy(update={"max_epochs": 6, "patience": 6}))
    one = evaluate_scorers({mode: scorer}, CASES, CANDIDATES, ITEMS, batch_size=1)
    all_at_once = evaluate_scorers({mode: scorer}, CASES, CANDIDATES, ITEMS, batch_size=512)
    assert one.drop_columns(["value"]).equals(all_at_once.drop_columns(["value"]))
    assert np.allclose(one.column("value").to_numpy(), all_at_once.column("value").to_numpy(), atol=1e-12)


def test_training_rows_are_right_aligned():
    inputs, targets = training_rows([[1, 2, 3], [4, 5]], max_len=6)
    assert inputs.tolist() == [[1, 2], [0, 4]] and targets.tolist() == [[2, 3], [0, 5]]


# ---- sasrec_bce: the public SASRec's recipe ----------------------------------------------------------


def _hand_set_model() -> SASRec:
    """d = 4 and a transformer that passes item vectors through: h_t = LayerNorm(2 e_t) = c e_t.

    Zero positions and zero attention/FFN weights make every block the identity; the final LayerNorm
    (weight 1, bias 0) maps 2e, e of mean 0 and variance 1, to c e with c = 2 / sqrt(4 + 1e-5).
    """
    cfg = PublicSASRecConfig(d=4, n_layers=1, n_heads=1, max_len=4, dropout=0.0)
    model = SASRec(torch.zeros(6), torch.arange(1, 6), cfg)
    emb = torch.tensor([[0, 0, 0, 0], [1, 1, -1, -1], [1, -1, 1, -1], [1, 1, 1, -1], [-1, -1, 1, 1], [0.5, 0, 0, 0]])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "item_emb.weight":
                param.copy_(emb)
            elif name.startswith(("encoder.pos", "encoder.blocks")) and not name.split(".")[-2].startswith("ln"):
                param.zero_()
    assert "item_bias" not in dict(model.named_parameters())  # the public SASRec has no item bias
    assert torch.equal(model.item_bias, torch.zeros(6))
    return model


def test_bce_loss_matches_a_hand_computed_value():
    model = _hand_set_model()
    inputs, targets = training_rows([[1, 2, 3], [4, 5]], max_len=4)  # [[1, 2], [0, 4]] -> [[2, 3], [0, 5]]
    negatives = torch.tensor([[4, 5], [2, 3]])  # [1][0] is a padding position: ignored
    c = 2 / math.sqrt(4 + 1e-5)
    # real positions: (h = c e1, pos e2, neg e4), (c e2, e3, e5), (c e4, e5, e3)
    pairs = [(c * 0, c * -4), (c * 2, c * 0.5), (c * -0.5, c * -2)]  # (s_pos, s_neg) = (h · e_pos, h · e_neg)
    expected = sum(-math.log(1 / (1 + math.exp(-p))) - math.log(1 / (1 + math.exp(n))) for p, n in pairs) / 3
    model.eval()
    assert bce_loss(model, inputs, targets, negatives).item() == pytest.approx(expected, abs=1e-5)
    # the padding position's negative changes nothing
    other = negatives.clone()
    other[1, 0] = 1
    assert bce_loss(model, inputs, targets, other).item() == pytest.approx(expected, abs=1e-5)


def test_bce_negatives_are_uniform_vocabulary_items_outside_the_row():
    model = SASRec(torch.zeros(N_A + N_B + 1), torch.arange(1, N_A + 1), TINY_BCE)  # a single-domain A model
    inputs, targets = training_rows([[1, 2, 3, 4, 5, 6, 7], [8, 9]], TINY_BCE.max_len)
    draws = [draw_negatives(model, inputs, targets, torch.Generator().manual_seed(0)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])  # seeded
    many = torch.cat([draw_negatives(model, inputs, targets, torch.Generator().manual_seed(s)) for s in range(200)])
    assert many.shape[1] == targets.shape[1]
    assert set(many[0::2].flatten().tolist()) == set(range(8, N_A + 1))  # row 0 holds items 1..7
    assert set(many[1::2].flatten().tolist()) == set(range(1, 8)) | set(range(10, N_A + 1))


def test_bce_baseline_trains_reproducibly_without_an_item_bias(tmp_path):
    first = _metrics(tmp_path / "a", "mixed", TINY_BCE)
    assert first.equals(_metrics(tmp_path / "b", "mixed", TINY_BCE))
    meta = json.loads((tmp_path / "a" / BASELINES.meta).read_text())
    assert meta["sasrec"]["loss"] == "bce" and meta["sasrec"]["item_bias"] is False
    scorer = load_sasrec_scorer(tmp_path / "a", item_domains(ITEMS), "cpu")
    assert torch.equal(scorer.models["mixed"].item_bias, torch.zeros(N_A + N_B + 1))
    assert torch.isfinite(scorer([[1, 14]], "B")[0, N_A + 1:]).all()
