"""Human-readable report of the metrics table: markdown with the protocol in words, and a bar chart.

Values are mean ± sample standard deviation over the seeds present in the table (just the mean
for one seed). Published rows (e.g. the paper's) are shown beside ours, labelled with their split.
Each table is followed by LGCD's paired comparisons (:mod:`lgcd_core.evaluation.comparisons`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from lgcd_core.evaluation.comparisons import MIN_SEEDS, comparisons_markdown
from lgcd_core.io import save_figure

SPLIT_ORDER = ("valid", "test")
PROTOCOLS = ("sampled999", "full")
SETTINGS = ("inter_domain", "mixed_history")

Key = tuple[str, str, str, str, str, str, int]  # split, protocol, setting, model, domain, metric, k


def _grouped(metrics: pa.Table) -> dict[Key, list[float]]:
    values: dict[Key, list[float]] = defaultdict(list)
    for r in metrics.to_pylist():
        key = (r["split"], r["protocol"], r["setting"], r["model"], r["target_domain"], r["metric"], r["k"])
        values[key].append(r["value"])
    return values


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _columns(metrics: pa.Table, ks: list[int] | None = None) -> list[tuple[str, str, int]]:
    ks = ks or sorted(set(metrics.column("k").to_pylist()))
    domains = sorted(set(metrics.column("target_domain").to_pylist()))
    return [(d, m, k) for d in domains for m in ("HR", "NDCG") for k in ks]


def metrics_table(metrics: pa.Table, split: str, protocol: str, setting: str, domain_names: dict[str, str],
                  paper_rows: dict[str, dict] | None = None, ks: list[int] | None = None) -> str:
    """One markdown table: a row per model, a column per (domain, metric, K)."""
    grouped = _grouped(metrics)
    columns = _columns(metrics, ks)
    models = list(dict.fromkeys(metrics.column("model").to_pylist()))
    header = ["model"] + [f"{domain_names.get(d, d)} {m}@{k}" for d, m, k in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells = [_fmt(grouped[(split, protocol, setting, model, d, m, k)])
                 if (split, protocol, setting, model, d, m, k) in grouped else "—" for d, m, k in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if protocol == "sampled999":
        for label, row in (paper_rows or {}).items():
            if row.get("setting", "inter_domain") != setting:
                continue
            values = row["values"]
            cells = [f"{values[f'{d}:{m}@{k}']:.4f}" if f"{d}:{m}@{k}" in values else "—" for d, m, k in columns]
            lines.append(f"| *{label}* ({row.get('split', 'test')}, published) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def protocol_text(protocol: str, setting: str, split: str, summary: dict) -> str:
    """The protocol of one table, in words."""
    if protocol == "sampled999":
        ranking = (
            f"Sampled ranking: each {split} case's target is ranked against {summary['n_negatives']} negatives "
            f"(per target domain: {_pairs(summary.get('negatives_per_domain', {}))}; fewer only when a domain "
            f"has fewer other items), drawn once per split (seed {summary['candidate_seed']}) uniformly without "
            "replacement from the target domain's items, excluding the target, stored and shared by every model."
        )
    else:
        ranking = (
            f"Full ranking: each {split} case's target is ranked against every other item of the target domain "
            f"({_pairs(summary.get('domain_items', {}))} items; padding and the other domain's items excluded; "
            "items of the user's history are not removed, as in the sampled protocol)."
        )
    history = (
        "Input history: only the source-domain items (every item not in the target's domain); the user is "
        "treated as having no target-domain history."
        if setting == "inter_domain"
        else "Input history: the whole mixed history before the target."
    )
    if setting == "mixed_history" and not summary.get("lgcd_reads_target_history", False):
        history += " LGCD models read only its source-domain items here too (lgcd_reads_target_history: false)."
    seeds = summary.get("seeds", [])
    return (
        f"{ranking} {history} rank = 1 + #(competitors scored >= the target): ties count against the model. "
        f"HR@K = [rank <= K], NDCG@K = 1/log2(rank+1) if rank <= K. Model selection (early stopping) used valid "
        f"only, never test. Values: mean ± sample std over seeds {seeds} (one value when one seed)."
    )


def comparisons_text(comparisons: pa.Table, split: str, protocol: str, setting: str, names: dict[str, str]) -> list[str]:
    """The paired differences of LGCD against every other model, NDCG@10 and HR@10, as report lines."""
    tables = [comparisons_markdown(comparisons, split, setting, protocol, metric, 10, names) for metric in ("NDCG", "HR")]
    if not any(tables):
        return []
    return ["Paired differences, LGCD minus each model: per-case difference averaged over the seeds both were "
            "scored with, 95% bootstrap interval over cases (2,000 resamples); an interval containing 0 is "
            f"\"no measurable difference\", and a claim needs at least {MIN_SEEDS} seeds.", "",
            *[line for table in tables if table for line in (table, "")]]


def render_report(metrics: pa.Table, cfg_summary: dict, paper_rows: dict[str, dict] | None = None,
                  comparisons: pa.Table | None = None) -> str:
    """The whole report.md: a section per split, protocol and setting, protocol stated beside each table,
    each followed by LGCD's paired comparisons when ``comparisons`` is given."""
    names = cfg_summary.get("domains", {})
    rows = metrics.to_pylist()
    n_cases = {(r["split"], r["target_domain"]): r["n_cases"] for r in rows}
    present = {(r["split"], r["protocol"], r["setting"]) for r in rows}
    lines = [f"# Evaluation: {cfg_summary.get('dataset', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in cfg_summary.items() if k != "dataset"]
    lines += ["- cases: " + ", ".join(f"{s} {names.get(d, d)} {n}" for (s, d), n in sorted(n_cases.items())), ""]
    for split in SPLIT_ORDER:
        for protocol in PROTOCOLS:
            for setting in SETTINGS:
                if (split, protocol, setting) not in present:
                    continue
                lines += [f"## {split} · {protocol} · {setting}", "",
                          protocol_text(protocol, setting, split, cfg_summary), "",
                          metrics_table(metrics, split, protocol, setting, names, paper_rows), ""]
                if comparisons is not None:
                    lines += comparisons_text(comparisons, split, protocol, setting, names)
    return "\n".join(lines)


def plot_metrics(metrics: pa.Table, path: Path, split: str, domain_names: dict[str, str], n_negatives: int,
                 k: int = 10) -> Path:
    """Bar chart of HR@k and NDCG@k (sampled protocol) per model and domain, one panel per setting.

    A fixed size (1,100 x 770 px) whatever the number of models, so it fits the UI's dialog.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _grouped(metrics)
    models = list(dict.fromkeys(metrics.column("model").to_pylist()))
    domains = sorted(set(metrics.column("target_domain").to_pylist()))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.7), squeeze=False)
    width = 0.8 / max(1, len(domains))
    for col, setting in enumerate(SETTINGS):
        for row, metric in enumerate(("HR", "NDCG")):
            ax = axes[row][col]
            for j, domain in enumerate(domains):
                vals = [grouped.get((split, "sampled999", setting, m, domain, metric, k), [0.0]) for m in models]
                means = [statistics.mean(v) for v in vals]
                errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
                xs = [i + (j - (len(domains) - 1) / 2) * width for i in range(len(models))]
                ax.bar(xs, means, width, yerr=errs, capsize=2, label=domain_names.get(domain, domain))
            ax.set_xticks(range(len(models)), models, rotation=40, ha="right", fontsize=7)
            ax.set_title(f"{metric}@{k} · {setting} · {split} ({n_negatives} sampled negatives)", fontsize=9)
            ax.legend(fontsize=8)
    return save_figure(fig, path)
