"""A :class:`Recommender`: user vectors times item vectors, top K per user with exclusion.

LGCD scores a target-domain item by ``h_final · E_fusion[item]`` (eq. 25, ``LGCDModel.scores``: no
bias), so a user's ranking is an inner-product search: the user vector (condition, guess, reverse
process, MoE: ``LGCDModel.user_vectors``, which reads only the history's source-domain items) against
the target domain's item vectors (``LGCDModel.target_items``). :func:`lgcd_recommender` builds one
from a trained model's files, the same way for the ``recommendations`` stage and for an exported
folder (:mod:`lgcd_core.serving.exported`).

A recommender is also a :data:`~lgcd_core.protocol.ranking.Scorer` (``scores``), so it can be held
against the evaluation's scorer of the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.model.batches import DOMAINS, ItemIndex, other, pad_left, trim_left
from lgcd_core.protocol.settings import item_domains
from lgcd_core.serving.topk import build_index, exact_top_k, exclusion_matrix, faiss_top_k

# (histories as global item ids, target domain) -> (n, d) user vectors; reads the source-domain items only
UserVectors = Callable[[list[list[int]], str], torch.Tensor]


class Recommender:
    """Top-K target-domain items of users, from a :data:`UserVectors` function and per-domain item vectors.

    ``item_vectors[d]``: (n_d, dim), row j = the j-th item of domain ``d`` in ``item_idx`` order.
    Domains with more than ``faiss_above`` items search through FAISS (:mod:`topk`), the others sort
    every score; both give the same list.
    """

    def __init__(self, items: pa.Table, user_vectors: UserVectors, item_vectors: dict[str, torch.Tensor], *,
                 faiss_above: int = 50_000, batch_size: int = 512, device: str = "cpu") -> None:
        self.items = items
        self.domains = item_domains(items)
        self.device = device
        self.batch_size = batch_size
        self.faiss_above = faiss_above
        self._user_vectors = user_vectors
        self.global_ids = {d: np.flatnonzero(self.domains == d) for d in DOMAINS}  # column -> item_idx
        self.column = np.full(len(self.domains), -1, dtype=np.int64)  # item_idx -> column in its domain
        for d in DOMAINS:
            self.column[self.global_ids[d]] = np.arange(len(self.global_ids[d]))
            if item_vectors[d].shape[0] != len(self.global_ids[d]):
                raise ValueError(f"domain {d}: {item_vectors[d].shape[0]} item vectors for {len(self.global_ids[d])} items")
        self.item_vectors = {d: v.detach().float().to(device) for d, v in item_vectors.items()}
        self._index: dict[str, object] = {}
        self._by_id: dict[str, list[int]] | None = None

    # ---- scoring ---------------------------------------------------------------------------------

    def uses_faiss(self, target_domain: str) -> bool:
        return len(self.global_ids[target_domain]) > self.faiss_above

    @torch.no_grad()
    def user_vectors(self, histories: list[list[int]], target_domain: str) -> torch.Tensor:
        """(n, dim) user vectors towards ``target_domain``, in batches of ``batch_size``."""
        parts = [self._user_vectors(histories[lo:lo + self.batch_size], target_domain).float()
                 for lo in range(0, len(histories), self.batch_size)]
        dim = self.item_vectors[target_domain].shape[1]
        return torch.cat(parts) if parts else torch.zeros(0, dim, device=self.device)

    @torch.no_grad()
    def scores(self, histories: list[list[int]], target_domain: str) -> torch.Tensor:
        """The Scorer protocol: (n, n_items + 1) scores, ``-inf`` on padding and outside ``target_domain``."""
        local = self.user_vectors(histories, target_domain) @ self.item_vectors[target_domain].T
        out = torch.full((len(histories), len(self.domains)), float("-inf"), device=local.device)
        out[:, torch.as_tensor(self.global_ids[target_domain], device=local.device)] = local
        return out

    __call__ = scores

    @torch.no_grad()
    def top_k(self, histories: list[list[int]], target_domain: str, k: int,
              exclude: Sequence[Sequence[int]] | None = None,
              search: Literal["auto", "exact", "faiss"] = "auto") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ``target_domain`` items of each history, never one of its ``exclude`` items.

        ``histories`` and ``exclude``: global item ids (``exclude``: default, every target-domain item
        of the history). Returns (item_idx (n, k') int64, scores (n, k') float32), k' = min(k, n_items of
        the domain), ranked best first, ties to the lower item_idx; item_idx 0 and score -inf where
        fewer than k' items remain after the exclusion.
        """
        if exclude is None:
            exclude = [[i for i in h if self.domains[i] == target_domain] for h in histories]
        use_faiss = self.uses_faiss(target_domain) if search == "auto" else search == "faiss"
        items = self.item_vectors[target_domain]
        if use_faiss and target_domain not in self._index:
            self._index[target_domain] = build_index(items)
        ids, values = [], []
        for lo in range(0, len(histories), self.batch_size):
            hi = lo + self.batch_size
            users = self.user_vectors(histories[lo:hi], target_domain)
            cols = [self.column[np.asarray(e, dtype=np.int64)] for e in exclude[lo:hi]]
            excluded = exclusion_matrix([c[c >= 0] for c in cols], users.shape[0]).to(users.device)
            if use_faiss:
                v, c = faiss_top_k(users, items, self._index[target_domain], k, excluded)
            else:
                v, c = exact_top_k(users, items, k, excluded)
            c = c.cpu().numpy()
            ids.append(np.where(c >= 0, self.global_ids[target_domain][np.maximum(c, 0)], 0))
            values.append(v.float().cpu().numpy())
        width = min(k, len(self.global_ids[target_domain]))
        if not ids:
            return np.zeros((0, width), dtype=np.int64), np.zeros((0, width), dtype=np.float32)
        return np.concatenate(ids).astype(np.int64), np.concatenate(values).astype(np.float32)

    # ---- by item id (a service) ------------------------------------------------------------------

    def item_idx_of(self, item_ids: Sequence[str], unknown: Literal["ignore", "raise"] = "ignore") -> list[int]:
        """The item indices of source ids (an id present in both domains gives both), in order."""
        if self._by_id is None:
            by_id: dict[str, list[int]] = {}
            for idx, item_id in zip(self.items.column("item_idx").to_pylist(), self.items.column("item_id").to_pylist()):
                by_id.setdefault(item_id, []).append(idx)
            self._by_id = by_id
        missing = [i for i in item_ids if i not in self._by_id]
        if missing and unknown == "raise":
            raise KeyError(f"{len(missing)} item id(s) not in the item table (first: {missing[0]!r})")
        return [idx for i in item_ids for idx in self._by_id.get(i, [])]

    def recommend(self, history_item_ids: Sequence[str], target_domain: str, k: int = 10,
                  unknown: Literal["ignore", "raise"] = "raise") -> list[tuple[str, str, float]]:
        """[(item_id, title, score)] of the ``k`` best ``target_domain`` items for one history of item ids.

        The history's source-domain items (the other domain) condition the model; its target-domain
        items are never recommended (with ``read_target_history`` they also add the user's own
        target-domain vector, see ``LGCDModel.user_vectors``). An id not in the item table is a KeyError naming
        it (``unknown="ignore"`` skips such ids instead).
        """
        if target_domain not in DOMAINS:
            raise ValueError(f"target_domain must be one of {DOMAINS}, got {target_domain!r}")
        history = self.item_idx_of(history_item_ids, unknown)
        ids, scores = self.top_k([history], target_domain, k)
        rows = [int(i) - 1 for i in ids[0] if i > 0]
        picked = self.items.select(["item_id", "title"]).take(rows).to_pydict()
        return [(item_id, title, float(s)) for item_id, title, s in zip(picked["item_id"], picked["title"], scores[0])]


