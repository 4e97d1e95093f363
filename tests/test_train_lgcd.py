import json

import pytest
import torch
from safetensors.torch import load_file
from toy_data import synthetic_inputs

from lgcd_core.config import DatasetConfig, LGCDConfig, PretrainConfig
from lgcd_core.model import training
from lgcd_core.model.batches import DOMAINS, Inputs, ItemIndex
from lgcd_core.model.encoders import load_encoder
from lgcd_core.model.lgcd import LGCDModel
from lgcd_core.model.pretrain import pretrain_encoders
from lgcd_core.model.runs import all_lgcd_runs
from lgcd_core.model.scoring import load_encoder_scorer, load_lgcd_model, load_lgcd_scorer
from lgcd_core.model.train_lgcd import evaluate_inter_domain, inter_domain_cases, train_lgcd, train_lgcd_runs

LGCD = LGCDConfig.model_validate({
    "diffusion": {"T": 10}, "architecture": {"n_experts": 4},
    "training": {"epochs": 3, "patience": 10, "batch_size": 32, "overlap_per_batch": 8, "lr": 3e-3}})


def _cfg(lgcd: dict | None = None):
    """The toy dataset; ``lgcd``: dotted LGCD fields changed from LGCD."""
    return DatasetConfig(name="toy", source={"format": "synthetic", "path": "x"}, domains={"A": "a", "B": "b"},
                         pretrain=PretrainConfig(d=16, n_layers=1, epochs=6, batch_size=32, lr=3e-3),
                         lgcd=LGCD.with_updates(lgcd or {}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    data = synthetic_inputs(n_valid=60, n_test=120, seed=0)
    enc_dir = tmp_path_factory.mktemp("enc")
    stats = pretrain_encoders(_cfg(), Inputs(**data), enc_dir, "cpu", log=lambda *_: None)
    return data, enc_dir, stats


def _train(setup, out, lgcd_cfg: LGCDConfig | None = None):
    data, enc_dir, _ = setup
    return train_lgcd(lgcd_cfg or _cfg().lgcd, Inputs(**data), enc_dir, out, "cpu", log=lambda *_: None)


def crash_after(monkeypatch, epoch: int) -> None:
    """Make training stop dead right after the checkpoint of ``epoch`` is written."""
    save = training.save_checkpoint

    def save_then_crash(path, checkpoint):
        save(path, checkpoint)
        if checkpoint["progress"]["epoch"] == epoch:
            raise KeyboardInterrupt(f"crash after epoch {epoch}")

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)


def test_pretrain_writes_encoders_and_learns(setup):
    data, enc_dir, stats = setup
    for name in ("encoder_A.safetensors", "encoder_A.json", "encoder_B.safetensors", "encoder_B.json",
                 "history.json", "loss_curve.png"):
        assert (enc_dir / name).exists()
    for d in DOMAINS:
        assert stats[d]["loss_curve"][-1] < stats[d]["loss_curve"][0]
        assert stats[d]["best_valid"]["NDCG@10"] > 0
    score = load_encoder_scorer(enc_dir, data["embeddings"], data["items"], "cpu")
    out = score([[1, 70, 2], []], "A")
    assert out.shape == (2, 141) and torch.isinf(out[:, 61:]).all() and torch.isfinite(out[:, 1:61]).all()


def test_training_decreases_loss_and_beats_untrained(setup, tmp_path):
    data, enc_dir, _ = setup
    stats = _train(setup, tmp_path / "lgcd")
    for dr in ("AB", "BA"):
        assert stats["loss_curve"][dr][-1] < stats["loss_curve"][dr][0]
    for name in ("lgcd.safetensors", "lgcd.json", "history.json"):
        assert (tmp_path / "lgcd" / name).exists()
    # the generator diagnostics of the selected model, in the stats and history.json
    history = json.loads((tmp_path / "lgcd" / "history.json").read_text())
    assert set(stats["diagnostics"]) == {"A->B", "B->A"} and history["diagnostics"] == stats["diagnostics"]
    for diag in stats["diagnostics"].values():
        assert {"r2_rev", "r2_guess", "n_x0", "ndcg10", "ndcg10_shuffled_rev", "shuffle_delta"} <= set(diag)
        assert diag["n_x0"] > 0
    index = ItemIndex.from_table(data["items"])
    test_cases = {t: inter_domain_cases(index, data["eval_cases"], t, split="test") for t in DOMAINS}
    torch.manual_seed(0)
    untrained = LGCDModel(_cfg().lgcd, {d: load_encoder(enc_dir, d, index.text_rows(data["embeddings"], d))
                                        for d in DOMAINS})
    score = load_lgcd_scorer(tmp_path / "lgcd", enc_dir, data["embeddings"], data["items"], "cpu")
    trained, _ = load_lgcd_model(tmp_path / "lgcd", enc_dir, data["embeddings"], data["items"], "cpu")
    before = evaluate_inter_domain(untrained, test_cases, "cpu")["NDCG@10"]
    after = evaluate_inter_domain(trained, test_cases, "cpu")["NDCG@10"]
    assert after > before + 0.02, (before, after)
    # the public scorer: source items only, batch-size independent, -inf outside the target domain
    hist = data["eval_cases"].column("history").to_pylist()[:9]
    full = score(hist, "B")
    small = load_lgcd_scorer(tmp_path / "lgcd", enc_dir, data["embeddings"], data["items"], "cpu", batch_size=2)(hist, "B")
    assert torch.allclose(full, small, atol=1e-5)
    assert torch.isinf(full[:, :61]).all() and torch.isfinite(full[:, 61:]).all()
    b_only = [[i for i in h if i <= 60] for h in hist]  # dropping target-domain items changes nothing
    assert torch.allclose(score(b_only, "B"), full, atol=1e-5)


def test_resume_continues_the_same_trajectory(setup, tmp_path, monkeypatch):
    _train(setup, tmp_path / "straight")
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            _train(setup, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    _train(setup, tmp_path / "resumed")
    a = load_file(str(tmp_path / "straight" / "lgcd.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "lgcd.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "straight" / "history.json").read_text())
    hb = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [e["valid"] for e in ha["epochs"]] == [e["valid"] for e in hb["epochs"]]


def test_nan_loss_names_term_and_epoch(setup, tmp_path, monkeypatch):
    original = LGCDModel.losses

    def broken(self, direction, batch, generator=None):
        out = original(self, direction, batch, generator)
        out["align"] = out["align"] * float("nan")
        return out

    monkeypatch.setattr(LGCDModel, "losses", broken)
    with pytest.raises(FloatingPointError, match=r"L_align .* epoch 1"):
        _train(setup, tmp_path / "nan", lgcd_cfg=LGCD.with_updates({"training.epochs": 1}))


def test_ablation_variant_trains_via_lgcd_cfg(setup, tmp_path):
    stats = _train(setup, tmp_path / "wo", lgcd_cfg=LGCD.with_updates({"training.epochs": 1, "ablations.cyclic_batches": False,
                                                                      "ablations.moe": False}))
    meta = json.loads((tmp_path / "wo" / "lgcd.json").read_text())
    assert meta["lgcd"]["ablations"]["moe"] is False and stats["epochs"] == 1


def test_every_seed_and_variant_is_trained_into_its_folder(setup, tmp_path):
    data, enc_dir, _ = setup
    cfg = _cfg({"training.epochs": 1, "training.seed": 1}).model_copy(update={"evaluation": _cfg().evaluation.model_copy(
        update={"seeds": [0, 1], "variants": ["wo_moe"], "baselines": ["popularity"]})})
    runs = [(name, seed) for name, seed, _ in all_lgcd_runs(cfg)]
    assert runs == [("lgcd", 1), ("lgcd", 0), ("lgcd_wo_moe", 0), ("lgcd_wo_moe", 1)]
    stats = train_lgcd_runs(cfg, Inputs(**data), enc_dir, tmp_path, "cpu", log=lambda *_: None)
    assert sorted(stats) == ["lgcd/seed0", "lgcd/seed1", "lgcd_wo_moe/seed0", "lgcd_wo_moe/seed1"]
    for folder, seed, moe in ((tmp_path, 1, True), (tmp_path / "lgcd_seed0", 0, True),
                              (tmp_path / "lgcd_wo_moe_seed0", 0, False), (tmp_path / "lgcd_wo_moe_seed1", 1, False)):
        meta = json.loads((folder / "lgcd.json").read_text())["lgcd"]
        assert (meta["training"]["seed"], meta["ablations"]["moe"]) == (seed, moe), folder
