"""Tensorising sequences: global <-> local item ids, pretraining rows, LGCD direction datasets.

All padding happens here, once, when a dataset is built (a Python loop over users is fine at that
point); a training step only index-selects rows of pre-built tensors.

Conventions: local ids ``1..n_D`` per domain, 0 = padding. One alignment: :func:`pad_left` right-aligns
rows (left padding), so the last column is the last item, as the right-aligned positions of
:class:`~lgcd_core.model.sasrec.SequenceTransformer` expect: an item's position counts from the end of
its row and does not depend on the other rows of a batch. :func:`trim_left` then drops the columns
that are padding in every row (batch-local width, same outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

DOMAINS = ("A", "B")
NEVER = 1 << 30  # position of a padding slot: after everything


def other(domain: str) -> str:
    return "B" if domain == "A" else "A"


@dataclass(frozen=True)
class Inputs:
    """What the model and evaluation stages read: item index, training sequences, evaluation cases, text vectors.

    The SASRec baselines read no text vectors; only LGCD training reads ``pseudo_overlap``.
    """

    items: pa.Table
    sequences: pa.Table
    eval_cases: pa.Table
    embeddings: np.ndarray | None = None
    pseudo_overlap: pa.Table | None = None


def item_counts(sequences: list[list[int]], size: int) -> torch.Tensor:
    """(size,) float32 occurrences of every item index in ``sequences``."""
    flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64)
    return torch.from_numpy(np.bincount(flat, minlength=size).astype(np.float32))


@dataclass
class ItemIndex:
    """Global ``item_idx`` (0 = padding) <-> per-domain local ids."""

    n_items: int
    domain_code: np.ndarray  # (n_items+1,) int8: 0 = A, 1 = B, -1 = padding
    local_of: np.ndarray  # (n_items+1,) int64 local id in the item's own domain (0 for padding)
    global_of: dict[str, np.ndarray]  # domain -> (n_D+1,) global ids of local ids, [0] = 0

    @classmethod
    def from_table(cls, items: pa.Table) -> ItemIndex:
        idx = np.asarray(items.column("item_idx").to_numpy(), dtype=np.int64)
        dom = np.asarray(items.column("domain").to_pylist())
        n = int(idx.max()) if len(idx) else 0
        code = np.full(n + 1, -1, dtype=np.int8)
        local = np.zeros(n + 1, dtype=np.int64)
        global_of = {}
        for c, d in enumerate(DOMAINS):
            g = np.sort(idx[dom == d])
            code[g] = c
            local[g] = np.arange(1, len(g) + 1)
            global_of[d] = np.concatenate([[0], g]).astype(np.int64)
        return cls(n, code, local, global_of)

    def n_domain(self, domain: str) -> int:
        return len(self.global_of[domain]) - 1

    def text_rows(self, embeddings: np.ndarray, domain: str) -> np.ndarray:
        """The domain's local rows of the global text-embedding matrix (row 0 zeros)."""
        if embeddings.shape[0] != self.n_items + 1:
            raise ValueError(f"embeddings have {embeddings.shape[0]} rows, expected n_items+1 = {self.n_items + 1}")
        rows = np.asarray(embeddings[self.global_of[domain]], dtype=np.float32).copy()
        rows[0] = 0.0
        return rows

    def to_local(self, seqs: list[list[int]], domain: str) -> list[np.ndarray]:
        """Each sequence's items of ``domain``, as local ids, in order."""
        c = DOMAINS.index(domain)
        out = []
        for s in seqs:
            a = np.asarray(s, dtype=np.int64)
            out.append(self.local_of[a[self.domain_code[a] == c]] if len(a) else a)
        return out


