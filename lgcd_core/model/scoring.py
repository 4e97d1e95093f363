"""Scorers: map histories (global item ids) to scores over ALL items, for the evaluation stage.

``Scorer = (histories, target_domain) -> (n, n_items+1) float tensor``. Columns of items outside the
target domain and column 0 (padding) are ``-inf``. Scoring is batched on tensors under
``torch.no_grad`` in eval mode; the only Python loop over users is the padding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.device import resolve_device
from lgcd_core.model.batches import DOMAINS, ItemIndex, pad_left, trim_left
from lgcd_core.model.encoders import DomainEncoder, load_encoder

Scorer = Callable[[list[list[int]], str], torch.Tensor]


def rank_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (10,)) -> dict[str, torch.Tensor]:
    """Per-row HR@k / NDCG@k of full ranking: rank = #(columns scoring >= the target), ties against.

    ``scores``: (n, V) with -inf where an item is not a candidate; ``targets``: (n,) column ids.
    """
    target_scores = scores.gather(1, targets.long()[:, None])
    rank = (scores >= target_scores).sum(1).float()  # counts the target itself: 1 + #others >=
    out = {}
    for k in ks:
        hit = rank <= k
        out[f"HR@{k}"] = hit.float()
        out[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
    return out


def _to_global(local_scores: torch.Tensor, index: ItemIndex, domain: str) -> torch.Tensor:
    out = torch.full((local_scores.shape[0], index.n_items + 1), float("-inf"), device=local_scores.device)
    cols = torch.as_tensor(index.global_of[domain][1:], device=local_scores.device)
    out[:, cols] = local_scores[:, 1:].float()
    return out


def _local_batch(index: ItemIndex, histories: list[list[int]], domain: str, max_len: int) -> torch.Tensor:
    (items,) = trim_left(pad_left(index.to_local(histories, domain), max_len))
    return items


def load_encoder_scorer(encoders_dir: Path, embeddings: np.ndarray, items: pa.Table, device: str,
                        batch_size: int = 512) -> Scorer:
    """The pretrained ID+text encoder of the target domain applied to the history's target-domain items.

    A history with no target-domain item is scored from the fusion of two zero encodings (the fusion
    bias): one fixed, non-personalised ranking.
    """
    device = resolve_device(device)
    index = ItemIndex.from_table(items)
    encoders: dict[str, DomainEncoder] = {
        d: load_encoder(Path(encoders_dir), d, index.text_rows(embeddings, d), device) for d in DOMAINS}

    @torch.no_grad()
    def score(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        enc = encoders[target_domain].eval()
        e_items = enc.item_fusion()
        chunks = []
        for lo in range(0, len(histories), batch_size):
            x = _local_batch(index, histories[lo:lo + batch_size], target_domain, enc.spec.max_len).to(device)
            user = enc.user_vector(x)
            empty = (x == 0).all(1)
            user = torch.where(empty[:, None], enc.fusion.bias.expand_as(user), user)
            logits = user @ e_items.T
            chunks.append(_to_global(logits, index, target_domain))
        return torch.cat(chunks) if chunks else torch.zeros(0, index.n_items + 1)

    return score


def load_lgcd_model(model_dir: Path, encoders_dir: Path, embeddings: np.ndarray, items: pa.Table, device: str):
    """Rebuild a trained :class:`LGCDModel` (eval mode) and its item index."""
    from safetensors.torch import load_file

    from lgcd_core.config import LGCDConfig
    from lgcd_core.model.lgcd import LGCDModel

    device = resolve_device(device)
    index = ItemIndex.from_table(items)
    meta = json.loads((Path(model_dir) / "lgcd.json").read_text())
    cfg = LGCDConfig.model_validate(meta["lgcd"])
    encoders = {d: load_encoder(Path(encoders_dir), d, index.text_rows(embeddings, d), "cpu") for d in DOMAINS}
    model = LGCDModel(cfg, encoders)
    model.load_state_dict(load_file(str(Path(model_dir) / "lgcd.safetensors")))
    return model.to(device).eval(), index


def load_lgcd_scorer(model_dir: Path, encoders_dir: Path, embeddings: np.ndarray, items: pa.Table, device: str,
                     read_target_history: bool = False, batch_size: int | None = None) -> Scorer:
    """LGCD's inference path (condition -> guesser -> noise to λT -> reverse -> MoE -> eq. 25).

    Only the history's source-domain items are read. ``read_target_history`` (our mixed-history
    extension, off by default) lets a row's target-domain items, when it has some, replace the
    guesser's warm start by their text encoding.
    """
    model, index = load_lgcd_model(model_dir, encoders_dir, embeddings, items, device)
    device = resolve_device(device)
    batch_size = batch_size or model.cfg.eval_batch_size
    max_len = model.cfg.max_len

    @torch.no_grad()
    def score(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        model.eval()
        source = "B" if target_domain == "A" else "A"
        direction = source + target_domain
        chunks = []
        for lo in range(0, len(histories), batch_size):
            part = histories[lo:lo + batch_size]
            src = _local_batch(index, part, source, max_len).to(device)
            tgt = _local_batch(index, part, target_domain, max_len).to(device) if read_target_history else None
            chunks.append(_to_global(model.scores(direction, src, tgt), index, target_domain))
        return torch.cat(chunks) if chunks else torch.zeros(0, index.n_items + 1)

    return score
