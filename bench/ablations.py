"""LGCD's ablation study on valid (the paper's Table 3 and the diagnostics of issue 13), with paired intervals.

    python -m bench.ablations --workspace DIR [--dataset food_kitchen] [--rows full,wo_diffusion,...] [--out FILE]
        [--seeds 0,1,2] [--reference full] [--set lgcd.section.field=value ...]

``DIR`` is a pipeline workspace whose upstream stages are materialized, e.g. the ``--keep`` folder of
``bench.reproduce`` (it holds ``datasets/<dataset>.yaml`` and ``data/``): this reads its
``sequences``, ``item_text_embeddings``, ``pretrained_encoders`` and, for the ``llm`` pseudo source, its
``pseudo_texts``. Every row trains LGCD from the YAML's ``lgcd`` section with the row's changes, once
per seed, with the code of this checkout (not Dagster's staleness: the workspace's own ``lgcd_model``
is left alone), into ``DIR/ablations/<row>/seed<k>/``; a row already trained there is read back, a
killed one resumes from its checkpoint.

Rows differ in the ``lgcd`` fields they set and in where their pseudo-overlap users come from:
``none`` (no pseudo rows), or a source of ``pseudo_overlap.source`` with a user cap (``all``: every
single-domain user). Pseudo tables are built with the stage code (grounding, then insertion) and
cached in ``DIR/ablations/pseudo_<source>_<cap>.parquet``.

``--pseudo SOURCE:CAP`` gives every row (the reference included) those pseudo users: Table 3 against the
paper's full model (issue 23 point 7).

Scoring: valid cases, ``inter_domain`` (source-only histories), the evaluation stage's sampled-999
candidates (``evaluation.candidate_seed``) and full ranking. A row trained with ``ablations.oracle_x0`` is
scored as the oracle: h_rev := the case's true x0 (from its target-domain history), the condition from its
source history (:func:`score_rows`). The table gives each row's NDCG@10 and
HR@10 per target domain (mean ± std over seeds) and its difference to ``--reference`` (paired by
case, pooled over the seeds both have, 95% bootstrap interval over cases; the evaluation stage's
comparisons code). Only valid is read: nothing here can select on test. Output:
``bench/results/ablations_<dataset>.md`` or ``--out`` (the command is printed above the table).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import lgcd_overrides, mean_std, metric_per_seed, publish


@dataclass(frozen=True)
class Row:
    """One line of the study: what it changes from the YAML's ``lgcd`` and where its pseudo users come from."""

    what: str  # one line for the table
    updates: dict = field(default_factory=dict)  # dotted LGCDConfig fields
    pseudo: str = "none"  # 'none', or '<source>:<cap>' with source llm | text | collaborative and cap an int or 'all'


ROWS: dict[str, Row] = {
    "full": Row("full LGCD, no pseudo users"),
    "wo_diffusion": Row("w/o diffusion (h_rev = 0, L_rec only)", {"ablations.use_diffusion": False}),
    "wo_guesser": Row("w/o guesser (reverse from x_T)", {"ablations.guesser": False}),
    "wo_moe": Row("w/o MoE (linear fusion)", {"ablations.moe": False}),
    "wo_align": Row("w/o L_align", {"ablations.alignment_loss": False}),
    "no_diff_no_guess": Row("L_diff and L_guess weight 0", {"loss_weights.diff": 0.0, "loss_weights.guess": 0.0}),
    "lambda_0.3": Row("λ = 0.3 both targets", {"diffusion.lambda_A": 0.3, "diffusion.lambda_B": 0.3}),
    "lambda_0.7": Row("λ = 0.7 both targets", {"diffusion.lambda_A": 0.7, "diffusion.lambda_B": 0.7}),
    "lambda_1.0": Row("λ = 1.0 both targets", {"diffusion.lambda_A": 1.0, "diffusion.lambda_B": 1.0}),
    "condition_last": Row("denoiser attends to h_cond alone", {"interpretation.condition_tokens": "last"}),
    "unfrozen": Row("encoders fine-tuned", {"training.freeze_encoders": False}),
    "detached_rev": Row("h_rev detached in the fusion: the denoiser is trained by L_diff (and L_align) only",
                        {"ablations.rec_trains_generator": False}),
    "oracle": Row("h_rev := the true x0 wherever a target has one (the oracle ceiling; diagnostics give the curve)",
                  {"ablations.oracle_x0": True}),
    "x0_including": Row("x0 read up to the target's own slot (DreamRec-style): every target trains the generator",
                        {"interpretation.x0": "including"}),
    "full_softmax": Row("L_rec over every target item (the paper's eq. 25)", {"training.rec_negatives": None}),
    "pseudo_collab_500": Row("+ 500 collaborative pseudo users", pseudo="collaborative:500"),
    "pseudo_text_500": Row("+ 500 text pseudo users", pseudo="text:500"),
    "pseudo_llm_500": Row("+ 500 LLM pseudo users (the paper's source)", pseudo="llm:500"),
    "pseudo_collab_all": Row("+ every single-domain user, collaborative", pseudo="collaborative:all"),
    "pseudo_text_all": Row("+ every single-domain user, text", pseudo="text:all"),
    "wo_align_llm_500": Row("w/o L_align + 500 LLM pseudo users (L_align acts on pseudo rows only)",
                            {"ablations.alignment_loss": False}, "llm:500"),
    "pseudo_llm_500_rec0": Row("+ 500 LLM pseudo users, no L_rec on pseudo rows (they train the generator only)",
                               {"loss_weights.pseudo_rec": 0.0}, "llm:500"),
    "pseudo_collab_500_rec0": Row("+ 500 collaborative pseudo users, no L_rec on pseudo rows",
                                  {"loss_weights.pseudo_rec": 0.0}, "collaborative:500"),
    "pseudo_collab_all_rec0": Row("+ every single-domain user, collaborative, no L_rec on pseudo rows",
                                  {"loss_weights.pseudo_rec": 0.0}, "collaborative:all"),
    "wo_diffusion_collab_all": Row("w/o diffusion + every single-domain user, collaborative",
                                   {"ablations.use_diffusion": False}, "collaborative:all"),
}
COLUMNS = [("NDCG", 10), ("HR", 10)]


