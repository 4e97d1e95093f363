"""The evaluation stage: candidates, every model of the config scored on them, metrics table, report and chart.

It trains nothing. The LGCD runs (every seed and variant) come from the ``lgcd_model`` stage folder,
the SASRec baselines from the ``baselines`` one (:mod:`lgcd_core.model.runs` says where each lives),
the pretrained encoders from ``pretrained_encoders``; a checkpoint that is missing is an error naming
it, raised before anything is scored. Model code is imported lazily and seen only through the
:data:`~lgcd_core.protocol.ranking.Scorer` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.config import DatasetConfig
from lgcd_core.device import resolve_device
from lgcd_core.evaluation.comparisons import comparisons_markdown, paired_comparisons
from lgcd_core.evaluation.report import metrics_table, plot_metrics, render_report
from lgcd_core.io import DataError, atomic_path, write_parquet
from lgcd_core.model.batches import Inputs
from lgcd_core.model.runs import lgcd_run_dir, lgcd_runs, run_dir
from lgcd_core.protocol.candidates import draw_candidates
from lgcd_core.protocol.ranking import Scorer, score_all
from lgcd_core.protocol.settings import item_domains
from lgcd_core.stages import BASELINES, EVALUATION, LGCD_MODEL, PRETRAINED_ENCODERS

Log = Callable[[str], None]


def source_only(scorer: Scorer, domains: np.ndarray) -> Scorer:
    """Wrap a scorer so that it never reads target-domain items of a history."""

    def score(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        return scorer([[i for i in h if domains[i] != target_domain] for h in histories], target_domain)

    return score


def draw_all_candidates(cfg: DatasetConfig, eval_cases: pa.Table, items: pa.Table,
                        out_dir: Path) -> dict[str, pa.Table]:
    """Draw and store candidates for valid and, when present, test (``candidates_<split>.parquet``)."""
    present = set(eval_cases.column("split").to_pylist())
    candidates = {}
    for split in ("valid", "test"):
        if split in present:
            candidates[split] = draw_candidates(eval_cases, items, split, cfg.evaluation.n_negatives,
                                                cfg.evaluation.candidate_seed)
            write_parquet(candidates[split], out_dir / EVALUATION.candidates.format(split=split))
    return candidates


def needed_files(cfg: DatasetConfig, encoders_dir: Path, model_dir: Path, baselines_dir: Path) -> dict[str, list[Path]]:
    """Stage -> the trained-model files of that stage the evaluation reads."""
    from lgcd_core.model.sasrec_baseline import sasrec_files

    ev = cfg.evaluation
    lgcd = [lgcd_run_dir(cfg, model_dir, name, seed) / f for seed in ev.seeds for name in lgcd_runs(cfg, seed)
            for f in (LGCD_MODEL.meta, LGCD_MODEL.weights)]
    sasrec = [path for seed in ev.seeds for name in ev.sasrec_baselines
              for path in sasrec_files(run_dir(baselines_dir, name, seed), ev.sasrec_run(name)[0])]
    encoders = [encoders_dir / f.format(domain=d) for d in "AB" for f in (PRETRAINED_ENCODERS.meta, PRETRAINED_ENCODERS.weights)]
    return {PRETRAINED_ENCODERS.name: encoders, LGCD_MODEL.name: lgcd, BASELINES.name: sasrec}


def check_trained(cfg: DatasetConfig, needed: dict[str, list[Path]]) -> None:
    """:class:`DataError` naming the missing checkpoints and the stages that write them."""
    missing = {stage: [p for p in paths if not p.is_file()] for stage, paths in needed.items()}
    missing = {stage: paths for stage, paths in missing.items() if paths}
    if missing:
        first = next(iter(missing.values()))[0]
        raise DataError(f"evaluation scores trained models only, and {sum(map(len, missing.values()))} checkpoint file(s) "
                        f"are missing (first: {first}); materialize "
                        + ", ".join(f"{cfg.name}/{stage}" for stage in missing) + " first")


def run_evaluation(cfg: DatasetConfig, inputs: Inputs, encoders_dir: Path, model_dir: Path, baselines_dir: Path,
                   out_dir: Path, device: str, log: Log = print) -> dict:
    """Score LGCD, its variants and the baselines on the same candidates; write metrics, report, chart."""
    from lgcd_core.model.sasrec_baseline import load_sasrec_scorer
    from lgcd_core.model.scoring import load_encoder_scorer, load_lgcd_scorer, popularity_scorer

    ev = cfg.evaluation
    check_trained(cfg, needed_files(cfg, encoders_dir, model_dir, baselines_dir))
    device = resolve_device(device)
    items, embeddings = inputs.items, inputs.embeddings
    domains = item_domains(items)
    candidates = draw_all_candidates(cfg, inputs.eval_cases, items, out_dir)
    scored = []
    for seed in ev.seeds:
        scorers: dict[str, Scorer] = {}
        for name in lgcd_runs(cfg, seed):
            scorer = load_lgcd_scorer(lgcd_run_dir(cfg, model_dir, name, seed), encoders_dir, embeddings, items, device,
                                      read_target_history=ev.lgcd_reads_target_history)
            # The evaluator enforces the switch itself rather than trusting the model code to.
            scorers[name] = scorer if ev.lgcd_reads_target_history else source_only(scorer, domains)
        for name in ev.sasrec_baselines:
            scorers[name] = load_sasrec_scorer(run_dir(baselines_dir, name, seed), domains, device)
        if "pretrained_encoder" in ev.baselines:
            scorers["pretrained_encoder"] = load_encoder_scorer(encoders_dir, embeddings, items, device)
        if "popularity" in ev.baselines:
            scorers["popularity"] = popularity_scorer(items, inputs.sequences)
        log(f"scoring {len(scorers)} models (seed {seed}) on {', '.join(candidates)}")
        scored.append(score_all(scorers, inputs.eval_cases, candidates, items, ks=ev.ks, seed=seed,
                                batch_size=ev.batch_size))
    ranks = pa.concat_tables([s.ranks for s in scored])
    write_parquet(ranks, out_dir / EVALUATION.ranks)
    log(f"paired bootstrap comparisons of lgcd against {len(set(ranks.column('model').to_pylist())) - 1} models")
    comparisons = paired_comparisons(ranks, "lgcd", ks=ev.ks, seed=ev.candidate_seed)
    return write_outputs(cfg, items, pa.concat_tables([s.metrics for s in scored]), comparisons, candidates, out_dir)


def cfg_summary(cfg: DatasetConfig, items: pa.Table) -> dict:
    """The facts the report states in its header and beside each table."""
    ev = cfg.evaluation
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    sizes = {d: int(np.sum(item_domains(items) == d)) for d in names}
    return {
        "dataset": cfg.name,
        "domains": names,
        "n_negatives": ev.n_negatives,
        "negatives_per_domain": {names[d]: min(ev.n_negatives, n - 1) for d, n in sizes.items()},
        "domain_items": {names[d]: n for d, n in sizes.items()},
        "candidate_seed": ev.candidate_seed,
        "seeds": list(ev.seeds),
        "lgcd_reads_target_history": ev.lgcd_reads_target_history,
        "sasrec_selection": {section: f"valid NDCG@10 ({c.selection_protocol}, {c.selection_setting}) every "
                                      f"{c.eval_every} epoch(s), patience {c.patience} evaluations, at most {c.max_epochs} epochs"
                             for section, c in (("sasrec", ev.sasrec), ("sasrec_bce", ev.sasrec_bce))},
    }


def headline_split(candidates: dict) -> str:
    """The split every summary shows first (UI, `lgcd summary`, README): test when the data has it, else valid."""
    return "test" if "test" in candidates else "valid"


def headline_caption(split: str, n_negatives: int) -> str:
    """What the headline table is, in one line: split, protocol, negatives and setting."""
    return (f"{split} split · {n_negatives} sampled negatives per case · inter_domain (source-domain history only) · "
            "mean ± std over seeds")


def headline_metrics(metrics: pa.Table, split: str, names: dict[str, str]) -> dict[str, float]:
    """LGCD's HR@10 and NDCG@10 per target domain on the headline table (mean over seeds), as plain numbers."""
    out = {}
    for r in metrics.to_pylist():
        if (r["model"], r["split"], r["protocol"], r["setting"], r["k"]) == ("lgcd", split, "sampled999", "inter_domain", 10):
            out.setdefault(f"lgcd {names[r['target_domain']]} {r['metric']}@10", []).append(r["value"])
    return {k: float(np.mean(v)) for k, v in sorted(out.items())}


