"""Paired comparisons: is model M better than baseline B on the same cases, beyond the noise?

For one split, setting, protocol and target domain, every case c has a metric value per seed s for
both models. The paired difference of case c is ``mean_s [m(M, c, s) - m(B, c, s)]`` over the seeds
both models were scored with (pooled over seeds, paired by case); the reported ``diff`` is its mean
over cases, and ``[ci_low, ci_high]`` is the 95% percentile bootstrap interval of that mean, resampling
cases with replacement. An interval that contains 0 is "no measurable difference", whatever the sign
of ``diff``; a claim needs at least :data:`MIN_SEEDS` seeds.

The input is the per-case rank table the evaluation stage writes (``ranks.parquet``): every metric of
:data:`~lgcd_core.protocol.metrics.METRICS` at every K is recomputed from the ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.protocol.metrics import METRICS

MIN_SEEDS = 3
GROUP = ("split", "setting", "protocol", "target_domain")

COMPARISONS_SCHEMA = pa.schema([
    ("model", pa.string()), ("baseline", pa.string()), ("split", pa.string()), ("setting", pa.string()),
    ("protocol", pa.string()), ("target_domain", pa.string()), ("metric", pa.string()), ("k", pa.int32()),
    ("diff", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("n_cases", pa.int32()),
    ("seeds", pa.list_(pa.int32())),
])


def _values(ranks: np.ndarray, ks: Sequence[int]) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Every (metric, k) of ``ranks`` (..., ) as a trailing axis: (..., n_metrics)."""
    names = [(name, k) for name in METRICS for k in ks]
    tensor = torch.from_numpy(ranks)
    return names, np.stack([METRICS[name](tensor, k).numpy() for name, k in names], axis=-1)


def _rank_matrix(columns: dict[str, np.ndarray], model: str, seeds: list[int], case_ids: np.ndarray) -> np.ndarray:
    """(n_seeds, n_cases) ranks of ``model``, rows in ``seeds`` order, columns in ``case_ids`` order."""
    out = np.zeros((len(seeds), len(case_ids)), dtype=np.int64)
    for row, seed in enumerate(seeds):
        chosen = (columns["model"] == model) & (columns["seed"] == seed)
        if chosen.sum() != len(case_ids):
            raise ValueError(f"{model} seed {seed}: ranks for {chosen.sum()} of {len(case_ids)} cases")
        out[row, np.searchsorted(case_ids, columns["case_id"][chosen])] = columns["rank"][chosen]
    return out


def resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n): how often each of ``n`` cases is drawn in each bootstrap resample (with replacement)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_resamples)])


def bootstrap_interval(diffs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of the mean over axis 0 of ``diffs`` (n_cases, m), under resample ``weights``."""
    means = weights @ diffs / diffs.shape[0]  # (n_resamples, m)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def paired_comparisons(ranks: pa.Table, model: str, ks: Sequence[int] = (1, 5, 10), n_resamples: int = 2000,
                       seed: int = 0) -> pa.Table:
    """``model`` against every other model of ``ranks``, per split, setting, protocol and target domain."""
    rows: list[dict] = []
    columns = {name: np.asarray(ranks.column(name).to_numpy(zero_copy_only=False)) for name in ranks.column_names}
    keys = sorted(set(zip(*(columns[g] for g in GROUP))))
    for key in keys:
        mask = np.logical_and.reduce([columns[g] == v for g, v in zip(GROUP, key)])
        group = {name: values[mask] for name, values in columns.items()}
        seeds_of = {m: set(group["seed"][group["model"] == m].tolist()) for m in set(group["model"].tolist())}
        if model not in seeds_of:
            continue
        case_ids = np.unique(group["case_id"])
        weights = resample_weights(len(case_ids), n_resamples, seed)  # the same resamples for every baseline
        for baseline in sorted(seeds_of.keys() - {model}):
            seeds = sorted(seeds_of[model] & seeds_of[baseline])
            if not seeds:
                continue
            names, mine = _values(_rank_matrix(group, model, seeds, case_ids), ks)
            _, theirs = _values(_rank_matrix(group, baseline, seeds, case_ids), ks)
            diffs = (mine - theirs).mean(axis=0)  # (n_cases, n_metrics): paired by case, pooled over seeds
            low, high = bootstrap_interval(diffs, weights)
            for j, (metric, k) in enumerate(names):
                rows.append({"model": model, "baseline": baseline, **dict(zip(GROUP, key)), "metric": metric, "k": k,
                             "diff": float(diffs[:, j].mean()), "ci_low": float(low[j]), "ci_high": float(high[j]),
                             "n_cases": len(case_ids), "seeds": seeds})
    return pa.Table.from_pylist(rows, schema=COMPARISONS_SCHEMA)


def verdict(diff: float, ci_low: float, ci_high: float, n_seeds: int) -> str:
    """How the report words one comparison."""
    if n_seeds < MIN_SEEDS:
        return f"no claim (fewer than {MIN_SEEDS} seeds)"
    if ci_low <= 0.0 <= ci_high:
        return "no measurable difference"
    return "better" if diff > 0 else "worse"


def comparisons_markdown(table: pa.Table, split: str, setting: str, protocol: str, metric: str = "NDCG",
                         k: int = 10, domains: dict[str, str] | None = None) -> str:
    """One Markdown table: each baseline's paired difference per target domain, with interval and verdict."""
    rows = [r for r in table.to_pylist() if (r["split"], r["setting"], r["protocol"], r["metric"], r["k"])
            == (split, setting, protocol, metric, k)]
    if not rows:
        return ""
    lines = [f"| {rows[0]['model']} vs | target | {metric}@{k} difference | 95% CI | cases | seeds | verdict |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["baseline"], r["target_domain"])):
        target = (domains or {}).get(r["target_domain"], r["target_domain"])
        lines.append(f"| {r['baseline']} | {target} | {r['diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
                     f"| {r['n_cases']} | {len(r['seeds'])} | {verdict(r['diff'], r['ci_low'], r['ci_high'], len(r['seeds']))} |")
    return "\n".join(lines)
