"""LGCD's conditional diffusion preference generator and MoE fusion (paper eq. 7-27).

One :class:`LGCDModel` holds the two pretrained :class:`DomainEncoder` s and one
:class:`DirectionHead` per direction ("AB" = A->B, "BA" = B->A). Shapes: B rows (users), Ls source
slots, Lt target slots, N selected (row, target slot) pairs, d hidden size, h heads.

Training rows carry several L_rec targets (every target-domain item with a source item before it,
see ``LGCDConfig.interpretation.targets``); the condition of a target uses only the source items before it and x0
only the target-domain items before it, so one pass of the (causal) encoders serves all targets of a
row. Inference is the same path with one query after the whole source history.

The reverse process starts on the distribution the denoiser was trained on: the guess noised to
t_start = λT with a real ε (eq. 18-20), drawn from the run's generator in training and, at inference,
from a per-user counter-based stream (:mod:`noise`) so scores are reproducible and independent of
the batch. ``diffusion.sampler_steps`` runs the chain as a few DDIM jumps (η = 0) instead of every
step of eq. 20, the same in training and at inference.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lgcd_core.config import LGCDConfig
from lgcd_core.model.batches import NEVER, PSEUDO
from lgcd_core.model.diffusion import DiffusionSchedule
from lgcd_core.model.encoders import DomainEncoder
from lgcd_core.model.noise import history_keys, keyed_normal, stream_id


def _mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked rows of the mean squared error over the feature dimension (0 if none)."""
    per_row = (a - b).pow(2).mean(-1)
    m = mask.to(per_row.dtype)
    return (per_row * m).sum() / m.sum().clamp(min=1.0)


