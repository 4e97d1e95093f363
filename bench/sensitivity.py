"""Sensitivity of LGCD to n_K, T and λ (the paper's Figure 3), one parameter at a time, on valid.

    python -m bench.sensitivity [--dataset demo] [--workspace DIR]
        [--sweep grounding.n_k=5,10,20] [--sweep lgcd.diffusion.T=50,100,200]
        [--sweep lgcd.diffusion.lambda_A+lgcd.diffusion.lambda_B=0.1,0.3,0.5,0.7,0.9] [--set section.field=value ...]

Every point starts from the dataset's YAML, changes one field (``a+b`` changes several to the same
value) and re-materializes only what that change invalidates (``pseudo_texts`` onwards for n_K, as the
prompt asks for n_K items, eq. 4, unless ``llm.n_descriptions`` is set: then ``grounded_items`` onwards;
``lgcd_model`` and ``evaluation`` for T and λ). Selection stays on valid; test is never read.

The SASRec baselines do not depend on any swept field: the ``baselines`` stage trains them at the
first point and no later point makes it stale, so a point costs the LGCD trainings of its seeds.
Only the mixed SASRec is kept as the reference line (``--set`` can change that).

``--workspace`` reuses a pipeline workspace, e.g. the ``--keep`` folder of
``bench.reproduce``, so its upstream stages and trained baselines are not recomputed;
its YAML is restored at the end. Without it, a fresh temporary workspace holds ``datasets/<dataset>.yaml``.
The table (LGCD's valid NDCG@10 and HR@10 per target domain, ``inter_domain``, 999 or the YAML's
sampled negatives, mean ± std over the YAML's seeds) goes to bench/results/sensitivity_<dataset>.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import REPO_ROOT, apply_assignment, isolated_workspace, mean_std, publish, set_field, sync_stages

DEFAULT_SWEEPS = ["grounding.n_k=5,10,20", "lgcd.diffusion.T=50,100,200",
                  "lgcd.diffusion.lambda_A+lgcd.diffusion.lambda_B=0.1,0.3,0.5,0.7,0.9"]
METRICS = [("NDCG", 10), ("HR", 10)]


def parse_sweep(text: str) -> tuple[list[str], list]:
    """``a.b+c.d=1,2,3`` -> (["a.b", "c.d"], [1, 2, 3]) with YAML-parsed values."""
    fields, sep, values = text.partition("=")
    if not sep or not fields or not values:
        raise SystemExit(f"--sweep {text!r}: expected section.field[+section.field]=v1,v2,...")
    return fields.split("+"), [yaml.safe_load(v) for v in values.split(",")]


def resolved(config: dict, name: str):
    """The config the pipeline builds from this YAML dict (schema defaults filled in)."""
    from lgcd_core.config import DatasetConfig

    return DatasetConfig.model_validate({**config, "name": name})


def resolved_field(config: dict, name: str, path: str):
    """The value the pipeline uses for ``path``: the YAML's, or the schema default."""
    node = resolved(config, name)
    for part in path.split("."):
        node = getattr(node, part)
    return node


def lgcd_summary(metrics_path: Path, model: str = "lgcd") -> dict[str, str]:
    """'A NDCG@10' -> 'mean ± std' over seeds of ``model`` on valid, sampled, inter_domain."""
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(metrics_path).to_pylist()
            if r["model"] == model and r["split"] == "valid" and r["protocol"] == "sampled999"
            and r["setting"] == "inter_domain"]
    out = {}
    for domain in ("A", "B"):
        for metric, k in METRICS:
            values = [r["value"] for r in rows if r["target_domain"] == domain and r["metric"] == metric and r["k"] == k]
            out[f"{domain} {metric}@{k}"] = mean_std(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo", help="dataset name (datasets/<name>.yaml, or the workspace's)")
    parser.add_argument("--workspace", type=Path, help="an existing pipeline workspace to sweep in (kept)")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD[+FIELD]=V1,V2,...",
                        help=f"a parameter and its values (repeatable; default: {' '.join(DEFAULT_SWEEPS)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a fixed change applied at every point (e.g. evaluation.seeds=[0])")
    args = parser.parse_args()
    sweeps = [parse_sweep(s) for s in (args.sweep or DEFAULT_SWEEPS)]

    work = args.workspace or Path(tempfile.mkdtemp(prefix=f"lgcd-sensitivity-{args.dataset}-"))
    yaml_path = work / "datasets" / f"{args.dataset}.yaml"
    original = yaml_path.read_text() if args.workspace else (REPO_ROOT / "datasets" / f"{args.dataset}.yaml").read_text()
    base = yaml.safe_load(original)
    set_field(base, "evaluation.baselines", ["sasrec_mixed"])
    set_field(base, "evaluation.variants", [])
    for assignment in args.overrides:
        apply_assignment(base, assignment)
    os.environ.update(isolated_workspace(work, {args.dataset: base}))
    metrics_path = work / "data" / args.dataset / "evaluation" / "metrics.parquet"

    header = ["parameter", "value", "minutes"] + [f"{d} {m}@{k}" for d in ("A", "B") for m, k in METRICS]
    lines = [f"# Sensitivity on {args.dataset} (valid, inter_domain, LGCD)", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    reference, measured = None, {}  # resolved config -> (minutes, cells): a repeated point is not rerun
    try:
        for fields, values in sweeps:
            default = resolved_field(base, args.dataset, fields[0])
            for value in values:
                config = yaml.safe_load(yaml.safe_dump(base))
                for field in fields:
                    set_field(config, field, value)
                point = resolved(config, args.dataset).model_dump_json()
                print(f"### {'+'.join(fields)} = {value}", flush=True)
                if point not in measured:
                    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
                    started = time.perf_counter()
                    sync_stages(work / "sensitivity_seconds.json")
                    measured[point] = ((time.perf_counter() - started) / 60, lgcd_summary(metrics_path))
                minutes, cells = measured[point]
                reference = reference or lgcd_summary(metrics_path, "sasrec_mixed")
                mark = " (YAML)" if value == default else ""
                lines.append(f"| {'+'.join(fields)} | {value}{mark} | {minutes:.1f} | " + " | ".join(cells.values()) + " |")
                print(lines[-1], flush=True)
    finally:
        if args.workspace:
            yaml_path.write_text(original)
    if reference:
        lines.append("| mixed SASRec (reference) | – | – | " + " | ".join(reference.values()) + " |")
    lines += ["", "A and B are the dataset's domains; mean ± std over the YAML's evaluation seeds. "
              "The first point also trains the upstream stages and the baselines, so its minutes are not comparable."]
    publish("\n".join(lines) + "\n", f"sensitivity_{args.dataset}.md")
    if not args.workspace:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
