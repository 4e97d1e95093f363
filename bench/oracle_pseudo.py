"""Oracle pseudo users (issue 23 point 5): does the pseudo-row mechanism cap the language pathway, whatever the LLM?

    python -m bench.oracle_pseudo --workspace DIR [--dataset food_kitchen] [--seeds 0,1,2] [--rows ...]
        [--set lgcd.section.field=value ...] [--out FILE]

Half of the overlap users (a seeded draw, ``--convert-seed``) stop being overlap users. They come back as
pseudo-overlap users, one pseudo row per direction in which they have source and target items, in one of
three ways, at equal rows:

- ``true``: their real sequence, with their real target-domain items as the pseudo items (at their real
  positions): what a perfect LLM and grounding would give;
- ``collab``: their source-domain items with as many ``collaborative`` items (co-occurrence among the
  remaining overlap users, ``lgcd_core.language.pseudo_sources``) inserted at seeded random positions
  (``lgcd_core.language.pseudo_overlap.insert_items``): the LLM-free source with real signal;
- ``dropped``: not at all (the reference).

Each of ``true`` and ``collab`` runs with pseudo L_rec on (``_rec1``, eq. 27) and off (``_rec0``), and with the
pseudo condition of eq. 8 (``_id``: ID only) or like real users (``_full``). If ``true`` does not beat
``dropped``, no LLM can make pseudo users help through this mechanism. Everything else is the workspace's
YAML ``lgcd`` section (``--set`` changes it for every row), trained on its pretrained encoders (which saw every
training sequence, so every row stands on the same encoders) and scored like ``bench.ablations``: valid,
``inter_domain``, paired NDCG@10 differences to ``dropped`` with 95% bootstrap intervals over cases.
Output: ``bench/results/oracle_pseudo_<dataset>.md`` or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.ablations import diagnostics_lines, score_rows, table
from bench.common import lgcd_overrides, publish

ROWS = {f"{source}_rec{rec}_{cond}": (source, rec, cond) for source in ("true", "collab") for rec in (0, 1)
        for cond in ("id", "full")}
ROWS["dropped"] = ("dropped", 0, "id")
CONDITION = {"id": "id_fused", "full": "full"}


def convert(sequences: pa.Table, seed: int) -> tuple[pa.Table, list[dict]]:
    """(the sequences without the converted overlap users, the converted users' rows): half of them, seeded."""
    rows = sequences.to_pylist()
    overlap = [i for i, r in enumerate(rows) if r["user_type"] == "overlap"]
    chosen = set(np.random.default_rng(seed).choice(overlap, size=len(overlap) // 2, replace=False).tolist())
    kept = pa.Table.from_pylist([r for i, r in enumerate(rows) if i not in chosen], schema=sequences.schema)
    return kept, [rows[i] for i in sorted(chosen)]


def _directions(user: dict, domains: np.ndarray) -> list[tuple[str, str, list[int], list[int]]]:
    """(source, target, source items, target items) of each direction the user has items on both sides of."""
    out = []
    for source, target in (("A", "B"), ("B", "A")):
        src = [i for i in user["items"] if domains[i - 1] == source]
        tgt = [i for i in user["items"] if domains[i - 1] == target]
        if src and tgt:
            out.append((source, target, src, tgt))
    return out


def pseudo_true(users: list[dict], domains: np.ndarray) -> pa.Table:
    """Each converted user's real sequence, their real target items marked as the pseudo items."""
    from lgcd_core.language.pseudo_overlap import SCHEMA

    rows = [{"user_idx": u["user_idx"], "user_type": "converted", "source_domain": s, "target_domain": t,
             "items": u["items"], "is_pseudo": [bool(domains[i - 1] == t) for i in u["items"]]}
            for u in users for s, t, _, _ in _directions(u, domains)]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def pseudo_collab(users: list[dict], items: pa.Table, kept: pa.Table, history_items: int, seed: int) -> pa.Table:
    """Each converted user's source items with as many collaborative target items as they really have."""
    from lgcd_core.language.pseudo_overlap import SCHEMA, insert_items
    from lgcd_core.language.pseudo_sources import ground_collaborative

    domains = np.asarray(items.column("domain").to_pylist())
    virtual, wanted = [], {}
    for u in users:
        for s, t, src, tgt in _directions(u, domains):
            virtual.append({"user_idx": u["user_idx"], "user_type": f"{s}-only", "items": src})
            wanted[(u["user_idx"], t)] = (src, len(tgt))
    most = max((n for _, n in wanted.values()), default=1)
    grounded, _ = ground_collaborative(virtual, items, kept, most, history_items)
    rows = []
    for g in grounded:
        src, n = wanted[(g["user_idx"], g["target_domain"])]
        merged, flags = insert_items(src, g["items"][:n], np.random.default_rng([seed, g["user_idx"], ord(g["target_domain"])]))
        rows.append({"user_idx": g["user_idx"], "user_type": "converted", "source_domain": "B" if g["target_domain"] == "A" else "A",
                     "target_domain": g["target_domain"], "items": merged, "is_pseudo": flags})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--dataset", default="food_kitchen")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--convert-seed", type=int, default=2023, help="seed of which overlap users are converted")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="lgcd.SECTION.FIELD=VALUE")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.update({"LGCD_DATASETS_DIR": str(args.workspace / "datasets"), "LGCD_DATA_ROOT": str(args.workspace / "data"),
                       "HF_HUB_OFFLINE": "1"})
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.device import resolve_device
    from lgcd_core.evaluation.comparisons import paired_comparisons
    from lgcd_core.model.batches import Inputs
    from lgcd_core.model.train_lgcd import train_lgcd
    from lgcd_core.stages import LGCD_MODEL, PRETRAINED_ENCODERS
    from lgcd_pipeline.stage import sequence_inputs

    cfg = load_dataset_config(dataset_path(args.dataset))
    overrides = lgcd_overrides(args.overrides)
    rows = [r for r in args.rows.split(",") if r]
    if "dropped" not in rows:
        rows.insert(0, "dropped")
    device = resolve_device(cfg.device)
    inputs = Inputs(*sequence_inputs(cfg))
    domains = np.asarray(inputs.items.column("domain").to_pylist())
    kept, converted = convert(inputs.sequences, args.convert_seed)
    tables = {"true": pseudo_true(converted, domains), "dropped": None,
              "collab": pseudo_collab(converted, inputs.items, kept, cfg.llm.history_items, cfg.pseudo_overlap.seed)}
    n_overlap = inputs.sequences.column("user_type").to_pylist().count("overlap")
    print(f"converted {len(converted)} of {n_overlap} overlap users; pseudo rows: "
          f"true {tables['true'].num_rows}, collab {tables['collab'].num_rows}", flush=True)
    work = args.workspace / "oracle_pseudo"
    runs: dict[str, dict[int, Path]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in rows:
            source, rec, cond = ROWS[name]
            out = work / name / f"seed{seed}"
            if not (out / LGCD_MODEL.meta).exists():
                if args.score_only:
                    continue
                lc = cfg.lgcd.with_updates({**overrides, "training.seed": seed, "loss_weights.pseudo_rec": float(rec),
                                            "interpretation.pseudo_condition": CONDITION[cond]})
                started = time.perf_counter()
                print(f"== {name} seed {seed}", flush=True)
                train_lgcd(lc, Inputs(inputs.items, kept, inputs.eval_cases, inputs.embeddings, tables[source]),
                           PRETRAINED_ENCODERS.path(cfg), out, device, log=lambda m: print(m, flush=True))
                (out / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
            runs.setdefault(name, {})[seed] = out
    ranks = score_rows(cfg, inputs, runs, device)
    comparisons = paired_comparisons(ranks, "dropped", ks=cfg.evaluation.ks, seed=cfg.evaluation.candidate_seed)
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    command = "python -m bench.oracle_pseudo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = [f"# Oracle pseudo users on {args.dataset} (valid, inter_domain)", "", f"`{command}`", "",
            f"{len(converted)} overlap users (seed {args.convert_seed}) become pseudo users: `true` (their real target "
            "items as pseudo items), `collab` (as many collaborative items), or `dropped` (the reference). "
            f"`_rec1`/`_rec0`: pseudo L_rec on/off; `_id`/`_full`: pseudo condition ID-only/like real users. The YAML's "
            f"`lgcd` section{f' with {overrides}' if overrides else ''}; Δ = row minus `dropped`, per case, pooled over "
            "seeds, 95% bootstrap interval over cases.", ""]
    for protocol, label in (("sampled999", "999 sampled negatives"), ("full", "full ranking")):
        text += [f"## {label}", "", *table(ranks, comparisons, [r for r in rows if r in runs], "dropped", names, protocol, runs), ""]
    text += ["## Generator diagnostics (valid)", "", *diagnostics_lines(runs), ""]
    publish("\n".join(text), args.out or f"oracle_pseudo_{args.dataset}.md")


if __name__ == "__main__":
    main()
