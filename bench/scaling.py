"""Scaling beyond one process: the LLM pseudo-text stage on a fleet of servers and on Ray, and training.

LLM rows, each as users/s and as a ratio to the single-process figure of the same group, same run:

- fleet: the HTTP backend over 1, 2 and 3 local fake OpenAI-compatible servers (threads in this
  process) that answer every request after a fixed latency and do no other work. This measures the
  fleet's scheduling (slots per endpoint, spreading, the stage's cache writes), not a model: the ideal
  is N times the 1-endpoint figure.
- Ray: real SmolLM2-135M (transformers, CPU, greedy) on a handful of demo users, in-process with one
  torch thread vs a Ray Data job with 1 and 2 actors of one CPU each, on a local Ray started by the
  stage. The times are the stage's own (``generation_s``): for Ray they include starting Ray and
  loading one model per actor, which dominate at this size; on a loaded or 2-core machine expect no gain.

Training rows come from ``bench/train_scaling.py`` (``rows()``) when that module exists.

    python -m bench.scaling [--fleet-users 120] [--latency-s 0.2] [--ray-users 6]

Prints the table with the machine's load average and writes bench/results/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa

from bench.common import publish
from lgcd_core.config import DatasetConfig
from lgcd_core.language.pseudo_text import generate_pseudo_texts

CONCURRENCY = 4  # slots per fake endpoint
ANSWER = json.dumps({"choices": [{"message": {"content": "1. Cast iron skillet\n2. Whisk\n3. Ladle"}}],
                     "usage": {"completion_tokens": 9}}).encode()


def _latency_handler(latency_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextmanager
def fake_servers(n: int, latency_s: float) -> Iterator[list[str]]:
    """``n`` OpenAI-compatible servers on 127.0.0.1 answering after ``latency_s``; yields their base URLs."""
    running = [ThreadingHTTPServer(("127.0.0.1", 0), _latency_handler(latency_s)) for _ in range(n)]
    for httpd in running:
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{httpd.server_address[1]}/v1" for httpd in running]
    finally:
        for httpd in running:
            httpd.shutdown()
            httpd.server_close()


def _dataset(llm: dict, max_users: int | None) -> DatasetConfig:
    return DatasetConfig.model_validate({"name": "scaling", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Grocery", "B": "Kitchen"}, "llm": llm,
                                         "grounding": {"n_k": 3}, "pseudo_overlap": {"max_users": max_users}})


def fleet_inputs(n: int) -> tuple[pa.Table, pa.Table]:
    """``n`` A-only users with one distinct item each (distinct prompts, so nothing is cached)."""
    items = [{"item_idx": i + 1, "item_id": f"a{i}", "domain": "A", "title": f"snack {i}", "text": f"snack {i}"} for i in range(n)]
    items.append({"item_idx": n + 1, "item_id": "b0", "domain": "B", "title": "pan", "text": "pan"})
    users = [{"user_idx": i + 1, "user_id": f"u{i}", "user_type": "A-only", "items": [i + 1]} for i in range(n)]
    return pa.Table.from_pylist(items), pa.Table.from_pylist(users)


def stage_rate(cfg: DatasetConfig, items: pa.Table, sequences: pa.Table) -> tuple[int, float]:
    """(users generated, seconds) of one pseudo_texts run into a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        _, stats = generate_pseudo_texts(cfg, items, sequences, Path(cache), "cpu", log=lambda m: None)
    return stats["generated"], stats["generation_s"]


def fleet_rows(n_users: int, latency_s: float) -> list[dict]:
    """Users/s of the HTTP backend over 1, 2 and 3 fake endpoints."""
    items, sequences = fleet_inputs(n_users)
    rows = []
    for n in (1, 2, 3):
        with fake_servers(n, latency_s) as urls:
            http = {"endpoints": urls, "model": "fake", "concurrency": CONCURRENCY, "timeout_s": 30}
            users, seconds = stage_rate(_dataset({"backend": "http", "http": http}, None), items, sequences)
        rows.append({"group": f"LLM, fake servers ({latency_s:g} s/request, {CONCURRENCY} slots each)",
                     "setting": f"{n} endpoint{'s' if n > 1 else ''}", "users": users, "seconds": seconds})
        print(f"fleet {n}: {users} users in {seconds:.2f} s", flush=True)
    return rows


