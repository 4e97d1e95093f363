"""Does the diffusion generator carry signal? Diagnostics of a trained LGCD model on valid.

Computed once per run on the selected (best-on-valid) model by :func:`train_lgcd.train_lgcd`; they go
into the run's stats (Dagster metadata of `lgcd_model`) and ``history.json``. Per direction
(source -> target), over the valid cases whose target is in the target domain, histories restricted to
the source domain as at inference (``inter_domain``):

- ``r2_rev`` = R²(h^rev, x0) and ``r2_guess`` = R²(g(h^cond), x0), over the ``n_x0`` cases that have
  target-domain items before the target, where x0 (eq. 7) is the target domain's text encoding of them
  (the model never reads them here). R² = 1 − SSE/SST over all coordinates, SST around the mean vector
  of x0: 1 is a perfect prediction, 0 is no better than the mean, negative is worse. With several
  ε draws (``diffusion.inference_draws``) ``r2_rev`` is the R² of one draw, averaged over draws.
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


@torch.no_grad()
def direction_diagnostics(model: LGCDModel, cases: DiagnosticCases, target: str, device, batch_size: int = 512,
                          seed: int = 0) -> dict:
    """The diagnostics of the direction towards ``target`` (see the module docstring)."""
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
        tgt = tgt.to(device)
        x0.append(model.enc[target].encode_text(tgt)[:, -1])  # eq. 7: the text encoder after the target items
        has.append(tgt[:, -1] != 0)
    head = parts[0].head
    inf = Inference(head, torch.cat([p.row for p in parts]), torch.cat([p.h_cond for p in parts]),
                    None if parts[0].guess is None else torch.cat([p.guess for p in parts]),
                    torch.cat([p.h_rev for p in parts], dim=1))
    x0_rows, known = torch.cat(x0)[inf.row], torch.cat(has)[inf.row]
    out = {"n_cases": n, "n_with_source": len(inf.row), "n_x0": int(known.sum())}
    if model.cfg.ablations.use_diffusion:
        sst_rows = x0_rows[known]
        out["r2_rev"] = float(np.mean([r2(h[known], sst_rows) for h in inf.h_rev]))
        out["r2_guess"] = r2(inf.guess[known], sst_rows) if inf.guess is not None else math.nan
    out["ndcg10"] = _ndcg(model, inf, n, target, cases.target, inf.h_rev, batch_size)
    shuffled = inf.h_rev[:, permutation(len(inf.row), seed).to(inf.h_rev.device)]
    out["ndcg10_shuffled_rev"] = _ndcg(model, inf, n, target, cases.target, shuffled, batch_size)
    out["shuffle_delta"] = out["ndcg10_shuffled_rev"] - out["ndcg10"]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def generator_diagnostics(model: LGCDModel, index: ItemIndex, eval_cases: pa.Table, device, batch_size: int = 512,
                          split: str = "valid") -> dict[str, dict]:
    """``{"A->B": {...}, "B->A": {...}}`` over the ``split`` cases (directions without a case are left out)."""
    out = {}
    for target in DOMAINS:
        cases = diagnostic_cases(index, eval_cases, target, split)
        if len(cases.target):
            out[f"{other(target)}->{target}"] = direction_diagnostics(model, cases, target, device, batch_size,
                                                                      seed=model.cfg.training.seed)
    return out