def pad_left(rows: list[np.ndarray] | list[list[int]], length: int, fill: int = 0) -> torch.Tensor:
    """Right-align the last ``length`` values of each row into a (N, length) int64 tensor."""
    out = np.full((len(rows), length), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        tail = np.asarray(r, dtype=np.int64)[-length:] if length else np.zeros(0, dtype=np.int64)
        if len(tail):
            out[i, length - len(tail):] = tail
    return torch.from_numpy(out)


def trim_left(*tensors: torch.Tensor, pad_value: int = 0) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row of the first tensor (batch-local length)."""
    real = (tensors[0] != pad_value).any(dim=0)
    first = int(real.nonzero()[0]) if bool(real.any()) else tensors[0].shape[1] - 1
    return tuple(t[:, first:] for t in tensors)


# ------------------------------------------------------------------------------------------------
# Pretraining (eq. 3): single-domain subsequences, next-item targets at every position
# ------------------------------------------------------------------------------------------------


def pretrain_rows(local_seqs: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets, (N, max_len) each, for every subsequence of length >= 2.

    A sequence longer than ``max_len + 1`` keeps its last ``max_len + 1`` items.
    """
    keep = [s[-(max_len + 1):] for s in local_seqs if len(s) >= 2]
    inputs = pad_left([s[:-1] for s in keep], max_len)
    targets = pad_left([s[1:] for s in keep], max_len)
    return inputs, targets


# ------------------------------------------------------------------------------------------------
# LGCD direction datasets (eq. 7-27)
# ------------------------------------------------------------------------------------------------

OVERLAP, PSEUDO = 0, 1


@dataclass
class DirectionData:
    """Pre-padded tensors of every training row of one direction (source -> target).

    ``src``/``src_pos``: source-domain local ids and their positions in the mixed sequence;
    ``tgt``/``tgt_pos``: target-domain local ids and positions; ``label``: which target slots are
    L_rec targets; ``kind``: OVERLAP or PSEUDO per row.
    """

    source: str
    target: str
    src: torch.Tensor  # (N, Ls) int64
    src_pos: torch.Tensor  # (N, Ls) int64, NEVER on padding
    tgt: torch.Tensor  # (N, Lt) int64
    tgt_pos: torch.Tensor  # (N, Lt) int64
    label: torch.Tensor  # (N, Lt) bool
    kind: torch.Tensor  # (N,) int64
    x0: torch.Tensor | None = None  # (N, Lt, d) float: x0 of every target slot, when computed once per run (frozen encoders)
    has_x0: torch.Tensor | None = None  # (N, Lt) bool

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @property
    def overlap_rows(self) -> np.ndarray:
        return (self.kind == OVERLAP).nonzero().flatten().numpy()

    @property
    def pseudo_rows(self) -> np.ndarray:
        return (self.kind == PSEUDO).nonzero().flatten().numpy()

    def batch(self, rows: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        src, src_pos = trim_left(self.src[rows], self.src_pos[rows])
        tgt, tgt_pos, label = trim_left(self.tgt[rows], self.tgt_pos[rows], self.label[rows])
        out = {"src": src, "src_pos": src_pos, "tgt": tgt, "tgt_pos": tgt_pos, "label": label,
               "kind": self.kind[rows]}
        if self.x0 is not None:
            width = tgt.shape[1]
            out["x0"], out["has_x0"] = self.x0[rows, -width:], self.has_x0[rows, -width:]
        return {k: v.to(device) for k, v in out.items()}


class _Row(NamedTuple):
    """One sequence's training row of a direction, before padding (the last max_len items of each domain)."""

    src: np.ndarray  # source-domain local ids
    src_pos: np.ndarray  # their positions in the mixed sequence
    tgt: np.ndarray  # target-domain local ids
    tgt_pos: np.ndarray  # their positions in the mixed sequence
    label: np.ndarray  # bool per target slot: an L_rec target


def _row(index: ItemIndex, seq: list[int], source: str, target: str, max_len: int,
         targets: str, pseudo_mask: list[bool] | None) -> _Row | None:
    a = np.asarray(seq, dtype=np.int64)
    if len(a) == 0:
        return None
    code = index.domain_code[a]
    pos = np.arange(len(a))
    s_sel = code == DOMAINS.index(source)
    t_sel = code == DOMAINS.index(target)
    src, src_pos = index.local_of[a[s_sel]][-max_len:], pos[s_sel][-max_len:]
    tgt, tgt_pos = index.local_of[a[t_sel]][-max_len:], pos[t_sel][-max_len:]
    if len(src) == 0 or len(tgt) == 0:
        return None
    label = tgt_pos > src_pos[0]  # at least one source item precedes the target
    if pseudo_mask is not None:  # pseudo rows: only inserted (pseudo) items are targets
        label &= np.asarray(pseudo_mask, dtype=bool)[t_sel][-max_len:]
    if targets == "last":
        if code[-1] != DOMAINS.index(target):
            return None
        label = label & (np.arange(len(tgt)) == len(tgt) - 1)
    elif targets == "last_per_domain":
        label = label & (np.arange(len(tgt)) == len(tgt) - 1)
    if not label.any():
        return None
    return _Row(src, src_pos, tgt, tgt_pos, label)


def build_direction(index: ItemIndex, source: str, sequences: pa.Table, pseudo_overlap: pa.Table | None,
                    max_len: int, targets: str = "all") -> DirectionData:
    """Training rows of direction ``source -> target``.

    Real overlap rows come from ``sequences`` (user_type 'overlap'); pseudo rows from the
    ``pseudo_overlap`` table rows whose ``target_domain`` is this direction's target.
    ``targets``: 'all' (every target-domain item preceded by a source item is an L_rec target),
    'last_per_domain' (the last target-domain item of each sequence, so an overlap sequence trains
    both directions) or 'last' (paper-literal: only sequences whose last item is in the target domain,
    with that item as the target).
    """
    target = other(source)
    rows, kinds = [], []
    types = sequences.column("user_type").to_pylist()
    for seq, utype in zip(sequences.column("items").to_pylist(), types):
        if utype != "overlap":
            continue
        r = _row(index, seq, source, target, max_len, targets, None)
        if r is not None:
            rows.append(r)
            kinds.append(OVERLAP)
    if pseudo_overlap is not None and pseudo_overlap.num_rows:
        tdom = pseudo_overlap.column("target_domain").to_pylist()
        for seq, mask, td in zip(pseudo_overlap.column("items").to_pylist(),
                                 pseudo_overlap.column("is_pseudo").to_pylist(), tdom):
            if td != target:
                continue
            r = _row(index, seq, source, target, max_len, "all" if targets == "all" else "last_per_domain", mask)
            if r is not None:
                rows.append(r)
                kinds.append(PSEUDO)
    ls = max([len(r.src) for r in rows], default=1)
    lt = max([len(r.tgt) for r in rows], default=1)
    return DirectionData(
        source=source, target=target,
        src=pad_left([r.src for r in rows], ls), src_pos=pad_left([r.src_pos for r in rows], ls, fill=NEVER),
        tgt=pad_left([r.tgt for r in rows], lt), tgt_pos=pad_left([r.tgt_pos for r in rows], lt, fill=NEVER),
        label=pad_left([r.label.astype(np.int64) for r in rows], lt).bool(),
        kind=torch.as_tensor(kinds, dtype=torch.long),
    )
