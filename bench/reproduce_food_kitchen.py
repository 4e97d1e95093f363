"""Reproduce the paper's Food-Kitchen Table 1 rows with the whole pipeline, in one command.

    python -m bench.reproduce_food_kitchen /path/to/llmcdsr/food-kitchen [--max-pseudo-users N] [--keep DIR]
        [--set section.field=value ...] [--text-cache DIR]

Uses `datasets/food_kitchen.yaml` (the paper's hyperparameters: d = 64, Adam 1e-3, batch 128,
n_K = 10, T = 100, λ 0.5 Food / 0.3 Kitchen, 8 experts). The only deviations, printed at the start:
the offline LLM (SmolLM2-135M) and text encoder (all-MiniLM-L6-v2) in place of Baichuan2-7B and
jina-embeddings-v2, and a cap on LLM pseudo users when asked for (seeded sample; needed on CPU).
Evaluates on `test.txt` when the folder has one, on valid otherwise, and prints our numbers beside
the paper's rows with the wall time of each stage; the table also goes to
bench/results/reproduce_food_kitchen.md.

``--set`` overrides one YAML field (value parsed as YAML, e.g. ``--set pretrain.epochs=10``) and is
printed as a deviation. With ``--keep DIR`` a second invocation resumes: only stages that are
missing or stale (Dagster's own status, see lgcd_pipeline.staleness) run again, and the stage times
of earlier invocations are kept in ``DIR/stage_seconds.json``. ``--text-cache`` seeds the item
text-vector cache from an earlier run (e.g. ``datasets/food_kitchen/cache/text_vectors``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import apply_assignment, isolated_workspace, mean_std, publish, sync_stages

REPO_ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [("HR", 5), ("HR", 10), ("NDCG", 5), ("NDCG", 10)]


def _prepare(data_dir: Path, max_users: int | None, overrides: list[str]) -> tuple[dict, list[str]]:
    config = yaml.safe_load((REPO_ROOT / "datasets" / "food_kitchen.yaml").read_text())
    config["source"]["path"] = str(data_dir.resolve())
    config["source"].pop("path_env", None)
    deviations = ["LLM: SmolLM2-135M-Instruct (offline) instead of Baichuan2-7B-Chat",
                  "text encoder: all-MiniLM-L6-v2 (offline) instead of jina-embeddings-v2-base-en"]
    if max_users:
        config.setdefault("pseudo_overlap", {})["max_users"] = max_users
        deviations.append(f"pseudo users: a seeded sample of {max_users} single-domain users")
    deviations += [apply_assignment(config, o) for o in overrides]
    return config, deviations


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
                cells.append(mean_std(values))
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
    parser.add_argument("--keep", type=Path, help="work folder to keep, and to resume from (default: temporary, removed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one field of datasets/food_kitchen.yaml (repeatable; printed as a deviation)")
    parser.add_argument("--text-cache", type=Path, help="an earlier run's text_vectors cache folder to start from")
    args = parser.parse_args()
    if not (args.data_dir / "train_overlap.txt").exists():
        sys.exit(f"{args.data_dir}: not an LLMCDSR folder (train_overlap.txt missing)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="lgcd-food-kitchen-"))
    config, deviations = _prepare(args.data_dir, args.max_pseudo_users, args.overrides)
    os.environ.update(isolated_workspace(work, {"food_kitchen": config}))
    if args.text_cache:
        shutil.copytree(args.text_cache, work / "data" / "food_kitchen" / "cache" / "text_vectors", dirs_exist_ok=True)
    split = "test" if (args.data_dir / "test.txt").exists() else "valid"
    print("Deviations from the paper's setup:\n" + "\n".join(f"  - {d}" for d in deviations), flush=True)
    print(f"Evaluating on {split}.", flush=True)

    seconds = sync_stages(work / "stage_seconds.json")
    lines = ["# Food-Kitchen reproduction", "", "Deviations from the paper:", *[f"- {d}" for d in deviations], "",
             f"Split: {split}; protocol: 999 sampled negatives, inter_domain (see report.md beside metrics.parquet); "
             f"seeds {config['evaluation'].get('seeds', [0])}, mean ± std where several.", "",
             *_table(work / "data" / "food_kitchen" / "evaluation" / "metrics.parquet", config["evaluation"]["paper_rows"], split),
             "", "| stage | wall time (s) |", "|---|---:|", *[f"| {s} | {t:.0f} |" for s, t in seconds.items()],
             f"| total | {sum(seconds.values()):.0f} |"]
    publish("\n".join(lines) + "\n", "reproduce_food_kitchen.md")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
