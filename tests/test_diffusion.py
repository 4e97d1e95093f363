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
