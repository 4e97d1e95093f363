"""LGCD for users with both histories (issue 15, our extension) against the public SASRec, on valid.

    python -m bench.mixed_history --workspace DIR [--dataset food_kitchen] [--row full] [--seeds 0,1,2]

Reads the LGCD runs that ``bench.ablations`` trained for ``--row`` (``DIR/ablations/<row>/seed<k>/``)
and scores the valid cases in the ``mixed_history`` setting (the whole history, both domains) on the
evaluation stage's candidates, three ways, per seed:

- ``lgcd_source_only``: the paper's inference path, reading the source-domain items only;
- ``pretrained_encoder``: the target domain's pretrained ID+text encoder on the target-domain items;
- ``lgcd``: LGCD reading both (``LGCDModel.user_vectors`` with the target history: the known x0 as
  warm start and the target encoder's user vector added, ``interpretation.target_history_weight``).

The table gives HR@5 / HR@10 / NDCG@5 / NDCG@10 per target domain (mean ± std over seeds), the paired
NDCG@10 difference of ``lgcd`` to the two others (95% bootstrap interval over cases, pooled over the
seeds), and the public SASRec's valid figures of docs/models.md measured with the same protocol. Only valid
is read. Output: ``bench/results/mixed_history_<dataset>.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import pyarrow as pa

from bench.common import mean_std, metric_per_seed, publish

# docs/models.md, "How strong the baselines must be": the public SASRec on Food-Kitchen valid, mixed_history,
# HR@5 / HR@10 / NDCG@5 / NDCG@10 (one seed).
PUBLIC_SASREC = {
    "public SASRec, mixed (docs/models.md)": {"A": (.350, .504, .227, .277), "B": (.260, .350, .178, .207)},
    "public SASRec, single-domain (docs/models.md)": {"A": (.372, .493, .254, .294), "B": (.245, .330, .161, .188)},
}
COLUMNS = [("HR", 5), ("HR", 10), ("NDCG", 5), ("NDCG", 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--dataset", default="food_kitchen")
    parser.add_argument("--row", default="full", help="the bench.ablations row whose runs are scored")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    os.environ.update({"LGCD_DATASETS_DIR": str(args.workspace / "datasets"), "LGCD_DATA_ROOT": str(args.workspace / "data"),
                       "HF_HUB_OFFLINE": "1"})
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.device import resolve_device
    from lgcd_core.evaluation.comparisons import paired_comparisons
    from lgcd_core.model.batches import Inputs
    from lgcd_core.model.scoring import load_encoder_scorer, load_lgcd_scorer
    from lgcd_core.protocol.candidates import draw_candidates
    from lgcd_core.protocol.ranking import score_all
    from lgcd_core.stages import PRETRAINED_ENCODERS
    from lgcd_pipeline.stage import sequence_inputs

    cfg = load_dataset_config(dataset_path(args.dataset))
    device = resolve_device(cfg.device)
    inputs = Inputs(*sequence_inputs(cfg))
    ev = cfg.evaluation
    candidates = {"valid": draw_candidates(inputs.eval_cases, inputs.items, "valid", ev.n_negatives, ev.candidate_seed)}
    encoders = PRETRAINED_ENCODERS.path(cfg)
    ranks = []
    seeds = [int(s) for s in args.seeds.split(",")
             if (args.workspace / "ablations" / args.row / f"seed{s}" / "lgcd.json").exists()]
    for seed in seeds:
        run = args.workspace / "ablations" / args.row / f"seed{seed}"
        scorers = {"lgcd": load_lgcd_scorer(run, encoders, inputs.embeddings, inputs.items, device, read_target_history=True),
                   "lgcd_source_only": load_lgcd_scorer(run, encoders, inputs.embeddings, inputs.items, device),
                   "pretrained_encoder": load_encoder_scorer(encoders, inputs.embeddings, inputs.items, device)}
        ranks.append(score_all(scorers, inputs.eval_cases, candidates, inputs.items, ks=ev.ks, seed=seed,
                               settings=("mixed_history",), batch_size=ev.batch_size).ranks)
    ranks = pa.concat_tables(ranks)
    comparisons = paired_comparisons(ranks, "lgcd", ks=ev.ks, seed=ev.candidate_seed)
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    head = ["model"] + [f"{names[d]} {m}@{k}" for d in "AB" for m, k in COLUMNS] + \
           [f"{names[d]} lgcd minus it, NDCG@10 [95% CI]" for d in "AB"]
    lines = [f"# LGCD with both histories on {args.dataset} (valid, mixed_history, 999 sampled negatives)", "",
             "`python -m bench.mixed_history " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`", "",
             f"LGCD runs: `{args.workspace}/ablations/{args.row}/seed<k>` (bench.ablations), seeds {seeds}.", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    comp = {(r["baseline"], r["target_domain"]): r for r in comparisons.to_pylist()
            if r["protocol"] == "sampled999" and r["metric"] == "NDCG" and r["k"] == 10}
    for model in ("lgcd", "lgcd_source_only", "pretrained_encoder"):
        cells = [model] + [mean_std(metric_per_seed(ranks, m, k, model=model, target_domain=d, protocol="sampled999"))
                           for d in "AB" for m, k in COLUMNS]
        for d in "AB":
            c = comp.get((model, d))
            cells.append("–" if c is None else f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    for label, values in (PUBLIC_SASREC.items() if args.dataset == "food_kitchen" else ()):
        lines.append("| " + " | ".join([label] + [f"{v:.3f}" for d in "AB" for v in values[d]] + ["–", "–"]) + " |")
    publish("\n".join(lines) + "\n", f"mixed_history_{args.dataset}.md")


if __name__ == "__main__":
    main()
