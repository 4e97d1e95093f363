"""Data-parallel scaling of LGCD training: sequences/s with 1 and 2 processes, on small synthetic inputs.

    python -m bench.train_scaling [--scale 0.05] [--epochs 3] [--processes 1,2] [--device cpu]

Inputs: the model tests' toy generator (tests/toy_data.py) at ``scale`` of Food-Kitchen's sizes, as
bench/train_speed.py makes them; encoders pretrained once for one epoch, in this process. Each row
trains the default LGCD config through :func:`lgcd_core.model.launch.train` with ``train_processes: N``
(``accelerate launch`` for N > 1, over the same cores: on the CPU each of N processes gets
cores // N threads) and reads ``sequences_per_s`` from the run's stats: the global batches' rows per
second of the training epochs, evaluation and the launch's start-up left out (``wall_s`` has them).
``ratio`` is against the 1-process figure of the same run. The 1-process run (and the pre-training)
use as many threads as each process of the largest launch: on a loaded machine a process with more
threads than free cores slows down many times over (OpenMP threads wait on each other), which would
make the ratio measure that instead of the data parallelism. :func:`rows` is what bench/scaling.py reads.

Prints a table and writes bench/results/train_scaling.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.common import publish
from lgcd_core.config import DatasetConfig, LGCDConfig, PretrainConfig
from lgcd_core.model.batches import Inputs
from lgcd_core.model.launch import train
from lgcd_core.model.pretrain import pretrain_encoders
from lgcd_core.model.train_lgcd import train_lgcd_runs
from tests.toy_data import synthetic_inputs  # run from the repository root, as every bench is

RUN = "lgcd/seed0"


def food_kitchen_like(scale: float) -> Inputs:
    """Synthetic inputs at ``scale`` of Food-Kitchen's item, user and sequence-length figures (bench/train_speed.py)."""
    data = synthetic_inputs(n_items_a=int(8661 * scale), n_items_b=int(27637 * scale), n_overlap=int(7501 * scale),
                            n_a_only=int(5472 * scale), n_b_only=int(38191 * scale), n_valid=50, dim_text=384,
                            n_tastes=50, min_len=5, max_len=15, n_pseudo_items=10, seed=0)
    return Inputs(**data)


def _config(processes: int, epochs: int) -> DatasetConfig:
    """The default pretrain and LGCD sections; LGCD alone (no variant, one seed), ``epochs`` epochs without stopping early."""
    lgcd = LGCDConfig().with_updates({"training.epochs": epochs, "training.patience": epochs})
    return DatasetConfig(name="bench", source={"format": "synthetic", "path": "x"}, domains={"A": "food", "B": "kitchen"},
                         pretrain=PretrainConfig(epochs=1), lgcd=lgcd, evaluation={"baselines": []},
                         train_processes=processes)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rows(scale: float = 0.05, epochs: int = 3, processes: tuple[int, ...] = (1, 2), device: str = "cpu") -> list[dict]:
    """One row per process count: LGCD training ``sequences_per_s`` and its ``ratio`` to 1 process (measured first)."""
    inputs = food_kitchen_like(scale)
    threads = max(1, (os.cpu_count() or 1) // max(processes))
    out = []
    with tempfile.TemporaryDirectory(prefix="lgcd-train-scaling-") as tmp, _threads(threads):
        encoders = Path(tmp) / "encoders"
        pretrain_encoders(_config(1, epochs), inputs, encoders, device, log=lambda _: None)
        for n in sorted(set(processes) | {1}):
            started = time.perf_counter()
            stats = train(train_lgcd_runs, _config(n, epochs), inputs, Path(tmp) / f"lgcd_{n}", device,
                          lambda _: None, encoders_dir=encoders)[RUN]
            out.append({"what": f"LGCD training, scale {scale} of Food-Kitchen, {device}", "processes": n,
                        "threads_per_process": threads if n == 1 else max(1, (os.cpu_count() or 1) // n),
                        "sequences_per_s": stats["sequences_per_s"], "seconds_per_epoch": stats["seconds_per_epoch"],
                        "epochs": stats["epochs"], "wall_s": time.perf_counter() - started})
    base = out[0]["sequences_per_s"]
    return [{**r, "ratio": r["sequences_per_s"] / base} for r in out if r["processes"] in processes]


def table(measured: list[dict]) -> str:
    """The rows as a markdown table, with the machine's cores and load."""
    lines = [f"| {r['what']} | {r['processes']} | {r['threads_per_process']} | {r['sequences_per_s']:.0f} | {r['ratio']:.2f} | "
             f"{r['seconds_per_epoch']:.1f} | {r['wall_s']:.0f} |" for r in measured]
    return ("# LGCD training on several processes\n\n"
            f"{os.cpu_count()} CPU cores; load average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
            "(1/5/15 min; figures are only meaningful on an unloaded machine).\n\n"
            "| what | processes | threads each | sequences/s | ratio to 1 process | s/epoch (training) | wall s (launch, eval included) |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.05, help="fraction of the Food-Kitchen sizes")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda with one GPU per process")
    args = ap.parse_args(argv)
    counts = tuple(int(n) for n in args.processes.split(","))
    publish(table(rows(args.scale, args.epochs, counts, args.device)), "train_scaling.md")


if __name__ == "__main__":
    main()
