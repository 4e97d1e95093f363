"""Training of the SASRec baselines (the `baselines` stage), with the shared loop of :mod:`training`.

A loss at every real position of a training row (the last ``max_len + 1`` items of a sequence, inputs
and next-item targets right-aligned like the scored histories, see :func:`pad_batch`):

- ``softmax``: next-item cross-entropy, a full softmax over the model's vocabulary, or a sampled
  softmax against ``train_negatives`` uniform negatives shared by the batch;
- ``bce`` (the public SASRec's): ``-log σ(s_pos) - log σ(-s_neg)`` averaged over real positions, with
  ONE negative per position drawn uniformly from the model's vocabulary minus the items of that
  training row (the public code excludes the user's whole training sequence; a row is its last
  ``max_len + 1`` items, so the two differ only for longer sequences).

Batches group sequences of similar length. Early stopping reads valid NDCG@10 every ``eval_every`` epochs, in
``selection_setting``, under ``selection_protocol`` (``sampled999``: the stored valid candidates, drawn
exactly as the evaluation stage draws them; ``full``: every item of the target domain). Test is never
read. Each model seeds its own generators, so the order in which models are trained changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from lgcd_core.config import BaselineSASRecConfig, DatasetConfig
from lgcd_core.model.batches import Inputs, item_counts, pad_left, trim_left
from lgcd_core.model.runs import run_dir
from lgcd_core.model.sasrec_baseline import GROUPS, Mode, SASRec, SASRecScorer, save_sasrec
from lgcd_core.model.training import Budget, GeneratorState, Log, fingerprint_of, finite, fit, plot_curves
from lgcd_core.protocol.candidates import split_cases
from lgcd_core.protocol.metrics import ndcg
from lgcd_core.protocol.ranking import negatives_matrix, rank_cases
from lgcd_core.protocol.settings import filter_histories, item_domains

LOSS_CURVE = "loss_curve.png"  # every baseline's loss and valid NDCG@10 per epoch, at the top of the stage folder


def train_baselines(cfg: DatasetConfig, inputs: Inputs, valid_candidates: pa.Table | None, out_dir: Path,
                    device: str, log: Log = print) -> dict:
    """Every listed SASRec baseline for every seed of ``evaluation.seeds``, into ``out_dir/<name>_seed<k>/``."""
    stats, records = {}, {}
    for seed in cfg.evaluation.seeds:
        for name in cfg.evaluation.sasrec_baselines:
            log(f"training {name} (seed {seed})")
            mode, sasrec_cfg = cfg.evaluation.sasrec_run(name)
            record = train_sasrec(inputs, mode, sasrec_cfg, seed, run_dir(out_dir, name, seed), device,
                                  valid_candidates, log)
            stats[f"{name}/seed{seed}"] = {g: {"epochs": len(r["epochs"]), "best_epoch": r["best_epoch"],
                                               "best_valid_ndcg10": r["best_valid"]["NDCG@10"]}
                                           for g, r in record.items()}
            records.update({f"{name}[{g}] seed {seed}": r for g, r in record.items()})
    if records:
        plot_curves(records, out_dir / LOSS_CURVE, "training loss", "SASRec baselines")
    return stats


def train_sasrec(inputs: Inputs, mode: Mode, cfg: BaselineSASRecConfig, seed: int, out_dir: Path, device: str,
                 valid_candidates: pa.Table | None = None, log: Log = print) -> dict[str, dict]:
    """Train the single-domain (one model per domain) or mixed baseline; store it in ``out_dir``.

    Returns the training record of each model. ``valid_candidates`` (the valid negatives) are needed
    when ``cfg.selection_protocol`` is ``sampled999``.
    """
    if cfg.selection_protocol == "sampled999" and valid_candidates is None:
        raise ValueError("selection_protocol 'sampled999' needs the valid candidates (valid_candidates=...)")
    domains = item_domains(inputs.items)
    train_seqs = inputs.sequences.column("items").to_pylist()
    models, records = {}, {}
    for group, group_domains in GROUPS[mode].items():
        torch.manual_seed(seed)
        vocab = torch.from_numpy(np.flatnonzero(np.isin(domains, group_domains))).to(device)
        seqs = train_seqs if mode == "mixed" else [[i for i in s if domains[i] == group] for s in train_seqs]
        models[group] = SASRec(item_counts(seqs, len(domains)), vocab, cfg).to(device)
        scorer = SASRecScorer({group: models[group]}, mode, domains, cfg.max_len, device)
        evaluate, valid = _valid_ndcg10(scorer, inputs, valid_candidates, group_domains, cfg)
        run = fingerprint_of({"sasrec": cfg.model_dump(mode="json"), "mode": mode, "group": group, "seed": seed},
                             seqs, *valid)
        records[group] = _fit(models[group], seqs, evaluate, cfg, seed, out_dir / f"checkpoint_{group}.pt", run, log,
                              f"sasrec{'_bce' if cfg.loss == 'bce' else ''}_{mode}[{group}]")
    save_sasrec(models, {"mode": mode, "seed": seed, "sasrec": cfg.model_dump(mode="json"), "history": records}, out_dir)
    return records


def _valid_ndcg10(scorer: SASRecScorer, inputs: Inputs, candidates: pa.Table | None, group: tuple[str, ...],
                  cfg: BaselineSASRecConfig) -> tuple[Callable[[], dict], list]:
    """The valid evaluation of one model (mean NDCG@10 over the valid cases it predicts), and its data."""
    domains = item_domains(inputs.items)
    valid = split_cases(inputs.eval_cases, "valid")
    target_domains = np.asarray(valid.column("target_domain").to_pylist())
    chosen = np.isin(target_domains, group)
    targets = valid.column("target").to_numpy().astype(np.int64)[chosen]
    negatives = (negatives_matrix(valid, candidates)[torch.from_numpy(chosen)] if candidates is not None
                 else torch.zeros(int(chosen.sum()), 0, dtype=torch.long))
    histories = filter_histories(valid.column("history"), target_domains, domains, cfg.selection_setting)
    histories = [h for h, c in zip(histories, chosen) if c]
    evaluate = partial(_mean_ndcg10, scorer, histories, targets, target_domains[chosen], negatives, domains,
                       cfg.selection_protocol)
    return evaluate, [histories, targets, negatives]


def _mean_ndcg10(scorer: SASRecScorer, histories: list[list[int]], targets: np.ndarray, target_domains: np.ndarray,
                 negatives: torch.Tensor, domains: np.ndarray, protocol: str) -> dict:
    values = []
    for domain in np.unique(target_domains):
        rows = np.flatnonzero(target_domains == domain)
        sampled, full = rank_cases(scorer, [histories[i] for i in rows], torch.from_numpy(targets[rows]),
                                   negatives[rows], str(domain), torch.from_numpy(domains == domain), 512)
        values.append(ndcg(sampled if protocol == "sampled999" else full, 10))
    return {"NDCG@10": float(torch.cat(values).mean()) if values else float("nan")}


def _length_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of row indices, each holding sequences of similar length."""
    order = torch.randperm(len(lengths), generator=generator)
    order = order[torch.sort(lengths[order], stable=True).indices]
    batches = list(order.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def training_rows(seqs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets of training rows, right-aligned and trimmed to the longest: (B, width) each."""
    inputs = pad_left([s[:-1] for s in seqs], max_len)
    targets = pad_left([s[1:] for s in seqs], max_len)
    return trim_left(inputs, targets)  # both rows of a sequence have the same length


def draw_negatives(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator,
                   max_rounds: int = 100) -> torch.Tensor:
    """One negative per position: uniform over ``model.vocab``, never an item of the row (inputs or targets).

    Drawn on the CPU from ``generator`` (the same draws on any device), redrawing hits until none is
    left; after ``max_rounds`` (only when a row holds nearly the whole vocabulary) a hit is kept.
    Padding positions get a negative too; the loss ignores them.
    """
    vocab = model.vocab.cpu()
    row_items = torch.cat([inputs, targets], dim=1).cpu()
    picks = vocab[torch.randint(len(vocab), targets.shape, generator=generator)]
    for _ in range(max_rounds):
        hit = (picks.unsqueeze(-1) == row_items.unsqueeze(1)).any(-1)
        if not bool(hit.any()):
            break
        picks[hit] = vocab[torch.randint(len(vocab), (int(hit.sum()),), generator=generator)]
    return picks.to(targets.device)


def bce_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean over real positions of ``-log σ(s_pos) - log σ(-s_neg)``; ``s = h · e_item + b_item``.

    The public SASRec's loss (its two BCE terms are each a mean over the same positions, so their sum
    is this mean).
    """
    real = targets != 0
    h = model.hidden(inputs)[real]
    positives, negatives = targets[real], negatives[real]
    pos = (h * model.item_emb(positives)).sum(-1) + model.item_bias[positives]
    neg = (h * model.item_emb(negatives)).sum(-1) + model.item_bias[negatives]
    return (F.softplus(-pos) + F.softplus(neg)).mean()


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


def _fit(model: SASRec, train_seqs: list[list[int]], evaluate: Callable[[], dict], cfg: BaselineSASRecConfig,
         seed: int, checkpoint: Path, run_fingerprint: str, log: Log, name: str) -> dict:
    """Train one model with :func:`training.fit`; it ends with its best valid NDCG@10 weights."""
    device = model.vocab.device
    usable = [s[-(cfg.max_len + 1):] for s in train_seqs if len(s) >= 2]
    lengths = torch.tensor([len(s) for s in usable])
    vocab_pos = torch.zeros(model.item_bias.shape[0], dtype=torch.long, device=device)
    vocab_pos[model.vocab] = torch.arange(len(model.vocab), device=device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    def train_epoch(epoch: int) -> dict:
        total = 0.0
        for rows in _length_batches(lengths, cfg.batch_size, generator):
            inputs, targets = (t.to(device) for t in training_rows([usable[i] for i in rows], cfg.max_len))
            if cfg.loss == "bce":
                loss = bce_loss(model, inputs, targets, draw_negatives(model, inputs, targets, generator))
            else:
                loss = _loss(model, inputs, targets, vocab_pos, cfg.train_negatives, generator)
            value = finite(loss, f"{name} loss at epoch {epoch}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += value * len(rows)
        return {"loss": total / len(usable)}

    return fit(model, train_epoch, evaluate, Budget(cfg.max_epochs, cfg.patience, cfg.eval_every), checkpoint,
               run_fingerprint, {"optimizer": optimizer, "generator": GeneratorState(generator)}, name, log)
