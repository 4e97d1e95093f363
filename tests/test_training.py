"""The one training loop: resume after a crash, early stopping, NaN detection, safe checkpoints."""

import math

import pytest
import torch
from torch import nn

from lgcd_core.io import DataError
from lgcd_core.model import training
from lgcd_core.model.training import Budget, GeneratorState, finite, fit

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
SIX_EPOCHS = Budget(max_epochs=6, patience=10)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


@pytest.fixture(autouse=True)
def every_epoch_logged(monkeypatch):
    """These tests count epoch lines: log every epoch (the default logs at a bounded rate)."""
    monkeypatch.setattr(training, "PROGRESS_EVERY_S", 0.0)


def _run(checkpoint, budget=SIX_EPOCHS, scores=None, fingerprint="toy", log=None):
    """A small regression with dropout (global RNG) and shuffled batches (its own generator)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def train_epoch(epoch):
        total = 0.0
        for rows in torch.randperm(len(X), generator=gen).split(16):
            loss = (model(X[rows]).squeeze(-1) - Y[rows]).pow(2).mean()
            total += finite(loss, f"toy loss at epoch {epoch}")
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {"loss": total / 4}

    def evaluate():
        with torch.no_grad():
            default = -float((model(X).squeeze(-1) - Y).pow(2).mean())
        return {"NDCG@10": scores.pop(0) if scores else default}

    record = fit(model, train_epoch, evaluate, budget, checkpoint, fingerprint,
                 {"optimizer": opt, "generator": GeneratorState(gen)}, "toy", log or (lambda _: None))
    return model, record


def _crash_after(monkeypatch, epoch):
    save = training.save_checkpoint

    def save_then_crash(path, checkpoint):
        save(path, checkpoint)
        if checkpoint["progress"]["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    straight, record = _run(tmp_path / "straight.pt")
    with monkeypatch.context() as patch:
        _crash_after(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "resumed.pt")
    lines = []
    resumed, again = _run(tmp_path / "resumed.pt", log=lines.append)
    assert any("resuming from" in line and "after epoch 3" in line for line in lines)
    assert sum("epoch" in line and "loss" in line for line in lines) == 3  # only epochs 4-6 were trained again
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]] for r in (record, again)]
    assert untimed[0] == untimed[1] and again["best_epoch"] == record["best_epoch"]


def test_a_finished_run_is_restored_not_retrained_and_another_fingerprint_starts_afresh(tmp_path):
    first, _ = _run(tmp_path / "c.pt")
    lines = []
    again, _ = _run(tmp_path / "c.pt", log=lines.append)
    assert not any("loss" in line for line in lines)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    lines.clear()
    _run(tmp_path / "c.pt", fingerprint="other", log=lines.append)
    assert any("ignoring" in line for line in lines) and sum("loss" in line for line in lines) == 6


def test_early_stopping_counts_evaluations_without_improvement_and_keeps_the_best(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.3, 0.25, 0.9]
    _, record = _run(tmp_path / "c.pt", Budget(max_epochs=6, patience=3), scores=scores)
    assert len(record["epochs"]) == 5 and record["best_epoch"] == 2 and record["best_valid"] == {"NDCG@10": 0.3}


def test_evaluation_every_k_epochs_and_at_the_last(tmp_path):
    _, record = _run(tmp_path / "c.pt", Budget(max_epochs=5, patience=9, eval_every=2))
    assert [e["epoch"] for e in record["epochs"] if "valid" in e] == [2, 4, 5]


def test_nan_valid_metric_selects_on_training_loss(tmp_path):
    _, record = _run(tmp_path / "c.pt", Budget(max_epochs=3, patience=9), scores=[math.nan] * 3)
    losses = [e["loss"] for e in record["epochs"]]
    assert record["best_epoch"] == 1 + losses.index(min(losses))


def test_non_finite_loss_raises_naming_it():
    with pytest.raises(FloatingPointError, match=r"toy loss at epoch 2 is nan"):
        finite(torch.tensor(float("nan")), "toy loss at epoch 2")
    with pytest.raises(FloatingPointError, match="is inf"):
        finite(torch.tensor(float("inf")), "x")
    assert finite(torch.tensor(1.5), "x") == 1.5


def test_checkpoint_holds_plain_data_and_a_planted_one_is_refused(tmp_path):
    _run(tmp_path / "c.pt", Budget(max_epochs=1, patience=1))
    assert torch.load(tmp_path / "c.pt", weights_only=True)["progress"]["done"] is True
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a safe checkpoint"):
        _run(tmp_path / "bad.pt")


def test_progress_is_logged_at_a_bounded_rate_with_the_time_left(tmp_path, monkeypatch):
    """First and last epoch always; in between at most one line per PROGRESS_EVERY_S; an ETA until done."""
    model = torch.nn.Linear(2, 1)
    lines: list[str] = []
    for every, expected in ((3600.0, 2), (0.0, 6)):
        monkeypatch.setattr(training, "PROGRESS_EVERY_S", every)
        lines.clear()
        training.fit(model, lambda epoch: {"loss": 1.0 / epoch}, lambda: {"NDCG@10": 0.1},
                     training.Budget(6, 10), tmp_path / f"c{every}.pt", "run", {}, "toy", lines.append)
        assert len(lines) == expected
    assert "left" in lines[0] and lines[-1].endswith("done") and "s/epoch" in lines[-1]
