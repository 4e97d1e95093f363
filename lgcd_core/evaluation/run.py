"""The evaluation stage: candidates, every model of the config, metrics table, report and chart.

Model code is imported lazily (lgcd_core.model.scoring / train_lgcd), and only through the
:data:`~lgcd_core.evaluation.evaluate.Scorer` protocol. Trained models are scored per seed of
``evaluation.seeds``; the LGCD checkpoint in ``model_dir`` stands for the seed it was trained with
(``lgcd.seed``), other seeds and every ablation variant are retrained here. SASRec baselines are
kept in ``baseline_cache`` (when given) and reused while their own inputs are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.config import VARIANT_SWITCHES, DatasetConfig, LGCDConfig
from lgcd_core.device import resolve_device
from lgcd_core.evaluation.baselines import cached_train_sasrec, popularity_scorer
from lgcd_core.evaluation.candidates import draw_candidates
from lgcd_core.evaluation.evaluate import Scorer, evaluate_scorers
from lgcd_core.evaluation.report import metrics_table, plot_metrics, render_report
from lgcd_core.evaluation.settings import item_domains
from lgcd_core.io import atomic_path, write_json, write_parquet

Log = Callable[[str], None]


def source_only(scorer: Scorer, domains: np.ndarray) -> Scorer:
    """Wrap a scorer so that it never reads target-domain items of a history."""

    def score(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        return scorer([[i for i in h if domains[i] != target_domain] for h in histories], target_domain)

    return score


def lgcd_runs(cfg: DatasetConfig, seed: int) -> dict[str, LGCDConfig]:
    """Model name -> LGCD config of every LGCD model to score for ``seed`` (full model and variants)."""
    variants = list(cfg.evaluation.variants)
    if "lgcd_wo_diffusion" in cfg.evaluation.baselines and "wo_diffusion" not in variants:
        variants.append("wo_diffusion")
    runs = {"lgcd": cfg.lgcd.model_copy(update={"seed": seed})}
    for variant in variants:
        runs[f"lgcd_{variant}"] = cfg.lgcd.model_copy(update={"seed": seed, VARIANT_SWITCHES[variant]: False})
    return runs


def draw_all_candidates(cfg: DatasetConfig, eval_cases: pa.Table, items: pa.Table,
                        out_dir: Path) -> dict[str, pa.Table]:
    """Draw and store candidates for valid and, when present, test (``candidates_<split>.parquet``)."""
    present = set(eval_cases.column("split").to_pylist())
    candidates = {}
    for split in ("valid", "test"):
        if split in present:
            candidates[split] = draw_candidates(eval_cases, items, split, cfg.evaluation.n_negatives,
                                                cfg.evaluation.candidate_seed)
            write_parquet(candidates[split], out_dir / f"candidates_{split}.parquet")
    return candidates


def run_evaluation(cfg: DatasetConfig, items: pa.Table, sequences: pa.Table, eval_cases: pa.Table,
                   pseudo_overlap: pa.Table | None, embeddings: np.ndarray, encoders_dir: Path, model_dir: Path,
                   out_dir: Path, device: str, log: Log = print, baseline_cache: Path | None = None) -> dict:
    """Score LGCD, its variants and the baselines on the same candidates; write metrics, report, chart."""
    from lgcd_core.model.scoring import load_encoder_scorer, load_lgcd_scorer
    from lgcd_core.model.train_lgcd import train_lgcd

    ev = cfg.evaluation
    device = resolve_device(device)
    domains = item_domains(items)
    candidates = draw_all_candidates(cfg, eval_cases, items, out_dir)
    tables, train_seconds, training_logs, reused = [], {}, {}, []
    for seed in ev.seeds:
        scorers: dict[str, Scorer] = {}
        for name, lgcd_cfg in lgcd_runs(cfg, seed).items():
            started = time.time()
            if name == "lgcd" and seed == cfg.lgcd.seed:
                run_dir = model_dir
            else:
                run_dir = out_dir / "runs" / f"{name}_seed{seed}"
                log(f"training {name} (seed {seed})")
                train_lgcd(cfg, items, sequences, eval_cases, pseudo_overlap, embeddings, encoders_dir, run_dir,
                           device, log=log, lgcd_cfg=lgcd_cfg)
            scorer = load_lgcd_scorer(run_dir, encoders_dir, embeddings, items, device,
                                      read_target_history=ev.lgcd_reads_target_history)
            # The evaluator enforces the switch itself rather than trusting the model code to.
            scorers[name] = scorer if ev.lgcd_reads_target_history else source_only(scorer, domains)
            train_seconds[f"{name}/seed{seed}"] = round(time.time() - started, 1)
        for mode in ("single", "mixed"):
            if f"sasrec_{mode}" in ev.baselines:
                started = time.time()
                scorer, hit = cached_train_sasrec(baseline_cache, items, sequences, eval_cases, mode, ev.sasrec,
                                                  device, seed, log, valid_candidates=candidates.get("valid"))
                scorers[f"sasrec_{mode}"] = scorer
                if hit:
                    reused.append(f"sasrec_{mode}/seed{seed}")
                train_seconds[f"sasrec_{mode}/seed{seed}"] = round(time.time() - started, 1)
                training_logs[f"sasrec_{mode}/seed{seed}"] = scorer.log
        if "pretrained_encoder" in ev.baselines:
            scorers["pretrained_encoder"] = load_encoder_scorer(encoders_dir, embeddings, items, device)
        if "popularity" in ev.baselines:
            scorers["popularity"] = popularity_scorer(items, sequences)
        log(f"scoring {len(scorers)} models (seed {seed}) on {', '.join(candidates)}")
        tables.append(evaluate_scorers(scorers, eval_cases, candidates, items, ks=ev.ks, seed=seed,
                                       batch_size=ev.batch_size))
    metrics = pa.concat_tables(tables)
    return {**write_outputs(cfg, items, metrics, candidates, out_dir, train_seconds, training_logs),
            "baselines_reused": reused}


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
        "sasrec_selection": f"valid NDCG@10 ({ev.sasrec.selection_protocol}, {ev.sasrec.selection_setting}), "
                            f"patience {ev.sasrec.patience}",
    }


def write_outputs(cfg: DatasetConfig, items: pa.Table, metrics: pa.Table, candidates: dict[str, pa.Table],
                  out_dir: Path, train_seconds: dict[str, float], training_logs: dict[str, list]) -> dict:
    """metrics.parquet, report.md, metrics.png, training.json; returns the stats for metadata."""
    summary = cfg_summary(cfg, items)
    paper = {r.label: r.model_dump(exclude={"label"}) for r in cfg.evaluation.paper_rows}
    write_parquet(metrics, out_dir / "metrics.parquet")
    report_path = out_dir / "report.md"
    with atomic_path(report_path) as tmp:
        tmp.write_text(render_report(metrics, summary, paper))
    split = "test" if "test" in candidates else "valid"
    png = plot_metrics(metrics, out_dir / "metrics.png", split, summary["domains"])
    write_json({"train_seconds": train_seconds, "training_logs": training_logs}, out_dir / "training.json")
    return {
        "n_cases": {s: t.num_rows for s, t in candidates.items()},
        "models": sorted(set(metrics.column("model").to_pylist())),
        "seeds": summary["seeds"],
        "markdown": metrics_table(metrics, split, "sampled999", "inter_domain", summary["domains"], paper, ks=[5, 10]),
        "png": str(png),
        "report": str(report_path),
        "metrics": str(out_dir / "metrics.parquet"),
        "train_seconds": train_seconds,
    }
