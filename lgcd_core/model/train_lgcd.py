"""Training loop of LGCD (both directions in one model): cyclic batches, checkpoint/resume, early stopping.

- Both directions (A->B, B->A) train together: each epoch interleaves the batches of the two
  directions' :class:`CyclicBatchSampler` s in a seeded order; one Adam over all trainable weights.
- Every epoch ends with a checkpoint (``checkpoint.pt`` under ``out_dir``: weights, optimizer,
  sampler cycle state, RNG states, history, best weights); a re-run with the same config and data
  resumes from it and ends with the same weights as an uninterrupted run. It is removed on success.
  It holds only tensors, numbers, strings and lists/dicts of those, and is read with
  ``weights_only=True``: a planted file cannot run code, it raises :class:`DataError` naming it.
- Early stopping on valid ``inter_domain``: each valid case's history restricted to its source
  domain, full-ranking NDCG@10 over the target domain, averaged over the two target domains.
- A non-finite loss raises :class:`FloatingPointError` naming the loss term, direction and epoch.
- accelerate's ``Accelerator`` places the model and runs backward; under ``accelerate launch`` the
  samplers shard the batches by process.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.config import DatasetConfig, LGCDConfig
from lgcd_core.device import resolve_device
from lgcd_core.io import DataError, atomic_path, write_json
from lgcd_core.model.batches import DOMAINS, ItemIndex, build_direction, other, pad_left, trim_left
from lgcd_core.model.encoders import load_encoder
from lgcd_core.model.lgcd import LGCDModel
from lgcd_core.model.sampler import CyclicBatchSampler
from lgcd_core.model.scoring import rank_metrics

DIRECTIONS = ("AB", "BA")
LOSS_TERMS = ("rec", "diff", "guess", "align")


def inter_domain_cases(index: ItemIndex, eval_cases: pa.Table, target: str, split: str = "valid") -> tuple[list[np.ndarray], np.ndarray]:
    """(source-domain local histories, local targets) of the ``split`` cases whose target is in ``target``."""
    sp = eval_cases.column("split").to_pylist()
    td = eval_cases.column("target_domain").to_pylist()
    keep = [i for i in range(len(sp)) if sp[i] == split and td[i] == target]
    hist = eval_cases.column("history").to_pylist()
    tgt = eval_cases.column("target").to_pylist()
    local = index.to_local([hist[i] for i in keep], other(target))
    return local, index.local_of[np.asarray([tgt[i] for i in keep], dtype=np.int64)]


@torch.no_grad()
def evaluate_inter_domain(model: LGCDModel, cases: dict[str, tuple[list[np.ndarray], np.ndarray]], device,
                          batch_size: int = 512) -> dict[str, float]:
    """Full-ranking NDCG@10 / HR@10 per target domain on source-only histories, and their mean."""
    model.eval()
    out = {}
    for target, (hist, tgt) in cases.items():
        if len(tgt) == 0:
            continue
        nd, hr = [], []
        for lo in range(0, len(tgt), batch_size):
            (src,) = trim_left(pad_left(hist[lo:lo + batch_size], model.cfg.max_len))
            scores = model.scores(other(target) + target, src.to(device))
            m = rank_metrics(scores, torch.as_tensor(tgt[lo:lo + batch_size], device=device), ks=(10,))
            nd.append(m["NDCG@10"])
            hr.append(m["HR@10"])
        out[f"{target}/NDCG@10"] = float(torch.cat(nd).mean())
        out[f"{target}/HR@10"] = float(torch.cat(hr).mean())
    ndcgs = [v for k, v in out.items() if k.endswith("NDCG@10")]
    out["NDCG@10"] = float(np.mean(ndcgs)) if ndcgs else float("nan")
    return out


_TORCH_ADVICE = re.compile(r"weights_only|Weights only|trust|Please use|file an issue|documentation")


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only, never code.

    Anything else (a pickled object or function, a corrupt file) raises :class:`DataError` naming ``path``.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for a refused global, RuntimeError for a broken archive
        raise DataError(f"{path}: not a safe checkpoint ({_load_failure(exc)}); delete it to retrain") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"{path}: not a safe checkpoint (holds {type(ckpt).__name__}, not a dict); delete it to retrain")
    return ckpt


def _load_failure(exc: Exception) -> str:
    """The first sentence of a ``torch.load`` failure that says what is wrong (not torch's advice to load it unsafely)."""
    sentences = (" ".join(s.split()).rstrip(".") for s in re.split(r"(?<=\.)\s+|\n|WeightsUnpickler error:", str(exc)))
    return next((s[:200] for s in sentences if s and not _TORCH_ADVICE.search(s)), type(exc).__name__)


def _fingerprint(lc: LGCDConfig, data: dict) -> str:
    blob = json.dumps({"cfg": lc.model_dump(mode="json"),
                       "rows": {k: [len(v), int(v.src.sum()), int(v.tgt.sum())] for k, v in data.items()}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_lgcd(cfg: DatasetConfig, items: pa.Table, sequences: pa.Table, eval_cases: pa.Table,
               pseudo_overlap: pa.Table | None, embeddings: np.ndarray, encoders_dir: Path, out_dir: Path,
               device: str, log=print, lgcd_cfg: LGCDConfig | None = None, _interrupt_after: int | None = None) -> dict:
    """Train LGCD (both directions); write lgcd.safetensors + lgcd.json + history.json under ``out_dir``.

    ``lgcd_cfg`` overrides ``cfg.lgcd`` (ablation variants, seeds). ``_interrupt_after`` (tests only)
    raises after that epoch's checkpoint, simulating a crash.
    """
    from accelerate import Accelerator

    lc = lgcd_cfg or cfg.lgcd
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not device.startswith("cuda"),
                              mixed_precision="bf16" if lc.bf16 and device.startswith("cuda") else "no")
    dev = accelerator.device
    torch.manual_seed(lc.seed)
    gen = torch.Generator().manual_seed(lc.seed)

    index = ItemIndex.from_table(items)
    encoders = {d: load_encoder(Path(encoders_dir), d, index.text_rows(embeddings, d), "cpu") for d in DOMAINS}
    model = LGCDModel(lc, encoders)
    data = {dr: build_direction(index, dr[0], sequences, pseudo_overlap, lc.max_len, lc.targets) for dr in DIRECTIONS}
    samplers = {dr: CyclicBatchSampler(data[dr].overlap_rows, data[dr].pseudo_rows, lc.batch_size,
                                       lc.overlap_per_batch, lc.cyclic_batches, seed=lc.seed + 17 * i,
                                       rank=accelerator.process_index, world_size=accelerator.num_processes)
                for i, dr in enumerate(DIRECTIONS)}
    cases = {t: inter_domain_cases(index, eval_cases, t) for t in DOMAINS}
    for dr in DIRECTIONS:
        log(f"LGCD {dr}: {len(data[dr].overlap_rows)} overlap rows, {len(data[dr].pseudo_rows)} pseudo rows, "
            f"{int(data[dr].label.sum())} targets")
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
    model, opt = accelerator.prepare(model, opt)
    core: LGCDModel = accelerator.unwrap_model(model)

    fingerprint = _fingerprint(lc, data)
    ckpt_path = out_dir / "checkpoint.pt"
    history: dict = {"epochs": [], "fingerprint": fingerprint}
    best, best_state, bad, start = -math.inf, None, 0, 1
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("fingerprint") == fingerprint:
            core.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            for dr in DIRECTIONS:
                samplers[dr].state = dict(ckpt["samplers"][dr])
            torch.set_rng_state(ckpt["torch_rng"])
            gen.set_state(ckpt["gen"])
            if torch.cuda.is_available() and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            history, best, bad, best_state = ckpt["history"], ckpt["best"], ckpt["bad"], ckpt["best_state"]
            start = ckpt["epoch"] + 1
            log(f"LGCD: resuming from {ckpt_path} after epoch {ckpt['epoch']}")
        else:
            log(f"LGCD: ignoring {ckpt_path} (written for another config or data)")

    stopped = bad >= lc.patience
    for epoch in range(start, lc.epochs + 1):
        if stopped:
            break
        model.train()
        t0 = time.perf_counter()
        plan = [(dr, rows) for dr in DIRECTIONS for rows in samplers[dr].epoch(epoch)]
        order = np.random.default_rng([lc.seed, 2, epoch]).permutation(len(plan))
        sums = {dr: {k: 0.0 for k in LOSS_TERMS + ("total",)} for dr in DIRECTIONS}
        steps = {dr: 0 for dr in DIRECTIONS}
        n_seq = 0
        for step, j in enumerate(order):
            dr, rows = plan[j]
            batch = data[dr].batch(rows, dev)
            with accelerator.autocast():
                out = model(dr, batch, gen)
            for term in LOSS_TERMS + ("total",):
                value = out[term]
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"LGCD loss term L_{term} is {float(value.detach())} at epoch {epoch} "
                        f"(direction {dr[0]}->{dr[1]}, step {step})")
                sums[dr][term] += float(value.detach())
            opt.zero_grad(set_to_none=True)
            accelerator.backward(out["total"])
            opt.step()
            steps[dr] += 1
            n_seq += len(rows)
        seconds = time.perf_counter() - t0
        valid = evaluate_inter_domain(core, cases, dev, lc.eval_batch_size)
        record = {"epoch": epoch, "seconds": seconds, "sequences_per_s": n_seq / max(seconds, 1e-9),
                  "loss": {dr: {k: v / max(steps[dr], 1) for k, v in sums[dr].items()} for dr in DIRECTIONS},
                  "valid": valid}
        history["epochs"].append(record)
        log(f"LGCD epoch {epoch}: " + " ".join(
            f"{dr} total {record['loss'][dr]['total']:.4f} (rec {record['loss'][dr]['rec']:.4f})" for dr in DIRECTIONS)
            + f" | valid inter_domain NDCG@10 {valid['NDCG@10']:.4f} "
            + " ".join(f"{k} {v:.4f}" for k, v in valid.items() if k != "NDCG@10") + f" ({seconds:.1f}s)")
        score = valid["NDCG@10"] if not math.isnan(valid["NDCG@10"]) else -record["loss"]["AB"]["total"]
        if score > best:
            best, bad, history["best_epoch"] = score, 0, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        else:
            bad += 1
        stopped = bad >= lc.patience
        with atomic_path(ckpt_path) as tmp:
            torch.save({"fingerprint": fingerprint, "epoch": epoch, "model": core.state_dict(),
                        "opt": opt.state_dict(), "samplers": {dr: dict(s.state) for dr, s in samplers.items()},
                        "torch_rng": torch.get_rng_state(), "gen": gen.get_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                        "history": history, "best": best, "bad": bad, "best_state": best_state}, tmp)
        if _interrupt_after is not None and epoch == _interrupt_after:
            raise KeyboardInterrupt(f"interrupted after epoch {epoch} (test hook)")

    core.load_state_dict(best_state)
    history["best_valid"] = history["epochs"][history["best_epoch"] - 1]["valid"]
    from safetensors.torch import save_file

    with atomic_path(out_dir / "lgcd.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()}, str(tmp))
    meta = {"lgcd": lc.model_dump(mode="json"), "best_epoch": history["best_epoch"], "best_valid": history["best_valid"],
            "directions": {dr: {"rows": len(data[dr]), "overlap_rows": int(len(data[dr].overlap_rows)),
                                "pseudo_rows": int(len(data[dr].pseudo_rows)), "targets": int(data[dr].label.sum())}
                           for dr in DIRECTIONS}}
    write_json(meta, out_dir / "lgcd.json")
    write_json(history, out_dir / "history.json")
    ckpt_path.unlink(missing_ok=True)
    epochs = history["epochs"]
    return {"best_epoch": history["best_epoch"], "best_valid": history["best_valid"], "epochs": len(epochs),
            "valid_ndcg10": [e["valid"]["NDCG@10"] for e in epochs],
            "loss_curve": {dr: [e["loss"][dr]["total"] for e in epochs] for dr in DIRECTIONS},
            "seconds_per_epoch": float(np.mean([e["seconds"] for e in epochs])),
            "sequences_per_s": float(np.mean([e["sequences_per_s"] for e in epochs])),
            "directions": meta["directions"]}