def write_outputs(cfg: DatasetConfig, items: pa.Table, metrics: pa.Table, comparisons: pa.Table,
                  candidates: dict[str, pa.Table], out_dir: Path) -> dict:
    """metrics.parquet, comparisons.parquet, report.md, metrics.png; returns the stats for metadata."""
    summary = cfg_summary(cfg, items)
    paper = {r.label: r.model_dump(exclude={"label"}) for r in cfg.evaluation.paper_rows}
    write_parquet(metrics, out_dir / EVALUATION.metrics)
    write_parquet(comparisons, out_dir / EVALUATION.comparisons)
    report_path = out_dir / EVALUATION.report
    with atomic_path(report_path) as tmp:
        tmp.write_text(render_report(metrics, summary, paper, comparisons))
    split = headline_split(candidates)
    png = plot_metrics(metrics, out_dir / EVALUATION.chart, split, summary["domains"], cfg.evaluation.n_negatives)
    return {
        "n_cases": {s: t.num_rows for s, t in candidates.items()},
        "models": sorted(set(metrics.column("model").to_pylist())),
        "seeds": summary["seeds"],
        "headline": headline_metrics(metrics, split, summary["domains"]),
        "markdown": f"**{headline_caption(split, cfg.evaluation.n_negatives)}**\n\n"
        + metrics_table(metrics, split, "sampled999", "inter_domain", summary["domains"], paper, ks=[5, 10])
        + "\n\n" + comparisons_markdown(comparisons, split, "inter_domain", "sampled999", "NDCG", 10, summary["domains"]),
        "png": str(png),
        "report": str(report_path),
        "metrics": str(out_dir / EVALUATION.metrics),
    }
