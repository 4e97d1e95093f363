"""Does the diffusion generator carry signal? Diagnostics of a trained LGCD model on valid.

Computed once per run on the selected (best-on-valid) model by :func:`train_lgcd.train_lgcd`; they go
into the run's stats (Dagster metadata of `lgcd_model`) and ``history.json``. Per direction
(source -> target), over the valid cases whose target is in the target domain, histories restricted to
the source domain as at inference (``inter_domain``):

- ``r2_rev`` = R²(h^rev, x0) and ``r2_guess`` = R²(g(h^cond), x0), over the ``n_x0`` cases that have
  an x0 (eq. 7, read by :meth:`LGCDModel.x0_after`, the function training reads x0 with; the model
  never reads the target history here). R² = 1 − SSE/SST over all coordinates, SST around the mean
  vector of x0: 1 is a perfect prediction, 0 is no better than the mean, negative is worse. With several
  ε draws (``diffusion.inference_draws``) ``r2_rev`` is the R² of one draw, averaged over draws.
- ``bias_share_rev`` / ``bias_share_guess``: the share of each one's mean squared error that is a
  constant offset (‖mean error‖² / MSE); ``r2_guess_train``: the guess's R² on a sample of training
  targets (real overlap rows), against ``r2_guess`` on the held-out valid users (a distribution shift
  shows as a gap between the two).
- ``oracle_ndcg10@a`` / ``oracle_r2@a`` (:func:`oracle_curve`): NDCG@10 with h^rev := a·x0 + (1 − a)·guess.
- ``ndcg10`` and ``ndcg10_shuffled_rev``: full-ranking NDCG@10 as scored, and with the rows of h^rev
  permuted across the split's users (a seeded permutation) before the MoE fusion;
  ``shuffle_delta`` = shuffled − as scored. Near 0: the fusion ignores who h^rev belongs to.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.model.batches import DOMAINS, ItemIndex, other, pad_left, trim_left
from lgcd_core.model.lgcd import Inference, LGCDModel
from lgcd_core.model.training import full_ranking


class DiagnosticCases(NamedTuple):
    """The valid cases of one target domain, as local ids of each domain."""

    source: list[np.ndarray]  # source-domain items of each history (what the model reads)
    target_history: list[np.ndarray]  # target-domain items of each history (x0 reads them)
    target: np.ndarray  # local id of each target


def diagnostic_cases(index: ItemIndex, eval_cases: pa.Table, target: str, split: str = "valid") -> DiagnosticCases:
    sp = eval_cases.column("split").to_pylist()
    td = eval_cases.column("target_domain").to_pylist()
    keep = [i for i in range(len(sp)) if sp[i] == split and td[i] == target]
    hist, targets = eval_cases.column("history").to_pylist(), eval_cases.column("target").to_pylist()
    chosen = [hist[i] for i in keep]
    tgt = np.asarray([targets[i] for i in keep], dtype=np.int64)
    return DiagnosticCases(index.to_local(chosen, other(target)), index.to_local(chosen, target), index.local_of[tgt])


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 − Σ‖pred − target‖² / Σ‖target − mean(target)‖² over rows and coordinates; NaN for < 2 rows."""
    if target.shape[0] < 2:
        return math.nan
    target, pred = target.double(), pred.double()
    sst = (target - target.mean(0)).pow(2).sum()
    return float(1.0 - (pred - target).pow(2).sum() / sst) if sst > 0 else math.nan


