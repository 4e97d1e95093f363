"""Who can rank a target it never saw? Valid cases split by how often the target occurs in training.

    python -m bench.target_coverage --workspace DIR [--dataset movie_book] [--protocol sampled999] [--out FILE]

``DIR`` is a pipeline workspace whose evaluation stage has run (e.g. the ``--keep`` folder of
``bench.reproduce``). Each valid case's target is put in a bucket by the number of times it occurs in
the training sequences (``sequences.parquet``: every user's training items, both domains): an ID
embedding of an item that never occurs there was never trained. Per target domain and bucket the table
gives the share of cases, every model's NDCG@10 (mean ± std over seeds, ``inter_domain``) and LGCD's
paired difference to each model on those cases only (the evaluation stage's comparisons code, 95%
bootstrap interval over cases, pooled over seeds). Only valid is read. Output:
``bench/results/target_coverage_<dataset>.md`` or ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import mean_std, metric_per_seed, publish

BUCKETS = ((0, 0, "0 (never trained)"), (1, 2, "1-2"), (3, 9, "3-9"), (10, None, "≥ 10"))


def _counts(sequences: pa.Table) -> Counter:
    """How often each item index occurs in the training sequences."""
    return Counter(pc.list_flatten(sequences.column("items")).to_pylist())


def _bucket_cases(eval_cases: pa.Table, counts: Counter, domain: str) -> dict[str, np.ndarray]:
    """Valid case ids of target ``domain`` per bucket label."""
    rows = [r for r in eval_cases.select(["case_id", "split", "target", "target_domain"]).to_pylist()
            if r["split"] == "valid" and r["target_domain"] == domain]
    out = {}
    for low, high, label in BUCKETS:
        out[label] = np.asarray([r["case_id"] for r in rows
                                 if counts[r["target"]] >= low and (high is None or counts[r["target"]] <= high)])
    return out


def render(workspace: Path, dataset: str, protocol: str) -> str:
    from lgcd_core.evaluation.comparisons import paired_comparisons

    folder = workspace / "data" / dataset
    counts = _counts(pq.read_table(folder / "sequences" / "sequences.parquet"))
    eval_cases = pq.read_table(folder / "sequences" / "eval_cases.parquet")
    ranks = pq.read_table(folder / "evaluation" / "ranks.parquet")
    ranks = ranks.filter(pc.and_(pc.and_(pc.equal(ranks["split"], "valid"), pc.equal(ranks["setting"], "inter_domain")),
                                 pc.equal(ranks["protocol"], protocol)))
    models = sorted(set(ranks.column("model").to_pylist()), key=lambda m: (m != "lgcd", m))
    lines = []
    for domain in ("A", "B"):
        in_domain = ranks.filter(pc.equal(ranks["target_domain"], domain))
        buckets = _bucket_cases(eval_cases, counts, domain)
        total = sum(len(c) for c in buckets.values())
        lines += [f"### Target domain {domain} ({total} valid cases)", "",
                  "| model | " + " | ".join(f"{label}: {len(c)} cases ({len(c) / max(total, 1):.0%})"
                                           for label, c in buckets.items()) + " |",
                  "|---" * (1 + len(buckets)) + "|"]
        per_bucket = {label: in_domain.filter(pc.is_in(in_domain["case_id"], pa.array(c, pa.int32())))
                      for label, c in buckets.items() if len(c)}
        verdicts = {label: {r["baseline"]: r for r in paired_comparisons(sub, "lgcd", ks=(10,)).to_pylist()
                            if r["metric"] == "NDCG"} for label, sub in per_bucket.items()}
        for model in models:
            cells = []
            for label in buckets:
                if label not in per_bucket:
                    cells.append("–")
                    continue
                cell = mean_std(metric_per_seed(per_bucket[label], model=model))
                c = verdicts[label].get(model)
                if c is not None and (c["ci_low"], c["ci_high"]) != (0.0, 0.0):  # (0, 0): both score 0 on every case
                    cell += f"; LGCD − it {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
                cells.append(cell)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--dataset", default="movie_book")
    parser.add_argument("--protocol", default="sampled999", choices=("sampled999", "full"))
    parser.add_argument("--out", help="file name under bench/results/ (default target_coverage_<dataset>.md)")
    args = parser.parse_args()
    os.environ.update({"LGCD_DATASETS_DIR": str(args.workspace / "datasets"), "LGCD_DATA_ROOT": str(args.workspace / "data")})
    command = "python -m bench.target_coverage " + shlex.join(sys.argv[1:])
    text = (f"# Valid NDCG@10 by how often the target occurs in training ({args.dataset}, {args.protocol}, inter_domain)\n\n"
            f"    {command}\n\n{render(args.workspace, args.dataset, args.protocol)}")
    publish(text, args.out or f"target_coverage_{args.dataset}.md")


if __name__ == "__main__":
    main()
