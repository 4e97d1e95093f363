"""Reproducible per-user Gaussian noise for inference: counter-based, vectorised, any device.

The reverse process starts from a noised guess (eq. 18-20), so every score depends on a draw of ε.
To keep scores reproducible and independent of how cases are batched, a user's ε is a function of

- a *row key*: a hash of the row's own source history (its non-padding item ids, in order), so a
  user's noise does not depend on the other rows of the batch, the batch size or the left padding;
- a *stream*: (model seed, direction, draw index), so another seed or the next of
  ``diffusion.inference_draws`` draws gets independent noise.

Two cases with the same source history get the same noise, as they get the same condition: a
score is a function of the model's input and seed. ε[row, j] = Box-Muller of two 32-bit hashes of
(row key, stream, counter j); everything is int64 tensor arithmetic kept below 2^63 (no overflow),
so the same values come out on CPU and GPU, with no Python loop over rows. Training draws its ε
from the run's seeded ``torch.Generator`` instead (its state is checkpointed).
"""

from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / φ: spreads consecutive counters over the 32-bit range


def _mul32(x: torch.Tensor, a: int) -> torch.Tensor:
    """(x · a) mod 2^32 for 0 <= x < 2^32 and a constant a < 2^32, in 16-bit halves (no int64 overflow)."""
    return ((x & 0xFFFF) * a + (((x >> 16) * a) & 0xFFFF) * 65536) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply, the constants of C. Wellons' public-domain 'lowbias32').

    Input and output: int64 tensors holding values in [0, 2^32); a bijection of that range.
    """
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0xD35A2D97)
    return x ^ (x >> 15)


def history_keys(src: torch.Tensor) -> torch.Tensor:
    """(B, L) item ids (0 = padding) -> (B,) int64 keys in [0, 2^32) of each row's items, in order.

    Each item is hashed with its rank among the row's items counted from the end; padding is skipped,
    so a row's key does not depend on how far (or where) it is padded.
    """
    src = src.long()
    real = src != 0
    rank = real.flip(1).cumsum(1).flip(1)  # 1 for the last real item, 2 for the one before, ...
    terms = torch.where(real, hash32(src ^ _mul32(rank, _GOLDEN)), 0)
    return hash32(terms.sum(1) & _M32)


def stream_id(*parts: int) -> int:
    """One 32-bit stream number from small integers (seed, direction code, draw index)."""
    x = torch.zeros((), dtype=torch.long)
    for p in parts:
        x = hash32(x ^ hash32(torch.tensor(p & _M32)))
    return int(x)


def keyed_normal(keys: torch.Tensor, d: int, stream: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N,) int64 row keys -> (N, d) standard normal noise, a function of (key, stream) only."""
    half = (d + 1) // 2
    j = torch.arange(2 * half, dtype=torch.long, device=keys.device)
    base = hash32(keys ^ stream)[:, None]
    bits = hash32(hash32(base ^ (_GOLDEN * j & _M32)) + base)  # (N, 2·half)
    u = (bits.double() + 0.5) / 2.0 ** 32  # uniform in (0, 1)
    radius = torch.sqrt(-2.0 * torch.log(u[:, :half]))
    angle = 2.0 * math.pi * u[:, half:]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :d]
    return z.to(dtype)
