"""Score a set of models on the same cases and candidates: the tidy metrics table.

Every model is a :data:`Scorer`: ``(histories, target_domain) -> (n_cases, n_items + 1)`` scores
over all item indices. For each split, setting and target domain, each scorer is called once per
batch; the same scores give the sampled rank (target vs its stored negatives) and the full rank
(target vs every other item of the target domain; history items are not removed, as in the
sampled protocol). Metrics are means of per-case values, so they do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lgcd_core.io import DataError
from lgcd_core.protocol.candidates import split_cases
from lgcd_core.protocol.metrics import METRICS, full_ranks, sampled_ranks
from lgcd_core.protocol.settings import SETTINGS, Setting, filter_histories, item_domains

Scorer = Callable[[list[list[int]], str], torch.Tensor]

METRICS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("target_domain", pa.string()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("k", pa.int32()),
        ("value", pa.float64()),
        ("seed", pa.int32()),
        ("n_cases", pa.int32()),
        ("protocol", pa.string()),
        ("setting", pa.string()),
    ]
)

RANKS_SCHEMA = pa.schema([
    ("model", pa.string()), ("seed", pa.int32()), ("split", pa.string()), ("setting", pa.string()),
    ("protocol", pa.string()), ("target_domain", pa.string()), ("case_id", pa.int32()), ("rank", pa.int64()),
])


def rank_cases(
    scorer: Scorer,
    histories: list[list[int]],
    targets: torch.Tensor,
    negatives: torch.Tensor,
    domain: str,
    competitors: torch.Tensor,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled and full ranks of the cases of one target domain, scored in batches."""
    sampled, full = [], []
    for start in range(0, len(histories), batch_size):
        stop = start + batch_size
        with torch.no_grad():
            scores = scorer(histories[start:stop], domain).float().cpu()
        if scores.shape != (min(stop, len(histories)) - start, competitors.shape[0]):
            raise ValueError(f"scorer returned shape {tuple(scores.shape)}; expected (batch, n_items + 1)")
        batch_targets = targets[start:stop]
        target_scores = scores.gather(1, batch_targets.unsqueeze(1)).squeeze(1)
        sampled.append(sampled_ranks(target_scores, scores.gather(1, negatives[start:stop])))
        full.append(full_ranks(scores, batch_targets, competitors))
    return torch.cat(sampled), torch.cat(full)


def negatives_matrix(cases: pa.Table, candidates: pa.Table) -> torch.Tensor:
    """Negatives aligned with ``cases`` (rows in case order), as one (n, m) int64 tensor."""
    by_case = dict(zip(candidates.column("case_id").to_pylist(), range(candidates.num_rows)))
    missing = [c for c in cases.column("case_id").to_pylist() if c not in by_case]
    if missing:
        raise DataError(f"no candidates for {len(missing)} cases (first: case_id {missing[0]}); redraw them")
    rows = candidates.take([by_case[c] for c in cases.column("case_id").to_pylist()]).column("negatives")
    lengths = pc.list_value_length(rows).to_numpy()
    if len(set(lengths.tolist())) > 1:
        raise DataError("cases of one target domain have different numbers of negatives")
    flat = rows.combine_chunks().flatten().to_numpy().astype(np.int64)
    return torch.from_numpy(flat.reshape(len(lengths), -1))


def _metric_rows(ranks: torch.Tensor, ks: Sequence[int], **labels: object) -> list[dict]:
    return [
        {**labels, "metric": name, "k": k, "value": float(fn(ranks, k).mean()), "n_cases": len(ranks)}
        for name, fn in METRICS.items()
        for k in ks
    ]


class Scored(NamedTuple):
    """What scoring every model gives: the tidy metrics table and the per-case ranks behind it."""

    metrics: pa.Table  # METRICS_SCHEMA
    ranks: pa.Table  # RANKS_SCHEMA: one row per model, seed, split, setting, protocol and case


def score_all(
    scorers: dict[str, Scorer],
    eval_cases: pa.Table,
    candidates: dict[str, pa.Table],
    items: pa.Table,
    ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    settings: Sequence[Setting] = SETTINGS,
    batch_size: int = 512,
) -> Scored:
    """Rank every case of each split in ``candidates`` under every scorer; metrics and per-case ranks."""
    domains = item_domains(items)
    rows: list[dict] = []
    rank_columns: dict[str, list] = {name: [] for name in RANKS_SCHEMA.names}
    for split, split_candidates in candidates.items():
        cases = split_cases(eval_cases, split)
        target_domains = np.asarray(cases.column("target_domain").to_pylist())
        for setting in settings:
            histories = filter_histories(cases.column("history"), target_domains, domains, setting)
            for domain in ("A", "B"):
                mask = target_domains == domain
                if not mask.any():
                    continue
                chosen = cases.filter(pa.array(mask))
                case_ids = chosen.column("case_id").to_pylist()
                targets = torch.from_numpy(chosen.column("target").to_numpy().astype(np.int64))
                negatives = negatives_matrix(chosen, split_candidates)
                competitors = torch.from_numpy(domains == domain)
                domain_histories = [h for h, m in zip(histories, mask) if m]
                for name, scorer in scorers.items():
                    sampled, full = rank_cases(
                        scorer, domain_histories, targets, negatives, domain, competitors, batch_size
                    )
                    labels = {"model": name, "target_domain": domain, "split": split, "seed": seed, "setting": setting}
                    for protocol, ranks in (("sampled999", sampled), ("full", full)):
                        rows += _metric_rows(ranks, ks, protocol=protocol, **labels)
                        for column, value in {**labels, "protocol": protocol}.items():
                            rank_columns[column] += [value] * len(case_ids)
                        rank_columns["case_id"] += case_ids
                        rank_columns["rank"] += ranks.tolist()
    return Scored(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), pa.table(rank_columns, schema=RANKS_SCHEMA))


def evaluate_scorers(scorers: dict[str, Scorer], eval_cases: pa.Table, candidates: dict[str, pa.Table], items: pa.Table,
                     **options) -> pa.Table:
    """Only the metrics table of :func:`score_all`."""
    return score_all(scorers, eval_cases, candidates, items, **options).metrics
