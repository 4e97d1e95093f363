"""Training of LGCD (both directions in one model) with the shared loop of :mod:`training`.

- Both directions (A->B, B->A) train together: each epoch interleaves the batches of the two
  directions' :class:`CyclicBatchSampler` s in a seeded order; one Adam over all trainable weights.
- Early stopping on valid ``inter_domain``: each valid case's history restricted to its source
  domain, full-ranking NDCG@10 over the target domain, averaged over the two target domains.
- Every epoch ends with ``checkpoint.pt`` under the run's folder (weights, optimizer, sampler cycle
  state, RNG states, record, best weights); a re-run with the same config and data resumes from it and
  ends with the same weights as an uninterrupted run (:func:`training.fit`).
- A non-finite loss raises :class:`FloatingPointError` naming the loss term, direction and epoch.
- After training, :func:`diagnostics.generator_diagnostics` measures on valid whether the generator
  carries signal (R² of h^rev and of the guess against x0, NDCG@10 change when h^rev is shuffled
  across users); the numbers go to history.json and the stats the stage reports.
- accelerate's ``Accelerator`` places the model and runs backward; under ``accelerate launch``
  (:mod:`launch`) every process trains on its rows of each batch, with its own dropout and diffusion
  noise seeds, and process 0 alone evaluates and writes (:mod:`processes`).

:func:`train_lgcd_runs` trains every run the YAML asks for (:mod:`runs`): the `lgcd_model` stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lgcd_core.config import DatasetConfig, LGCDConfig
from lgcd_core.device import resolve_device
from lgcd_core.io import atomic_path, write_json
from lgcd_core.model.batches import DOMAINS, DirectionData, Inputs, ItemIndex, build_direction, other, pad_left, trim_left
from lgcd_core.model.diagnostics import generator_diagnostics
from lgcd_core.model.encoders import load_encoder
from lgcd_core.model.lgcd import LGCDModel
from lgcd_core.model.processes import AcceleratorProcesses, data_parallel_accelerator, mean_of, process_seed
from lgcd_core.model.runs import all_lgcd_runs, lgcd_run_dir
from lgcd_core.model.sampler import CyclicBatchSampler
from lgcd_core.model.training import Budget, GeneratorState, Log, fingerprint_of, finite, fit, full_ranking, plot_curves
from lgcd_core.stages import LGCD_MODEL

DIRECTIONS = ("AB", "BA")
LOSS_CURVE = "loss_curve.png"  # every run's loss and valid NDCG@10 per epoch, at the top of the stage folder
LOSS_TERMS = ("rec", "diff", "guess", "align")
Cases = dict[str, tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]]


def inter_domain_cases(index: ItemIndex, eval_cases: pa.Table, target: str, split: str = "valid",
                       oracle: bool = False) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
    """(source-domain local histories, local targets, target-domain local histories) of the ``split`` cases
    whose target is in ``target``.

    The target-domain histories are given only for ``oracle`` (else None): a model trained with
    ``ablations.oracle_x0`` is scored with h_rev := the true x0 of those items, and its epochs are chosen
    on that score too, not on its generator's.
    """
    sp = eval_cases.column("split").to_pylist()
    td = eval_cases.column("target_domain").to_pylist()
    keep = [i for i in range(len(sp)) if sp[i] == split and td[i] == target]
    histories = eval_cases.column("history").to_pylist()
    hist = [histories[i] for i in keep]
    tgt = eval_cases.column("target").to_pylist()
    own = index.to_local(hist, target) if oracle else None
    return index.to_local(hist, other(target)), index.local_of[np.asarray([tgt[i] for i in keep], dtype=np.int64)], own


@torch.no_grad()
def evaluate_inter_domain(model: LGCDModel, cases: Cases, device, batch_size: int = 512) -> dict[str, float]:
    """Full-ranking NDCG@10 / HR@10 per target domain on source-only histories, and their mean NDCG@10."""
    model.eval()
    out = {}
    for target, (hist, tgt, own) in cases.items():
        if len(tgt) == 0:
            continue
        scored = _scored(model, target, hist, tgt, own, device, batch_size)
        out.update({f"{target}/{k}": v for k, v in full_ranking(scored).items()})
    ndcgs = [v for k, v in out.items() if k.endswith("NDCG@10")]
    out["NDCG@10"] = float(np.mean(ndcgs)) if ndcgs else float("nan")
    return out


def _scored(model: LGCDModel, target: str, hist: list[np.ndarray], tgt: np.ndarray, own: list[np.ndarray] | None,
            device, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(scores over the target domain, targets) of the cases, a batch at a time (``own``: see :func:`inter_domain_cases`)."""
    max_len = model.cfg.architecture.max_len
    for lo in range(0, len(tgt), batch_size):
        (src,) = trim_left(pad_left(hist[lo:lo + batch_size], max_len))
        tgt_history = None if own is None else trim_left(pad_left(own[lo:lo + batch_size], max_len))[0].to(device)
        yield model.scores(other(target) + target, src.to(device), tgt_history), torch.as_tensor(tgt[lo:lo + batch_size])


