"""Two workspaces that differ in one YAML field, every model of each scored on the same valid cases, paired.

    python -m bench.workspaces --a DIR_A --b DIR_B --field pretrain.positions [--dataset food_kitchen]
        [--seeds 0,1,2] [--rows full,wo_diffusion] [--sasrec sasrec_mixed,sasrec_single] [--encoder-seeds 0,1,2] [--out FILE]

``DIR_A`` and ``DIR_B`` are two pipeline workspaces (see ``bench.ablations``) with the same data and
YAML except ``--field`` (checked: the two values must differ, and label the columns), each with its
pretrained encoders and the LGCD ``--rows`` trained by ``bench.ablations`` under ``DIR/ablations/<row>/seed<k>``.
This trains the ``--sasrec`` baselines in each workspace with the positions convention of its
``pretrain.positions`` (``DIR/positions/<name>_seed<k>``, read back when there), then scores every model
of both workspaces on the evaluation stage's valid candidates:

- LGCD rows in ``inter_domain`` (source-only histories, the task LGCD is for);
- the pretrained encoder of the target domain (eq. 1-3) and the SASRecs in ``mixed_history`` and, for
  the SASRecs, ``inter_domain`` too.

Each model of A is compared with itself in B: per valid case, NDCG@10 difference pooled over the seeds,
95% bootstrap interval over cases (the evaluation stage's comparisons). Only valid is read. Issue 23
used it for where positions count from (``--field pretrain.positions``, A = ``start``, B = ``end``) and
for pre-training's full softmax against a sampled one (``--field pretrain.train_negatives --sasrec ''``).
Output: ``bench/results/workspaces_<dataset>.md`` or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench.common import mean_std, metric_per_seed, publish

SETTINGS = {"lgcd": ("inter_domain",), "encoder": ("mixed_history",), "sasrec": ("inter_domain", "mixed_history")}


def _workspace(path: Path, dataset: str):
    """(config, Inputs, valid candidates) of a workspace (reads the environment it points at)."""
    os.environ.update({"LGCD_DATASETS_DIR": str(path / "datasets"), "LGCD_DATA_ROOT": str(path / "data")})
    from lgcd_core.config import dataset_path, load_dataset_config
    from lgcd_core.model.batches import Inputs
    from lgcd_core.protocol.candidates import draw_candidates
    from lgcd_pipeline.stage import sequence_inputs

    cfg = load_dataset_config(dataset_path(dataset))
    inputs = Inputs(*sequence_inputs(cfg))
    ev = cfg.evaluation
    return cfg, inputs, draw_candidates(inputs.eval_cases, inputs.items, "valid", ev.n_negatives, ev.candidate_seed)


def _field(cfg, field: str):
    """The value of a dotted YAML field (``section.name``) of a loaded dataset config."""
    node = cfg
    for part in field.split("."):
        node = getattr(node, part)
    return node


def _sasrec(cfg, inputs, candidates, name: str, positions: str, seed: int, work: Path, device: str) -> Path:
    """Train (or read back) SASRec baseline ``name`` with ``positions``; returns its folder."""
    from lgcd_core.model.train_sasrec import train_sasrec
    from lgcd_core.stages import BASELINES

    out = work / "positions" / f"{name}_seed{seed}"
    if (out / BASELINES.meta).exists():
        return out
    mode, scfg = cfg.evaluation.sasrec_run(name)
    print(f"== {name} seed {seed}, positions {positions}", flush=True)
    train_sasrec(inputs, mode, scfg.model_copy(update={"positions": positions}), seed, out, device, candidates,
                 log=lambda m: print(m, flush=True))
    return out


def _encoders(cfg, inputs, path: Path, seed: int, device: str) -> Path:
    """The folder of the workspace's encoders pre-trained with ``seed``: the stage's own for its YAML's
    ``pretrain.seed``, else trained (or read back) into ``DIR/positions/encoders_seed<k>``."""
    from lgcd_core.model.pretrain import pretrain_encoders
    from lgcd_core.stages import PRETRAINED_ENCODERS

    if seed == cfg.pretrain.seed:
        return PRETRAINED_ENCODERS.path(cfg)
    out = path / "positions" / f"encoders_seed{seed}"
    if not all((out / PRETRAINED_ENCODERS.meta.format(domain=d)).exists() for d in "AB"):
        print(f"== pre-training seed {seed} in {path}", flush=True)
        seeded = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"seed": seed})})
        pretrain_encoders(seeded, inputs, out, device, log=lambda m: print(m, flush=True))
    return out


def _ranks(cfg, inputs, candidates, path: Path, rows: list[str], sasrecs: list[str], seeds: list[int],
           encoder_seeds: list[int], label: str, device: str) -> pa.Table:
    """Per-case valid ranks of every model of one workspace, model names suffixed with ``@<label>``."""
    from lgcd_core.evaluation.run import source_only
    from lgcd_core.model.sasrec_baseline import load_sasrec_scorer
    from lgcd_core.model.scoring import load_encoder_scorer, load_lgcd_scorer
    from lgcd_core.protocol.ranking import score_all
    from lgcd_core.protocol.settings import item_domains
    from lgcd_core.stages import PRETRAINED_ENCODERS

    ev, domains, encoders = cfg.evaluation, item_domains(inputs.items), PRETRAINED_ENCODERS.path(cfg)
    parts = []

    def score(scorers: dict, seed: int, kind: str) -> None:
        scored = score_all(scorers, inputs.eval_cases, {"valid": candidates}, inputs.items, ks=ev.ks, seed=seed,
                           settings=SETTINGS[kind], batch_size=ev.batch_size).ranks
        parts.append(scored.set_column(0, "model", pc.binary_join_element_wise(scored.column("model"), f"@{label}", "")))

    for seed in encoder_seeds:
        score({"pretrained_encoder": load_encoder_scorer(_encoders(cfg, inputs, path, seed, device), inputs.embeddings,
                                                         inputs.items, device)}, seed, "encoder")
    for seed in seeds:
        lgcd = {row: source_only(load_lgcd_scorer(path / "ablations" / row / f"seed{seed}", encoders, inputs.embeddings,
                                                  inputs.items, device), domains)
                for row in rows if (path / "ablations" / row / f"seed{seed}" / "lgcd.json").exists()}
        if lgcd:
            score(lgcd, seed, "lgcd")
        sas = {name: load_sasrec_scorer(_sasrec(cfg, inputs, candidates, name, cfg.pretrain.positions, seed, path, device), domains, device)
               for name in sasrecs}
        if sas:
            score(sas, seed, "sasrec")
    return pa.concat_tables(parts)


def _encoder_valid(path: Path, cfg) -> dict:
    """The pretraining record of each domain's encoder (best epoch, valid NDCG@10 as pre-training measured it)."""
    from lgcd_core.stages import PRETRAINED_ENCODERS

    out = {}
    for d in "AB":
        meta = json.loads((PRETRAINED_ENCODERS.path(cfg) / PRETRAINED_ENCODERS.meta.format(domain=d)).read_text())
        out[d] = {k: meta.get(k) for k in ("best_epoch", "best_valid", "epochs") if k in meta}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="the workspace whose models are compared (Δ = A − B)")
    parser.add_argument("--b", type=Path, required=True, help="the reference workspace")
    parser.add_argument("--field", required=True, help="the dotted YAML field the two differ in, e.g. pretrain.positions")
    parser.add_argument("--dataset", default="food_kitchen")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default="full,wo_diffusion", help="LGCD rows trained by bench.ablations in both")
    parser.add_argument("--sasrec", default="sasrec_mixed,sasrec_single", help="SASRec baselines to train and compare")
    parser.add_argument("--encoder-seeds", default="0", help="pre-training seeds of the pretrained-encoder rows "
                        "(seeds other than the YAML's are pre-trained into DIR/positions/encoders_seed<k>)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lgcd_core.device import resolve_device
    from lgcd_core.evaluation.comparisons import paired_comparisons

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    sasrecs = [s for s in args.sasrec.split(",") if s]
    encoder_seeds = [int(s) for s in args.encoder_seeds.split(",")]
    parts, records, labels = [], {}, []
    for path in (args.a, args.b):
        cfg, inputs, candidates = _workspace(path, args.dataset)
        labels.append(str(_field(cfg, args.field)))
        parts.append(_ranks(cfg, inputs, candidates, path, rows, sasrecs, seeds, encoder_seeds, labels[-1],
                            resolve_device(cfg.device)))
        records[labels[-1]] = _encoder_valid(path, cfg)
    a, b = labels
    if a == b:
        raise SystemExit(f"{args.a} and {args.b}: {args.field} is {a} in both")
    ranks = pa.concat_tables(parts)
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    models = sorted({m.rsplit("@", 1)[0] for m in ranks.column("model").to_pylist()})
    command = "python -m bench.workspaces " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    out = [f"# {args.field}: {a} (A) against {b} (B), {args.dataset} valid", "",
           f"`{command}`", "",
           "NDCG@10 per model in each workspace (mean ± std over seeds) and Δ = A − B, per case, pooled "
           "over the seeds, 95% bootstrap interval over cases (an interval containing 0: no measurable difference). "
           "LGCD rows read source-only histories (`inter_domain`); the pretrained encoder reads the target-domain "
           "items of the history (`mixed_history`).", ""]
    for protocol, label in (("sampled999", "999 sampled negatives"), ("full", "full ranking")):
        out += [f"## {label}", "", f"| model | setting | target | NDCG@10, {a} | NDCG@10, {b} | Δ A − B [95% CI] | seeds |",
                "|---|---|---|---|---|---|---:|"]
        for model in models:
            comp = paired_comparisons(ranks.filter(pc.is_in(ranks["model"], pa.array([f"{model}@{a}", f"{model}@{b}"]))),
                                      f"{model}@{a}", ks=(10,))
            for r in comp.to_pylist():
                if r["protocol"] != protocol or r["metric"] != "NDCG":
                    continue
                d, setting = r["target_domain"], r["setting"]
                a_b = [mean_std(metric_per_seed(ranks, model=f"{model}@{x}", target_domain=d, setting=setting, protocol=protocol))
                       for x in (a, b)]
                out.append(f"| {model} | {setting} | {names[d]} | {a_b[0]} | {a_b[1]} "
                           f"| {r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {len(r['seeds'])} |")
        out.append("")
    out += ["## Pre-training records (valid, as pre-training measures it)", "", "```", json.dumps(records, indent=1), "```", ""]
    publish("\n".join(out), args.out or f"workspaces_{args.dataset}.md")


if __name__ == "__main__":
    main()
