"""The one training loop: early stopping on valid, per-epoch checkpoint and resume, NaN checks, progress log.

Pre-training (:mod:`pretrain`), LGCD (:mod:`train_lgcd`) and the SASRec baselines (:mod:`train_sasrec`)
each hand :func:`fit` a function that trains one epoch and one that scores valid; the loop does the rest.

- Selection: after every ``eval_every``-th epoch and the last, ``evaluate()`` gives valid metrics and
  the model is selected on ``NDCG@10`` (higher is better; when it is NaN, i.e. there is no valid case,
  on the lowest training loss). Training stops after ``patience`` evaluations without improvement
  (``stale_evals``). Test is never read.
- Checkpoint: every epoch ends by writing ``checkpoint`` atomically: weights, the caller's stateful
  objects (optimizer, samplers, generators), torch RNG states, progress and the best weights. A re-run
  with the same ``fingerprint`` resumes from it and ends with the same weights as an uninterrupted
  run; a finished run's checkpoint says so, and a re-run only restores it. The stage that owns the
  work folder deletes it once the model is published. It holds only tensors, numbers, strings and
  containers, and is read with ``weights_only=True``: a planted file runs no code, it raises
  :class:`DataError` naming it.
- :func:`finite` turns a loss into a float, or raises :class:`FloatingPointError` saying which.
- Several processes (data parallel, :mod:`processes`): every process runs the loop on its share of
  each batch; process 0 alone evaluates and ``processes.agree`` hands its epoch record to all, so they
  take the same selection and stopping decisions; process 0 alone writes the checkpoint, with every
  process's RNG and ``local_state`` (its generators) gathered into it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from lgcd_core.io import DataError, atomic_path, save_figure
from lgcd_core.protocol.metrics import full_ranks, hit_rate, ndcg

Log = Callable[[str], None]
SELECT = "NDCG@10"
T = TypeVar("T")
PROGRESS_EVERY_S = 30.0  # a training loop logs its first and last epoch and at most one line per this many seconds


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


class GeneratorState:
    """A ``torch.Generator`` seen as :class:`Stateful`."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


class Processes(Protocol):
    """The processes of one data-parallel run, as the loop needs them (:class:`processes.AcceleratorProcesses`)."""

    index: int  # this process's rank, 0 for the one that writes
    count: int  # how many processes train together

    def agree(self, value: T) -> T: ...  # process 0's value, on every process

    def gather(self, value: T) -> list[T]: ...  # every process's value in rank order, on every process (a barrier)


class OneProcess:
    """The run of a single process: nothing to agree on or gather."""

    index, count = 0, 1

    def agree(self, value: T) -> T:
        return value

    def gather(self, value: T) -> list[T]:
        return [value]


@dataclass(frozen=True)
class Budget:
    """How long to train: at most ``max_epochs``, stopping after ``patience`` evaluations without improvement."""

    max_epochs: int
    patience: int
    eval_every: int = 1


@dataclass
class Progress:
    """What the loop knows between epochs (checkpointed); ``epochs`` is the per-epoch record."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    stale_evals: int = 0
    done: bool = False
    epochs: list[dict] = field(default_factory=list)


def finite(loss: torch.Tensor, what: str) -> float:
    """``loss`` as a float; :class:`FloatingPointError` naming ``what`` when it is NaN or infinite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value}")
    return value


