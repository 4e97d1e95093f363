import math

import pytest
import torch
from toy_data import synthetic_inputs

from lgcd_core.config import LGCDConfig
from lgcd_core.model.batches import ItemIndex
from lgcd_core.model.diagnostics import diagnostic_cases, direction_diagnostics, generator_diagnostics, permutation, r2
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec
from lgcd_core.model.lgcd import LGCDModel
from lgcd_core.model.train_lgcd import evaluate_inter_domain, inter_domain_cases


def test_r2_of_a_perfect_predictor_is_one_and_of_the_mean_is_zero():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(50, 8, generator=gen) + 3.0
    assert r2(x0, x0) == 1.0
    assert r2(x0.mean(0).expand_as(x0), x0) == pytest.approx(0.0, abs=1e-12)
    assert r2(x0.mean(0).expand_as(x0) + 1.0, x0) < 0  # worse than the mean
    noisy = x0 + 0.5 * torch.randn(50, 8, generator=gen)
    assert 0 < r2(noisy, x0) < 1
    # over all coordinates, SST around the mean vector (not per-coordinate R² averaged)
    sst = ((x0 - x0.mean(0)) ** 2).sum()
    assert r2(noisy, x0) == pytest.approx(1 - float(((noisy - x0) ** 2).sum() / sst), rel=1e-6)
    assert math.isnan(r2(x0[:1], x0[:1]))


def test_shuffle_is_a_seeded_permutation():
    p = permutation(100, 0)
    assert sorted(p.tolist()) == list(range(100))
    assert torch.equal(p, permutation(100, 0)) and not torch.equal(p, permutation(100, 1))
    assert (p != torch.arange(100)).sum() > 90


@pytest.fixture(scope="module")
def toy():
    data = synthetic_inputs(n_overlap=40, n_valid=40, seed=2)
    index = ItemIndex.from_table(data["items"])
    return data, index


def _model(data, index, updates: dict | None = None) -> LGCDModel:
    torch.manual_seed(0)
    encs = {d: DomainEncoder(EncoderSpec(d, index.n_domain(d), data["embeddings"].shape[1], d=16, n_layers=1,
                                         max_len=20, dropout=0.0), index.text_rows(data["embeddings"], d))
            for d in "AB"}
    cfg = LGCDConfig.model_validate({"diffusion": {"T": 10}, "architecture": {"n_experts": 3, "max_len": 20}})
    return LGCDModel(cfg.with_updates(updates or {}), encs).eval()


def test_diagnostics_of_a_model(toy):
    data, index = toy
    model = _model(data, index)
    out = generator_diagnostics(model, index, data["eval_cases"], "cpu", batch_size=7)
    assert set(out) == {"B->A", "A->B"}
    cases = {t: inter_domain_cases(index, data["eval_cases"], t) for t in "AB"}
    scored = evaluate_inter_domain(model, cases, "cpu")
    for direction, diag in out.items():
        target = direction[-1]
        assert diag["n_cases"] == len(cases[target][1]) and 0 < diag["n_x0"] <= diag["n_with_source"] <= diag["n_cases"]
        assert diag["r2_rev"] < 1 and diag["r2_guess"] < 1
        assert diag["ndcg10"] == pytest.approx(scored[f"{target}/NDCG@10"], abs=1e-6)  # as the model scores them
        assert diag["shuffle_delta"] == pytest.approx(diag["ndcg10_shuffled_rev"] - diag["ndcg10"])
    # the batch size changes nothing (per-user noise, one permutation over the split)
    again = generator_diagnostics(model, index, data["eval_cases"], "cpu", batch_size=512)
    assert all(again[d] == pytest.approx(out[d], abs=1e-6) for d in out)


def test_shuffling_an_h_rev_shared_by_all_users_changes_nothing(toy):
    """Without diffusion h^rev = 0 for every user: the shuffle is a no-op, the delta exactly 0."""
    data, index = toy
    model = _model(data, index, {"ablations.use_diffusion": False})
    diag = direction_diagnostics(model, diagnostic_cases(index, data["eval_cases"], "B"), "B", "cpu")
    assert diag["shuffle_delta"] == 0.0 and "r2_rev" not in diag


def test_oracle_curve_offset_share_and_training_r2(toy):
    """The oracle point (a = 1) has R² 1; the guess's point is the guess; training pairs give their own R²."""
    from lgcd_core.model.batches import build_direction

    data, index = toy
    model = _model(data, index)
    rows = {dr: build_direction(index, dr[0], data["sequences"], None, 20) for dr in ("AB", "BA")}
    out = generator_diagnostics(model, index, data["eval_cases"], "cpu", data=rows)
    for diag in out.values():
        assert diag["oracle_r2@1"] == pytest.approx(1.0)
        assert diag["oracle_r2@0"] == pytest.approx(diag["r2_guess"], abs=1e-9)  # same cases: the ones with an x0
        assert diag["oracle_n"] == diag["n_x0"]
        assert 0.0 <= diag["bias_share_guess"] <= 1.0 and 0.0 <= diag["bias_share_rev"] <= 1.0
        assert isinstance(diag["r2_guess_train"], float) and diag["r2_guess_train"] < 1
        assert all(0.0 <= diag[f"oracle_ndcg10@{a:g}"] <= 1.0 for a in (0, 0.25, 0.5, 0.75, 1))


def test_an_offset_is_the_whole_error_share():
    from lgcd_core.model.diagnostics import error_parts

    target = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    assert error_parts(target + 3.0, target)["bias_share"] == pytest.approx(1.0)
    noisy = error_parts(target + torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), target)
    assert noisy["bias_share"] < 0.2


def test_an_oracle_model_is_selected_on_the_score_it_is_read_with(toy):
    """With ``ablations.oracle_x0`` the valid cases carry their target-domain items (h_rev := the true x0)."""
    data, index = toy
    model = _model(data, index, {"ablations.oracle_x0": True})
    plain = {t: inter_domain_cases(index, data["eval_cases"], t) for t in "AB"}
    oracle = {t: inter_domain_cases(index, data["eval_cases"], t, oracle=True) for t in "AB"}
    cases = data["eval_cases"].to_pylist()
    for t in "AB":
        assert plain[t][2] is None
        assert [h.tolist() for h in oracle[t][0]] == [h.tolist() for h in plain[t][0]]
        hist = [c["history"] for c in cases if c["split"] == "valid" and c["target_domain"] == t]
        assert [h.tolist() for h in oracle[t][2]] == [h.tolist() for h in index.to_local(hist, t)]
        assert sum(len(h) > 0 for h in oracle[t][2]) > 0
    assert evaluate_inter_domain(model, oracle, "cpu") != evaluate_inter_domain(model, plain, "cpu")
