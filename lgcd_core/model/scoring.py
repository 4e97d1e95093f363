"""Scorers of the trained models and of popularity, for the evaluation stage.

A :data:`~lgcd_core.protocol.ranking.Scorer` maps ``(histories, target_domain)`` (global item ids) to
``(n, n_items+1)`` float scores over ALL items. The LGCD and encoder scorers put ``-inf`` on column 0
(padding) and on the items outside the target domain. Scoring is batched on tensors under
``torch.no_grad`` in eval mode; the only Python loop over users is the padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.device import resolve_device
from lgcd_core.model.batches import DOMAINS, ItemIndex, item_counts, pad_left, trim_left
from lgcd_core.model.encoders import DomainEncoder, load_encoder
from lgcd_core.protocol.ranking import Scorer
from lgcd_core.stages import LGCD_MODEL


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


def load_lgcd_model(model_dir: Path, encoders_dir: Path, embeddings: np.ndarray, items: pa.Table, device: str,
                    updates: dict | None = None):
    """Rebuild a trained :class:`LGCDModel` (eval mode) and its item index.

    ``updates``: dotted LGCD fields that change how it is run, not its weights (e.g.
    ``{"diffusion.sampler_steps": 5, "diffusion.inference_draws": 4}``).
    """
    from safetensors.torch import load_file

    from lgcd_core.config import LGCDConfig
    from lgcd_core.model.lgcd import LGCDModel

    device = resolve_device(device)
    index = ItemIndex.from_table(items)
    meta = json.loads((Path(model_dir) / LGCD_MODEL.meta).read_text())
    cfg = LGCDConfig.model_validate(meta["lgcd"]).with_updates(updates or {})
    encoders = {d: load_encoder(Path(encoders_dir), d, index.text_rows(embeddings, d), "cpu") for d in DOMAINS}
    model = LGCDModel(cfg, encoders)
    model.load_state_dict(load_file(str(Path(model_dir) / LGCD_MODEL.weights)))
    return model.to(device).eval(), index


def load_lgcd_scorer(model_dir: Path, encoders_dir: Path, embeddings: np.ndarray, items: pa.Table, device: str,
                     read_target_history: bool = False, batch_size: int | None = None,
                     updates: dict | None = None) -> Scorer:
    """LGCD's inference path (condition -> guesser -> noise to λT -> reverse -> MoE -> eq. 25).

    Only the history's source-domain items are read. ``read_target_history`` (our mixed-history
    extension, off by default) lets a row's target-domain items, when it has some, replace the
    guesser's warm start by their text encoding. ``updates``: see :func:`load_lgcd_model`.
    """
    model, index = load_lgcd_model(model_dir, encoders_dir, embeddings, items, device, updates)
    device = resolve_device(device)
    batch_size = batch_size or model.cfg.training.eval_batch_size
    max_len = model.cfg.architecture.max_len

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


def popularity_scorer(items: pa.Table, sequences: pa.Table) -> Scorer:
    """Scores every item by its number of occurrences in the training sequences."""
    counts = item_counts(sequences.column("items").to_pylist(), items.num_rows + 1)

    def score(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        return counts.unsqueeze(0).expand(len(histories), -1)

    return score
