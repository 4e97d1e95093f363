import math

import pytest
import torch

from lgcd_core.model.diffusion import DiffusionSchedule


def test_sqrt_linear_schedule_matches_closed_form():
    s = DiffusionSchedule(T=100, beta_min=1e-4, beta_max=0.1)
    for t in (1, 2, 37, 100):
        root = math.sqrt(1e-4) + (t - 1) / 99 * (math.sqrt(0.1) - math.sqrt(1e-4))
        assert s.betas[t].item() == pytest.approx(root ** 2, rel=1e-9)
    assert s.betas[1].item() == pytest.approx(1e-4) and s.betas[100].item() == pytest.approx(0.1)
    prod = 1.0
    for t in range(1, 101):
        prod *= 1 - s.betas[t].item()
        assert s.alpha_bars[t].item() == pytest.approx(prod, rel=1e-9)
    assert s.alpha_bars[0].item() == 1.0


def test_linear_schedule_and_start_step():
    s = DiffusionSchedule(T=10, beta_min=0.01, beta_max=0.1, kind="linear")
    assert torch.allclose(s.betas[1:], torch.linspace(0.01, 0.1, 10, dtype=torch.float64))
    assert s.start_step(0.5) == 5 and s.start_step(0.01) == 1 and s.start_step(1.0) == 10
    with pytest.raises(ValueError):
        DiffusionSchedule(T=10, kind="cosine")


def test_q_sample_moments():
    s = DiffusionSchedule(T=100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -2.0, 0.3]).expand(200_000, 3)
    for t in (5, 50, 100):
        xt, _ = s.q_sample(x0, t, generator=g)
        ab = s.alpha_bars[t].item()
        assert torch.allclose(xt.mean(0), math.sqrt(ab) * x0[0], atol=0.01)
        assert torch.allclose(xt.var(0), torch.full((3,), 1 - ab), atol=0.01)


def test_add_noise_per_row_timesteps():
    s = DiffusionSchedule(T=100)
    x0, eps = torch.randn(4, 8), torch.randn(4, 8)
    t = torch.tensor([1, 10, 50, 100])
    out = s.add_noise(x0, eps, t)
    for i in range(4):
        assert torch.allclose(out[i], s.add_noise(x0[i:i + 1], eps[i:i + 1], int(t[i]))[0], atol=1e-6)


def test_posterior_mean_eq20_matches_bayes():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): product of two Gaussians."""
    s = DiffusionSchedule(T=100)
    x0, xt = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    for t in (2, 30, 100):
        a, b = s.alphas[t].item(), s.betas[t].item()
        ab_prev = s.alpha_bars[t - 1].item()
        precision = 1 / (1 - ab_prev) + a / b
        mean = (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(a) * xt / b) / precision
        assert torch.allclose(s.posterior_mean(x0, xt, t), mean, atol=1e-10)
        assert s.posterior_variance(t, xt).item() == pytest.approx(1 / precision, rel=1e-9)


def test_last_step_returns_x0_prediction_and_step_noise():
    s = DiffusionSchedule(T=100)
    x0_hat, xt = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(s.step(x0_hat, xt, 1), x0_hat, atol=1e-6)
    noisy = s.step(x0_hat, xt, 50, noise=torch.ones(3, 4))
    assert torch.allclose(noisy - s.posterior_mean(x0_hat, xt, 50),
                          torch.full((3, 4), s.posterior_variance(50, xt).sqrt().item()), atol=1e-6)


# ---- the few-step sampler (DDIM) ----------------------------------------------------------------


def test_timesteps_are_evenly_spaced_from_t_start_to_zero():
    s = DiffusionSchedule(T=100)
    assert s.timesteps(50, 5) == [50, 40, 30, 20, 10, 0]
    assert s.timesteps(50, 3) == [50, 33, 17, 0]  # 33.3 and 16.7 rounded
    assert s.timesteps(30, 1) == [30, 0]
    for full in (None, 0, 30, 100):  # null/0, or at least t_start: every step
        assert s.timesteps(30, full) == list(range(30, -1, -1))
    for t_start in (1, 7, 30, 100):
        for steps in range(1, t_start + 1):
            ts = s.timesteps(t_start, steps)
            assert ts[0] == t_start and ts[-1] == 0 and len(ts) == steps + 1
            gaps = [a - b for a, b in zip(ts, ts[1:])]
            assert min(gaps) >= 1 and max(gaps) - min(gaps) <= 1  # strictly decreasing, even up to rounding


def test_ddim_with_a_perfect_x0_predictor_is_exact():
    """From x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε, a perfect x̂0 = x0 gives ε̂ = ε, so every jump lands on x_s with the same ε."""
    s = DiffusionSchedule(T=100)
    x0, eps = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    for t in (1, 3, 30, 50, 100):
        x_t = s.add_noise(x0, eps, t)
        assert torch.allclose(s.ddim_step(x0, x_t, t, 0), x0, atol=1e-12)  # one jump to 0: x0 exactly
        for prev in (0, t // 2, t - 1):
            if prev < t:
                assert torch.allclose(s.ddim_step(x0, x_t, t, prev), s.add_noise(x0, eps, prev), atol=1e-10)
    with pytest.raises(ValueError):
        s.ddim_step(x0, x0, 10, 10)


def test_ddim_eta_one_single_steps_are_eq20_and_the_existing_chain_is_not_ddim_eta_zero():
    """η = 1, s = t-1: DDIM's mean is eq. 20's posterior mean and σ² is Σ_t, so the existing chain (every
    step, posterior mean, no Σ_t noise) is DDIM η = 1 without its noise; DDIM η = 0 on every step differs."""
    s = DiffusionSchedule(T=100)
    x0_hat, x_t = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    noise = torch.randn(5, 6, dtype=torch.float64)
    for t in (2, 30, 100):
        assert torch.allclose(s.ddim_step(x0_hat, x_t, t, t - 1, eta=1.0), s.posterior_mean(x0_hat, x_t, t), atol=1e-10)
        assert torch.allclose(s.ddim_step(x0_hat, x_t, t, t - 1, eta=1.0, noise=noise), s.step(x0_hat, x_t, t, noise),
                              atol=1e-10)
    x0_fn = lambda x, t: 0.5 * x + 0.01 * t  # noqa: E731 (any x0 predictor)
    start = torch.randn(3, 4, dtype=torch.float64)
    chains = {}
    for name, jump in (("eq20", lambda x, t, prev: s.step(x0_fn(x, t), x, t)),
                       ("ddim_eta1_mean", lambda x, t, prev: s.ddim_step(x0_fn(x, t), x, t, prev, eta=1.0)),
                       ("ddim_eta0", lambda x, t, prev: s.ddim_step(x0_fn(x, t), x, t, prev))):
        x, ts = start, s.timesteps(30, 30)
        for t, prev in zip(ts, ts[1:]):
            x = jump(x, t, prev)
        chains[name] = x
    assert torch.allclose(chains["eq20"], chains["ddim_eta1_mean"], atol=1e-10)
    assert not torch.allclose(chains["eq20"], chains["ddim_eta0"], atol=1e-3)
