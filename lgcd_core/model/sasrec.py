"""SASRec-style causal Transformer over a sequence of item vectors (paper eq. 1).

Pre-LayerNorm blocks, learned absolute positions, scaled-dot-product attention with a causal and a
padding mask. Sequences are right-aligned (left-padded with item 0), so the last real position is the
last column; :func:`last_real` also handles right padding.

Where positions count from (``positions``):

- ``start`` (the default; RecBole's SASRec): the first real item of a row is position 0, the next 1, ...
  With the causal mask this makes the encoder *prefix-exact*: its output at slot k equals its output on
  the prefix ending at k, read alone. Every training read (a condition, x0, a next-item target at slot
  k) then sees exactly what inference sees after the same items.
- ``end`` (the public pmixer SASRec, whose rows are always ``max_len`` wide): the last column is
  position ``max_len - 1``. The output at slot k then depends on how many items come *after* k, so a
  read in the middle of a training row is not what inference computes for that prefix. Kept for the
  public-recipe baselines (``sasrec_bce_*``) and to measure the difference.

Both give a row the same outputs whether the batch is padded to its own longest row or to ``max_len``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Positions = Literal["start", "end"]


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        x = x + self.dropout(self.proj(y.transpose(1, 2).reshape(b, length, d)))
        return x + self.dropout(self.ffn(self.ln2(x)))


class SequenceTransformer(nn.Module):
    """Maps item vectors ``(B, L, d)`` and a padding mask ``(B, L)`` to hidden states ``(B, L, d)``."""

    def __init__(self, d: int, n_layers: int, n_heads: int, max_len: int, dropout: float,
                 positions: Positions = "start") -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d={d} must be divisible by n_heads={n_heads}")
        if positions not in ("start", "end"):
            raise ValueError(f"positions must be 'start' or 'end', got {positions!r}")
        self.max_len = max_len
        self.positions = positions
        self.pos = nn.Embedding(max_len, d)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``x``: (B, L, d) item vectors; ``pad``: (B, L) True where the position is padding."""
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        h = self.dropout(x * (x.shape[-1] ** 0.5) + self.pos(self.position_ids(pad)))
        h = h.masked_fill(pad.unsqueeze(-1), 0.0)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # A query may attend to itself and to earlier real keys; a padded query still sees itself
        # so that no attention row is empty (its output is masked out below and never read).
        allowed = causal & ~pad[:, None, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)
        for block in self.blocks:
            h = block(h, allowed)
            h = h.masked_fill(pad.unsqueeze(-1), 0.0)
        return self.ln_f(h)

    def position_ids(self, pad: torch.Tensor) -> torch.Tensor:
        """(B, L) padding mask -> position ids, (B, L) for ``start`` or (L,) for ``end`` (see the module docstring)."""
        length = pad.shape[1]
        if self.positions == "end":
            return torch.arange(self.max_len - length, self.max_len, device=pad.device)
        return ((~pad).long().cumsum(1) - 1).clamp(min=0)  # padding slots read position 0; they are masked


def last_real(hidden: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last non-padding position of each row: (B, L, d) -> (B, d).

    A row with no real position returns zeros (an empty history).
    """
    real = ~pad
    idx = torch.where(real, torch.arange(pad.shape[1], device=pad.device), -1).max(dim=1).values
    out = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx.clamp(min=0)]
    return out * (idx >= 0).unsqueeze(-1).to(out.dtype)

