import numpy as np
import pyarrow as pa
import pytest

from lgcd_core.io import DataError
from lgcd_core.protocol.candidates import draw_candidates


def _items(n_a: int, n_b: int) -> pa.Table:
    n = n_a + n_b
    return pa.table({"item_idx": pa.array(range(1, n + 1), pa.int32()), "domain": ["A"] * n_a + ["B"] * n_b})


def _cases(targets: list[int], domains: list[str], split: str = "valid") -> pa.Table:
    return pa.table({
        "case_id": pa.array(range(len(targets)), pa.int32()),
        "split": [split] * len(targets),
        "history": pa.array([[1]] * len(targets), pa.list_(pa.int32())),
        "target": pa.array(targets, pa.int32()),
        "target_domain": domains,
    })


ITEMS = _items(60, 80)
CASES = _cases([1, 60, 61, 140, 30, 100], ["A", "A", "B", "B", "A", "B"])


def test_same_seed_same_candidates_and_other_seed_differs():
    a = draw_candidates(CASES, ITEMS, "valid", 20, seed=3)
    assert a.equals(draw_candidates(CASES, ITEMS, "valid", 20, seed=3))
    assert not a.equals(draw_candidates(CASES, ITEMS, "valid", 20, seed=4))


def test_negatives_are_distinct_in_domain_and_never_the_target():
    table = draw_candidates(CASES, ITEMS, "valid", 20, seed=0)
    assert table.column("case_id").to_pylist() == list(range(6))
    for negatives, target, domain in zip(table.column("negatives").to_pylist(), CASES.column("target").to_pylist(),
                                         CASES.column("target_domain").to_pylist()):
        assert len(negatives) == len(set(negatives)) == 20
        assert target not in negatives
        lo, hi = (1, 60) if domain == "A" else (61, 140)
        assert all(lo <= n <= hi for n in negatives)


def test_small_domain_uses_every_other_item():
    table = draw_candidates(CASES, ITEMS, "valid", 999, seed=0)
    first = table.column("negatives")[0].as_py()
    assert sorted(first) == list(range(2, 61))


def test_uniform_draw_covers_the_domain():
    cases = _cases([5] * 400, ["A"] * 400)
    counts = np.bincount(np.concatenate(draw_candidates(cases, ITEMS, "valid", 10, 0).column("negatives").to_pylist()),
                         minlength=61)
    assert counts[5] == 0 and counts[0] == 0
    others = np.delete(counts[1:], 4)
    assert others.min() > 30 and others.max() < 120  # expected 4000 / 59 ≈ 68 each


def test_target_outside_its_domain_is_an_error():
    with pytest.raises(DataError, match="target domain"):
        draw_candidates(_cases([100], ["A"]), ITEMS, "valid", 5, 0)