def train_lgcd_runs(cfg: DatasetConfig, inputs: Inputs, encoders_dir: Path, out_dir: Path, device: str,
                    log: Log = print) -> dict:
    """Every LGCD run of the YAML (default model, seeds, variants) into its folder under ``out_dir``."""
    stats, records = {}, {}
    for name, seed, lc in all_lgcd_runs(cfg):
        log(f"training {name} (seed {seed})")
        run = lgcd_run_dir(cfg, out_dir, name, seed)
        stats[f"{name}/seed{seed}"] = train_lgcd(lc, inputs, encoders_dir, run, device, log)
        if (run / LGCD_MODEL.history).exists():
            records[f"{name} seed {seed}"] = json.loads((run / LGCD_MODEL.history).read_text())
    if records:
        plot_curves(records, out_dir / LOSS_CURVE, "training loss (eq. 26-27)", "LGCD training loss")
    return stats


def train_lgcd(lc: LGCDConfig, inputs: Inputs, encoders_dir: Path, out_dir: Path, device: str, log: Log = print) -> dict:
    """Train LGCD (both directions); write lgcd.safetensors + lgcd.json + history.json under ``out_dir``."""
    device = resolve_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc = lc.training
    accelerator = data_parallel_accelerator(device, tc.bf16)
    processes = AcceleratorProcesses(accelerator)
    torch.manual_seed(process_seed(tc.seed, processes.index))  # the weights are process 0's (DDP broadcasts them)
    gen = torch.Generator().manual_seed(process_seed(tc.seed, processes.index))  # diffusion noise
    index = ItemIndex.from_table(inputs.items)
    encoders = {d: load_encoder(encoders_dir, d, index.text_rows(inputs.embeddings, d), "cpu") for d in DOMAINS}
    model = LGCDModel(lc, encoders)
    data = {dr: build_direction(index, dr[0], inputs.sequences, inputs.pseudo_overlap, lc.architecture.max_len,
                                lc.interpretation.targets)
            for dr in DIRECTIONS}
    if lc.training.freeze_encoders and lc.ablations.use_diffusion:  # x0 cannot change: compute it once per run
        for dr in DIRECTIONS:
            data[dr].x0, data[dr].has_x0 = x0_table(model, dr[1], data[dr].tgt)
    samplers = {dr: CyclicBatchSampler(data[dr].overlap_rows, data[dr].pseudo_rows, tc.batch_size,
                                       tc.overlap_per_batch, lc.ablations.cyclic_batches, seed=tc.seed + 17 * i,
                                       rank=accelerator.process_index, world_size=accelerator.num_processes,
                                       pseudo_repeats=tc.pseudo_repeats)
                for i, dr in enumerate(DIRECTIONS)}
    cases = {t: inter_domain_cases(index, inputs.eval_cases, t, oracle=lc.ablations.oracle_x0) for t in DOMAINS}
    for dr in DIRECTIONS:
        log(f"LGCD {dr}: {len(data[dr].overlap_rows)} overlap rows, {len(data[dr].pseudo_rows)} pseudo rows, "
            f"{int(data[dr].label.sum())} targets")
    run = _fingerprint(lc, data, model, cases)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    model, opt = accelerator.prepare(model, opt)
    core: LGCDModel = accelerator.unwrap_model(model)

    def train_epoch(epoch: int) -> dict:
        plan = [(dr, rows) for dr in DIRECTIONS for rows in samplers[dr].epoch(epoch)]
        order = np.random.default_rng([tc.seed, 2, epoch]).permutation(len(plan))
        sums = {dr: dict.fromkeys((*LOSS_TERMS, "total"), 0.0) for dr in DIRECTIONS}
        steps = dict.fromkeys(DIRECTIONS, 0)
        for step, j in enumerate(order):
            dr, rows = plan[j]
            with accelerator.autocast():
                out = model(dr, data[dr].batch(rows, accelerator.device), gen)
            for term in sums[dr]:
                sums[dr][term] += finite(out[term], f"LGCD loss term L_{term} at epoch {epoch} "
                                                    f"(direction {dr[0]}->{dr[1]}, step {step})")
            opt.zero_grad(set_to_none=True)
            accelerator.backward(out["total"])
            opt.step()
            steps[dr] += 1
        losses = {dr: {k: v / max(steps[dr], 1) for k, v in sums[dr].items()} for dr in DIRECTIONS}
        everyone = processes.gather({"losses": losses, "sequences": sum(len(rows) for _, rows in plan)})
        losses = mean_of([p["losses"] for p in everyone])  # each process's mean over the same steps
        return {"loss": float(np.mean([losses[dr]["total"] for dr in DIRECTIONS])), "losses": losses,
                "sequences": sum(p["sequences"] for p in everyone)}

    record = fit(core, train_epoch, lambda: evaluate_inter_domain(core, cases, accelerator.device, tc.eval_batch_size),
                 Budget(tc.epochs, tc.patience), out_dir / "checkpoint.pt", run,
                 {"optimizer": opt, **{f"sampler_{dr}": s for dr, s in samplers.items()}}, "LGCD", log,
                 {"generator": GeneratorState(gen)}, processes)
    if not accelerator.is_main_process:
        return {}
    record["diagnostics"] = generator_diagnostics(core, index, inputs.eval_cases, accelerator.device, tc.eval_batch_size,
                                                  data=data)
    for direction, diag in record["diagnostics"].items():
        log(f"LGCD {direction} on valid: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in diag.items()))
    return _save(core, lc, data, record, out_dir)


@torch.no_grad()
def x0_table(model: LGCDModel, target: str, tgt: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 of every slot of the (N, Lt) target rows (:meth:`LGCDModel.target_features`), a chunk at a time."""
    model.enc.eval()
    parts = [model.target_features(target, tgt[lo:lo + chunk]) for lo in range(0, tgt.shape[0], chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _fingerprint(lc: LGCDConfig, data: dict[str, DirectionData], model: LGCDModel, cases: Cases) -> str:
    """The run's config, training rows, pretrained encoder weights and valid cases."""
    rows = [t for d in data.values() for t in (d.src, d.src_pos, d.tgt, d.tgt_pos, d.label, d.kind)]
    valid = [part for hist, tgt, _ in cases.values() for part in ([h.tolist() for h in hist], tgt)]
    return fingerprint_of({"lgcd": lc.model_dump(mode="json")}, *rows, *model.enc.state_dict().values(), *valid)


def _save(model: LGCDModel, lc: LGCDConfig, data: dict[str, DirectionData], record: dict, out_dir: Path) -> dict:
    """Write lgcd.safetensors, lgcd.json and history.json; returns the stats the stage reports."""
    from safetensors.torch import save_file

    with atomic_path(out_dir / LGCD_MODEL.weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    directions = {dr: {"rows": len(d), "overlap_rows": int(len(d.overlap_rows)), "pseudo_rows": int(len(d.pseudo_rows)),
                       "targets": int(d.label.sum())} for dr, d in data.items()}
    write_json({"lgcd": lc.model_dump(mode="json"), "best_epoch": record["best_epoch"], "best_valid": record["best_valid"],
                "directions": directions}, out_dir / LGCD_MODEL.meta)
    write_json(record, out_dir / LGCD_MODEL.history)
    epochs = record["epochs"]
    return {"best_epoch": record["best_epoch"], "best_valid": record["best_valid"], "epochs": len(epochs),
            "valid_ndcg10": [e["valid"]["NDCG@10"] for e in epochs],
            "loss_curve": {dr: [e["losses"][dr]["total"] for e in epochs] for dr in DIRECTIONS},
            "seconds_per_epoch": float(np.mean([e["seconds"] for e in epochs])),
            "sequences_per_s": float(np.mean([e["sequences"] / max(e["seconds"], 1e-9) for e in epochs])),
            "directions": directions, "diagnostics": record["diagnostics"]}