def permutation(n: int, seed: int) -> torch.Tensor:
    """A seeded random permutation of 0..n-1 (the shuffle of h^rev across users)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _ndcg(model: LGCDModel, inf: Inference, n: int, target: str, targets: np.ndarray, h_rev: torch.Tensor,
          batch_size: int) -> float:
    users = model.fuse(inf, n, h_rev)
    items = model.target_items(target)

    def batches():
        for lo in range(0, n, batch_size):
            logits = users[lo:lo + batch_size] @ items.T
            logits[:, 0] = float("-inf")
            yield logits, torch.as_tensor(targets[lo:lo + batch_size])

    return full_ranking(batches())["NDCG@10"]


def error_parts(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """R², and the share of the mean squared error that is a constant offset: ‖mean(pred − target)‖² / MSE."""
    if target.shape[0] < 2:
        return {"r2": math.nan, "bias_share": math.nan}
    err = (pred - target).double()
    mse = err.pow(2).sum(-1).mean()
    return {"r2": r2(pred, target), "bias_share": float(err.mean(0).pow(2).sum() / mse) if mse > 0 else math.nan}


ORACLE_MIX = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def direction_diagnostics(model: LGCDModel, cases: DiagnosticCases, target: str, device, batch_size: int = 512,
                          seed: int = 0, train_pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """The diagnostics of the direction towards ``target`` (see the module docstring).

    ``train_pairs``: (h_cond, x0) of training targets, for the guess's R² on the pairs it was fitted on.
    """
    model.eval()
    direction = other(target) + target
    max_len = model.cfg.architecture.max_len
    n = len(cases.target)
    parts, x0, has = [], [], []
    for lo in range(0, n, batch_size):
        (src,) = trim_left(pad_left(cases.source[lo:lo + batch_size], max_len))
        (tgt,) = trim_left(pad_left(cases.target_history[lo:lo + batch_size], max_len))
        inf = model.infer(direction, src.to(device))
        parts.append(inf._replace(row=inf.row + lo))
        x0_b, has_b = model.x0_after(target, tgt.to(device), torch.as_tensor(cases.target[lo:lo + batch_size], device=device))
        x0.append(x0_b)  # eq. 7, the same function as training
        has.append(has_b)
    head = parts[0].head
    inf = Inference(head, torch.cat([p.row for p in parts]), torch.cat([p.h_cond for p in parts]),
                    None if parts[0].guess is None else torch.cat([p.guess for p in parts]),
                    torch.cat([p.h_rev for p in parts], dim=1))
    x0_rows, known = torch.cat(x0)[inf.row], torch.cat(has)[inf.row]
    out = {"n_cases": n, "n_with_source": len(inf.row), "n_x0": int(known.sum())}
    if model.cfg.ablations.use_diffusion:
        sst_rows = x0_rows[known]
        rev = [error_parts(h[known], sst_rows) for h in inf.h_rev]
        out["r2_rev"] = float(np.mean([p["r2"] for p in rev]))
        out["bias_share_rev"] = float(np.mean([p["bias_share"] for p in rev]))
        if inf.guess is not None:
            guess = error_parts(inf.guess[known], sst_rows)
            out["r2_guess"], out["bias_share_guess"] = guess["r2"], guess["bias_share"]
            if train_pairs is not None and len(train_pairs[0]):
                h_cond, x0_train = (t.to(device) for t in train_pairs)
                out["r2_guess_train"] = r2(head.guesser(h_cond), x0_train)
            out.update(oracle_curve(model, inf, n, target, cases.target, x0_rows, known, batch_size))
    out["ndcg10"] = _ndcg(model, inf, n, target, cases.target, inf.h_rev, batch_size)
    shuffled = inf.h_rev[:, permutation(len(inf.row), seed).to(inf.h_rev.device)]
    out["ndcg10_shuffled_rev"] = _ndcg(model, inf, n, target, cases.target, shuffled, batch_size)
    out["shuffle_delta"] = out["ndcg10_shuffled_rev"] - out["ndcg10"]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def oracle_curve(model: LGCDModel, inf: Inference, n: int, target: str, targets: np.ndarray, x0: torch.Tensor,
                 known: torch.Tensor, batch_size: int) -> dict[str, float]:
    """NDCG@10 (full ranking) with h^rev := a·x0 + (1 − a)·guess, and that h^rev's R² against x0, per a.

    Over the cases that have an x0; a = 1 is the oracle (a generator that returns x0 exactly), a = 0
    the guess alone. Read on a model trained with ``ablations.oracle_x0`` this is the ceiling any
    generator of this x0 could reach; on another model, how much its fusion could use a better h^rev.
    """
    rows = known.nonzero().flatten()
    if len(rows) < 2:
        return {}
    sub = Inference(inf.head, torch.arange(len(rows), device=rows.device), inf.h_cond[rows], inf.guess[rows], inf.h_rev[:, rows])
    tgt = targets[inf.row[rows].cpu().numpy()]
    out = {}
    for a in ORACLE_MIX:
        h = a * x0[rows] + (1 - a) * inf.guess[rows]
        out[f"oracle_ndcg10@{a:g}"] = _ndcg(model, sub, len(rows), target, tgt, h[None], batch_size)
        out[f"oracle_r2@{a:g}"] = r2(h, x0[rows])
    out["oracle_n"] = len(rows)
    return out


def training_pairs(model: LGCDModel, data, direction: str, limit: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_cond, x0) of up to ``limit`` training targets of real overlap rows that have an x0 (a seeded sample)."""
    from lgcd_core.model.batches import OVERLAP

    rows = np.random.default_rng(seed).permutation(data.overlap_rows)[:max(1, limit // 4)]
    if not len(rows):
        return torch.zeros(0), torch.zeros(0)
    model.eval()
    with torch.no_grad():
        batch = data.batch(rows, next(model.parameters()).device)
        sel = model._select(direction, batch["src"], batch["src_pos"], batch["tgt_pos"], batch["label"],
                            batch["kind"] != OVERLAP)
        x0_all, has_all = model.target_features(direction[1], batch["tgt"])
        keep = has_all[sel.row, sel.query]
        return sel.h_cond[keep][:limit], x0_all[sel.row, sel.query][keep][:limit]


def generator_diagnostics(model: LGCDModel, index: ItemIndex, eval_cases: pa.Table, device, batch_size: int = 512,
                          split: str = "valid", data: dict | None = None) -> dict[str, dict]:
    """``{"A->B": {...}, "B->A": {...}}`` over the ``split`` cases (directions without a case are left out).

    ``data``: the run's training rows per direction ("AB", "BA"), for the guess's R² on training pairs.
    """
    out = {}
    for target in DOMAINS:
        cases = diagnostic_cases(index, eval_cases, target, split)
        direction = other(target) + target
        pairs = training_pairs(model, data[direction], direction) if data and direction in data else None
        if len(cases.target):
            out[f"{other(target)}->{target}"] = direction_diagnostics(model, cases, target, device, batch_size,
                                                                      seed=model.cfg.training.seed, train_pairs=pairs)
    return out
