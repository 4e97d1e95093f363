"""Training-speed benchmark: pretraining, LGCD training and the reverse process, on Food-Kitchen-sized
synthetic inputs (8,661 / 27,637 items, ~51k training sequences, 384-d text vectors).

    python -m bench.train_speed [--device auto|cpu|cuda] [--steps 200] [--config datasets/food_kitchen.yaml]
        [--lgcd diffusion.sampler_steps=0 ...]

The inputs come from the model tests' toy generator (tests/toy_data.py).

Prints a table and writes bench/results/train_speed.md. Peak memory: torch.cuda.max_memory_allocated
on CUDA, the peak process RSS (psutil, sampled every 10 ms) over the phase on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
import yaml

from lgcd_core.config import LGCDConfig, PretrainConfig, load_dataset_config
from lgcd_core.device import resolve_device
from lgcd_core.model.batches import ItemIndex, build_direction, pretrain_rows, trim_left
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec
from lgcd_core.model.lgcd import LGCDModel
from lgcd_core.model.sampler import CyclicBatchSampler
from tests.toy_data import synthetic_inputs  # run from the repository root, as every bench is

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.md"


class PeakMemory:
    def __init__(self, device: str) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            proc = psutil.Process()

            def poll() -> None:
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(0.01)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2 ** 20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_pretrain(data, index, pcfg: PretrainConfig, domain: str, steps: int, device: str) -> dict:
    spec = EncoderSpec(domain, index.n_domain(domain), data["embeddings"].shape[1], pcfg.d, pcfg.n_layers,
                       pcfg.n_heads, pcfg.max_len, pcfg.dropout)
    enc = DomainEncoder(spec, index.text_rows(data["embeddings"], domain)).to(device)
    x_all, y_all = pretrain_rows(index.to_local(data["sequences"].column("items").to_pylist(), domain), pcfg.max_len)
    opt = torch.optim.Adam(enc.parameters(), lr=pcfg.lr)
    gen = torch.Generator().manual_seed(0)
    n_seq = 0

    def step() -> int:
        rows = torch.randint(len(x_all), (pcfg.batch_size,), generator=gen)
        x, y = trim_left(x_all[rows], y_all[rows])
        x, y = x.to(device), y.to(device)
        real = y != 0
        logits = enc(x)[real] @ enc.item_fusion().T
        logits[:, 0] = float("-inf")
        loss = F.cross_entropy(logits, y[real])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(rows)

    for _ in range(3):
        step()
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            n_seq += step()
        _sync(device)
        secs = time.perf_counter() - t0
    return {"phase": f"pretrain domain {domain} ({index.n_domain(domain)} items)", "steps": steps,
            "seq_per_s": n_seq / secs, "ms_per_step": 1000 * secs / steps, "peak_mib": mem.mib}


def bench_lgcd(data, index, pcfg: PretrainConfig, lc: LGCDConfig, steps: int, device: str) -> tuple[list[dict], LGCDModel]:
    encs = {d: DomainEncoder(EncoderSpec(d, index.n_domain(d), data["embeddings"].shape[1], pcfg.d, pcfg.n_layers,
                                         pcfg.n_heads, pcfg.max_len, pcfg.dropout), index.text_rows(data["embeddings"], d))
            for d in "AB"}
    model = LGCDModel(lc, encs).to(device)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lc.training.lr)
    rows = []
    for dr in ("AB", "BA"):
        dd = build_direction(index, dr[0], data["sequences"], data["pseudo_overlap"], lc.architecture.max_len,
                             lc.interpretation.targets)
        sampler = CyclicBatchSampler(dd.overlap_rows, dd.pseudo_rows, lc.training.batch_size,
                                     lc.training.overlap_per_batch, True, 0)
        batches = sampler.epoch(1)
        gen = torch.Generator().manual_seed(0)
        model.train()

        def step(i: int) -> tuple[int, int]:  # called only within this iteration of the loop
            batch = dd.batch(batches[i % len(batches)], device)  # noqa: B023
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=lc.training.bf16 and device.startswith("cuda")):
                out = model(dr, batch, gen)  # noqa: B023
            opt.zero_grad()
            out["total"].backward()
            opt.step()
            return len(batch["kind"]), int(out["n_targets"])

        for i in range(3):
            step(i)
        n_seq = n_tgt = 0
        with PeakMemory(device) as mem:
            _sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                a, b = step(i)
                n_seq, n_tgt = n_seq + a, n_tgt + b
            _sync(device)
            secs = time.perf_counter() - t0
        rows.append({"phase": f"LGCD train {dr[0]}->{dr[1]} ({len(dd)} rows, reverse from t={model.schedule.start_step(model.lam(dr[1]))}, "
                              f"{model.denoiser_calls(dr[1])} denoiser calls)",
                     "steps": steps, "seq_per_s": n_seq / secs, "ms_per_step": 1000 * secs / steps,
                     "peak_mib": mem.mib, "targets_per_s": n_tgt / secs})
    return rows, model


@torch.no_grad()
def bench_reverse(model: LGCDModel, index, data, device: str, n_users: int = 512) -> list[dict]:
    model.eval()
    out = []
    for target in "AB":
        source = "B" if target == "A" else "A"
        hist = index.to_local(data["sequences"].column("items").to_pylist()[:20000], source)
        hist = [h for h in hist if len(h)][:n_users]
        from lgcd_core.model.batches import pad_left

        (src,) = trim_left(pad_left(hist, model.cfg.architecture.max_len))
        src = src.to(device)
        model.scores(source + target, src)  # warm-up (and item cache)
        t_start = model.denoiser_calls(target)
        with PeakMemory(device) as mem:
            _sync(device)
            t0 = time.perf_counter()
            model.user_vectors(source + target, src)
            _sync(device)
            secs = time.perf_counter() - t0
        out.append({"phase": f"inference {source}->{target}: {t_start} denoiser calls (t_start="
                              f"{model.schedule.start_step(model.lam(target))} of T={model.cfg.diffusion.T}), batch {len(hist)}",
                    "steps": t_start, "seq_per_s": len(hist) / secs, "ms_per_step": 1000 * secs / t_start,
                    "peak_mib": mem.mib, "ms_per_user": 1000 * secs / len(hist)})
    return out


def _sampler(lc: LGCDConfig) -> str:
    k = lc.diffusion.sampler_steps
    return f"DDIM (η=0) in {k} jumps" if k else "every step of eq. 20 (the full chain)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="steps per phase (default 200 on CUDA, 30 on CPU)")
    ap.add_argument("--config", default=None, help="dataset YAML for the pretrain/lgcd sections (T, λ, sizes)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the Food-Kitchen sizes (quick runs)")
    ap.add_argument("--lgcd", action="append", default=[], metavar="FIELD=VALUE",
                    help="change one LGCD field, e.g. diffusion.sampler_steps=0 (the full chain of eq. 20)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    steps = args.steps or (200 if device.startswith("cuda") else 30)
    if args.config:
        cfg = load_dataset_config(Path(args.config))
        pcfg, lc = cfg.pretrain, cfg.lgcd
    else:
        pcfg, lc = PretrainConfig(), LGCDConfig()
    for assignment in args.lgcd:
        field, sep, raw = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--lgcd {assignment!r}: expected section.field=value")
        lc = lc.with_updates({field: yaml.safe_load(raw)})
    torch.manual_seed(0)
    s = args.scale
    t0 = time.perf_counter()
    data = synthetic_inputs(n_items_a=int(8661 * s), n_items_b=int(27637 * s), n_overlap=int(7501 * s),
                            n_a_only=int(5472 * s), n_b_only=int(38191 * s), n_valid=10, dim_text=384,
                            n_tastes=50, min_len=5, max_len=15, n_pseudo_items=10, seed=0)
    index = ItemIndex.from_table(data["items"])
    gen_s = time.perf_counter() - t0
    results = [bench_pretrain(data, index, pcfg, d, steps, device) for d in "AB"]
    lgcd_rows, model = bench_lgcd(data, index, pcfg, lc, steps, device)
    results += lgcd_rows
    results += bench_reverse(model, index, data, device)
    header = "| phase | steps | sequences/s | ms/step | peak memory (MiB) | extra |\n|---|---|---|---|---|---|\n"
    lines = []
    for r in results:
        extra = (f"{r['targets_per_s']:.0f} targets/s" if "targets_per_s" in r
                 else f"{r['ms_per_user']:.3f} ms/user" if "ms_per_user" in r else "")
        lines.append(f"| {r['phase']} | {r['steps']} | {r['seq_per_s']:.0f} | {r['ms_per_step']:.1f} | {r['mib']:.0f} | {extra} |"
                     if "mib" in r else
                     f"| {r['phase']} | {r['steps']} | {r['seq_per_s']:.0f} | {r['ms_per_step']:.1f} | {r['peak_mib']:.0f} | {extra} |")
    cpu_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name
    memo = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak process RSS (psutil)"
    text = (f"# Training speed\n\nDevice: {dev_name}; torch {torch.__version__}; batch {pcfg.batch_size} (pretrain) / "
            f"{lc.training.batch_size} with {lc.training.overlap_per_batch} overlap rows (LGCD); d={pcfg.d}; "
            f"T={lc.diffusion.T}, λ_A={lc.diffusion.lambda_A}, λ_B={lc.diffusion.lambda_B}; reverse process (training and "
            f"inference): {_sampler(lc)} from the noised guess at t_start, grad through its last jump in training.\n"
            f"Inputs: synthetic, scale {s} of Food-Kitchen ({index.n_domain('A')} / {index.n_domain('B')} items, "
            f"{data['sequences'].num_rows} sequences, {data['pseudo_overlap'].num_rows} pseudo-overlap rows; "
            f"generated in {gen_s:.0f}s). Memory: {memo}. Load average at the end: "
            f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min; CPU figures are only "
            f"meaningful on an unloaded machine).\n\n" + header + "\n".join(lines) + "\n")
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
