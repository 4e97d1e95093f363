"""Reverse-process sampler steps vs. ranking quality of one trained LGCD model, on valid only.

    python -m bench.sampler_steps [--dataset demo] [--steps 1,2,3,5,10,20,0] [--draws 1] [--model-dir DIR]

One command after the model exists, e.g. for the demo:

    LGCD_DATA_ROOT=/tmp/x DAGSTER_HOME=$(mktemp -d) .venv/bin/dagster asset materialize \\
        -m lgcd_pipeline.definitions --select '*demo/lgcd_model'
    LGCD_DATA_ROOT=/tmp/x .venv/bin/python -m bench.sampler_steps --dataset demo

It loads the dataset's trained default LGCD model (``lgcd_model`` stage folder, or ``--model-dir``) and
scores the valid cases (``inter_domain``: source-domain items only) with each ``diffusion.sampler_steps``
(0 = every step of eq. 20, the full chain), nothing retrained: the model was trained with its YAML's
sampler. Each row gives the denoiser calls per user (per ε draw), HR@10 and NDCG@10 per target domain
on the YAML's sampled candidates (drawn as the evaluation stage draws them) and in full ranking, the
relative change of the mean sampled HR@10 against the full chain, and the scoring time per user.
Also: how close each sampler's h^rev is to the full chain's (R², same ε). The table goes to
bench/results/sampler_steps_<dataset>.md. Test is never read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import publish


def _load(dataset: str):
    from lgcd_core.config import discover_datasets
    from lgcd_core.io import read_parquet
    from lgcd_core.stages import ITEM_TEXT_EMBEDDINGS, LGCD_MODEL, PRETRAINED_ENCODERS, SEQUENCES

    cfg = next((c for c in discover_datasets() if c.name == dataset), None)
    if cfg is None:
        raise SystemExit(f"no dataset {dataset!r} (datasets folder: LGCD_DATASETS_DIR)")
    items = read_parquet(SEQUENCES.items.path(cfg))
    cases = read_parquet(SEQUENCES.eval_cases.path(cfg))
    embeddings = np.load(ITEM_TEXT_EMBEDDINGS.vectors.path(cfg))
    return cfg, items, cases, embeddings, LGCD_MODEL.path(cfg), PRETRAINED_ENCODERS.path(cfg)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--steps", default="1,2,3,5,10,20,50,0",
                    help="sampler_steps values; 0 = the full chain of eq. 20; >= t_start = DDIM on every step")
    ap.add_argument("--draws", type=int, default=1, help="diffusion.inference_draws for every row")
    ap.add_argument("--model-dir", default=None, help="a trained LGCD run folder (default: the dataset's default model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="results file name under bench/results")
    args = ap.parse_args(argv)

    from lgcd_core.model.batches import ItemIndex, other, pad_left, trim_left
    from lgcd_core.model.diagnostics import diagnostic_cases, r2
    from lgcd_core.model.scoring import load_lgcd_model, load_lgcd_scorer
    from lgcd_core.protocol.candidates import draw_candidates
    from lgcd_core.protocol.ranking import score_all

    torch.manual_seed(0)
    cfg, items, cases, embeddings, model_dir, enc_dir = _load(args.dataset)
    model_dir = Path(args.model_dir) if args.model_dir else model_dir
    steps = [int(s) for s in args.steps.split(",")]
    if 0 not in steps:
        steps.append(0)
    candidates = {"valid": draw_candidates(cases, items, "valid", cfg.evaluation.n_negatives, cfg.evaluation.candidate_seed)}
    n_valid = sum(s == "valid" for s in cases.column("split").to_pylist())
    index = ItemIndex.from_table(items)
    trained, _ = load_lgcd_model(model_dir, enc_dir, embeddings, items, args.device)
    score_all({"lgcd": load_lgcd_scorer(model_dir, enc_dir, embeddings, items, args.device)}, cases, candidates, items,
              ks=(10,), settings=("inter_domain",))  # warm-up: the first scoring pays for caches and allocations

    rows, h_revs = {}, {}
    for k in steps:
        updates = {"diffusion.sampler_steps": k or None, "diffusion.inference_draws": args.draws}
        scorer = load_lgcd_scorer(model_dir, enc_dir, embeddings, items, args.device, updates=updates)
        started = time.perf_counter()
        metrics = score_all({"lgcd": scorer}, cases, candidates, items, ks=(10,), settings=("inter_domain",)).metrics
        seconds = time.perf_counter() - started
        model, _ = load_lgcd_model(model_dir, enc_dir, embeddings, items, args.device, updates)
        h_revs[k] = {}
        for target in ("A", "B"):
            dc = diagnostic_cases(index, cases, target)
            (src,) = trim_left(pad_left(dc.source, model.cfg.architecture.max_len))
            with torch.no_grad():
                h_revs[k][target] = model.infer(other(target) + target, src.to(args.device)).h_rev[0].cpu()
        values = {(r["protocol"], r["target_domain"], r["metric"]): r["value"] for r in metrics.to_pylist()}
        rows[k] = {"calls": {t: model.denoiser_calls(t) for t in ("A", "B")}, "values": values,
                   "ms_per_user": 1000 * seconds / max(n_valid, 1)}

    def hr(k: int) -> float:
        return float(np.mean([rows[k]["values"][("sampled999", d, "HR")] for d in ("A", "B")]))

    full = hr(0)
    dc = trained.cfg.diffusion
    lam = f"λ_A={dc.lambda_A}, λ_B={dc.lambda_B}, T={dc.T}"
    n_neg = cfg.evaluation.n_negatives
    lines = [f"# Sampler steps vs. valid metrics ({args.dataset})", "",
             f"Model: {model_dir} (trained with sampler_steps={dc.sampler_steps}); {lam}; {args.draws} ε draw(s) per user; "
             f"{n_valid} valid cases, inter_domain (source items only). 'sampled': target vs {n_neg} negatives "
             "drawn as the evaluation stage draws them; 'full': every item of the target domain. Ties count "
             "against the model. R²(h_rev, full chain): the same users and ε, this sampler's h^rev against the full "
             "chain's. ΔHR@10: mean sampled HR@10 over A and B, relative to the full chain. sampler_steps >= t_start: "
             "DDIM on every step (not the full chain, see docs/method.md). Scoring time includes both protocols. "
             "Valid only; test is never read.", "",
             "| sampler_steps | denoiser calls (→A / →B) | sampled HR@10 A / B | sampled NDCG@10 A / B | full HR@10 A / B "
             "| full NDCG@10 A / B | ΔHR@10 vs full | R²(h_rev, full chain) A / B | ms per case |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(rows, key=lambda k: (k == 0, k)):
        v, c = rows[k]["values"], rows[k]["calls"]

        def pair(protocol: str, metric: str) -> str:
            return " / ".join(f"{v[(protocol, d, metric)]:.4f}" for d in ("A", "B"))  # noqa: B023

        fit = " / ".join(f"{r2(h_revs[k][d], h_revs[0][d]):.3f}" for d in ("A", "B"))
        delta = (hr(k) - full) / full if full else float("nan")
        lines.append(f"| {k or 'full (eq. 20)'} | {c['A']} / {c['B']} | {pair('sampled999', 'HR')} | "
                     f"{pair('sampled999', 'NDCG')} | {pair('full', 'HR')} | {pair('full', 'NDCG')} | {delta:+.1%} | "
                     f"{fit} | {rows[k]['ms_per_user']:.2f} |")
    publish("\n".join(lines) + "\n", args.out or f"sampler_steps_{args.dataset}.md")


if __name__ == "__main__":
    main()
