"""Fixed negative candidates: drawn once per split with a seed, stored, shared by every model.

For each case, ``n_negatives`` items are drawn uniformly without replacement from the target
domain's items, excluding the target. When the domain has fewer than ``n_negatives + 1`` items,
every other item of the domain is a negative (the sampled protocol then equals full ranking).
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lgcd_core.io import DataError
from lgcd_core.protocol.settings import item_domains

CANDIDATE_SCHEMA = pa.schema([("case_id", pa.int32()), ("negatives", pa.list_(pa.int32()))])


def split_cases(eval_cases: pa.Table, split: str) -> pa.Table:
    """The cases of one split, sorted by case_id (the order every evaluation uses)."""
    cases = eval_cases.filter(pc.equal(eval_cases.column("split"), split))
    return cases.sort_by("case_id")


def draw_candidates(eval_cases: pa.Table, items: pa.Table, split: str, n_negatives: int, seed: int) -> pa.Table:
    """Negatives of every case of ``split``: a table ``case_id``, ``negatives`` list<int32>."""
    cases = split_cases(eval_cases, split)
    domains = item_domains(items)
    pools = {d: np.flatnonzero(domains == d).astype(np.int32) for d in ("A", "B")}
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    negatives = []
    for target, domain in zip(cases.column("target").to_pylist(), cases.column("target_domain").to_pylist()):
        pool = pools[domain]
        position = int(np.searchsorted(pool, target))
        if position == len(pool) or pool[position] != target:
            raise DataError(f"eval case target {target} is not an item of its target domain {domain!r}")
        picked = rng.choice(len(pool) - 1, size=min(n_negatives, len(pool) - 1), replace=False)
        negatives.append(pool[picked + (picked >= position)])
    return pa.table(
        {"case_id": cases.column("case_id").cast(pa.int32()), "negatives": pa.array(negatives, pa.list_(pa.int32()))},
        schema=CANDIDATE_SCHEMA,
    )
