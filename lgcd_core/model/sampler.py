"""Cyclic minibatches (paper, cyclic batches): pseudo/single-domain rows plus a fixed number of overlap rows.

The paper's layout: batches of single-domain users (batch size 128) with real overlap users fed in
by a separate iterator, so every step has both. Here every batch (the last included) holds:

- exactly ``m = overlap_per_batch`` overlap rows, drawn by cycling through a shuffled order of the
  overlap rows that is reshuffled each time it is used up (the cycle carries over from epoch to epoch
  through ``state``, so overlap rows are drawn evenly however epochs fall);
- ``k = batch_size - m`` pseudo rows (all of them, ``k = P``, when there are fewer than that).

An epoch is one pass over the P pseudo rows (a seeded permutation cut into batches of k; a last, short
batch is filled up with rows of the same pass it does not hold, so every batch has exactly k and every
pseudo row is drawn at least once an epoch). When that pass takes fewer batches than it takes to draw
every overlap row once (``ceil(O / m)``: few pseudo rows, e.g. an LLM run capped to a sample of users),
the epoch goes on to ``ceil(O / m)`` batches, and the pseudo rows of one pass are spread over them
(each batch holds ``m`` overlap rows and about ``P / ceil(O / m)`` pseudo rows): no pseudo row is drawn
more often than an overlap row. ``pseudo_repeats=True`` (``training.pseudo_repeats``, the behaviour
before issue 23) instead cycles the pseudo rows so each of those batches carries k of them: with P = 68
and 7,300 overlap rows (m = 32, k = 96) an epoch is 229 batches and each pseudo row is drawn about 320
times, each overlap row once.

Without pseudo rows every batch is ``batch_size`` overlap rows and an epoch is one pass over them;
without overlap rows every batch is ``batch_size`` pseudo rows. ``cyclic=False`` ('w/o cyclic
batches') pools both kinds and cuts the shuffled pool into plain batches.

Deterministic given (seed, epoch, state). ``rank``/``world_size`` shard every batch by rows for
data-parallel launches: rank r keeps rows r, r + W, ... of each batch (overlap rows first, so with m a
multiple of W every rank has m / W of them), hence the union of the ranks' batches of a step is the
batch one process trains on, with the same number of steps. A batch with fewer rows than ranks (the
pooled layout's last) is left out, so no rank steps on an empty batch.
"""

from __future__ import annotations

import numpy as np

from lgcd_core.model.processes import shard


class CyclicBatchSampler:
    def __init__(self, overlap_rows: np.ndarray, pseudo_rows: np.ndarray, batch_size: int,
                 overlap_per_batch: int, cyclic: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pseudo_repeats: bool = False) -> None:
        self.overlap = np.asarray(overlap_rows, dtype=np.int64)
        self.pseudo = np.asarray(pseudo_rows, dtype=np.int64)
        self.batch_size = batch_size
        self.m = min(overlap_per_batch, batch_size - 1) if len(self.pseudo) else batch_size
        if len(self.overlap) == 0:
            self.m = 0
        self.k = min(batch_size - self.m, len(self.pseudo))  # pseudo rows per batch
        self.cyclic = cyclic
        self.pseudo_repeats = pseudo_repeats
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.state = {"cycle": 0, "offset": 0}  # position in the overlap cycle (checkpointed)

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)

    def n_batches(self) -> int:
        """Batches of one epoch (before sharding): one pass over the pseudo rows, at least one over the overlap rows."""
        if not self.cyclic:
            return -(-(len(self.overlap) + len(self.pseudo)) // self.batch_size)
        pseudo_pass = -(-len(self.pseudo) // self.k) if self.k else 0
        overlap_pass = -(-len(self.overlap) // self.m) if self.m else 0
        return max(pseudo_pass, overlap_pass)

    def _cycle_order(self, cycle: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, cycle]).permutation(self.overlap)

    def _take_overlap(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            order = self._cycle_order(self.state["cycle"])
            chunk = order[self.state["offset"]:self.state["offset"] + n]
            out.append(chunk)
            n -= len(chunk)
            self.state["offset"] += len(chunk)
            if self.state["offset"] >= len(order):
                self.state = {"cycle": self.state["cycle"] + 1, "offset": 0}
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _pseudo_pass(self, epoch: int, i: int) -> list[np.ndarray]:
        """Pass ``i`` of ``epoch`` over the pseudo rows: batches of exactly k distinct rows, every row at least once."""
        rng = np.random.default_rng([self.seed, 0, epoch, i])
        order = rng.permutation(self.pseudo)
        batches = [order[j:j + self.k] for j in range(0, len(order), self.k)]
        short = self.k - len(batches[-1])
        if short:  # fill the last batch with rows of this pass it does not hold
            others = order[:len(order) - len(batches[-1])]
            batches[-1] = np.concatenate([batches[-1], rng.choice(others, size=short, replace=False)])
        return batches

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """All batches of ``epoch`` for this rank (advances the overlap cycle state)."""
        if not self.cyclic:
            rng = np.random.default_rng([self.seed, 0, epoch])
            pool = rng.permutation(np.concatenate([self.overlap, self.pseudo]))
            batches = [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        else:
            n = self.n_batches()
            pseudo: list[np.ndarray] = []
            passes = 0
            if self.k and not self.pseudo_repeats and len(self._pseudo_pass(epoch, 0)) < n:
                # one pass, spread over the epoch's batches: every pseudo row once, like every overlap row
                order = np.random.default_rng([self.seed, 0, epoch, 0]).permutation(self.pseudo)
                pseudo = np.array_split(order, n)
            while self.k and len(pseudo) < n:
                pseudo += self._pseudo_pass(epoch, passes)
                passes += 1
            empty = np.zeros(0, dtype=np.int64)
            batches = [np.concatenate([self._take_overlap(self.m), pseudo[b] if self.k else empty]) for b in range(n)]
        if self.world_size > 1:
            batches = [shard(b, self.rank, self.world_size) for b in batches if len(b) >= self.world_size]
        return batches