# ---- LGCD ------------------------------------------------------------------------------------------


def lgcd_user_vectors(model, index: ItemIndex, device: str, read_target_history: bool = False) -> UserVectors:
    """``LGCDModel.user_vectors`` of each history's source-domain items (the newest ``max_len``).

    ``read_target_history``: the history's target-domain items (the newest ``max_len``) are passed too,
    for the users who have some (see ``LGCDModel.user_vectors``).
    """
    max_len = model.cfg.architecture.max_len

    def user_vectors(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        source = other(target_domain)
        (src,) = trim_left(pad_left(index.to_local(histories, source), max_len))
        tgt = None
        if read_target_history:
            (tgt,) = trim_left(pad_left(index.to_local(histories, target_domain), max_len))
            tgt = tgt.to(device)
        return model.user_vectors(source + target_domain, src.to(device), tgt)

    return user_vectors


def lgcd_recommender(model_dir: Path, encoders_dir: Path, embeddings: np.ndarray, items: pa.Table, device: str,
                     item_vectors: dict[str, torch.Tensor] | None = None, read_target_history: bool = False,
                     **settings) -> Recommender:
    """A :class:`Recommender` of the trained LGCD model in ``model_dir`` (with its encoders in ``encoders_dir``).

    ``item_vectors``: stored vectors to use instead of the model's own (an exported folder);
    ``settings``: ``faiss_above``, ``batch_size``.
    """
    from lgcd_core.device import resolve_device
    from lgcd_core.model.scoring import load_lgcd_model

    device = resolve_device(device)
    model, index = load_lgcd_model(model_dir, encoders_dir, embeddings, items, device)
    if item_vectors is None:
        with torch.no_grad():
            item_vectors = {d: model.target_items(d)[1:] for d in DOMAINS}
    return Recommender(items, lgcd_user_vectors(model, index, device, read_target_history), item_vectors, device=device,
                       **settings)
