"""Tensorising sequences: global <-> local item ids, pretraining rows, LGCD direction datasets.

All padding happens here, once, when a dataset is built (a Python loop over users is fine at that
point); a training step only index-selects rows of pre-built tensors.

Conventions: local ids ``1..n_D`` per domain, 0 = padding; rows are right-aligned (left-padded), as
:class:`SequenceTransformer` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

DOMAINS = ("A", "B")
NEVER = 1 << 30  # position of a padding slot: after everything


def other(domain: str) -> str:
    return "B" if domain == "A" else "A"


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

    def in_domain(self, items: list[int] | np.ndarray, domain: str) -> np.ndarray:
        """Boolean mask of the items (global ids) that belong to ``domain``."""
        arr = np.asarray(items, dtype=np.int64)
        return self.domain_code[arr] == DOMAINS.index(domain)

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
        return {k: v.to(device) for k, v in out.items()}


def _row(index: ItemIndex, seq: list[int], source: str, target: str, max_len: int,
         targets: str, pseudo_mask: list[bool] | None) -> tuple | None:
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
    return src, src_pos, tgt, tgt_pos, label


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
    ls = max([len(r[0]) for r in rows], default=1)
    lt = max([len(r[2]) for r in rows], default=1)
    return DirectionData(
        source=source, target=target,
        src=pad_left([r[0] for r in rows], ls), src_pos=pad_left([r[1] for r in rows], ls, fill=NEVER),
        tgt=pad_left([r[2] for r in rows], lt), tgt_pos=pad_left([r[3] for r in rows], lt, fill=NEVER),
        label=pad_left([r[4].astype(np.int64) for r in rows], lt).bool(),
        kind=torch.as_tensor(kinds, dtype=torch.long),
    )


# ------------------------------------------------------------------------------------------------
# Synthetic inputs in the stage contracts' shapes (tests and bench/train_speed.py)
# ------------------------------------------------------------------------------------------------


def synthetic_inputs(n_items_a: int = 60, n_items_b: int = 80, n_overlap: int = 120, n_a_only: int = 80,
                     n_b_only: int = 80, n_valid: int = 60, n_test: int = 0, dim_text: int = 16, n_tastes: int = 4,
                     min_len: int = 4, max_len: int = 12, n_pseudo_items: int = 3, purity: float = 0.9,
                     seed: int = 0) -> dict:
    """Tables shaped like the pipeline's (items, sequences, eval_cases, pseudo_overlap, embeddings).

    Users have one latent taste shared by both domains; items belong to a taste; text vectors are the
    taste's centre plus noise, so both ID and text carry signal and cross-domain transfer is learnable.
    """
    rng = np.random.default_rng(seed)
    n = n_items_a + n_items_b
    item_idx = np.arange(1, n + 1, dtype=np.int32)
    domain = np.array(["A"] * n_items_a + ["B"] * n_items_b)
    taste = rng.integers(0, n_tastes, size=n + 1)
    centres = rng.normal(size=(n_tastes, dim_text))
    emb = (centres[taste] + 0.5 * rng.normal(size=(n + 1, dim_text))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[0] = 0.0
    pools = {(d, k): item_idx[(domain == d) & (taste[1:] == k)] for d in DOMAINS for k in range(n_tastes)}
    alls = {d: item_idx[domain == d] for d in DOMAINS}

    def draw(d: str, k: int, size: int) -> list[int]:
        out = []
        for _ in range(size):
            pool = pools[(d, k)] if rng.random() < purity and len(pools[(d, k)]) else alls[d]
            out.append(int(rng.choice(pool)))
        return out

    def user_seq(kind: str, k: int) -> list[int]:
        length = int(rng.integers(min_len, max_len + 1))
        if kind in ("A", "B"):
            return draw(kind, k, length)
        doms = rng.choice(["A", "B"], size=length)
        doms[:2] = ["A", "B"] if rng.random() < 0.5 else ["B", "A"]
        return [draw(str(d), k, 1)[0] for d in doms]

    users, utypes, seqs, tastes = [], [], [], []
    for kind, count, name in (("O", n_overlap, "overlap"), ("A", n_a_only, "A-only"), ("B", n_b_only, "B-only")):
        for _ in range(count):
            k = int(rng.integers(n_tastes))
            users.append(len(users))
            utypes.append(name)
            seqs.append(user_seq(kind, k))
            tastes.append(k)
    sequences = pa.table({"user_idx": pa.array(users, pa.int32()),
                          "user_id": [f"u{u}" for u in users],
                          "user_type": utypes,
                          "items": pa.array(seqs, pa.list_(pa.int32()))})
    cases = {"case_id": [], "split": [], "user_idx": [], "history": [], "target": [], "target_domain": []}
    for c in range(n_valid + n_test):
        k = int(rng.integers(n_tastes))
        hist = user_seq("O", k)
        tdom = "A" if c % 2 == 0 else "B"
        cases["case_id"].append(c)
        cases["split"].append("valid" if c < n_valid else "test")
        cases["user_idx"].append(len(users) + c)
        cases["history"].append(hist)
        cases["target"].append(draw(tdom, k, 1)[0])
        cases["target_domain"].append(tdom)
    eval_cases = pa.table({"case_id": pa.array(cases["case_id"], pa.int32()), "split": cases["split"],
                           "user_idx": pa.array(cases["user_idx"], pa.int32()),
                           "history": pa.array(cases["history"], pa.list_(pa.int32())),
                           "target": pa.array(cases["target"], pa.int32()), "target_domain": cases["target_domain"]})
    prow = {"user_idx": [], "user_type": [], "source_domain": [], "target_domain": [], "items": [], "is_pseudo": []}
    for u, t, s, k in zip(users, utypes, seqs, tastes):
        if t == "overlap":
            continue
        src = t[0]
        tgt = other(src)
        merged, flags = list(s), [False] * len(s)
        for it in draw(tgt, k, n_pseudo_items):
            p = int(rng.integers(1, len(merged) + 1))
            merged.insert(p, it)
            flags.insert(p, True)
        for key, val in zip(prow, (u, t, src, tgt, merged, flags)):
            prow[key].append(val)
    pseudo = pa.table({"user_idx": pa.array(prow["user_idx"], pa.int32()), "user_type": prow["user_type"],
                       "source_domain": prow["source_domain"], "target_domain": prow["target_domain"],
                       "items": pa.array(prow["items"], pa.list_(pa.int32())),
                       "is_pseudo": pa.array(prow["is_pseudo"], pa.list_(pa.bool_()))})
    items = pa.table({"item_idx": pa.array(item_idx, pa.int32()), "item_id": [f"i{i}" for i in item_idx],
                      "domain": list(domain), "title": [f"item {i}" for i in item_idx],
                      "text": [f"item {i} taste {taste[i]}" for i in item_idx]})
    return {"items": items, "sequences": sequences, "eval_cases": eval_cases, "pseudo_overlap": pseudo,
            "embeddings": emb}
