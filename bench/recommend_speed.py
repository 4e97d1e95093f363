"""Users/s of the `recommendations` stage's scoring: exact top-K against FAISS, as a ratio.

    python -m bench.recommend_speed [--dataset demo] [--keep DIR] [--sizes 10000,50000,200000] [--set section.field=value ...]
    python -m bench.recommend_speed --dataset food_kitchen --model-dir RUN [--max-users N]

Two tables, both written to bench/results/recommend_speed.md:

1. The dataset's trained default LGCD model on every user the stage serves (single-domain and held-out):
   the stage itself as materialized (its own users/s metadata), then the same users scored with the
   exact search and with FAISS forced (``faiss_above = 0``), end to end (user vectors + top K) and the
   top-K search alone (user vectors computed once), with a check that both give the same lists.
2. The top-K search alone on synthetic catalogues of growing size (random item and user vectors of
   the model's width, the stage's k, batch and number of excluded items per user): where FAISS starts
   to pay, i.e. what ``recommendations.faiss_above`` should be on this machine.

With ``--model-dir RUN`` (a trained LGCD folder holding ``lgcd.safetensors`` and ``lgcd.json``, such as
``bench.ablations``' ``DIR/ablations/full/seed0``), that model replaces the dataset's ``lgcd_model``
stage: the stage's own function (``run_recommendations``) scores every user once, and its users/s and
its sample of ten users (the table the UI shows as metadata) go into the results. ``--max-users N``
times the exact/FAISS comparison on a seeded subset of N users (the stage row always covers all).

Data: with ``--dataset NAME`` whose ``lgcd_model`` stage exists under the data root (``LGCD_DATA_ROOT``
or ``datasets/``), that one (e.g. ``--dataset food_kitchen`` after the reproduction). Otherwise the
demo is built in an isolated workspace (temporary, or ``--keep DIR`` to reuse it): only the stages the
recommendations read, with deviations that do not change how a user is scored (printed): the LLM-free
``collaborative`` pseudo source (no LLM on a CPU budget), one seed, no extra model variants.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import REPO_ROOT, apply_assignment, isolated_workspace, publish

DEMO_DEVIATIONS = {  # how the demo is built here; none changes how a trained model scores a user
    "pseudo_overlap.source": "collaborative",
    "evaluation.seeds": [0],
    "evaluation.baselines": ["popularity"],
}


def _build_demo(work: Path, overrides: list[str]) -> list[str]:
    """Materialize (or reuse) the demo's stages up to `recommendations` in ``work``; returns the deviations."""
    import dagster as dg

    from lgcd_core.config import discover_datasets
    from lgcd_pipeline.definitions import build_definitions
    from lgcd_pipeline.staleness import plan_sync

    config = yaml.safe_load((REPO_ROOT / "datasets" / "demo.yaml").read_text())
    config["source"]["path"] = str(work / "raw" / "demo")
    deviations = [apply_assignment(config, f"{field}={yaml.safe_dump(value, default_flow_style=True).strip()}")
                  for field, value in DEMO_DEVIATIONS.items()]
    deviations += [apply_assignment(config, o) for o in overrides]
    os.environ.update(isolated_workspace(work, {"demo": config}))
    defs = build_definitions(discover_datasets())
    graph = defs.resolve_asset_graph()
    target = dg.AssetKey(["demo", "recommendations"])
    instance = dg.DagsterInstance.get()
    plan = plan_sync(instance, graph, graph.get_ancestor_asset_keys(target) | {target})
    for key in plan.keys:
        started = time.perf_counter()
        print(f"== {key.to_user_string()} ({plan.reasons[key]})", flush=True)
        dg.materialize(defs.assets, selection=[key], instance=instance)
        print(f"   {time.perf_counter() - started:.0f} s", flush=True)
    return deviations


def _stage_metadata(name: str) -> dict:
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey([name, "recommendations"]))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}


