"""Toy inputs for model tests and bench/train_speed.py: tables shaped like the pipeline's stage outputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lgcd_core.model.batches import DOMAINS, other


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


def demo_language_inputs(n_users: int) -> tuple[pa.Table, pa.Table]:
    """(items, sequences) of the demo's synthetic generator, for the LLM stage: ``n_users`` single-domain users.

    Items carry their generated titles as text; sequences are the first ``n_users`` single-domain users
    (A-only and B-only alike), items in time order. No k-core filtering: the LLM stage needs none.
    """
    from lgcd_core.config import REPO_ROOT, load_dataset_config
    from lgcd_core.data.synthetic import generate

    spec = load_dataset_config(REPO_ROOT / "datasets" / "demo.yaml").source.synthetic
    meta, reviews = generate(spec)[:2]
    index = {item["asin"]: (d, item["title"]) for d in DOMAINS for item in meta[d]}
    item_idx = {asin: i + 1 for i, asin in enumerate(index)}
    items = pa.Table.from_pylist([{"item_idx": item_idx[a], "item_id": a, "domain": d, "title": t, "text": t}
                                  for a, (d, t) in index.items()])
    by_user: dict[str, list[dict]] = {}
    for review in sorted(reviews["A"] + reviews["B"], key=lambda r: r["unixReviewTime"]):
        by_user.setdefault(review["reviewerID"], []).append(review)
    single = [(u, rs) for u, rs in by_user.items() if len({r["_domain"] for r in rs}) == 1][:n_users]
    sequences = pa.Table.from_pylist([{"user_idx": k + 1, "user_id": u, "user_type": f"{rs[0]['_domain']}-only",
                                       "items": [item_idx[r["asin"]] for r in rs]} for k, (u, rs) in enumerate(single)])
    return items, sequences
