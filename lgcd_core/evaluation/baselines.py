"""Baselines: SASRec on single-domain or whole mixed sequences, and item popularity.

SASRec = item embeddings + the shared :class:`SequenceTransformer`, read out at the last real
position. Sequences are left-aligned (right-padded, positions count from the first item of the last
``max_len``), so a batch is only as wide as its longest sequence and a sequence's output does not
depend on what it is batched with; training batches group sequences of similar length. An item's
score is ``h · e_item + b_item`` (tied embeddings plus a per-item bias that starts at the log of
the item's training count, so an empty history scores items by a learned popularity). Trained with next-item
cross-entropy at every position (full softmax over the model's vocabulary, or a sampled softmax
against uniform negatives), early-stopped on valid NDCG@10; test is never read.

- ``single``: one model per domain, trained on that domain's items of every training sequence; it
  reads only the target domain's items of a history (none in ``inter_domain``).
- ``mixed``: one model over all items, trained on whole mixed sequences; it reads the history it
  is given (source items only in ``inter_domain``).

A trained baseline depends only on its config, seed, device type and the training and valid data,
none of which an LGCD change touches; :func:`cached_train_sasrec` keeps it on disk under a key made
of exactly those, so re-evaluating after an LGCD change does not retrain it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from lgcd_core.config import BaselineSASRecConfig
from lgcd_core.evaluation.candidates import split_cases
from lgcd_core.evaluation.evaluate import Scorer, negatives_matrix, rank_cases
from lgcd_core.evaluation.metrics import ndcg
from lgcd_core.evaluation.settings import filter_histories, item_domains
from lgcd_core.io import atomic_path
from lgcd_core.model.sasrec import SequenceTransformer, last_real
from lgcd_core.model.train_lgcd import load_checkpoint

Mode = Literal["single", "mixed"]


class SASRec(nn.Module):
    """Next-item model over ``vocab`` (the item indices it may predict)."""

    def __init__(self, counts: torch.Tensor, vocab: torch.Tensor, cfg: BaselineSASRecConfig) -> None:
        """``counts``: (n_items + 1,) training occurrences; the item bias starts at log(1 + count)."""
        super().__init__()
        self.item_emb = nn.Embedding(len(counts), cfg.d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=cfg.d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.item_bias = nn.Parameter(torch.log1p(counts.float()))
        self.encoder = SequenceTransformer(cfg.d, cfg.n_layers, cfg.n_heads, cfg.max_len, cfg.dropout)
        self.register_buffer("vocab", vocab)

    def hidden(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices -> (B, L, d)."""
        return self.encoder(self.item_emb(seqs), seqs == 0)

    def logits(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(N, d) states against (M,) items -> (N, M) scores."""
        return h @ self.item_emb.weight[items].T + self.item_bias[items]

    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) histories -> (B, n_items + 1) scores, -inf outside the vocabulary."""
        h = last_real(self.hidden(seqs), seqs == 0)
        out = torch.full((seqs.shape[0], self.item_bias.shape[0]), float("-inf"), device=h.device)
        out[:, self.vocab] = self.logits(h, self.vocab)
        return out


@dataclass
class SASRecScorer:
    """A trained SASRec baseline as a Scorer; ``log`` holds its per-evaluation training record."""

    models: dict[str, SASRec]
    mode: Mode
    domains: np.ndarray
    max_len: int
    device: str
    log: list[dict] = field(default_factory=list)

    def __call__(self, histories: list[list[int]], target_domain: str) -> torch.Tensor:
        model = self.models[target_domain if self.mode == "single" else "mixed"]
        if self.mode == "single":
            histories = [[i for i in h if self.domains[i] == target_domain] for h in histories]
        model.eval()
        with torch.no_grad():
            return model.scores(right_pad(histories, self.max_len).to(self.device))


def right_pad(sequences: list[list[int]], max_len: int) -> torch.Tensor:
    """The last ``max_len`` items of each sequence, left-aligned: (B, width) int64, width = longest (>= 1)."""
    tails = [s[-max_len:] for s in sequences]
    out = torch.zeros(len(tails), max(1, max((len(t) for t in tails), default=1)), dtype=torch.long)
    for row, tail in enumerate(tails):
        out[row, : len(tail)] = torch.as_tensor(tail, dtype=torch.long)
    return out


def _length_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of row indices, each holding sequences of similar length."""
    order = torch.randperm(len(lengths), generator=generator)
    order = order[torch.sort(lengths[order], stable=True).indices]
    batches = list(order.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def _loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, vocab_pos: torch.Tensor,
          n_negatives: int | None, generator: torch.Generator) -> torch.Tensor:
    real = targets != 0
    h = model.hidden(inputs)[real]
    positives = targets[real]
    if n_negatives is None:
        return F.cross_entropy(model.logits(h, model.vocab), vocab_pos[positives])
    picks = torch.randint(len(model.vocab), (n_negatives,), generator=generator).to(model.vocab.device)
    negatives = model.vocab[picks]
    pos = (h * model.item_emb(positives)).sum(-1) + model.item_bias[positives]
    neg = model.logits(h, negatives).masked_fill(negatives.unsqueeze(0) == positives.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(positives), dtype=torch.long, device=logits.device))


def _valid_ndcg10(scorer: Scorer, histories: list[list[int]], targets: np.ndarray, target_domains: np.ndarray,
                  negatives: torch.Tensor, domains: np.ndarray, protocol: str) -> float:
    """Mean valid NDCG@10 (sampled against ``negatives`` or full ranking) over the given cases."""
    values = []
    for domain in np.unique(target_domains):
        rows = np.flatnonzero(target_domains == domain)
        sampled, full = rank_cases(scorer, [histories[i] for i in rows], torch.from_numpy(targets[rows]),
                                   negatives[rows], str(domain), torch.from_numpy(domains == domain), 512)
        values.append(ndcg(sampled if protocol == "sampled999" else full, 10))
    return float(torch.cat(values).mean()) if values else float("nan")


def _fit(model: SASRec, train_seqs: list[list[int]], evaluate: Callable[[], float], cfg: BaselineSASRecConfig,
         device: str, seed: int, log: Callable[[str], None], name: str) -> list[dict]:
    """Train ``model`` in place, keep the state with the best valid NDCG@10; returns the record."""
    usable = [s[-(cfg.max_len + 1):] for s in train_seqs if len(s) >= 2]
    lengths = torch.tensor([len(s) for s in usable])
    vocab_pos = torch.zeros(model.item_bias.shape[0], dtype=torch.long, device=device)
    vocab_pos[model.vocab] = torch.arange(len(model.vocab), device=device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    best, best_state, stale, record, started = -1.0, copy.deepcopy(model.state_dict()), 0, [], time.time()
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        total = 0.0
        for rows in _length_batches(lengths, cfg.batch_size, generator):
            batch = [usable[i] for i in rows]
            inputs = right_pad([s[:-1] for s in batch], cfg.max_len).to(device)
            targets = right_pad([s[1:] for s in batch], cfg.max_len).to(device)
            loss = _loss(model, inputs, targets, vocab_pos, cfg.train_negatives, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        if epoch % cfg.eval_every and epoch != cfg.max_epochs:
            continue
        score = evaluate()
        record.append({"epoch": epoch, "loss": total / len(usable), "valid_ndcg10": score,
                       "seconds": round(time.time() - started, 1)})
        log(f"{name} epoch {epoch}: loss {total / len(usable):.4f} valid NDCG@10 {score:.4f}")
        if score > best:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return record


def train_sasrec(items: pa.Table, sequences: pa.Table, eval_cases: pa.Table, mode: Mode,
                 cfg: BaselineSASRecConfig, device: str, seed: int, log: Callable[[str], None] = print,
                 valid_candidates: pa.Table | None = None) -> SASRecScorer:
    """Train the single-domain (one model per domain) or mixed SASRec baseline.

    ``valid_candidates`` (the stored valid negatives) are needed when ``cfg.selection_protocol`` is
    ``sampled999``.
    """
    domains = item_domains(items)
    train_seqs = sequences.column("items").to_pylist()
    valid = split_cases(eval_cases, "valid")
    target_domains = np.asarray(valid.column("target_domain").to_pylist())
    targets = valid.column("target").to_numpy().astype(np.int64)
    if cfg.selection_protocol == "sampled999" and valid_candidates is None:
        raise ValueError("selection_protocol 'sampled999' needs the valid candidates (valid_candidates=...)")
    negatives = (negatives_matrix(valid, valid_candidates) if valid_candidates is not None
                 else torch.zeros(len(targets), 0, dtype=torch.long))
    histories = filter_histories(valid.column("history"), target_domains, domains, cfg.selection_setting)
    scorer = SASRecScorer({}, mode, domains, cfg.max_len, device)
    groups = {"A": ["A"], "B": ["B"]} if mode == "single" else {"mixed": ["A", "B"]}
    for key, group in groups.items():
        torch.manual_seed(seed)
        vocab = torch.from_numpy(np.flatnonzero(np.isin(domains, group))).to(device)
        seqs = train_seqs if mode == "mixed" else [[i for i in s if domains[i] == key] for s in train_seqs]
        scorer.models[key] = SASRec(_counts(seqs, len(domains)), vocab, cfg).to(device)
        chosen = np.isin(target_domains, group)
        evaluate = partial(_valid_ndcg10, scorer, [h for h, c in zip(histories, chosen) if c], targets[chosen],
                           target_domains[chosen], negatives[torch.from_numpy(chosen)], domains,
                           cfg.selection_protocol)
        record = _fit(scorer.models[key], seqs, evaluate, cfg, device, seed, log, f"sasrec_{mode}[{key}]")
        scorer.log += [{"model": key, **r} for r in record]
    return scorer


def cached_train_sasrec(cache_dir: Path | None, items: pa.Table, sequences: pa.Table, eval_cases: pa.Table,
                        mode: Mode, cfg: BaselineSASRecConfig, device: str, seed: int,
                        log: Callable[[str], None] = print,
                        valid_candidates: pa.Table | None = None) -> tuple[SASRecScorer, bool]:
    """:func:`train_sasrec`, or the state it saved under ``cache_dir`` for identical inputs.

    Returns the scorer and whether it came from the cache. ``cache_dir=None`` always trains.
    """
    if cache_dir is None:
        return train_sasrec(items, sequences, eval_cases, mode, cfg, device, seed, log, valid_candidates), False
    key = _cache_key(items, sequences, eval_cases, valid_candidates, mode, cfg, device, seed)
    path = cache_dir / f"sasrec_{mode}_seed{seed}_{key}.pt"
    if path.exists():
        saved = load_checkpoint(path, map_location=device)
        scorer = SASRecScorer({}, mode, item_domains(items), cfg.max_len, device, log=saved["log"])
        for name, state in saved["models"].items():
            scorer.models[name] = SASRec(torch.zeros(items.num_rows + 1), state["vocab"], cfg).to(device)
            scorer.models[name].load_state_dict(state)
        log(f"sasrec_{mode} (seed {seed}): trained model reused from {path}")
        return scorer, True
    scorer = train_sasrec(items, sequences, eval_cases, mode, cfg, device, seed, log, valid_candidates)
    with atomic_path(path) as tmp:
        torch.save({"models": {k: m.state_dict() for k, m in scorer.models.items()}, "log": scorer.log}, tmp)
    return scorer, False


def _cache_key(items: pa.Table, sequences: pa.Table, eval_cases: pa.Table, valid_candidates: pa.Table | None,
               mode: Mode, cfg: BaselineSASRecConfig, device: str, seed: int) -> str:
    """Hash of everything a trained baseline depends on (valid cases only: test is never read)."""
    digest = hashlib.sha256(f"{mode}|{seed}|{torch.device(device).type}|{cfg.model_dump_json()}".encode())
    tables = [items.select(["item_idx", "domain"]), sequences.select(["items"]), split_cases(eval_cases, "valid")]
    for table in tables + ([valid_candidates] if valid_candidates is not None else []):
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    return digest.hexdigest()[:16]


def _counts(sequences: list[list[int]], size: int) -> torch.Tensor:
    """(size,) float32 occurrences of every item index in ``sequences``."""
    flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64)
    return torch.from_numpy(np.bincount(flat, minlength=size).astype(np.float32))


def popularity_scorer(items: pa.Table, sequences: pa.Table) -> Scorer:
    """Scores every item by its number of occurrences in the training sequences."""
    counts = _counts(sequences.column("items").to_pylist(), items.num_rows + 1)

    def score(histories: list[list[int]], target_domain: str) -> torch.Tensor:
        return counts.unsqueeze(0).expand(len(histories), -1)

    return score
