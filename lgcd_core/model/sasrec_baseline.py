"""The SASRec baselines: the model, how a trained one is stored, and its scorer.

SASRec = item embeddings + the shared :class:`SequenceTransformer`, read out at the last column.
Sequences are right-aligned (left-padded with :func:`pad_left`, then :func:`trim_left` to the batch's
longest row), in training and scoring alike. Positions count from the start of the row (``positions:
start``, our SASRecs: the output at slot k is the output on the prefix ending at k) or from the last
column (``end``, the public SASRec's convention, kept by the ``sasrec_bce_*`` reference); either way an
item's position depends only on its own row, and a history scores the same alone or in any batch.
An item's score is ``h · e_item + b_item``: tied embeddings plus, when ``item_bias`` is set, a per-item
bias that starts at the log of the item's training count (without it, ``b_item`` is a buffer of zeros,
as in the public SASRec). An empty history reads the last column of an all-padding row, the final
LayerNorm's bias vector, so it scores items by a learned popularity either way.

- ``single``: one model per domain (``A``, ``B``), trained on that domain's items of every training
  sequence; it reads only the target domain's items of a history (none in ``inter_domain``).
- ``mixed``: one model over all items (``mixed``), trained on whole mixed sequences; it reads the
  history it is given (source items only in ``inter_domain``).

Which baseline is which mode and config: ``SASREC_BASELINES`` and ``EvaluationConfig.sasrec_run``.

A trained baseline is a folder: ``<group>.safetensors`` per model and ``sasrec.json`` (its config,
seed and training record). Training is :mod:`lgcd_core.model.train_sasrec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from lgcd_core.config import BaselineSASRecConfig
from lgcd_core.io import DataError
from lgcd_core.model.batches import pad_left, trim_left
from lgcd_core.model.sasrec import SequenceTransformer
from lgcd_core.stages import BASELINES

Mode = Literal["single", "mixed"]
GROUPS: dict[Mode, dict[str, tuple[str, ...]]] = {"single": {"A": ("A",), "B": ("B",)}, "mixed": {"mixed": ("A", "B")}}


class SASRec(nn.Module):
    """Next-item model over ``vocab`` (the item indices it may predict)."""

    def __init__(self, counts: torch.Tensor, vocab: torch.Tensor, cfg: BaselineSASRecConfig) -> None:
        """``counts``: (n_items + 1,) training occurrences; the item bias starts at log(1 + count).

        Without ``cfg.item_bias`` the bias is a buffer of zeros: the same state dict, nothing learned.
        """
        super().__init__()
        self.item_emb = nn.Embedding(len(counts), cfg.d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=cfg.d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if cfg.item_bias:
            self.item_bias = nn.Parameter(torch.log1p(counts.float()))
        else:
            self.register_buffer("item_bias", torch.zeros(len(counts)))
        self.encoder = SequenceTransformer(cfg.d, cfg.n_layers, cfg.n_heads, cfg.max_len, cfg.dropout, cfg.positions)
        self.register_buffer("vocab", vocab)

    def hidden(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices (see :func:`pad_batch`) -> (B, L, d)."""
        return self.encoder(self.item_emb(seqs), seqs == 0)

    def logits(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(N, d) states against (M,) items -> (N, M) scores."""
        return h @ self.item_emb.weight[items].T + self.item_bias[items]

    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded histories -> (B, n_items + 1) scores, -inf outside the vocabulary."""
        h = self.hidden(seqs)[:, -1]
        out = torch.full((seqs.shape[0], self.item_bias.shape[0]), float("-inf"), device=h.device)
        out[:, self.vocab] = self.logits(h, self.vocab)
        return out


@dataclass
class SASRecScorer:
    """A SASRec baseline (its model per group) as an evaluation Scorer."""

    models: dict[str, SASRec]
    mode: Mode
    domains: np.ndarray
    max_len: int
    device: str

    def __call__(self, histories: list[list[int]], target_domain: str) -> torch.Tensor:
        model = self.models[target_domain if self.mode == "single" else "mixed"]
        if self.mode == "single":
            histories = [[i for i in h if self.domains[i] == target_domain] for h in histories]
        model.eval()
        with torch.no_grad():
            return model.scores(pad_batch(histories, self.max_len).to(self.device))


def pad_batch(sequences: list[list[int]], max_len: int) -> torch.Tensor:
    """The last ``max_len`` items of each sequence, right-aligned: (B, width), width = the longest row (>= 1)."""
    (seqs,) = trim_left(pad_left(sequences, max_len))
    return seqs


def save_sasrec(models: dict[str, SASRec], meta: dict, out_dir: Path) -> None:
    """Write ``<group>.safetensors`` per model and ``sasrec.json`` atomically."""
    from safetensors.torch import save_file

    from lgcd_core.io import atomic_path, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    for group, model in models.items():
        with atomic_path(out_dir / BASELINES.weights.format(group=group)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(meta, out_dir / BASELINES.meta)


def sasrec_files(run_dir: Path, mode: Mode) -> list[Path]:
    """The files a trained baseline of ``mode`` consists of."""
    return [run_dir / BASELINES.meta, *(run_dir / BASELINES.weights.format(group=group) for group in GROUPS[mode])]


def load_sasrec_scorer(run_dir: Path, domains: np.ndarray, device: str) -> SASRecScorer:
    """The trained baseline stored in ``run_dir``, rebuilt from its own config."""
    from safetensors.torch import load_file

    meta = json.loads((run_dir / BASELINES.meta).read_text())
    cfg, mode = BaselineSASRecConfig.model_validate(meta["sasrec"]), meta["mode"]
    models = {}
    for group in GROUPS[mode]:
        weights = run_dir / BASELINES.weights.format(group=group)
        state = load_file(str(weights))
        if state["item_bias"].shape[0] != len(domains):
            raise DataError(f"{weights}: trained for {state['item_bias'].shape[0] - 1} items, "
                            f"the item index has {len(domains) - 1}; re-materialize the baselines stage")
        models[group] = SASRec(torch.zeros(len(domains)), state["vocab"], cfg)
        models[group].load_state_dict(state)
        models[group].to(device)
    return SASRecScorer(models, mode, domains, cfg.max_len, device)
