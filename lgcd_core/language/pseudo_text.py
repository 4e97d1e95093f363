"""The ``pseudo_texts`` stage: one LLM answer per single-domain user (paper eq. 4).

For each A-only (B-only) user of the pseudo-user sample (``pseudo_overlap.max_users``), the prompt
lists the text of their most recent ``history_items`` source items and asks for ``n_descriptions``
target-domain items (null: ``grounding.n_k``, the n_K of eq. 4-6, so grounding gets as many
descriptions as items it keeps). Answers come from the generation cache when present; the rest are
generated shortest prompt first (so batches pad little) and saved after every batch, so a killed run
resumes where it stopped. Each answer is parsed into item descriptions; an answer with none is kept
with ``usable=False``.

The token cap (``generation.max_new_tokens``; null: sized for n items, ``LLMConfig.resolved``) is
meant never to bind: the transformers backend stops an answer once its list is complete. An answer
that still reaches the cap before n complete items is ``cut``: its unfinished last line is not read,
and ``cut_share`` in the stats says how often that happened. The transformers backend adds
``llm_timing``: prompt and answer tokens (with and without padding) and the seconds of prefill vs
decoding, the split that ``bench.llm_throughput`` reports per user.

When ``pseudo_overlap.source`` is not ``llm`` the stage generates nothing and writes an empty table
(the LLM-free sources are grounded by ``grounded_items`` directly).

A request that still fails after the backend's retries is never cached. With ``llm.on_failure:
raise`` (default) the stage raises :class:`GenerationError` once every other answer is saved, so a
re-run retries only the failed requests; with ``unusable`` the user is kept with an empty answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lgcd_core.config import DatasetConfig, LLMConfig
from lgcd_core.language.generation_cache import GenerationCache, cache_key
from lgcd_core.language.llm_base import Answer, LLMBackend
from lgcd_core.language.parsing import parse_answer
from lgcd_core.language.prompts import display_text, load_template, render_prompt
from lgcd_core.language.pseudo_sources import SINGLE_DOMAIN, SOURCE_LABELS, needs_text, select_users

SCHEMA = pa.schema([
    ("user_idx", pa.int32()),
    ("source_domain", pa.string()),
    ("target_domain", pa.string()),
    ("prompt", pa.string()),
    ("answer", pa.string()),
    ("descriptions", pa.list_(pa.string())),
    ("usable", pa.bool_()),
    ("cut", pa.bool_()),  # the answer reached the token cap before its list was complete (last item dropped)
    ("cache_key", pa.string()),
])


class GenerationError(RuntimeError):
    """Some requests failed after all retries (everything else is saved; a re-run retries only those)."""


@dataclass(frozen=True)
class PromptRequest:
    user_idx: int
    source_domain: str
    target_domain: str
    prompt: str
    history: list[str]  # the history texts as shown in the prompt
    key: str


def build_requests(cfg: DatasetConfig, items: pa.Table, users: list[dict], backend: LLMBackend,
                   llm: LLMConfig | None = None) -> list[PromptRequest]:
    """One rendered prompt (and its cache key) per user; ``llm``: the resolved LLM config (default: from ``cfg``)."""
    llm = llm or cfg.llm.resolved(cfg.grounding.n_k)
    texts = items.column("text").to_pylist()
    domains = items.column("domain").to_pylist()
    templates = {"A": load_template(llm.template_a_to_b, "a_to_b"), "B": load_template(llm.template_b_to_a, "b_to_a")}
    names = {"A": cfg.domains.A, "B": cfg.domains.B}
    requests = []
    for user in users:
        source, target = SINGLE_DOMAIN[user["user_type"]]
        own = [i for i in user["items"] if domains[i - 1] == source][-llm.history_items :]
        history = [display_text(texts[i - 1] or "", llm.max_item_chars) for i in own]
        prompt = render_prompt(templates[source], names[source], names[target], history, llm.n_descriptions)
        key = cache_key(backend.model_id, templates[source], prompt, backend.settings)
        requests.append(PromptRequest(user["user_idx"], source, target, prompt, history, key))
    return requests


def _eta(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0.0)))


def generate_missing(
    requests: list[PromptRequest], backend: LLMBackend, cache: GenerationCache, batch_size: int,
    log: Callable[[str], None],
) -> tuple[dict[str, Answer], dict]:
    """Generate every prompt not in the cache, saving each group; returns failures by key and timing."""
    pending = {r.key: r.prompt for r in requests if r.key not in cache}
    order = sorted(pending, key=lambda k: len(pending[k]))
    prompts = [pending[k] for k in order]
    failures: dict[str, Answer] = {}
    done = tokens = 0
    start = time.perf_counter()
    for group in backend.stream(prompts, batch_size):
        saved = [{"key": order[i], "answer": a.text, "n_tokens": a.n_tokens} for i, a in group if a.error is None]
        cache.append(saved)
        failures.update({order[i]: a for i, a in group if a.error is not None})
        done += len(group)
        tokens += sum(a.n_tokens for _, a in group)
        elapsed = time.perf_counter() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        log(f"pseudo_texts: {done}/{len(prompts)} prompts, {rate:.2f} users/s, "
            f"{tokens / max(elapsed, 1e-9):.1f} tokens/s, ETA {_eta((len(prompts) - done) / rate if rate else 0)}")
    elapsed = time.perf_counter() - start
    timing = {"generated": len(prompts) - len(failures), "failed": len(failures), "tokens_generated": tokens,
              "generation_s": round(elapsed, 2),
              "tokens_per_s": round(tokens / elapsed, 2) if prompts and elapsed > 0 else None,
              "users_per_s": round(len(prompts) / elapsed, 3) if prompts and elapsed > 0 else None}
    return failures, timing


def assemble(requests: list[PromptRequest], cache: GenerationCache, n_descriptions: int,
             max_new_tokens: int | None = None) -> pa.Table:
    """The ``pseudo_texts`` table, one row per request; failed requests have an empty answer and usable=False.

    An answer of ``max_new_tokens`` tokens or more reached the cap (see ``parsing.parse_answer``).
    """
    rows = []
    for r in sorted(requests, key=lambda r: r.user_idx):
        record = cache.get(r.key)
        answer = record["answer"] if record is not None else ""
        hit_cap = record is not None and max_new_tokens is not None and record.get("n_tokens", 0) >= max_new_tokens
        descriptions, cut = parse_answer(answer, n_descriptions, r.history, hit_cap) if record is not None else ([], False)
        rows.append({"user_idx": r.user_idx, "source_domain": r.source_domain, "target_domain": r.target_domain,
                     "prompt": r.prompt, "answer": answer, "descriptions": descriptions,
                     "usable": bool(descriptions), "cut": cut, "cache_key": r.key})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def generate_pseudo_texts(
    cfg: DatasetConfig, items: pa.Table, sequences: pa.Table, cache_dir: Path, device: str,
    log: Callable[[str], None] = print, *, backend: LLMBackend | None = None,
) -> tuple[pa.Table, dict]:
    """Run the stage; ``backend`` overrides the one named in the YAML (tests, benchmarks)."""
    po = cfg.pseudo_overlap
    n_single = sum(t in SINGLE_DOMAIN for t in sequences.column("user_type").to_pylist())
    if po.source != "llm":
        log(f"pseudo_texts: pseudo_overlap.source is {po.source!r}: no LLM answers needed, writing an empty table")
        return SCHEMA.empty_table(), {"source": po.source, "source_label": SOURCE_LABELS[po.source], "n_users": 0,
                                      "n_single_domain_users": n_single}
    from lgcd_core.data.sequences import text_domains

    llm = cfg.llm.resolved(cfg.grounding.n_k)
    users, left_out = needs_text(select_users(sequences, po.max_users, po.sample_seed),
                                 text_domains(items, cfg.text_encoder.without_text))
    for direction, why in left_out.items():
        log(f"pseudo_texts: {why['users']} users {direction} get no LLM answer: domain {why['domains_without_text']} "
            "has no item text (a prompt cannot describe its items, or an answer cannot be grounded to them)")
    cache = GenerationCache(Path(cache_dir))
    backend = backend or make_backend(llm, device)
    requests = build_requests(cfg, items, users, backend, llm)
    unique = {r.key for r in requests}
    cached = sum(key in cache for key in unique)
    log(f"pseudo_texts: {len(requests)} users ({n_single} single-domain), {cached}/{len(unique)} answers cached")
    failures, timing = generate_missing(requests, backend, cache, llm.batch_size, log)
    if failures and llm.on_failure == "raise":
        first = next(iter(failures.values())).error
        raise GenerationError(f"{len(failures)} of {len(unique)} requests failed after retries (first: {first}); "
                              f"{len(cache)} answers are saved in {cache_dir}: re-run to retry only the failed ones")
    cap = llm.generation.max_new_tokens
    table = assemble(requests, cache, llm.n_descriptions, cap)
    unusable = len(table) - sum(table.column("usable").to_pylist())
    cut = sum(table.column("cut").to_pylist())
    stats = {
        "source": "llm", "source_label": SOURCE_LABELS["llm"],
        "n_users": len(requests), "n_single_domain_users": n_single, "max_users": po.max_users,
        "sample_seed": po.sample_seed, "cached": cached, **timing,
        "n_descriptions": llm.n_descriptions, "max_new_tokens": cap,
        "unusable": unusable, "unusable_share": round(unusable / len(table), 4) if len(table) else 0.0,
        "cut": cut, "cut_share": round(cut / len(table), 4) if len(table) else 0.0,
        "avg_descriptions": round(float(np.mean([len(d) for d in table.column("descriptions").to_pylist()])), 3) if len(table) else 0.0,
        "backend": llm.backend, "model": backend.model_id,
        "left_out_without_text": left_out,
        **run_stats(backend),
    }
    return table, stats


def run_stats(backend: LLMBackend) -> dict:
    """The backend's own figures of this run (per-endpoint counters, Ray workers), when it reports any."""
    report = getattr(backend, "run_stats", None)
    return report() if report is not None else {}


def make_backend(llm: LLMConfig, device: str) -> LLMBackend:
    """The backend named by ``llm.backend`` (the Ray backend places its replicas by ``llm.ray``, not ``device``)."""
    if llm.backend == "http":
        assert llm.http is not None  # enforced by LLMConfig
        from lgcd_core.language.llm_backends import HttpBackend

        return HttpBackend(llm.http, llm.generation, llm.n_descriptions)
    if llm.backend == "ray":
        from lgcd_core.language.ray_backend import RayBackend

        return RayBackend(llm)
    if llm.backend == "llama_cpp":
        from lgcd_core.language.llama_cpp_backend import LlamaCppBackend

        return LlamaCppBackend(llm)
    from lgcd_core.language.llm_backends import TransformersBackend

    return TransformersBackend(llm, device)