def fingerprint_of(config: dict, *data: torch.Tensor | np.ndarray | list) -> str:
    """Hash of a run's config and data (tensors, arrays, JSON-able lists): a checkpoint resumes only its own run."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for part in data:
        if isinstance(part, list):
            digest.update(json.dumps(part).encode())
            continue
        array = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else part
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def full_ranking(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int = 10) -> dict[str, float]:
    """NDCG@k and HR@k of each target among every scored column, from ``(scores, targets)`` batches."""
    ranks = [full_ranks(s, t.to(s.device), torch.ones(s.shape[1], dtype=torch.bool, device=s.device))
             for s, t in batches]
    if not ranks:
        return {f"NDCG@{k}": math.nan, f"HR@{k}": math.nan}
    ranks = torch.cat(ranks)
    return {f"NDCG@{k}": float(ndcg(ranks, k).mean()), f"HR@{k}": float(hit_rate(ranks, k).mean())}


def fit(model: nn.Module, train_epoch: Callable[[int], dict], evaluate: Callable[[], dict], budget: Budget,
        checkpoint: Path, fingerprint: str, state: Mapping[str, Stateful] | None = None, name: str = "model",
        log: Log = print, local_state: Mapping[str, Stateful] | None = None,
        processes: Processes | None = None) -> dict:
    """Train ``model`` in place and leave it with its best-on-valid weights; returns the training record.

    ``train_epoch(epoch)`` trains one epoch and returns its stats, with the mean training ``loss`` (of
    all processes: the same on each); ``evaluate()`` returns valid metrics with ``NDCG@10``; ``state``
    holds what else a resume restores, the same on every process (optimizer, samplers), and
    ``local_state`` what differs between processes (per-process generators).
    """
    state, local_state, processes = state or {}, local_state or {}, processes or OneProcess()
    progress, best_state = _resume(model, state, local_state, processes, checkpoint, fingerprint, name, log)
    last_line = -math.inf
    while not progress.done:
        progress.epoch += 1
        model.train()
        started = time.perf_counter()
        record = {"epoch": progress.epoch, **train_epoch(progress.epoch)}
        record["seconds"] = time.perf_counter() - started
        if progress.epoch % budget.eval_every == 0 or progress.epoch == budget.max_epochs:
            model.eval()
            record["valid"] = evaluate() if processes.index == 0 else {}
        record = processes.agree(record)  # process 0's evaluation, hence one selection and one stop, everywhere
        if "valid" in record and _improved(progress, record):
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        progress.epochs.append(record)
        progress.done = progress.epoch >= budget.max_epochs or progress.stale_evals >= budget.patience
        if progress.done or progress.epoch == 1 or time.perf_counter() - last_line >= PROGRESS_EVERY_S:
            log(_progress_line(name, record, budget, progress))
            last_line = time.perf_counter()
        own = processes.gather({"rng": _rng_state(), "state": {k: obj.state_dict() for k, obj in local_state.items()}})
        if processes.index == 0:
            save_checkpoint(checkpoint, {"fingerprint": fingerprint, "model": model.state_dict(), "best_state": best_state,
                                         "state": {k: obj.state_dict() for k, obj in state.items()},
                                         "processes": own, "progress": asdict(progress)})
    model.load_state_dict(best_state)
    model.eval()
    best = progress.epochs[progress.best_epoch - 1]
    return {"epochs": progress.epochs, "best_epoch": progress.best_epoch, "best_valid": best["valid"]}


def _improved(progress: Progress, record: dict) -> bool:
    """Whether this evaluation beats the best so far (and count it as stale if not)."""
    score = record["valid"][SELECT]
    score = -record["loss"] if math.isnan(score) else score
    if score > progress.best_score:
        progress.best_score, progress.best_epoch, progress.stale_evals = score, record["epoch"], 0
        return True
    progress.stale_evals += 1
    return False


def _progress_line(name: str, record: dict, budget: Budget, progress: Progress) -> str:
    """One line: epoch, loss, valid figures, the best so far, the rate and (unless done) the most time left."""
    line = f"{name} epoch {record['epoch']}/{budget.max_epochs}: loss {record['loss']:.4f}"
    if "valid" in record:
        line += " | valid " + " ".join(f"{k} {v:.4f}" for k, v in record["valid"].items() if isinstance(v, float))
    seconds = float(np.mean([e["seconds"] for e in progress.epochs]))
    line += f" | best epoch {progress.best_epoch} | {seconds:.1f} s/epoch"
    if progress.done:
        return line + " | done"
    most = (budget.max_epochs - progress.epoch) * seconds
    stops = min(budget.max_epochs - progress.epoch, (budget.patience - progress.stale_evals) * budget.eval_every) * seconds
    return line + f" | {_duration(stops)} left unless valid improves, at most {_duration(most)}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _resume(model: nn.Module, state: Mapping[str, Stateful], local_state: Mapping[str, Stateful], processes: Processes,
            checkpoint: Path, fingerprint: str, name: str, log: Log) -> tuple[Progress, dict | None]:
    """Restore a checkpoint written for this run by as many processes; a fresh :class:`Progress` when there is none.

    Every process reads the checkpoint before any of them trains (the gather is a barrier), and all
    must have read the same epoch.
    """
    progress, best_state = _restore(model, state, local_state, processes, checkpoint, fingerprint, name, log)
    epochs = processes.gather(progress.epoch)
    if len(set(epochs)) > 1:
        raise RuntimeError(f"{name}: the processes resumed {checkpoint} at different epochs {epochs}")
    return progress, best_state


def _restore(model: nn.Module, state: Mapping[str, Stateful], local_state: Mapping[str, Stateful], processes: Processes,
             checkpoint: Path, fingerprint: str, name: str, log: Log) -> tuple[Progress, dict | None]:
    """This process's part of :func:`_resume`: the shared state, then its own RNG and ``local_state``."""
    if not checkpoint.exists():
        return Progress(), None
    saved = load_checkpoint(checkpoint)
    if saved.get("fingerprint") != fingerprint:
        log(f"{name}: ignoring {checkpoint} (written for another config or data)")
        return Progress(), None
    if len(saved.get("processes", ())) != processes.count:
        log(f"{name}: ignoring {checkpoint} (written by another number of processes, or an older version)")
        return Progress(), None
    model.load_state_dict(saved["model"])
    for key, obj in state.items():
        obj.load_state_dict(saved["state"][key])
    own = saved["processes"][processes.index]
    for key, obj in local_state.items():
        obj.load_state_dict(own["state"][key])
    torch.set_rng_state(own["rng"]["torch"])
    if torch.cuda.is_available() and own["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state_all(own["rng"]["cuda"])
    progress = Progress(**saved["progress"])
    log(f"{name}: resuming from {checkpoint} after epoch {progress.epoch}")
    return progress, saved["best_state"]


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """``torch.save`` atomically (tests patch this to simulate a crash after an epoch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


_TORCH_ADVICE = re.compile(r"weights_only|Weights only|trust|Please use|file an issue|documentation")


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only, never code.

    Anything else (a pickled object or function, a corrupt file) raises :class:`DataError` naming ``path``.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for a refused global, RuntimeError for a broken archive
        raise DataError(f"{path}: not a safe checkpoint ({_load_failure(exc)}); delete it to retrain") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"{path}: not a safe checkpoint (holds {type(ckpt).__name__}, not a dict); delete it to retrain")
    return ckpt


def _load_failure(exc: Exception) -> str:
    """The first sentence of a ``torch.load`` failure that says what is wrong (not torch's advice to load it unsafely)."""
    sentences = (" ".join(s.split()).rstrip(".") for s in re.split(r"(?<=\.)\s+|\n|WeightsUnpickler error:", str(exc)))
    return next((s[:200] for s in sentences if s and not _TORCH_ADVICE.search(s)), type(exc).__name__)


def plot_curves(records: dict[str, dict], path: Path, loss_label: str, title: str) -> Path:
    """Training loss and valid NDCG@10 per epoch of each labelled run record (``fit``'s return), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, record in records.items():
        epochs = record["epochs"]
        axes[0].plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker=".", label=label)
        valid = [e for e in epochs if e.get("valid")]
        axes[1].plot([e["epoch"] for e in valid], [e["valid"][SELECT] for e in valid], marker=".", label=label)
    axes[0].set(xlabel="epoch", ylabel=loss_label, title=title)
    axes[1].set(xlabel="epoch", ylabel="valid NDCG@10 (what early stopping reads)", title="valid")
    if len(records) <= 12:
        for ax in axes:
            ax.legend(fontsize=7)
    return save_figure(fig, path)