def pseudo_table(cfg, inputs, source_spec: str, cache_dir: Path, device: str) -> pa.Table | None:
    """The pseudo-overlap table of ``source:cap`` (built with the stage code, cached), None for 'none'."""
    from lgcd_core.io import read_parquet, write_parquet
    from lgcd_core.language.grounding import ground_pseudo_users
    from lgcd_core.language.pseudo_overlap import build_pseudo_overlap
    from lgcd_core.stages import PSEUDO_TEXTS

    if source_spec == "none":
        return None
    source, _, cap = source_spec.partition(":")
    path = cache_dir / f"pseudo_{source}_{cap}.parquet"
    if path.exists():
        return read_parquet(path)
    po = cfg.pseudo_overlap.model_copy(update={"source": source, "max_users": None if cap == "all" else int(cap)})
    run_cfg = cfg.model_copy(update={"pseudo_overlap": po})
    texts = read_parquet(PSEUDO_TEXTS.table.path(cfg)) if source == "llm" else None
    if source == "llm" and texts.num_rows != (po.max_users or texts.num_rows):
        raise SystemExit(f"the workspace's pseudo_texts hold {texts.num_rows} users, row asks for {cap}: "
                         "materialize pseudo_texts with that pseudo_overlap.max_users first")
    grounded, _ = ground_pseudo_users(texts, inputs.items, inputs.sequences, run_cfg, device, item_embeddings=inputs.embeddings)
    table, stats = build_pseudo_overlap(inputs.sequences, grounded, po)
    print(f"pseudo users {source_spec}: {stats}", flush=True)
    write_parquet(table, path)
    return table


