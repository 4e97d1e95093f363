"""The ``pseudo_overlap_sequences`` stage: source sequences with grounded items inserted (Ŝ_i^A).

A user with source sequence ``s`` (length L) and grounded items ``g`` (length n, in rank order) gets
a sequence of length L + n: n slots drawn uniformly without replacement from the L + n positions
hold ``g`` in order, the others hold ``s`` in order (the source order is preserved). The draw uses a
generator seeded by ``(seed, user_idx)``, so a user's sequence does not depend on which other users
are present or in what order they come.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lgcd_core.config import PseudoOverlapConfig

SCHEMA = pa.schema([
    ("user_idx", pa.int32()),
    ("user_type", pa.string()),
    ("source_domain", pa.string()),
    ("target_domain", pa.string()),
    ("items", pa.list_(pa.int32())),
    ("is_pseudo", pa.list_(pa.bool_())),
])


def insert_items(source: list[int], pseudo: list[int], rng: np.random.Generator) -> tuple[list[int], list[bool]]:
    """Interleave ``pseudo`` into ``source`` at random positions, both keeping their own order."""
    length = len(source) + len(pseudo)
    is_pseudo = np.zeros(length, dtype=bool)
    is_pseudo[rng.choice(length, size=len(pseudo), replace=False)] = True
    src, ins = iter(source), iter(pseudo)
    return [next(ins) if flag else next(src) for flag in is_pseudo], is_pseudo.tolist()


def build_pseudo_overlap(sequences: pa.Table, grounded: pa.Table, cfg: PseudoOverlapConfig) -> tuple[pa.Table, dict]:
    """One pseudo-overlap sequence per grounded user (users missing from ``sequences`` are an error)."""
    by_user = {r["user_idx"]: r for r in sequences.select(["user_idx", "user_type", "items"]).to_pylist()}
    rows = []
    for g in grounded.select(["user_idx", "target_domain", "items"]).to_pylist():
        user = by_user.get(g["user_idx"])
        if user is None:
            raise ValueError(f"grounded user_idx {g['user_idx']} is not in the sequences table")
        rng = np.random.default_rng([cfg.seed, g["user_idx"]])
        merged, flags = insert_items(user["items"], g["items"], rng)
        source = "B" if g["target_domain"] == "A" else "A"
        rows.append({"user_idx": g["user_idx"], "user_type": user["user_type"], "source_domain": source,
                     "target_domain": g["target_domain"], "items": merged, "is_pseudo": flags})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    inserted = [sum(r["is_pseudo"]) for r in rows]
    stats = {
        "users": len(rows),
        "avg_inserted": round(float(np.mean(inserted)), 3) if rows else 0.0,
        "avg_length": round(float(np.mean([len(r["items"]) for r in rows])), 3) if rows else 0.0,
        "avg_source_length": round(float(np.mean([len(r["items"]) - n for r, n in zip(rows, inserted)])), 3) if rows else 0.0,
    }
    return table, stats
