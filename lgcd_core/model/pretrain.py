"""Per-domain pretraining of the ID + text sequence encoders and their fusion (paper eq. 1-3).

For each domain D: every training sequence (all user types) contributes its subsequence of D-items
(local ids); at every position the fused hidden state h^fusion (eq. 2) is scored against E_fusion of
all D items (eq. 3) with a full-softmax cross-entropy on the next item -- SASRec trained with full
softmax, which is the strong variant.

Model selection: after every epoch, valid cases whose target is in D are scored with their history
restricted to D-items (cases with no D-item in the history are skipped: an encoder cannot read an
empty sequence); the metric is full-ranking NDCG@10 over all D items (rank = 1 + #items scoring >= the
target, ties against the model). The best epoch's weights are kept; training stops after
``patience`` epochs without improvement. Test cases are never read.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from lgcd_core.config import DatasetConfig, PretrainConfig
from lgcd_core.device import resolve_device
from lgcd_core.io import atomic_path, write_json
from lgcd_core.model.batches import DOMAINS, ItemIndex, pad_left, pretrain_rows, trim_left
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec, save_encoder
from lgcd_core.model.scoring import rank_metrics


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
    """Full-ranking HR@10 / NDCG@10 of next-item prediction over the domain's items."""
    if len(targets) == 0:
        return {"NDCG@10": float("nan"), "HR@10": float("nan"), "n_cases": 0}
    encoder.eval()
    max_len = encoder.spec.max_len
    hr, ndcg = [], []
    for lo in range(0, len(targets), batch_size):
        (items,) = trim_left(pad_left(histories[lo:lo + batch_size], max_len))
        scores = encoder.scores(items.to(device))
        m = rank_metrics(scores, torch.as_tensor(targets[lo:lo + batch_size], device=device), ks=(10,))
        hr.append(m["HR@10"])
        ndcg.append(m["NDCG@10"])
    return {"NDCG@10": float(torch.cat(ndcg).mean()), "HR@10": float(torch.cat(hr).mean()), "n_cases": len(targets)}


def train_domain_encoder(pcfg: PretrainConfig, index: ItemIndex, domain: str, sequences: pa.Table,
                         eval_cases: pa.Table, embeddings: np.ndarray, device: str, log=print) -> tuple[DomainEncoder, dict]:
    """Pretrain one domain's encoder; returns the best-on-valid encoder and its training stats."""
    seed = pcfg.seed * 2 + DOMAINS.index(domain)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spec = EncoderSpec(domain=domain, n_items=index.n_domain(domain), dim_text=int(embeddings.shape[1]),
                       d=pcfg.d, n_layers=pcfg.n_layers, n_heads=pcfg.n_heads, max_len=pcfg.max_len,
                       dropout=pcfg.dropout)
    encoder = DomainEncoder(spec, index.text_rows(embeddings, domain)).to(device)
    inputs, targets = pretrain_rows(index.to_local(sequences.column("items").to_pylist(), domain), pcfg.max_len)
    v_hist, v_tgt = domain_valid_cases(index, eval_cases, domain)
    opt = torch.optim.Adam(encoder.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    autocast = pcfg.bf16 and device.startswith("cuda")
    history = {"domain": domain, "n_train_rows": int(len(inputs)), "n_valid_cases": int(len(v_tgt)),
               "train_loss": [], "valid": [], "seconds_per_epoch": []}
    best, best_state, bad = -math.inf, None, 0
    n_batches = math.ceil(len(inputs) / pcfg.batch_size)
    for epoch in range(1, pcfg.epochs + 1):
        encoder.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(inputs), generator=gen)
        total, count = 0.0, 0
        for b in range(n_batches):
            rows = perm[b * pcfg.batch_size:(b + 1) * pcfg.batch_size]
            x, y = trim_left(inputs[rows], targets[rows])
            x, y = x.to(device), y.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                hidden = encoder(x)  # (B, L, d) fused (eq. 2)
                real = y != 0
                logits = hidden[real] @ encoder.item_fusion().T  # (N_real, n+1) (eq. 3)
            logits = logits.float()
            logits[:, 0] = float("-inf")
            loss = F.cross_entropy(logits, y[real])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining domain {domain}: loss is {loss.item()} at epoch {epoch}, batch {b}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * int(real.sum())
            count += int(real.sum())
        seconds = time.perf_counter() - t0
        metrics = evaluate_encoder(encoder, v_hist, v_tgt, device)
        history["train_loss"].append(total / max(count, 1))
        history["valid"].append(metrics)
        history["seconds_per_epoch"].append(seconds)
        log(f"pretrain {domain} epoch {epoch}: loss {total / max(count, 1):.4f} "
            f"valid NDCG@10 {metrics['NDCG@10']:.4f} HR@10 {metrics['HR@10']:.4f} ({seconds:.1f}s)")
        score = metrics["NDCG@10"] if not math.isnan(metrics["NDCG@10"]) else -history["train_loss"][-1]
        if score > best:
            best, bad, history["best_epoch"] = score, 0, epoch
            best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        else:
            bad += 1
            if bad >= pcfg.patience:
                break
    history["epochs"] = len(history["train_loss"])
    history["best_valid"] = history["valid"][history["best_epoch"] - 1]
    encoder.load_state_dict(best_state)
    return encoder.eval(), history


def _plot(histories: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for dom, h in histories.items():
        epochs = range(1, len(h["train_loss"]) + 1)
        axes[0].plot(epochs, h["train_loss"], marker="o", label=f"domain {dom}")
        axes[1].plot(epochs, [v["NDCG@10"] for v in h["valid"]], marker="o", label=f"domain {dom}")
    axes[0].set(xlabel="epoch", ylabel="train CE (eq. 3)", title="pretraining loss")
    axes[1].set(xlabel="epoch", ylabel="valid NDCG@10 (full ranking)", title="valid")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def pretrain_encoders(cfg: DatasetConfig, items: pa.Table, sequences: pa.Table, eval_cases: pa.Table,
                      embeddings: np.ndarray, out_dir: Path, device: str, log=print) -> dict:
    """Pretrain both domains' encoders; write encoder_{A,B}.safetensors/.json, history.json, loss_curve.png."""
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = ItemIndex.from_table(items)
    histories = {}
    for dom in DOMAINS:
        encoder, hist = train_domain_encoder(cfg.pretrain, index, dom, sequences, eval_cases, embeddings, device, log)
        save_encoder(encoder, out_dir, {"best_epoch": hist["best_epoch"], "best_valid": hist["best_valid"],
                                        "pretrain": cfg.pretrain.model_dump(mode="json")})
        histories[dom] = hist
    write_json(histories, out_dir / "history.json")
    _plot(histories, out_dir / "loss_curve.png")
    return {
        dom: {"epochs": h["epochs"], "best_epoch": h["best_epoch"], "best_valid": h["best_valid"],
              "loss_curve": h["train_loss"], "valid_ndcg10": [v["NDCG@10"] for v in h["valid"]],
              "valid_per_epoch": h["valid"],
              "seconds_per_epoch": float(np.mean(h["seconds_per_epoch"])), "n_train_rows": h["n_train_rows"],
              "n_valid_cases": h["n_valid_cases"]}
        for dom, h in histories.items()
    }