def _timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls (after one warm-up call), and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def _stage_run(cfg, model_dir: Path) -> dict:
    """The stage's own function on every user with the model in ``model_dir``: its stats, with its sample table."""
    import pyarrow.parquet as pq

    from lgcd_core.device import resolve_device
    from lgcd_core.serving.recommend import run_recommendations
    from lgcd_core.stages import FILTERED_INTERACTIONS, PRETRAINED_ENCODERS
    from lgcd_pipeline.stage import sequence_inputs

    items, sequences, eval_cases, embeddings = sequence_inputs(cfg)
    user_ids = pq.read_table(FILTERED_INTERACTIONS.table.path(cfg), columns=["user_id"]).column("user_id")
    with tempfile.TemporaryDirectory(prefix="lgcd-recommend-speed-") as out:
        return run_recommendations(cfg, items, sequences, eval_cases, embeddings, user_ids, model_dir,
                                   PRETRAINED_ENCODERS.path(cfg), Path(out) / "recommendations.parquet",
                                   resolve_device(cfg.device))


def _model_rows(cfg, repeat: int, model_dir: Path, max_users: int | None, stage: dict) -> tuple[list[str], int]:
    import pyarrow.parquet as pq
    import torch

    from lgcd_core.config import LGCDConfig
    from lgcd_core.device import resolve_device
    from lgcd_core.serving.recommend import serving_users, user_ids_by_idx
    from lgcd_core.serving.recommender import lgcd_recommender
    from lgcd_core.serving.topk import build_index, exact_top_k, exclusion_matrix, faiss_top_k
    from lgcd_core.stages import FILTERED_INTERACTIONS, LGCD_MODEL, PRETRAINED_ENCODERS
    from lgcd_pipeline.stage import sequence_inputs

    rc = cfg.recommendations
    diffusion = LGCDConfig.model_validate(json.loads((model_dir / LGCD_MODEL.meta).read_text())["lgcd"]).diffusion
    items, sequences, eval_cases, embeddings = sequence_inputs(cfg)
    user_ids = pq.read_table(FILTERED_INTERACTIONS.table.path(cfg), columns=["user_id"]).column("user_id")
    users = serving_users(items, sequences, eval_cases, user_ids_by_idx(user_ids, sequences))
    device = resolve_device(cfg.device)
    rec = lgcd_recommender(model_dir, PRETRAINED_ENCODERS.path(cfg), embeddings, items, device,
                           read_target_history=rc.read_target_history, faiss_above=rc.faiss_above,
                           batch_size=rc.batch_size)
    timed = np.arange(len(users))
    if max_users is not None and max_users < len(users):
        timed = np.sort(np.random.default_rng(0).choice(len(users), size=max_users, replace=False))
    n = len(timed)
    groups = {d: timed[users.target_domain[timed] == d] for d in ("A", "B")}

    def run(search: str):
        return {d: rec.top_k([users.history[r] for r in rows], d, rc.k, [users.exclude[r] for r in rows], search=search)
                for d, rows in groups.items() if len(rows)}

    t_exact, exact = _timed(lambda: run("exact"), repeat)
    t_faiss, faiss = _timed(lambda: run("faiss"), repeat)
    same = all(np.array_equal(exact[d][0], faiss[d][0]) for d in exact)
    vectors = {d: rec.user_vectors([users.history[r] for r in rows], d) for d, rows in groups.items() if len(rows)}
    t_vectors, _ = _timed(lambda: {d: rec.user_vectors([users.history[r] for r in rows], d)
                                   for d, rows in groups.items() if len(rows)}, repeat)
    excluded = {d: exclusion_matrix([rec.column[np.asarray(users.exclude[r], dtype=np.int64)] for r in rows], len(rows))
                for d, rows in groups.items() if len(rows)}
    indexes = {d: build_index(rec.item_vectors[d]) for d in vectors}

    def search_only(fn) -> None:
        for d, v in vectors.items():
            for lo in range(0, len(v), rc.batch_size):
                hi = lo + rc.batch_size
                args = (v[lo:hi], rec.item_vectors[d]) + ((indexes[d],) if fn is faiss_top_k else ())
                fn(*args, rc.k, excluded[d][lo:hi])

    with torch.no_grad():
        t_search_exact, _ = _timed(lambda: search_only(exact_top_k), repeat)
        t_search_faiss, _ = _timed(lambda: search_only(faiss_top_k), repeat)
    sizes = " / ".join(f"{len(rec.global_ids[d])}" for d in ("A", "B"))
    towards = ", ".join(f"{len(r)} towards {d}" for d, r in groups.items())
    meta = stage or _stage_metadata(cfg.name)
    which = f"`{cfg.name}` default LGCD" if model_dir == LGCD_MODEL.path(cfg) else f"LGCD of `{model_dir}`"
    subset = f" (timed rows: a seeded sample of {n} of {len(users)} users)" if n < len(users) else ""
    lines = [
        f"Model: {which} (d = {rec.item_vectors['A'].shape[1]}, T = {diffusion.T}, "
        f"λ {diffusion.lambda_A} / {diffusion.lambda_B}, {diffusion.sampler_steps} reverse jumps); "
        f"{n} users ({towards}){subset}; catalogue "
        f"A / B = {sizes} items; k = {rc.k}, batch {rc.batch_size}; device {device}. Best of {repeat} after a warm-up.",
        "",
        "| what | exact (users/s) | FAISS (users/s) | FAISS / exact | same lists |",
        "|---|---:|---:|---:|---|",
    ]
    if meta:
        search = meta.get("per_domain", {}).get("B", {}).get("search", "?")
        lines.append(f"| the stage {'function' if stage else 'as materialized'} ({search} search, all "
                     f"{meta.get('users', '?')} users) | {meta.get('users_per_s', float('nan')):.0f} | | | |")
    lines += [
        f"| user vectors + top-K (end to end) | {n / t_exact:.0f} | {n / t_faiss:.0f} | {t_exact / t_faiss:.2f} | "
        f"{'yes' if same else 'NO'} |",
        f"| top-K search alone (vectors given) | {n / t_search_exact:.0f} | {n / t_search_faiss:.0f} | "
        f"{t_search_exact / t_search_faiss:.2f} | |",
        f"| user vectors alone (condition, guess, reverse, MoE) | {n / t_vectors:.0f} | | | |",
    ]
    return lines, rec.item_vectors["A"].shape[1]