def ray_rows(n_users: int) -> list[dict]:
    """Users/s of SmolLM2 in-process (one torch thread) and on Ray with 1 and 2 one-CPU actors."""
    import torch

    from tests.toy_data import demo_language_inputs  # run from the repository root, as every bench is

    items, sequences = demo_language_inputs(n_users)
    llm = {"batch_size": 2, "history_items": 4, "n_descriptions": 3, "generation": {"max_new_tokens": 16}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        users, seconds = stage_rate(_dataset({**llm, "backend": "transformers"}, n_users), items, sequences)
    finally:
        torch.set_num_threads(threads)
    rows = [{"group": "LLM, SmolLM2-135M on CPU", "setting": "in-process, 1 thread", "users": users, "seconds": seconds}]
    print(f"in-process: {users} users in {seconds:.2f} s", flush=True)
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray, whatever the shell points at
    for workers in (1, 2):
        ray = {"workers": workers, "cpus_per_worker": 1}
        users, seconds = stage_rate(_dataset({**llm, "backend": "ray", "ray": ray}, n_users), items, sequences)
        rows.append({"group": "LLM, SmolLM2-135M on CPU", "setting": f"Ray Data, {workers} actor{'s' if workers > 1 else ''}",
                     "users": users, "seconds": seconds})
        print(f"ray {workers}: {users} users in {seconds:.2f} s", flush=True)
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Adds users/s and its ratio to the first row of the same group (the single-process figure)."""
    base: dict[str, float] = {}
    for row in rows:
        row["users_per_s"] = row["users"] / row["seconds"] if row["seconds"] else 0.0
        base.setdefault(row["group"], row["users_per_s"])
        row["ratio"] = row["users_per_s"] / base[row["group"]] if base[row["group"]] else 0.0
    return rows


def training_section() -> list[str]:
    """The training rows of bench/train_scaling.py as a table, or a line saying they are missing."""
    try:
        from bench.train_scaling import rows as training_rows
    except ImportError:
        print("training rows missing: bench/train_scaling.py (rows()) does not exist yet")
        return ["Training rows missing: `bench/train_scaling.py` (`rows()`) does not exist yet."]
    try:
        rows = training_rows()
    except Exception as exc:  # a broken training bench must not lose the LLM rows measured before it
        print(f"training rows failed: {type(exc).__name__}: {exc}")
        return [f"Training rows failed: `{type(exc).__name__}: {exc}` (bench/train_scaling.py)."]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]]


def _cell(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "" if value is None else str(value)


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def render(rows: list[dict], training: list[str], load_before: str, load_after: str, args: argparse.Namespace) -> str:
    return "\n".join([
        "# Scaling beyond one process",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.machine()}), load average "
        f"(1/5/15 min) {load_before} before and {load_after} after. `python -m bench.scaling --fleet-users "
        f"{args.fleet_users} --latency-s {args.latency_s:g} --ray-users {args.ray_users}`.",
        "",
        "## LLM pseudo-text stage",
        "",
        "Fake servers answer after a fixed latency and do no work: those rows measure the fleet's scheduling, "
        "not a model (ideal: N x the 1-endpoint figure). SmolLM2 rows: greedy, 16 new tokens, batches of 2; "
        "the Ray times include starting a local Ray and loading one model per actor. Ratio = users/s over "
        "the first row of its group, measured in this run.",
        "",
        "| group | setting | users | seconds | users/s | x single |",
        "|---|---|---:|---:|---:|---:|",
        *[f"| {r['group']} | {r['setting']} | {r['users']} | {r['seconds']:.2f} | {r['users_per_s']:.2f} | {r['ratio']:.2f} |"
          for r in rows],
        "",
        "## Training",
        "",
        *training,
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet-users", type=int, default=120)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--ray-users", type=int, default=6)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = _load()
    print(f"load average {load_before}", flush=True)
    rows = with_ratios(fleet_rows(args.fleet_users, args.latency_s) + ray_rows(args.ray_users))
    training = training_section()
    publish(render(rows, training, load_before, _load(), args), "scaling.md")


if __name__ == "__main__":
    main()
