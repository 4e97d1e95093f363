import numpy as np
import pytest

from lgcd_core.model.sampler import CyclicBatchSampler


def split(batch: np.ndarray, overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    is_overlap = np.isin(batch, overlap)
    return batch[is_overlap], batch[~is_overlap]


@pytest.mark.parametrize("n_pseudo", [95, 96, 30])
def test_every_batch_has_m_overlap_rows_and_batch_size_minus_m_pseudo_rows(n_pseudo):
    overlap, pseudo = np.arange(10), np.arange(100, 100 + n_pseudo)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=3)
    for epoch in (1, 2):
        batches = s.epoch(epoch)
        assert len(batches) == -(-n_pseudo // 12)  # one pass over the pseudo rows (more than the 3 overlap needs)
        drawn = []
        for b in batches:  # the last batch included
            o, p = split(b, overlap)
            assert len(o) == 4 and len(p) == 12 == len(set(p))
            drawn += p.tolist()
        counts = np.bincount(np.asarray(drawn) - 100, minlength=n_pseudo)
        assert counts.min() >= 1  # every pseudo row at least once an epoch ...
        assert (counts > 1).sum() == 12 * len(batches) - n_pseudo  # ... and only the last batch's filler twice


@pytest.mark.parametrize("n_pseudo", [7, 1])
def test_fewer_pseudo_rows_than_a_batch_holds_are_spread_once_over_the_epoch(n_pseudo):
    overlap, pseudo = np.arange(50), np.arange(100, 100 + n_pseudo)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=3)
    batches = s.epoch(1)
    assert len(batches) == 13  # enough batches to draw every overlap row once: ceil(50 / 4)
    assert all(len(split(b, overlap)[0]) == 4 for b in batches)
    drawn = np.concatenate([split(b, overlap)[1] for b in batches])
    assert sorted(drawn) == list(pseudo)  # every pseudo row exactly once, like every overlap row
    assert set(np.concatenate(batches)) >= set(overlap)


@pytest.mark.parametrize("n_pseudo", [7, 1])
def test_with_pseudo_repeats_few_pseudo_rows_ride_in_every_batch(n_pseudo):
    overlap, pseudo = np.arange(50), np.arange(100, 100 + n_pseudo)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=3, pseudo_repeats=True)
    for b in s.epoch(1):
        o, p = split(b, overlap)
        assert len(o) == 4 and sorted(p) == list(pseudo)


def test_few_pseudo_rows_are_never_drawn_more_often_than_overlap_rows():
    overlap, pseudo = np.arange(100), np.arange(1000, 1020)  # a capped run: 20 pseudo rows, 100 overlap rows
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=0)
    for epoch in (1, 2):
        batches = s.epoch(epoch)
        assert len(batches) == 25 == s.n_batches()
        assert sorted(np.concatenate([split(b, overlap)[0] for b in batches])) == list(overlap)  # each overlap row once
        assert sorted(np.concatenate([split(b, overlap)[1] for b in batches])) == list(pseudo)  # each pseudo row once
        assert max(len(split(b, overlap)[1]) for b in batches) == 1


def test_with_pseudo_repeats_few_pseudo_rows_cycle_so_every_batch_carries_its_share():
    overlap, pseudo = np.arange(100), np.arange(1000, 1020)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=0, pseudo_repeats=True)
    batches = s.epoch(1)
    assert len(batches) == 25 == s.n_batches()
    drawn = []
    for b in batches:
        o, p = split(b, overlap)
        assert len(o) == 4 and len(p) == 12 == len(set(p))
        drawn += p.tolist()
    counts = np.bincount(np.asarray(drawn) - 1000)
    assert counts.min() >= 12  # 12 complete passes of 2 batches, then one batch of a 13th


def test_the_documented_capped_food_kitchen_layout():
    """500 LLM users on Food-Kitchen (docs/method.md): 68 pseudo rows A->B, 432 B->A."""
    b_to_a = CyclicBatchSampler(np.arange(7000), np.arange(10_000, 10_432), batch_size=128, overlap_per_batch=32, seed=0)
    batches = b_to_a.epoch(1)
    assert len(batches) == 219 and all((b < 7000).sum() == 32 for b in batches)
    assert sorted(np.concatenate([b[b >= 10_000] for b in batches])) == list(range(10_000, 10_432))
    a_to_b = CyclicBatchSampler(np.arange(7300), np.arange(10_000, 10_068), batch_size=128, overlap_per_batch=32, seed=0)
    assert a_to_b.n_batches() == 229
    assert sorted(np.concatenate([b[b >= 10_000] for b in a_to_b.epoch(1)])) == list(range(10_000, 10_068))


def test_overlap_rows_cycle_before_repeating():
    overlap, pseudo = np.arange(10), np.arange(100, 160)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=8, overlap_per_batch=5, seed=0)
    drawn = np.concatenate([b[:5] for b in s.epoch(1) + s.epoch(2)])
    for lo in range(0, len(drawn) - 9, 10):
        assert sorted(drawn[lo:lo + 10]) == list(range(10))


def test_deterministic_and_state_resume():
    a = CyclicBatchSampler(np.arange(7), np.arange(10, 50), 8, 3, seed=1)
    b = CyclicBatchSampler(np.arange(7), np.arange(10, 50), 8, 3, seed=1)
    a.epoch(1)
    state = dict(a.state)
    b.state = state
    assert all((x == y).all() for x, y in zip(a.epoch(2), b.epoch(2)))


def test_non_cyclic_and_single_kind():
    s = CyclicBatchSampler(np.arange(10), np.arange(10, 40), 8, 3, cyclic=False, seed=0)
    assert sorted(np.concatenate(s.epoch(1))) == list(range(40))
    only = CyclicBatchSampler(np.arange(20), np.array([], dtype=int), 8, 3, seed=0)
    batches = only.epoch(1)
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)
    no_overlap = CyclicBatchSampler(np.array([], dtype=int), np.arange(100, 120), 8, 3, seed=0)
    batches = no_overlap.epoch(1)
    assert len(batches) == 3 and all(len(b) == 8 == len(set(b)) for b in batches)
    assert set(np.concatenate(batches)) == set(range(100, 120))


@pytest.mark.parametrize("world_size", [2, 3])
def test_the_ranks_batches_of_a_step_make_up_the_batch_of_one_process(world_size):
    overlap, pseudo = np.arange(10), np.arange(10, 90)
    full = CyclicBatchSampler(overlap, pseudo, 8, 3, seed=0).epoch(1)
    shards = [CyclicBatchSampler(overlap, pseudo, 8, 3, seed=0, rank=r, world_size=world_size).epoch(1)
              for r in range(world_size)]
    assert all(len(sh) == len(full) for sh in shards)
    for step, batch in enumerate(full):
        parts = [sh[step] for sh in shards]
        assert sorted(np.concatenate(parts)) == sorted(batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_batch_smaller_than_the_ranks_is_left_out():
    pooled = dict(overlap_rows=np.arange(5), pseudo_rows=np.arange(5, 9), batch_size=4, overlap_per_batch=2, cyclic=False)
    assert [len(b) for b in CyclicBatchSampler(**pooled).epoch(1)] == [4, 4, 1]
    for rank in range(2):
        assert [len(b) for b in CyclicBatchSampler(**pooled, rank=rank, world_size=2).epoch(1)] == [2, 2]