def _search(fn, users, items, k: int, excluded, batch: int, *index):
    """Columns of the top-K search ``fn`` over ``users`` in batches (``index``: FAISS only)."""
    import torch

    return torch.cat([fn(users[lo:lo + batch], items, *index, k, excluded[lo:lo + batch])[1]
                      for lo in range(0, len(users), batch)])


def _synthetic_rows(sizes: list[int], dim: int, k: int, batch: int, repeat: int, n_users: int = 4096,
                    n_excluded: int = 10) -> list[str]:
    import torch

    from lgcd_core.serving.topk import build_index, exact_top_k, exclusion_matrix, faiss_top_k

    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    lines = [f"Top-K search alone on synthetic catalogues: {n_users} users, d = {dim}, k = {k}, batch {batch}, "
             f"{n_excluded} excluded items per user; random vectors. Best of {repeat} after a warm-up.", "",
             "| items | exact (users/s) | FAISS (users/s) | FAISS / exact | index build (s) | same lists |",
             "|---:|---:|---:|---:|---:|---|"]
    for m in sizes:
        items = torch.randn(m, dim, generator=gen)
        users = torch.randn(n_users, dim, generator=gen)
        excluded = exclusion_matrix(rng.integers(0, m, size=(n_users, n_excluded)).tolist(), n_users)
        started = time.perf_counter()
        index = build_index(items)
        t_build = time.perf_counter() - started
        args = (users, items, k, excluded, batch)
        with torch.no_grad():
            t_exact, exact = _timed(lambda a=args: _search(exact_top_k, *a), repeat)
            t_faiss, faiss = _timed(lambda a=args, i=index: _search(faiss_top_k, *a, i), repeat)
        same = bool(torch.equal(exact, faiss))
        lines.append(f"| {m} | {n_users / t_exact:.0f} | {n_users / t_faiss:.0f} | {t_exact / t_faiss:.2f} | "
                     f"{t_build:.2f} | {'yes' if same else 'NO'} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo", help="a dataset whose lgcd_model exists (default: demo, built if missing)")
    parser.add_argument("--keep", type=Path, help="demo workspace to keep and reuse (default: temporary, removed)")
    parser.add_argument("--sizes", default="10000,50000,200000", help="synthetic catalogue sizes (comma-separated)")
    parser.add_argument("--model-dir", type=Path, help="a trained LGCD folder to use instead of the lgcd_model stage")
    parser.add_argument("--max-users", type=int, help="time the exact/FAISS rows on a seeded sample of this many users")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (the best is kept)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one field of the demo YAML (repeatable; printed as a deviation)")
    args = parser.parse_args()

    import torch

    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.stages import LGCD_MODEL

    deviations: list[str] = []
    work = None
    cfg = load_dataset_config(dataset_path(args.dataset))
    model_dir = args.model_dir or LGCD_MODEL.path(cfg)
    if not (model_dir / LGCD_MODEL.weights).is_file():
        if args.dataset != "demo":
            raise SystemExit(f"{model_dir}: no trained model; materialize {args.dataset}/lgcd_model first "
                             f"(or set LGCD_DATA_ROOT to the data root that has it, or pass --model-dir)")
        work = args.keep or Path(tempfile.mkdtemp(prefix="lgcd-recommend-speed-"))
        deviations = _build_demo(work, args.overrides)
        cfg = load_dataset_config(dataset_path("demo"))
        model_dir = LGCD_MODEL.path(cfg)
    if deviations:
        print("Demo built with:\n" + "\n".join(f"  - {d}" for d in deviations), flush=True)
    stage = _stage_run(cfg, model_dir) if args.model_dir else {}
    model_lines, dim = _model_rows(cfg, args.repeat, model_dir, args.max_users, stage)
    print("\n".join(model_lines), flush=True)
    rc = cfg.recommendations
    synthetic = _synthetic_rows([int(s) for s in args.sizes.split(",")], dim, rc.k, rc.batch_size, args.repeat)
    cpu = f"CPU ({platform.processor() or platform.machine()}, torch {torch.get_num_threads()} threads)"
    text = "\n".join([
        "# Recommendation speed", "",
        f"Device: {cpu}; torch {torch.__version__}; load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min; CPU figures are only meaningful on an "
        "unloaded machine). `python -m bench.recommend_speed" + (f" --dataset {args.dataset}" if args.dataset != "demo" else "")
        + (f" --model-dir {args.model_dir}" if args.model_dir else "")
        + (f" --max-users {args.max_users}" if args.max_users else "")
        + (f" --repeat {args.repeat}" if args.repeat != 3 else "")
        + (f" --sizes {args.sizes}" if args.sizes != "10000,50000,200000" else "") + "`.", "",
        *([f"Demo built in an isolated workspace with: {'; '.join(deviations)} (none changes how a user is scored).", ""]
          if deviations else []),
        *model_lines, "",
        *([f"Ten users as the stage's metadata shows them in the UI (`recommendations.sample_users`, seed "
           f"{cfg.recommendations.sample_seed}):", "", stage["sample"], ""] if stage else []),
        *synthetic, "",
        "FAISS here is an exact inner-product index (IndexFlatIP) whose candidates are re-scored exactly, so both "
        "searches return the same lists; what differs is the cost of the search. `recommendations.faiss_above` "
        "switches a target domain to FAISS above that many items.", ""])
    publish(text, "recommend_speed.md" if args.dataset == "demo" else f"recommend_speed_{args.dataset}.md")
    if work is not None and args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
