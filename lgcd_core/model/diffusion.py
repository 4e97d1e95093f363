"""Noise schedule of LGCD's conditional diffusion (paper eq. 9-11, 19-20), diffusers-style.

A small object holding the schedule tensors with explicit methods:
``add_noise``/``q_sample`` (eq. 11), ``posterior_mean`` (eq. 20), ``posterior_variance`` (Σ_t of
eq. 19), ``step`` (one reverse step of eq. 19-20 from an x0 prediction), and the few-step sampler:
``timesteps`` (the evenly spaced sub-sequence t_start -> 0) and ``ddim_step`` (DDIM's jump t -> s < t).
Timesteps are 1-based, ``t = 1..T``; index 0 holds the conventions ``alpha_bar_0 = 1`` so that
``t - 1`` can be looked up directly, and a jump to s = 0 returns the x0 prediction.

Schedule choice (notes: "线性递增 noise schedule β_t ∈ [√β_min, √β_max]"): ``sqrt_linear`` spaces
√β_t linearly between √β_min and √β_max and squares it, so β runs from β_min = 1e-4 to β_max = 0.1
(the "scaled linear" schedule); ``linear`` spaces β_t itself linearly.
"""

from __future__ import annotations

import torch


class DiffusionSchedule:
    def __init__(self, T: int = 100, beta_min: float = 1e-4, beta_max: float = 0.1,
                 kind: str = "sqrt_linear") -> None:
        if not 0 < beta_min <= beta_max < 1:
            raise ValueError(f"need 0 < beta_min <= beta_max < 1, got {beta_min}, {beta_max}")
        self.T = T
        if kind == "sqrt_linear":
            betas = torch.linspace(beta_min ** 0.5, beta_max ** 0.5, T, dtype=torch.float64) ** 2
        elif kind == "linear":
            betas = torch.linspace(beta_min, beta_max, T, dtype=torch.float64)
        else:
            raise ValueError(f"unknown schedule {kind!r}")
        one = torch.ones(1, dtype=torch.float64)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])  # [0, β_1..β_T]
        self.alphas = 1.0 - self.betas  # α_t (eq. 9)
        self.alpha_bars = torch.cumprod(self.alphas, 0)  # ᾱ_t (eq. 10), ᾱ_0 = 1
        prev = torch.cat([one, self.alpha_bars[:-1]])  # ᾱ_{t-1}
        denom = (1.0 - self.alpha_bars).clamp(min=1e-20)
        # eq. 20 coefficients and the posterior variance β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t)
        self.coef_x0 = prev.sqrt() * self.betas / denom
        self.coef_xt = self.alphas.sqrt() * (1.0 - prev) / denom
        self.posterior_var = self.betas * (1.0 - prev) / denom
        self.coef_x0[0], self.coef_xt[0], self.posterior_var[0] = 1.0, 0.0, 0.0

    def _at(self, table: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor | float:
        if isinstance(t, int):  # a Python step: a Python float, no host-to-device copy
            return float(table[t])
        t = torch.as_tensor(t)
        vals = table.to(like.device)[t.to(like.device)].to(like.dtype)
        return vals.reshape(vals.shape + (1,) * (like.dim() - vals.dim()))

    def start_step(self, lam: float) -> int:
        """t_start = λT, rounded, at least 1 (eq. 18-19: the reverse process starts there)."""
        return max(1, min(self.T, int(round(lam * self.T))))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε  (eq. 11); ``t`` a scalar or one step per row."""
        ab = self._at(self.alpha_bars, t, x0)
        return ab ** 0.5 * x0 + (1.0 - ab) ** 0.5 * noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x0) (eq. 10); returns (x_t, ε)."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.add_noise(x0, noise, t), noise

    def posterior_mean(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """μ_θ(x_t, t) = √ᾱ_{t-1} β_t / (1-ᾱ_t) · x̂0 + √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t) · x_t  (eq. 20)."""
        return self._at(self.coef_x0, t, x_t) * x0_hat + self._at(self.coef_xt, t, x_t) * x_t

    def posterior_variance(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """Σ_t of eq. 19 (the DDPM posterior variance β̃_t), broadcastable to ``like``."""
        return torch.as_tensor(self._at(self.posterior_var, t, like), dtype=like.dtype, device=like.device)

    def step(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One reverse step x_t -> x_{t-1} (eq. 19): the posterior mean, plus √Σ_t·noise if given."""
        mean = self.posterior_mean(x0_hat, x_t, t)
        if noise is None or t <= 1:
            return mean
        return mean + self.posterior_variance(t, x_t).sqrt() * noise

    @staticmethod
    def timesteps(t_start: int, steps: int | None = None) -> list[int]:
        """The reverse trajectory ``[t_start, ..., 0]``: ``steps`` jumps evenly spaced (rounded to integers).

        ``steps`` None or 0, or at least ``t_start``: every step ``t_start, t_start - 1, ..., 0``.
        Consecutive pairs (t, s) are the jumps; the last one lands on 0 (the x0 prediction).
        """
        if not steps or steps >= t_start:
            return list(range(t_start, -1, -1))
        # round(t_start (steps - i) / steps) in integers (half up): distinct since the spacing is >= 1
        return [(2 * t_start * (steps - i) + steps) // (2 * steps) for i in range(steps + 1)]

    def ddim_step(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, s: int, eta: float = 0.0,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM's jump x_t -> x_s, s < t, from an x0 prediction (Song et al. 2021, eq. 12 and 16).

        ε̂ = (x_t − √ᾱ_t x̂0) / √(1−ᾱ_t);  x_s = √ᾱ_s x̂0 + √(1−ᾱ_s−σ²) ε̂ + σ·noise, with
        σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_s). η = 0 (our sampler) is deterministic given x_t; with
        η = 1 and s = t−1 the mean is eq. 20's posterior mean and σ² is Σ_t, i.e. :meth:`step`.
        s = 0 returns x̂0 (ᾱ_0 = 1).
        """
        if not 0 <= s < t <= self.T:
            raise ValueError(f"need 0 <= s < t <= T={self.T}, got t={t}, s={s}")
        ab_t, ab_s = float(self.alpha_bars[t]), float(self.alpha_bars[s])
        eps_hat = (x_t - ab_t ** 0.5 * x0_hat) / (1.0 - ab_t) ** 0.5
        var = eta ** 2 * (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)
        x_s = ab_s ** 0.5 * x0_hat + max(1.0 - ab_s - var, 0.0) ** 0.5 * eps_hat
        if noise is not None and var > 0:
            x_s = x_s + var ** 0.5 * noise
        return x_s
