"""Per-domain pretraining of the ID + text sequence encoders and their fusion (paper eq. 1-3).

For each domain D: every training sequence (all user types) contributes its subsequence of D-items
(local ids); at every position the fused hidden state h^fusion (eq. 2) is scored against E_fusion of
all D items (eq. 3) with a full-softmax cross-entropy on the next item -- SASRec trained with full
softmax, which is the strong variant.

Model selection: after every epoch, valid cases whose target is in D are scored with their history
restricted to D-items (cases with no D-item in the history are skipped: an encoder cannot read an
empty sequence); the metric is full-ranking NDCG@10 over all D items (rank = 1 + #items scoring >= the
target, ties against the model). The best epoch's weights are kept; training stops after
``patience`` epochs without improvement (the shared loop of :mod:`training`, which also checkpoints
every epoch). Test cases are never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from lgcd_core.config import DatasetConfig, PretrainConfig
from lgcd_core.data.sequences import text_domains
from lgcd_core.device import resolve_device
from lgcd_core.io import write_json
from lgcd_core.model.batches import DOMAINS, Inputs, ItemIndex, pad_left, pretrain_rows, trim_left
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec, save_encoder
from lgcd_core.model.processes import AcceleratorProcesses, data_parallel_accelerator, process_device, process_seed, shard
from lgcd_core.model.training import Budget, GeneratorState, Log, fingerprint_of, finite, fit, full_ranking, plot_curves
from lgcd_core.stages import PRETRAINED_ENCODERS

if TYPE_CHECKING:
    from accelerate import Accelerator


def domain_valid_cases(index: ItemIndex, eval_cases: pa.Table, domain: str, split: str = "valid") -> tuple[list[np.ndarray], np.ndarray]:
    """(histories restricted to ``domain`` as local ids, local targets) of ``split`` cases targeting it."""
    sp = eval_cases.column("split").to_pylist()
    td = eval_cases.column("target_domain").to_pylist()
    hist = eval_cases.column("history").to_pylist()
    tgt = eval_cases.column("target").to_pylist()
    keep = [i for i in range(len(sp)) if sp[i] == split and td[i] == domain]
    local_hist = index.to_local([hist[i] for i in keep], domain)
    targets = index.local_of[np.asarray([tgt[i] for i in keep], dtype=np.int64)]
    nonempty = [j for j, h in enumerate(local_hist) if len(h)]
    return [local_hist[j] for j in nonempty], targets[nonempty]


@torch.no_grad()
def evaluate_encoder(encoder: DomainEncoder, histories: list[np.ndarray], targets: np.ndarray,
                     device: str, batch_size: int = 512) -> dict[str, float]:
    """Full-ranking NDCG@10 / HR@10 of next-item prediction over the domain's items."""
    encoder.eval()

    def scored() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo in range(0, len(targets), batch_size):
            (items,) = trim_left(pad_left(histories[lo:lo + batch_size], encoder.spec.max_len))
            yield encoder.scores(items.to(device)), torch.as_tensor(targets[lo:lo + batch_size])

    return {**full_ranking(scored()), "n_cases": len(targets)}