class TimeEmbedding(nn.Module):
    """e_t of eq. 12: sinusoidal features of t followed by an MLP."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.d // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        ang = t.float()[:, None] * freqs[None]
        emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
        if emb.shape[-1] < self.d:
            emb = F.pad(emb, (0, self.d - emb.shape[-1]))
        return self.mlp(emb)


class CrossAttention(nn.Module):
    """Multi-head attention of one query vector per row over its condition tokens (eq. 13)."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d={d} must be divisible by n_heads={n_heads}")
        self.h, self.dh = n_heads, d // n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.dropout = dropout

    def kv(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the condition tokens, computed once per batch: (B, L, d) -> 2 x (B, h, L, dh)."""
        b, length, _ = z.shape
        k = self.k(z).view(b, length, self.h, self.dh).transpose(1, 2)
        v = self.v(z).view(b, length, self.h, self.dh).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (N, d) queries; k, v: (N, h, L, dh); allowed: (N, L) bool -> (N, d).

        One query per row: softmax(q kᵀ / √dh) v over the allowed keys, dropout on the attention
        weights in training, in one fused kernel (``scaled_dot_product_attention``, same values as the
        broadcast products it replaced: as fast on an idle CPU at training sizes, 2x faster for
        512 x 50 inference batches, 4-10x when the CPU is oversubscribed); every row must allow a key.
        """
        n = x.shape[0]
        q = self.q(x).view(n, self.h, 1, self.dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)  # (N, h, 1, dh)
        return self.o(y.reshape(n, self.h * self.dh))


class Denoiser(nn.Module):
    """x0-predicting denoiser f_θ(x_t, t, Z^cond) (eq. 12-16).

    x̃ = x_t + e_t (12); x̃ = CrossAttn(x̃, Z, Z) (13); x¹ = x̃ + x_t (14); x² = x¹ + FFN(x¹) (15);
    x̂0 = x² (16). LayerNorms before the attention query and the FFN (pre-LN) keep the noisy inputs
    of every t on one scale; they are our addition.
    """

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.time = TimeEmbedding(d)
        self.ln_q = nn.LayerNorm(d)
        self.attn = CrossAttention(d, n_heads, dropout)
        self.ln_f = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, k: torch.Tensor, v: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        e_t = self.time(t.reshape(-1))  # (N, d), or (1, d) for one shared step (broadcast)
        x_tilde = x_t + e_t  # eq. 12
        x_tilde = self.attn(self.ln_q(x_tilde), k, v, allowed)  # eq. 13
        x1 = x_tilde + x_t  # eq. 14
        return x1 + self.ffn(self.ln_f(x1))  # eq. 15-16


class MoEFusion(nn.Module):
    """h_final = Σ_n α_n Expert_n([h_cond ; h_rev]), α = softmax(W_gate h_cond) (eq. 23-24).

    Experts are two-layer MLPs 2d -> d -> d, evaluated together with one einsum.
    """

    def __init__(self, d: int, n_experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, n_experts)
        self.w1 = nn.Parameter(torch.randn(n_experts, 2 * d, d) * (2 * d) ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(n_experts, d))
        self.w2 = nn.Parameter(torch.randn(n_experts, d, d) * d ** -0.5)
        self.b2 = nn.Parameter(torch.zeros(n_experts, d))

    def gates(self, h_cond: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gate(h_cond), dim=-1)  # eq. 23, (N, E)

    def forward(self, h_cond: torch.Tensor, h_rev: torch.Tensor) -> torch.Tensor:
        x = torch.cat([h_cond, h_rev], dim=-1)  # (N, 2d)
        hid = F.gelu(torch.einsum("ni,eij->nej", x, self.w1) + self.b1)  # (N, E, d)
        out = torch.einsum("nej,ejk->nek", hid, self.w2) + self.b2  # (N, E, d)
        return (self.gates(h_cond).unsqueeze(-1) * out).sum(1)  # eq. 24


class LinearFusion(nn.Module):
    """The 'w/o MoE' ablation: one linear layer on [h_cond ; h_rev]."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(2 * d, d)

    def forward(self, h_cond: torch.Tensor, h_rev: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([h_cond, h_rev], dim=-1))


class DirectionHead(nn.Module):
    """Denoiser, guesser g (eq. 18) and fusion of one direction."""

    def __init__(self, cfg: LGCDConfig, d: int) -> None:
        super().__init__()
        arch = cfg.architecture
        self.denoiser = Denoiser(d, arch.n_heads, arch.dropout)
        self.guesser = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))  # eq. 18
        self.fusion = MoEFusion(d, arch.n_experts) if cfg.ablations.moe else LinearFusion(d)


class Selection(NamedTuple):
    """The (row, query) pairs :meth:`LGCDModel._select` keeps, flattened to N, with their condition."""

    head: DirectionHead  # the direction's denoiser, guesser and fusion
    row: torch.Tensor  # (N,) batch row of each pair
    query: torch.Tensor  # (N,) query slot of each pair (a target slot in training, 0 at inference)
    h_cond: torch.Tensor  # (N, d) condition read at the last source item before the query (eq. 8)
    k: torch.Tensor  # (N, h, L, dh) keys of the condition tokens the denoiser attends to (eq. 13)
    v: torch.Tensor  # (N, h, L, dh) their values
    allowed: torch.Tensor  # (N, L) bool: the tokens each query may attend to


class WarmStart(NamedTuple):
    """Where the reverse process starts (eq. 18-19)."""

    x_start: torch.Tensor  # (..., N, d) x_{t_start}, one per draw of ε
    t_start: int  # round(λT) with the guesser, T without
    guess: torch.Tensor | None  # (N, d) g(h^cond) with gradients, None without the guesser


class Inference(NamedTuple):
    """What :meth:`LGCDModel.infer` computes for the rows of a batch that have a source item."""

    head: DirectionHead
    row: torch.Tensor  # (N,) batch row of each user
    h_cond: torch.Tensor  # (N, d) the condition (eq. 8)
    guess: torch.Tensor | None  # (N, d) g(h^cond) (eq. 18), None without the guesser or diffusion
    h_rev: torch.Tensor  # (S, N, d) the reverse process's x_0, one per draw of ε (zeros without diffusion)


class LGCDModel(nn.Module):
    def __init__(self, cfg: LGCDConfig, encoders: dict[str, DomainEncoder]) -> None:
        super().__init__()
        d = encoders["A"].spec.d
        if encoders["B"].spec.d != d:
            raise ValueError("both domain encoders must have the same d")
        self.cfg = cfg
        self.d = d
        self.enc = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict({"AB": DirectionHead(cfg, d), "BA": DirectionHead(cfg, d)})
        diff = cfg.diffusion
        self.schedule = DiffusionSchedule(diff.T, diff.beta_min, diff.beta_max, diff.schedule)
        self._item_cache: dict[str, torch.Tensor] = {}
        if cfg.training.freeze_encoders:
            self.enc.requires_grad_(False)

    # ---- bookkeeping -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> LGCDModel:
        super().train(mode)
        if self.cfg.training.freeze_encoders:
            self.enc.eval()  # frozen encoders: no dropout either
        self._item_cache.clear()
        return self

    def trainable_parameters(self) -> list[dict]:
        tc = self.cfg.training
        groups = [{"params": list(self.heads.parameters()), "lr": tc.lr}]
        if not tc.freeze_encoders:
            groups.append({"params": list(self.enc.parameters()), "lr": tc.encoder_lr})
        return groups

    def lam(self, target: str) -> float:
        return self.cfg.diffusion.lambda_A if target == "A" else self.cfg.diffusion.lambda_B

    def target_items(self, target: str) -> torch.Tensor:
        """E_fusion of the target domain (eq. 25), cached while it cannot change."""
        if self.cfg.training.freeze_encoders or not torch.is_grad_enabled():
            if target not in self._item_cache:
                with torch.no_grad():
                    self._item_cache[target] = self.enc[target].item_fusion()
            return self._item_cache[target]
        return self.enc[target].item_fusion()

    # ---- condition (eq. 8) and target feature (eq. 7) -----------------------------------------

    def condition_tokens(self, source: str, src: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Per-position condition Z of the source sequence: (B, Ls) -> (B, Ls, d).

        Real overlap rows: f_fusion(h^ID ⊕ h^text) (eq. 8). Pseudo rows
        (``interpretation.pseudo_condition``): 'id_fused' = the same fusion with the text half zeroed,
        'full' = same as real rows.
        """
        enc = self.enc[source]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.training.freeze_encoders):
            h_id = enc.encode_id(src)
            z = enc.fuse(h_id, enc.encode_text(src) if enc.spec.has_text else h_id)
            if self.cfg.interpretation.pseudo_condition == "id_fused" and bool(pseudo.any()):
                z = torch.where(pseudo[:, None, None], enc.fuse_id_only(h_id), z)
        return z

    @torch.no_grad()
    def target_features(self, target: str, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 = h^tgt, the target domain's text encoding (eq. 7), of every slot of target-domain rows.

        The one definition of x0: training, the diagnostics and the oracles all call this.
        (B, Lt) left-padded local ids -> x0 (B, Lt, d), has_x0 (B, Lt) bool. ``interpretation.x0``:

        - ``preceding`` (eq. 7 as we read it): slot k reads the encoder at slot k-1, i.e. the
          target-domain items before the target; the first target of a row has no x0.
        - ``including`` (DreamRec-style): slot k reads the encoder at slot k, the target included, so
          every target has an x0.

        The encoders are prefix-exact (``positions: start``), so slot k's x0 is what the encoder gives
        for that prefix read alone, as at inference. x0 is a target, never a path for gradients: with
        ``freeze_encoders: false`` it is detached, so L_diff and L_guess cannot move it.
        """
        h = self.enc[target].encode_text(tgt)
        if self.cfg.interpretation.x0 == "including":
            return h, tgt != 0
        return F.pad(h[:, :-1], (0, 0, 1, 0)), F.pad(tgt[:, :-1] != 0, (1, 0), value=False)

    def x0_after(self, target: str, history: torch.Tensor, next_item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 of one prediction per row: ``history`` (B, L) target-domain items before it, ``next_item`` (B,).

        The row ``history + [next_item]`` read at its last slot by :meth:`target_features` (the target's
        own item enters only with ``interpretation.x0: including``), cut to ``architecture.max_len`` items
        like a training row: (B, d), has_x0 (B,). ``next_item`` 0 (unknown): the x0 of ``preceding``,
        none with ``including``.
        """
        row = torch.cat([history, next_item[:, None].to(history.dtype)], dim=1)[:, -self.cfg.architecture.max_len:]
        x0, has = self.target_features(target, row)
        return x0[:, -1], has[:, -1]

    # ---- reverse process (eq. 18-20) ---------------------------------------------------------

    def reverse(self, head: DirectionHead, x_start: torch.Tensor, t_start: int, k: torch.Tensor,
                v: torch.Tensor, allowed: torch.Tensor, grad_steps: int = 0) -> torch.Tensor:
        """Run x_{t_start} -> x_0, deterministic given x_{t_start}: one denoiser call per jump.

        ``diffusion.sampler_steps`` null/0: every step t -> t-1 with eq. 20's posterior mean (no Σ_t
        noise); k: DDIM (η = 0) over k evenly spaced jumps (:meth:`DiffusionSchedule.timesteps`). The
        last jump lands on 0 and returns the denoiser's x̂0 either way. Only the last ``grad_steps``
        jumps keep gradients (and dropout); the others run under no_grad in eval mode, as at inference.
        """
        x = x_start
        den = head.denoiser
        training = den.training
        ts = self.schedule.timesteps(t_start, self.cfg.diffusion.sampler_steps)
        ddim = bool(self.cfg.diffusion.sampler_steps)
        jumps = list(zip(ts[:-1], ts[1:]))
        for i, (t, s) in enumerate(jumps):
            grad = torch.is_grad_enabled() and i >= len(jumps) - grad_steps
            den.train(training and grad)
            with torch.set_grad_enabled(grad):
                x0_hat = den(x, t, k, v, allowed)
                x = self.schedule.ddim_step(x0_hat, x, t, s) if ddim else self.schedule.step(x0_hat, x, t)
        den.train(training)
        return x

    def denoiser_calls(self, target: str) -> int:
        """Denoiser calls of one reverse process towards ``target`` (per user and draw)."""
        t_start = self.schedule.start_step(self.lam(target)) if self.cfg.ablations.guesser else self.schedule.T
        return len(self.schedule.timesteps(t_start, self.cfg.diffusion.sampler_steps)) - 1

    def _start(self, head: DirectionHead, h_cond: torch.Tensor, target: str, train: bool, noise: torch.Tensor,
               x0_known: torch.Tensor | None = None, has_known: torch.Tensor | None = None) -> WarmStart:
        """Warm start (eq. 18-19): x_{t_s} = √ᾱ_{t_s} g(h_cond) + √(1-ᾱ_{t_s}) ε with t_s = λT.

        ``noise``: ε, (N, d) or (S, N, d) for S draws. Without the guesser: x_T = √(1-ᾱ_T) ε (the
        chain starts at t = T from pure noise, up to the schedule's √ᾱ_T of a zero x0).
        """
        guesser = self.cfg.ablations.guesser
        guess = head.guesser(h_cond) if guesser else None
        if guesser:
            t_start = self.schedule.start_step(self.lam(target))
            base = guess.detach() if train else guess
            if x0_known is not None:
                base = torch.where(has_known[:, None], x0_known, base)
        else:
            t_start = self.schedule.T
            base = torch.zeros_like(h_cond)
        return WarmStart(self.schedule.add_noise(base, noise.to(base.dtype), t_start), t_start, guess)

    def inference_noise(self, direction: str, src: torch.Tensor, draws: int | None = None) -> torch.Tensor:
        """ε of each row at inference: (N, Ls) source histories -> (S, N, d), S = ``diffusion.inference_draws``.

        A row's ε is a function of (``training.seed``, direction, the row's source items, draw index)
        only (:mod:`noise`): the same for a user in any batch, of any size, and on any device.
        """
        draws = draws or self.cfg.diffusion.inference_draws
        keys = history_keys(src)
        code = {"AB": 1, "BA": 2}[direction]
        return torch.stack([keyed_normal(keys, self.d, stream_id(self.cfg.training.seed, code, s))
                            for s in range(draws)])

    # ---- shared path -------------------------------------------------------------------------

    def _select(self, direction: str, src: torch.Tensor, src_pos: torch.Tensor, query_pos: torch.Tensor,
                query_ok: torch.Tensor, pseudo: torch.Tensor) -> Selection:
        """Condition of every (row, query) pair that is used: flattens to N queries."""
        source = direction[0]
        head = self.heads[direction]
        z = self.condition_tokens(source, src, pseudo)  # (B, Ls, d)
        allowed = (src_pos[:, None, :] < query_pos[:, :, None]) & (src != 0)[:, None, :]  # (B, Lq, Ls)
        has_src = allowed.any(-1)
        bi, qi = (query_ok & has_src).nonzero(as_tuple=True)
        al = allowed[bi, qi]  # (N, Ls)
        last = torch.where(al, torch.arange(al.shape[1], device=al.device), -1).max(-1).values
        h_cond = z[bi, last]  # (N, d): condition read at the last source item before the query
        if self.cfg.interpretation.condition_tokens == "sequence":
            k, v = head.denoiser.attn.kv(z)
            k, v = k[bi], v[bi]
        else:
            k, v = head.denoiser.attn.kv(h_cond[:, None, :])
            al = torch.ones(al.shape[0], 1, dtype=torch.bool, device=al.device)
        return Selection(head, bi, qi, h_cond, k, v, al)

    # ---- training (eq. 17, 21, 22, 25, 26, 27) -----------------------------------------------

    def losses(self, direction: str, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        ablations, weights = self.cfg.ablations, self.cfg.loss_weights
        target = direction[1]
        pseudo_rows = batch["kind"] == PSEUDO
        head, bi, qi, h_cond, k, v, al = self._select(direction, batch["src"], batch["src_pos"], batch["tgt_pos"],
                                                      batch["label"], pseudo_rows)
        labels = batch["tgt"][bi, qi]
        pseudo = pseudo_rows[bi]
        overlap = ~pseudo
        zero = h_cond.new_zeros(())
        out = {"diff": zero, "guess": zero, "align": zero}
        if ablations.use_diffusion:
            x0_all, has_all = (batch["x0"], batch["has_x0"]) if "x0" in batch else self.target_features(target, batch["tgt"])
            x0, has_x0 = x0_all[bi, qi], has_all[bi, qi]  # no x0 (preceding: no earlier target item): no L_diff/L_guess
            # L_diff (eq. 17): x0-prediction at a uniformly drawn t
            diff_rows = has_x0 & ((overlap & ablations.overlap_diffusion) | (pseudo & ablations.pseudo_diffusion))
            t = torch.randint(1, self.schedule.T + 1, (len(bi),), generator=generator).to(h_cond.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
            x0_hat = head.denoiser(self.schedule.add_noise(x0, noise, t), t, k, v, al)
            out["diff"] = _mse(x0_hat, x0, diff_rows)
            # reverse process from the noised guess (eq. 18-20), for L_align and L_rec: the inference
            # chain (same start distribution, same sampler), with gradients through its last jump only
            eps = torch.randn(h_cond.shape, generator=generator).to(h_cond.device, h_cond.dtype)
            x_start, t_start, guess = self._start(head, h_cond, target, True, eps)
            h_rev = self.reverse(head, x_start, t_start, k, v, al, grad_steps=1)
            if ablations.oracle_x0:  # the oracle row: the fusion reads the true x0 wherever there is one
                h_rev = torch.where(has_x0[:, None], x0, h_rev)
            if ablations.guesser:  # L_guess (eq. 22), on overlap rows (eq. 26)
                out["guess"] = _mse(guess, x0, has_x0 & overlap)
            if ablations.alignment_loss:  # L_align (eq. 21)
                align_on = self.cfg.interpretation.align_on
                align_rows = {"pseudo": pseudo, "overlap": overlap, "both": torch.ones_like(pseudo)}[align_on]
                out["align"] = _mse(h_rev, h_cond, align_rows)
        else:
            h_rev = torch.zeros_like(h_cond)  # 'w/o diffusion': the fusion reads the condition only
        if not ablations.rec_trains_generator:
            h_rev = h_rev.detach()  # L_rec trains the fusion only; the generator keeps its own objectives
        h_final = head.fusion(h_cond, h_rev)  # eq. 23-24
        ce = self.rec_loss(h_final, self.target_items(target)[1:], labels - 1, generator)
        w = torch.where(pseudo, torch.full_like(ce, weights.pseudo_rec), torch.ones_like(ce))
        out["rec"] = (ce * w).sum() / w.sum().clamp(min=1e-8)
        out["total"] = (out["rec"] + weights.diff * out["diff"] + weights.guess * out["guess"]
                        + weights.align * out["align"])  # eq. 26 (overlap) + eq. 27 (pseudo)
        out["n_targets"] = torch.tensor(float(len(bi)))
        return out

    def rec_loss(self, h_final: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Per-target cross-entropy of eq. 25: (N, d) user vectors, (n, d) real items, (N,) labels in 0..n-1.

        ``training.rec_negatives`` null: full softmax over the n items (the paper); the padding column
        is left out rather than set to -inf in place, which made autograd copy the whole (N, n) gradient.
        An integer m < n: sampled softmax over the target and m items drawn uniformly (with replacement),
        shared by the batch; a draw equal to a row's target is masked out of that row. A uniform
        proposal makes the log-Q correction the same for every column, so it cancels.
        """
        m = self.cfg.training.rec_negatives
        if m is None or m >= items.shape[0]:
            return F.cross_entropy((h_final @ items.T).float(), labels, reduction="none")
        neg = torch.randint(0, items.shape[0], (m,), generator=generator).to(labels.device)
        pos_logit = (h_final * items[labels]).sum(-1, keepdim=True)
        neg_logits = (h_final @ items[neg].T).masked_fill(neg[None, :] == labels[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logits], dim=1).float()
        return F.cross_entropy(logits, torch.zeros_like(labels), reduction="none")

    def forward(self, direction: str, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training forward = :meth:`losses` (so a DDP/accelerate wrapper syncs its gradients)."""
        return self.losses(direction, batch, generator)

    # ---- inference ---------------------------------------------------------------------------

    def infer(self, direction: str, src: torch.Tensor, tgt_history: torch.Tensor | None = None,
              draws: int | None = None) -> Inference:
        """Condition, guess and reverse process of every row with a source item, after its whole source history.

        src: (B, Ls) left-padded source local ids. ``tgt_history`` (our mixed-history extension):
        where a row has target-domain items, their text encoding replaces the guess as warm start.
        ``draws``: ε draws per row (default ``diffusion.inference_draws``).
        """
        b = src.shape[0]
        src_pos = torch.where(src != 0, torch.arange(src.shape[1], device=src.device), NEVER)
        query_pos = torch.full((b, 1), NEVER + 1, dtype=torch.long, device=src.device)
        ok = torch.ones(b, 1, dtype=torch.bool, device=src.device)
        pseudo = torch.zeros(b, dtype=torch.bool, device=src.device)
        head, bi, _, h_cond, k, v, al = self._select(direction, src, src_pos, query_pos, ok, pseudo)
        target = direction[1]
        if not self.cfg.ablations.use_diffusion:
            return Inference(head, bi, h_cond, None, torch.zeros_like(h_cond)[None])
        x0_known = has_known = None
        if tgt_history is not None:  # the x0 of the next item, which 'preceding' knows from the history
            x0_known, has_known = self.x0_after(target, tgt_history, tgt_history.new_zeros(b))
            x0_known, has_known = x0_known[bi], has_known[bi]
        noise = self.inference_noise(direction, src[bi], draws)
        x_start, t_start, guess = self._start(head, h_cond, target, False, noise, x0_known, has_known)
        h_rev = torch.stack([self.reverse(head, x, t_start, k, v, al) for x in x_start])
        if self.cfg.ablations.oracle_x0 and x0_known is not None:
            h_rev = torch.where(has_known[None, :, None], x0_known[None], h_rev)
        return Inference(head, bi, h_cond, guess, h_rev)

    def fuse(self, inf: Inference, b: int, h_rev: torch.Tensor | None = None) -> torch.Tensor:
        """h_final (eq. 23-24) of the B rows, averaged over the draws of ε; ``h_rev`` replaces ``inf.h_rev``.

        Averaging h_final is averaging the scores (eq. 25 is linear in h_final): the expected score
        over ε, each draw's h^rev entering the fusion as in training. A row with no source item gets
        the fusion of two zero vectors: one non-personalised vector.
        """
        h_rev = inf.h_rev if h_rev is None else h_rev
        z1 = inf.h_cond.new_zeros(1, self.d)
        out = inf.head.fusion(z1, z1).expand(b, self.d).clone()
        out[inf.row] = torch.stack([inf.head.fusion(inf.h_cond, h) for h in h_rev]).mean(0)
        return out

    def user_vectors(self, direction: str, src: torch.Tensor, tgt_history: torch.Tensor | None = None) -> torch.Tensor:
        """h_final of every row after its whole source history: (B, Ls) -> (B, d) (see :meth:`infer`).

        ``tgt_history`` (B, Lt), our mixed-history extension: a row with target-domain items also gets
        ``interpretation.target_history_weight`` times the pretrained target-domain encoder's user
        vector of those items (eq. 1-3) added. Both vectors score against the same E_fusion^target
        (eq. 25), so the sum multiplies the two models' next-item softmaxes (a product of experts):
        LGCD's cross-domain preference and the user's own target-domain sequence.
        """
        out = self.fuse(self.infer(direction, src, tgt_history), src.shape[0])
        weight = self.cfg.interpretation.target_history_weight
        if tgt_history is None or weight == 0.0:
            return out
        has = (tgt_history != 0).any(1)
        if bool(has.any()):
            own = self.enc[direction[1]].user_vector(tgt_history[has])
            out[has] = out[has] + weight * own
        return out

    def scores(self, direction: str, src: torch.Tensor, tgt_history: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Ls) source local ids -> (B, n_target+1) scores over the target domain's local items."""
        logits = self.user_vectors(direction, src, tgt_history) @ self.target_items(direction[1]).T
        logits[:, 0] = float("-inf")
        return logits

