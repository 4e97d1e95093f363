"""Run a training stage on ``train_processes`` data-parallel processes: what the model stages call.

With one process (the default) :func:`train` calls the training function it is given in the caller's
process. With N it runs, as a child process,

    accelerate launch --multi_gpu --num_processes N --num_machines 1 -m lgcd_core.model.launch <job.json>

``--multi_gpu`` selects accelerate's torchrun launcher, which also runs N processes on a machine
without CUDA: they then join over gloo on the CPU (accelerate's ``--cpu`` alone starts one process).
Every process reads the inputs the parent wrote beside the job file, imports the training function by
its name and runs it (:mod:`processes` says how they split the work), and process 0 writes the models
into ``out_dir`` and the stats into ``result.json``; the parent streams process 0's output to ``log``
and returns those stats. The function comes from the caller, not from a table here, so a stage's code
version keeps hashing its own training modules only.

Why a child process rather than forking the Dagster step (``torch.multiprocessing``, accelerate's
``notebook_launcher``): CUDA may already be initialised in the step, a crashed worker cannot take the
step down with it, and the command is the one a user runs by hand (with ``--num_machines``) to train
beyond this machine.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lgcd_core.config import DatasetConfig
from lgcd_core.io import read_parquet, write_json, write_npy, write_parquet
from lgcd_core.model.batches import Inputs
from lgcd_core.model.training import Log

Trainer = Callable[..., dict]  # fn(cfg=, inputs=, out_dir=, device=, log=, **paths) -> stats, e.g. pretrain_encoders
_TABLES = ("items", "sequences", "eval_cases", "pseudo_overlap")


def train(fn: Trainer, cfg: DatasetConfig, inputs: Inputs, out_dir: Path, device: str, log: Log = print,
          **paths: Path) -> dict:
    """``fn``'s training of ``inputs`` into ``out_dir`` on ``cfg.train_processes`` processes; returns its stats.

    ``paths``: further folders ``fn`` reads, by keyword (``encoders_dir``).
    """
    if cfg.train_processes == 1:
        return fn(cfg=cfg, inputs=inputs, out_dir=out_dir, device=device, log=log, **paths)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-job-", dir=out_dir.parent) as tmp:  # beside the outputs, not in /tmp
        job = _write_job(Path(tmp), fn, cfg, inputs, out_dir, device, paths)
        _launch(job, cfg.train_processes, device, log)
        return json.loads((Path(tmp) / "result.json").read_text())


def _write_job(folder: Path, fn: Trainer, cfg: DatasetConfig, inputs: Inputs, out_dir: Path, device: str,
               paths: dict[str, Path]) -> Path:
    """The inputs as Parquet and .npy files and ``job.json`` naming everything a worker needs."""
    for name in _TABLES:
        if getattr(inputs, name) is not None:
            write_parquet(getattr(inputs, name), folder / f"{name}.parquet")
    if inputs.embeddings is not None:
        write_npy(inputs.embeddings, folder / "embeddings.npy")
    job = folder / "job.json"
    write_json({"function": [fn.__module__, fn.__qualname__], "config": cfg.model_dump(mode="json"),
                "out_dir": str(out_dir), "device": device, "paths": {k: str(v) for k, v in paths.items()}}, job)
    return job


def _trainer(module: str, name: str) -> Trainer:
    """The training function a job names; only ``lgcd_core``'s."""
    if not module.startswith("lgcd_core."):
        raise ValueError(f"{module}.{name}: not a training function of lgcd_core")
    return getattr(importlib.import_module(module), name)


def _read_inputs(folder: Path) -> Inputs:
    tables = {name: read_parquet(folder / f"{name}.parquet") if (folder / f"{name}.parquet").exists() else None
              for name in _TABLES}
    vectors = folder / "embeddings.npy"
    return Inputs(**tables, embeddings=np.load(vectors, allow_pickle=False) if vectors.exists() else None)


def launch_command(job: Path, processes: int, device: str) -> list[str]:
    """``accelerate launch`` of this module's worker on ``processes`` processes of this machine."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port())]
    if not device.startswith("cuda"):  # share the cores out instead of one thread each (torchrun's default)
        cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // processes))]
    return [*cmd, "-m", "lgcd_core.model.launch", str(job)]


def _free_port() -> int:
    """A port nobody listens on now, so two stages launched at once do not meet at the same rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(job: Path, processes: int, device: str, log: Log) -> None:
    """Run the launch, passing each output line to ``log``; RuntimeError with the last lines when it fails.

    The launcher and its training processes form their own process group, ended with it when this
    process is interrupted (a Dagster run terminated), so no training outlives its step.
    """
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(launch_command(job, processes, device), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                tail.append(line.rstrip())
                log(line.rstrip())
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            raise
    if proc.returncode:
        raise RuntimeError(f"accelerate launch of {processes} training processes failed (exit {proc.returncode}):\n"
                           + "\n".join(tail))


def worker(job: Path) -> None:
    """One launched process: run the job's training; process 0 logs to stdout and writes ``result.json``."""
    spec = json.loads(job.read_text())
    main = os.environ.get("RANK", "0") == "0"  # set by the launcher; read before any Accelerator exists
    stats = _trainer(*spec["function"])(
        cfg=DatasetConfig.model_validate(spec["config"]), inputs=_read_inputs(job.parent), out_dir=Path(spec["out_dir"]),
        device=spec["device"], log=(lambda line: print(line, flush=True)) if main else (lambda _: None),
        **{k: Path(v) for k, v in spec["paths"].items()})
    if main:
        write_json(stats, job.parent / "result.json")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