def train_row(cfg, inputs, name: str, row: Row, seed: int, overrides: dict, work: Path, device: str) -> Path:
    """Train (or read back) one row of one seed; returns its run folder."""
    from lgcd_core.model.train_lgcd import train_lgcd
    from lgcd_core.stages import LGCD_MODEL, PRETRAINED_ENCODERS

    out = work / name / f"seed{seed}"
    if (out / LGCD_MODEL.meta).exists() and (out / LGCD_MODEL.weights).exists():
        return out
    lc = cfg.lgcd.with_updates({**overrides, **row.updates, "training.seed": seed})
    run_inputs = type(inputs)(inputs.items, inputs.sequences, inputs.eval_cases, inputs.embeddings,
                              pseudo_table(cfg, inputs, row.pseudo, work, device))
    started = time.perf_counter()
    print(f"== {name} seed {seed}: {row.what}", flush=True)
    train_lgcd(lc, run_inputs, PRETRAINED_ENCODERS.path(cfg), out, device, log=lambda m: print(m, flush=True))
    (out / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return out


def score_rows(cfg, inputs, runs: dict[str, dict[int, Path]], device: str) -> pa.Table:
    """Per-case ranks of every trained run on valid, inter_domain, on the evaluation stage's candidates.

    A run trained with ``ablations.oracle_x0`` is scored as the oracle: the condition still reads the
    source-domain history only, and h_rev := the case's true x0 (eq. 7: the text encoding of the case's
    target-domain items before the target; ``interpretation.target_history_weight: 0``, so nothing else
    reads them). Its ranks carry the setting ``inter_domain`` so they pair with every other row's.
    """
    from lgcd_core.evaluation.run import source_only
    from lgcd_core.model.scoring import load_lgcd_scorer
    from lgcd_core.protocol.candidates import draw_candidates
    from lgcd_core.protocol.ranking import score_all
    from lgcd_core.protocol.settings import item_domains
    from lgcd_core.stages import PRETRAINED_ENCODERS

    ev = cfg.evaluation
    candidates = {"valid": draw_candidates(inputs.eval_cases, inputs.items, "valid", ev.n_negatives, ev.candidate_seed)}
    domains = item_domains(inputs.items)
    ranks = []
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    args = (PRETRAINED_ENCODERS.path(cfg), inputs.embeddings, inputs.items, device)
    for seed in seeds:
        present = {name: by_seed[seed] for name, by_seed in runs.items() if seed in by_seed}
        oracle = {name for name, path in present.items()
                  if json.loads((path / "lgcd.json").read_text())["lgcd"]["ablations"].get("oracle_x0")}
        scorers = {name: source_only(load_lgcd_scorer(path, *args), domains) for name, path in present.items()
                   if name not in oracle}
        if scorers:
            ranks.append(score_all(scorers, inputs.eval_cases, candidates, inputs.items, ks=ev.ks, seed=seed,
                                   settings=("inter_domain",), batch_size=ev.batch_size).ranks)
        for name in sorted(oracle):
            scorer = load_lgcd_scorer(present[name], *args, read_target_history=True,
                                      updates={"interpretation.target_history_weight": 0.0})
            scored = score_all({name: scorer}, inputs.eval_cases, candidates, inputs.items, ks=ev.ks, seed=seed,
                               settings=("mixed_history",), batch_size=ev.batch_size).ranks
            column = scored.schema.get_field_index("setting")
            ranks.append(scored.set_column(column, "setting", pa.array(["inter_domain"] * scored.num_rows)))
    return pa.concat_tables(ranks)


def table(ranks: pa.Table, comparisons: pa.Table, rows: list[str], reference: str, names: dict[str, str],
          protocol: str, runs: dict[str, dict[int, Path]]) -> list[str]:
    """Markdown: each row's metrics and its paired NDCG@10 difference to the reference per target domain."""
    comp = {(r["baseline"], r["target_domain"]): r for r in comparisons.to_pylist()
            if r["protocol"] == protocol and r["metric"] == "NDCG" and r["k"] == 10 and r["model"] == reference}
    head = ["row", "seeds"] + [f"{names[d]} {m}@{k}" for d in "AB" for m, k in COLUMNS] + \
           [f"{names[d]} Δ NDCG@10 vs {reference} [95% CI]" for d in "AB"] + ["best epochs", "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in rows:
        cells = [name, str(len(runs[name]))]
        cells += [mean_std(metric_per_seed(ranks, m, k, model=name, target_domain=d, protocol=protocol))
                  for d in "AB" for m, k in COLUMNS]
        for d in "AB":
            c = comp.get((name, d))
            # comparisons are reference minus row; the table shows row minus reference
            cells.append("–" if c is None else f"{-c['diff']:+.4f} [{-c['ci_high']:+.4f}, {-c['ci_low']:+.4f}]")
        meta = [json.loads((p / "lgcd.json").read_text()) for p in runs[name].values()]
        secs = [json.loads((p / "seconds.json").read_text())["seconds"] / 60 for p in runs[name].values()
                if (p / "seconds.json").exists()]
        cells.append(",".join(str(m["best_epoch"]) for m in meta))
        cells.append(f"{np.mean(secs):.1f}" if secs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def diagnostics_lines(runs: dict[str, dict[int, Path]]) -> list[str]:
    """Per row and direction (mean over seeds): R² of h_rev and of the guess against x0 on valid, the guess's R²
    on training targets, the offset share of its error, the NDCG@10 change when h_rev is shuffled, and the
    oracle curve (NDCG@10 with h_rev := a·x0 + (1 − a)·guess; R² of that h_rev in brackets)."""
    from lgcd_core.model.diagnostics import ORACLE_MIX

    curve = " | ".join(f"a = {a:g}" for a in ORACLE_MIX)
    lines = [f"| row | direction | R²(h_rev, x0) | R²(guess, x0) | R²(guess, x0), train | offset share of guess error "
             f"| Δ NDCG@10, h_rev shuffled | {curve} |", "|---" * (6 + len(ORACLE_MIX)) + "|"]
    for name, by_seed in runs.items():
        diags = [json.loads((p / "history.json").read_text()).get("diagnostics", {}) for p in by_seed.values()]
        for direction in sorted({k for d in diags for k in d}):
            vals = [d[direction] for d in diags if direction in d]

            def avg(key: str, vals=vals, fmt: str = "+.3f") -> str:
                xs = [v[key] for v in vals if isinstance(v.get(key), float)]
                return format(np.mean(xs), fmt) if xs else "–"

            points = " | ".join(f"{avg(f'oracle_ndcg10@{a:g}', fmt='.4f')} ({avg(f'oracle_r2@{a:g}', fmt='+.2f')})"
                                for a in ORACLE_MIX)
            lines.append(f"| {name} | {direction} | {avg('r2_rev')} | {avg('r2_guess')} | {avg('r2_guess_train')} "
                         f"| {avg('bias_share_guess', fmt='.2f')} | {avg('shuffle_delta')} | {points} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with datasets/ and data/ (see above)")
    parser.add_argument("--dataset", default="food_kitchen")
    parser.add_argument("--rows", default="full,wo_diffusion", help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reference", default="full", help="the row every other is compared with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="lgcd.SECTION.FIELD=VALUE",
                        help="change the YAML's lgcd section for every row (repeatable)")
    parser.add_argument("--score-only", action="store_true", help="train nothing; score the rows already trained")
    parser.add_argument("--pseudo", default=None, metavar="SOURCE:CAP",
                        help="give every row these pseudo users (e.g. collaborative:all, the full model of issue 23 "
                        "point 7); rows are then trained under DIR/ablations/<row>@<SOURCE:CAP>")
    parser.add_argument("--out", default=None, help="results file name under bench/results (default ablations_<dataset>.md)")
    args = parser.parse_args()
    os.environ.update({"LGCD_DATASETS_DIR": str(args.workspace / "datasets"), "LGCD_DATA_ROOT": str(args.workspace / "data"),
                       "HF_HUB_OFFLINE": "1"})
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.device import resolve_device
    from lgcd_core.model.batches import Inputs
    from lgcd_pipeline.stage import sequence_inputs

    cfg = load_dataset_config(dataset_path(args.dataset))
    overrides = lgcd_overrides(args.overrides)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.reference not in rows:
        rows.insert(0, args.reference)
    if args.pseudo:  # the same rows, each with these pseudo users (a row of its own name)
        for name in rows:
            ROWS[f"{name}@{args.pseudo}"] = Row(f"{ROWS[name].what}, + pseudo users {args.pseudo}", ROWS[name].updates, args.pseudo)
        rows = [f"{name}@{args.pseudo}" for name in rows]
        args.reference = f"{args.reference}@{args.pseudo}"
    seeds = [int(s) for s in args.seeds.split(",")]
    device = resolve_device(cfg.device)
    inputs = Inputs(*sequence_inputs(cfg))
    work = args.workspace / "ablations"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, Path]] = {}
    for seed in seeds:  # seed-major: a cut-short study still has every row's first seeds
        for name in rows:
            out = work / name / f"seed{seed}"
            if args.score_only and not (out / "lgcd.json").exists():
                continue
            runs.setdefault(name, {})[seed] = train_row(cfg, inputs, name, ROWS[name], seed, overrides, work, device)
    from lgcd_core.evaluation.comparisons import paired_comparisons

    ranks = score_rows(cfg, inputs, runs, device)
    comparisons = paired_comparisons(ranks, args.reference, ks=cfg.evaluation.ks, seed=cfg.evaluation.candidate_seed)
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    command = "python -m bench.ablations " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = [f"# LGCD ablations on {args.dataset} (valid, inter_domain)", "",
           f"`{command}`", "",
           "Every row: the dataset YAML's `lgcd` section" + (f" with {overrides}" if overrides else "")
           + ", changed as the row says; Δ = row minus reference, per case, pooled over the seeds both have, 95% "
           "bootstrap interval over cases (an interval containing 0: no measurable difference).", ""]
    for protocol, label in (("sampled999", "999 sampled negatives (the paper's protocol)"), ("full", "full ranking")):
        out += [f"## {label}", "", *table(ranks, comparisons, [r for r in rows if r in runs], args.reference, names, protocol, runs), ""]
    out += ["## Generator diagnostics (valid)", "", *diagnostics_lines(runs), ""]
    publish("\n".join(out), args.out or f"ablations_{args.dataset}.md")


if __name__ == "__main__":
    main()
