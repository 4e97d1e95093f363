"""Cyclic minibatches: a fixed number of real overlap users in every batch (paper, cyclic batches).

An epoch is one pass over the pseudo-overlap rows, ``batch_size - overlap_per_batch`` per batch (the
last batch may hold fewer); every batch, the last included, holds exactly ``overlap_per_batch``
overlap rows, drawn by cycling through a shuffled order of the overlap rows that is reshuffled each
time it is used up (the cycle carries over from epoch to epoch through ``state``). An epoch also
covers the overlap rows at least once: when the pseudo rows are too few for that (no pseudo rows, or
an LLM run capped to a sample of users), it continues with batches of ``batch_size`` overlap rows
until as many overlap rows as there are have been drawn. Without this, a capped run's epoch would be
a handful of batches and train on a sliver of the real overlap users. ``cyclic=False`` ('w/o cyclic
batches') pools both kinds and cuts the shuffled pool into plain batches.

Deterministic given (seed, epoch, state). ``rank``/``world_size`` shard the batches of an epoch for
data-parallel launches (every rank gets the same number of batches).
"""

from __future__ import annotations

import numpy as np


class CyclicBatchSampler:
    def __init__(self, overlap_rows: np.ndarray, pseudo_rows: np.ndarray, batch_size: int,
                 overlap_per_batch: int, cyclic: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.overlap = np.asarray(overlap_rows, dtype=np.int64)
        self.pseudo = np.asarray(pseudo_rows, dtype=np.int64)
        self.batch_size = batch_size
        self.m = min(overlap_per_batch, batch_size - 1) if len(self.pseudo) else batch_size
        if len(self.overlap) == 0:
            self.m = 0
        self.cyclic = cyclic
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.state = {"cycle": 0, "offset": 0}  # position in the overlap cycle (checkpointed)

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)

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

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """All batches of ``epoch`` for this rank (advances the overlap cycle state)."""
        rng = np.random.default_rng([self.seed, 0, epoch])
        if not self.cyclic:
            pool = rng.permutation(np.concatenate([self.overlap, self.pseudo]))
            batches = [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        else:
            per = self.batch_size - self.m
            pseudo = rng.permutation(self.pseudo)
            batches = [np.concatenate([self._take_overlap(self.m), pseudo[i:i + per]])
                       for i in range(0, len(pseudo), max(per, 1))]
            short = len(self.overlap) - self.m * len(batches)  # overlap rows this epoch has not drawn yet
            batches += [self._take_overlap(self.batch_size) for _ in range(max(0, -(-short // self.batch_size)))]
        if self.world_size > 1:
            usable = len(batches) - len(batches) % self.world_size or len(batches)
            batches = batches[self.rank:usable:self.world_size]
        return batches
