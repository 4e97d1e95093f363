"""Data-parallel training: `train_processes: 2` launches two CPU processes (accelerate launch, gloo) that
train as one process does on the same global batches.

Why the comparisons can be tight: each process trains on its rows of every batch and DDP averages the
processes' gradients, so with the randomness that depends on the process switched off (dropout 0; no
diffusion noise) and a loss that is a plain mean over rows (pre-training scales its loss to the batch's
target count; LGCD with one L_rec target per row, ``interpretation.targets: last``), two processes
follow one process's trajectory up to float summation order: relative 1e-5 on losses (we see ~1e-7).
With the diffusion on, each process draws its own noise (per-process seeds) and LGCD's losses are the
mean of the processes' means, so that run is compared loosely (2%; we see 0.3%).
"""

import math

import pytest
import torch
from safetensors.torch import load_file
from toy_data import synthetic_inputs

from lgcd_core.config import DatasetConfig, LGCDConfig, PretrainConfig
from lgcd_core.model.batches import Inputs
from lgcd_core.model.launch import launch_command, train
from lgcd_core.model.pretrain import pretrain_encoders
from lgcd_core.model.train_lgcd import train_lgcd_runs
from lgcd_core.model.training import load_checkpoint

EXACT = {"architecture.dropout": 0.0, "ablations.use_diffusion": False, "interpretation.targets": "last"}
LGCD = LGCDConfig.model_validate({
    "diffusion": {"T": 10}, "architecture": {"n_experts": 4},
    "training": {"epochs": 3, "patience": 10, "batch_size": 32, "overlap_per_batch": 8, "lr": 3e-3}})
RUN = "lgcd/seed0"


def _cfg(processes: int, lgcd: dict | None = None) -> DatasetConfig:
    return DatasetConfig(name="toy", source={"format": "synthetic", "path": "x"}, domains={"A": "a", "B": "b"},
                         pretrain=PretrainConfig(d=16, n_layers=1, epochs=3, batch_size=32, lr=3e-3, dropout=0.0),
                         lgcd=LGCD.with_updates(lgcd or {}), evaluation={"baselines": []},  # LGCD alone
                         train_processes=processes)


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    torch.set_num_threads(1)
    return Inputs(**synthetic_inputs(n_valid=60, seed=0))


@pytest.fixture(scope="module")
def pretrained(inputs, tmp_path_factory) -> dict:
    """Both domains' encoders pretrained by one process and by two: {processes: (stats, folder)}."""
    out = {}
    for n in (1, 2):
        folder = tmp_path_factory.mktemp(f"encoders{n}")
        out[n] = train(pretrain_encoders, _cfg(n), inputs, folder, "cpu", log=lambda _: None), folder
    return out


def _lgcd(inputs, encoders, folder, processes: int, lgcd: dict, log=lambda _: None) -> dict:
    return train(train_lgcd_runs, _cfg(processes, lgcd), inputs, folder, "cpu", log, encoders_dir=encoders)[RUN]


def _close_weights(a, b, atol: float) -> None:
    """The same weights, but for attention's key bias: no gradient reaches it (softmax ignores a shift), so Adam
    turns float noise into lr-sized steps there, in one process as in two."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in (k for k in wa if not k.endswith("qkv.bias")):
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)


def test_lgcd_on_two_processes_follows_one_process(inputs, pretrained, tmp_path):
    encoders = pretrained[1][1]
    one = _lgcd(inputs, encoders, tmp_path / "one", 1, EXACT)
    lines = []
    two = _lgcd(inputs, encoders, tmp_path / "two", 2, EXACT, lines.append)
    for dr in ("AB", "BA"):
        assert two["loss_curve"][dr] == pytest.approx(one["loss_curve"][dr], rel=1e-5)
    assert one["loss_curve"]["AB"][-1] < one["loss_curve"]["AB"][0]  # it trains at all
    assert two["valid_ndcg10"] == pytest.approx(one["valid_ndcg10"], abs=1e-6)
    assert two["best_epoch"] == one["best_epoch"] and two["epochs"] == one["epochs"] == 3
    assert two["directions"] == one["directions"]
    _close_weights(tmp_path / "one" / "lgcd.safetensors", tmp_path / "two" / "lgcd.safetensors", atol=1e-5)
    # process 0 wrote one checkpoint holding both processes' RNG and generator, and its progress lines came back
    saved = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert len(saved["processes"]) == 2 and saved["progress"]["done"]
    assert not torch.equal(*(p["state"]["generator"]["state"] for p in saved["processes"]))
    epochs = [line for line in lines if "LGCD epoch" in line]  # the first and the last at least (bounded rate)
    assert "LGCD epoch 1/" in epochs[0] and "LGCD epoch 3/" in epochs[-1] and "done" in epochs[-1]
    # a re-run finds the finished checkpoint in both processes and only restores it
    lines.clear()
    again = _lgcd(inputs, encoders, tmp_path / "two", 2, EXACT, lines.append)
    assert again["loss_curve"] == two["loss_curve"] and not any("LGCD epoch" in line for line in lines)
    assert any("resuming from" in line for line in lines)


def test_the_full_lgcd_on_two_processes_stays_near_one_process(inputs, pretrained, tmp_path):
    encoders = pretrained[1][1]
    one = _lgcd(inputs, encoders, tmp_path / "one", 1, {})
    two = _lgcd(inputs, encoders, tmp_path / "two", 2, {})
    for dr in ("AB", "BA"):
        assert all(math.isfinite(v) for v in two["loss_curve"][dr])
        assert two["loss_curve"][dr] == pytest.approx(one["loss_curve"][dr], rel=0.02)


def test_pretraining_on_two_processes_follows_one_process(pretrained):
    (one, one_dir), (two, two_dir) = pretrained[1], pretrained[2]
    for domain in ("A", "B"):
        assert two[domain]["loss_curve"] == pytest.approx(one[domain]["loss_curve"], rel=1e-5)
        assert two[domain]["valid_ndcg10"] == pytest.approx(one[domain]["valid_ndcg10"], abs=1e-6)
        _close_weights(one_dir / f"encoder_{domain}.safetensors", two_dir / f"encoder_{domain}.safetensors", atol=1e-5)
    assert (two_dir / "history.json").exists() and (two_dir / "loss_curve.png").exists()


def test_the_launch_command_shares_the_cores_out_on_the_cpu(tmp_path):
    cmd = launch_command(tmp_path / "job.json", 2, "cpu")
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--num_cpu_threads_per_process" in cmd
    assert "--num_cpu_threads_per_process" not in launch_command(tmp_path / "job.json", 2, "cuda")