def next_item_logits(encoder: DomainEncoder, hidden: torch.Tensor, targets: torch.Tensor, negatives: int | None,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of eq. 3's next-item cross-entropy: (N, d) states, (N,) local targets (1..n).

    ``negatives`` None: every item (the paper's full softmax; padding column -inf). An integer m < n:
    a sampled softmax, the target in column 0 against m items drawn uniformly with replacement and
    shared by the batch (a draw equal to a row's target masked out of that row); only those rows of
    E_fusion are computed. A uniform proposal makes the log-Q correction a constant, which cancels.
    """
    n = encoder.spec.n_items
    if negatives is None or negatives >= n:
        logits = hidden @ encoder.item_fusion().T
        return logits.masked_fill(torch.arange(n + 1, device=logits.device) == 0, float("-inf")), targets
    neg = torch.randint(1, n + 1, (negatives,), generator=gen).to(targets.device)
    pos = (hidden * encoder.item_fusion(targets)).sum(-1, keepdim=True)
    others = (hidden @ encoder.item_fusion(neg).T).masked_fill(neg[None, :] == targets[:, None], float("-inf"))
    return torch.cat([pos, others], dim=1), torch.zeros_like(targets)


def train_domain_encoder(pcfg: PretrainConfig, index: ItemIndex, domain: str, inputs: Inputs, device: str,
                         checkpoint: Path, log: Log = print, accelerator: Accelerator | None = None,
                         has_text: bool = True) -> tuple[DomainEncoder, dict]:
    """Pretrain one domain's encoder; returns the best-on-valid encoder and its training record.

    Under a data-parallel launch every process draws the same batches and trains on its rows of each
    (:mod:`processes`); its loss is scaled so that DDP's average of the processes' gradients is the
    gradient of the batch's mean cross-entropy, as in one process.
    """
    accelerator = accelerator or data_parallel_accelerator(device)
    processes = AcceleratorProcesses(accelerator)
    device = process_device(accelerator, device)
    seed = pcfg.seed * 2 + DOMAINS.index(domain)
    torch.manual_seed(process_seed(seed, processes.index))  # dropout; the weights are process 0's (DDP broadcasts them)
    gen = torch.Generator().manual_seed(seed)  # batch order: the same on every process
    spec = EncoderSpec(domain=domain, n_items=index.n_domain(domain), dim_text=int(inputs.embeddings.shape[1]),
                       d=pcfg.d, n_layers=pcfg.n_layers, n_heads=pcfg.n_heads, max_len=pcfg.max_len,
                       dropout=pcfg.dropout, positions=pcfg.positions, has_text=has_text)
    encoder = DomainEncoder(spec, index.text_rows(inputs.embeddings, domain)).to(device)
    rows_x, rows_y = pretrain_rows(index.to_local(inputs.sequences.column("items").to_pylist(), domain), pcfg.max_len)
    v_hist, v_tgt = domain_valid_cases(index, inputs.eval_cases, domain)
    opt = torch.optim.Adam(encoder.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    model = accelerator.prepare_model(encoder, device_placement=False)  # DDP when there are several processes
    autocast = pcfg.bf16 and device.startswith("cuda")

    def train_epoch(epoch: int) -> dict:
        perm = torch.randperm(len(rows_x), generator=gen)
        total, count = 0.0, 0
        for b, batch in enumerate(perm.split(pcfg.batch_size)):
            if len(batch) < processes.count:  # a last batch too small to give every process a row
                continue
            targets = int((rows_y[batch] != 0).sum())  # of the whole batch: every process divides by it
            x, y = trim_left(rows_x[shard(batch, processes.index, processes.count)],
                             rows_y[shard(batch, processes.index, processes.count)])
            x, y = x.to(device), y.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                hidden = model(x)  # (B, L, d) fused (eq. 2)
                real = y != 0
                logits, labels = next_item_logits(encoder, hidden[real], y[real], pcfg.train_negatives, gen)
            summed = F.cross_entropy(logits.float(), labels, reduction="sum")
            total += finite(summed, f"pretraining domain {domain}: loss at epoch {epoch}, batch {b}")
            count += int(real.sum())
            opt.zero_grad(set_to_none=True)
            (summed * processes.count / max(targets, 1)).backward()
            opt.step()
        totals = processes.gather((total, count))
        return {"loss": sum(t for t, _ in totals) / max(sum(c for _, c in totals), 1)}

    run = fingerprint_of({"pretrain": pcfg.model_dump(mode="json"), "domain": domain}, rows_x, rows_y,
                      [h.tolist() for h in v_hist], v_tgt, encoder.text_vectors)
    record = fit(encoder, train_epoch, lambda: evaluate_encoder(encoder, v_hist, v_tgt, device),
                 Budget(pcfg.epochs, pcfg.patience), checkpoint, run, {"optimizer": opt, "generator": GeneratorState(gen)},
                 f"pretrain {domain}", log, processes=processes)
    return encoder, {"domain": domain, "n_train_rows": int(len(rows_x)), "n_valid_cases": int(len(v_tgt)), **record}


def pretrain_encoders(cfg: DatasetConfig, inputs: Inputs, out_dir: Path, device: str, log: Log = print) -> dict:
    """Pretrain both domains' encoders; write encoder_{A,B}.safetensors/.json, history.json, loss_curve.png.

    Each domain's resume checkpoint is ``checkpoint_<D>.pt`` in ``out_dir``. Under a data-parallel
    launch every process trains and returns the stats; process 0 alone writes.
    """
    device = resolve_device(device)
    accelerator = data_parallel_accelerator(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = ItemIndex.from_table(inputs.items)
    has_text = text_domains(inputs.items, cfg.text_encoder.without_text)
    records = {}
    for dom in DOMAINS:
        if not has_text[dom]:
            log(f"pretrain {dom}: no item text in this domain; the ID encoder alone (no text pathway)")
        encoder, records[dom] = train_domain_encoder(cfg.pretrain, index, dom, inputs, device,
                                                     out_dir / f"checkpoint_{dom}.pt", log, accelerator, has_text[dom])
        if accelerator.is_main_process:
            save_encoder(encoder, out_dir, {"best_epoch": records[dom]["best_epoch"], "best_valid": records[dom]["best_valid"],
                                            "pretrain": cfg.pretrain.model_dump(mode="json")})
    if accelerator.is_main_process:
        write_json(records, out_dir / PRETRAINED_ENCODERS.history)
        plot_curves({f"domain {d}": r for d, r in records.items()}, out_dir / PRETRAINED_ENCODERS.loss_curve,
                    "train CE (eq. 3)", "pretraining loss")
    return {dom: {"epochs": len(r["epochs"]), "best_epoch": r["best_epoch"], "best_valid": r["best_valid"],
                  "loss_curve": [e["loss"] for e in r["epochs"]],
                  "valid_ndcg10": [e["valid"]["NDCG@10"] for e in r["epochs"]],
                  "seconds_per_epoch": float(np.mean([e["seconds"] for e in r["epochs"]])),
                  "n_train_rows": r["n_train_rows"], "n_valid_cases": r["n_valid_cases"], "has_text": has_text[dom]}
            for dom, r in records.items()}
