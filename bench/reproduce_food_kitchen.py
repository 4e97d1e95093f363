"""Reproduce the paper's Food-Kitchen Table 1 rows with the whole pipeline, in one command.

    python -m bench.reproduce_food_kitchen /path/to/llmcdsr/food-kitchen [--max-pseudo-users N] [--keep DIR]

Uses `datasets/food_kitchen.yaml` (the paper's hyperparameters: d = 64, Adam 1e-3, batch 128,
n_K = 10, T = 100, λ 0.5 Food / 0.3 Kitchen, 8 experts). The only deviations, printed at the start:
the offline LLM (SmolLM2-135M) and text encoder (all-MiniLM-L6-v2) in place of Baichuan2-7B and
jina-embeddings-v2, and a cap on LLM pseudo users when asked for (seeded sample; needed on CPU).
Evaluates on `test.txt` when the folder has one, on valid otherwise, and prints our numbers beside
the paper's rows with the wall time of each stage; the table also goes to
bench/results/reproduce_food_kitchen.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import isolated_workspace, publish

REPO_ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [("HR", 5), ("HR", 10), ("NDCG", 5), ("NDCG", 10)]


def _prepare(data_dir: Path, max_users: int | None) -> tuple[dict, list[str]]:
    config = yaml.safe_load((REPO_ROOT / "datasets" / "food_kitchen.yaml").read_text())
    config["source"]["path"] = str(data_dir.resolve())
    config["source"].pop("path_env", None)
    deviations = ["LLM: SmolLM2-135M-Instruct (offline) instead of Baichuan2-7B-Chat",
                  "text encoder: all-MiniLM-L6-v2 (offline) instead of jina-embeddings-v2-base-en"]
    if max_users:
        config.setdefault("llm", {})["max_users"] = max_users
        deviations.append(f"pseudo users: a seeded sample of {max_users} single-domain users get LLM pseudo-texts")
    return config, deviations


def _run_stages(work: Path) -> dict[str, float]:
    """Materialize each stage in topological order, one run each, and time it."""
    import dagster as dg

    from lgcd_core.config import discover_datasets
    from lgcd_pipeline.definitions import build_definitions

    defs = build_definitions(discover_datasets())
    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    seconds = {}
    for key in graph.toposorted_asset_keys:
        started = time.perf_counter()
        print(f"== {key.to_user_string()}", flush=True)
        dg.materialize(defs.assets, selection=[key], instance=instance)
        seconds[key.path[1]] = time.perf_counter() - started
    return seconds


def _table(metrics_path: Path, paper_rows: list[dict], split: str) -> list[str]:
    import pyarrow.parquet as pq

    rows = pq.read_table(metrics_path).to_pylist()
    header = "| model | " + " | ".join(f"{d} {m}@{k}" for d in ("Food", "Kitchen") for m, k in COLUMNS) + " |"
    lines = [header, "|---" * (1 + 2 * len(COLUMNS)) + "|"]
    models = sorted({r["model"] for r in rows}, key=lambda m: (m != "lgcd", m))
    for model in models:
        cells = []
        for domain in ("A", "B"):
            for metric, k in COLUMNS:
                values = [r["value"] for r in rows if r["model"] == model and r["target_domain"] == domain
                          and r["metric"] == metric and r["k"] == k and r["split"] == split
                          and r["protocol"] == "sampled999" and r["setting"] == "inter_domain"]
                cells.append(f"{sum(values) / len(values):.4f}" if values else "–")
        lines.append(f"| {model} (ours, {split}) | " + " | ".join(cells) + " |")
    for row in paper_rows:
        cells = [f"{row['values'].get(f'{d}:{m}@{k}', float('nan')):.4f}" for d in ("A", "B") for m, k in COLUMNS]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the LLMCDSR food-kitchen folder")
    parser.add_argument("--max-pseudo-users", type=int, default=None,
                        help="cap on single-domain users sent to the LLM (seeded sample); default: all")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: temporary, removed)")
    args = parser.parse_args()
    if not (args.data_dir / "train_overlap.txt").exists():
        sys.exit(f"{args.data_dir}: not an LLMCDSR folder (train_overlap.txt missing)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="lgcd-food-kitchen-"))
    config, deviations = _prepare(args.data_dir, args.max_pseudo_users)
    os.environ.update(isolated_workspace(work, {"food_kitchen": config}))
    split = "test" if (args.data_dir / "test.txt").exists() else "valid"
    print("Deviations from the paper's setup:\n" + "\n".join(f"  - {d}" for d in deviations), flush=True)
    print(f"Evaluating on {split}.", flush=True)

    seconds = _run_stages(work)
    lines = ["# Food-Kitchen reproduction", "", "Deviations from the paper:", *[f"- {d}" for d in deviations], "",
             f"Split: {split}; protocol: 999 sampled negatives, inter_domain (see report.md beside metrics.parquet).", "",
             *_table(work / "data" / "food_kitchen" / "evaluation" / "metrics.parquet", config["evaluation"]["paper_rows"], split),
             "", "| stage | wall time (s) |", "|---|---:|", *[f"| {s} | {t:.0f} |" for s, t in seconds.items()]]
    publish("\n".join(lines) + "\n", "reproduce_food_kitchen.md")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
