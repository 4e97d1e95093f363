import numpy as np
import pytest

from lgcd_core.model.sampler import CyclicBatchSampler


@pytest.mark.parametrize("n_pseudo", [95, 96, 30])
def test_every_batch_has_exactly_m_overlap_rows(n_pseudo):
    overlap, pseudo = np.arange(10), np.arange(100, 100 + n_pseudo)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=3)
    for epoch in (1, 2):
        batches = s.epoch(epoch)
        assert len(batches) == -(-n_pseudo // 12)
        for b in batches:  # the last batch included
            assert np.isin(b, overlap).sum() == 4
        got = np.concatenate([b[~np.isin(b, overlap)] for b in batches])
        assert sorted(got) == list(pseudo)  # every pseudo row once per epoch


@pytest.mark.parametrize("n_pseudo", [7, 1])
def test_few_pseudo_rows_still_give_an_epoch_of_every_overlap_row(n_pseudo):
    overlap, pseudo = np.arange(50), np.arange(100, 100 + n_pseudo)
    s = CyclicBatchSampler(overlap, pseudo, batch_size=16, overlap_per_batch=4, seed=3)
    batches = s.epoch(1)
    mixed, plain = batches[0], batches[1:]
    assert sorted(mixed[~np.isin(mixed, overlap)]) == list(pseudo) and np.isin(mixed, overlap).sum() == 4
    assert len(plain) == 3 and all(len(b) == 16 and np.isin(b, overlap).all() for b in plain)  # 4 + 3 * 16 >= 50
    assert set(np.concatenate(batches)) >= set(overlap)


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


def test_non_cyclic_and_no_pseudo_and_shards():
    s = CyclicBatchSampler(np.arange(10), np.arange(10, 40), 8, 3, cyclic=False, seed=0)
    assert sorted(np.concatenate(s.epoch(1))) == list(range(40))
    only = CyclicBatchSampler(np.arange(20), np.array([], dtype=int), 8, 3, seed=0)
    batches = only.epoch(1)
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)
    shards = [CyclicBatchSampler(np.arange(10), np.arange(10, 90), 8, 3, seed=0, rank=r, world_size=2).epoch(1)
              for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 8
    p0, p1 = (set(np.concatenate(sh)) - set(range(10)) for sh in shards)
    assert not p0 & p1 and len(p0) + len(p1) == 80
